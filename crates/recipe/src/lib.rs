//! kiln's data model. A recipe names a board profile; the board names a disk layout and an
//! OEM tree. [`load`] reads all three, checks every reference and every file they point at,
//! and returns one [`Resolved`] value that the build consumes. Errors point at
//! `file:line:column`.

pub mod board;
pub mod layout;
pub mod platform;
pub mod recipe;
pub mod source;
pub mod tree;
pub mod units;
pub mod version;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use board::Firmware;
pub use layout::{Content, Filesystem, Layout, Partition, SlotName};
pub use source::SourceFile;
pub use units::ByteSize;

/// SOURCE_DATE_EPOCH when neither the environment nor the recipe sets one: 1980-01-01, the
/// earliest timestamp every filesystem in the image (FAT included) can store.
pub const DEFAULT_EPOCH: i64 = 315_532_800;

/// Where to look for board profiles when the caller does not say.
pub const BOARD_DIR_NAME: &str = "board-profiles";

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Board profiles directory; default: the nearest `board-profiles/` above the recipe.
    pub board_dir: Option<PathBuf>,
    /// Platforms to resolve instead of the recipe's list.
    pub platforms: Option<PlatformSelection>,
    /// An official release build: a computed version has no `+` suffix.
    pub release: bool,
    /// The update channel [default: alpha for a release, else developer].
    pub channel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformSelection {
    /// Every platform file of the board profiles directory.
    All,
    Names(Vec<String>),
}

impl std::str::FromStr for PlatformSelection {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(PlatformSelection::All);
        }
        if s == "none" {
            return Ok(PlatformSelection::Names(Vec::new()));
        }
        let names: Vec<String> = s
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err("name at least one platform, or `all` or `none`".into());
        }
        Ok(PlatformSelection::Names(names))
    }
}

/// Platform files live here, relative to the board profiles directory.
pub const PLATFORM_DIR_NAME: &str = "platforms";

/// The known platform names, for error messages and `--platform all`.
pub fn known_platforms(board_dir: &Path) -> Vec<String> {
    known_boards(&board_dir.join(PLATFORM_DIR_NAME))
}

/// A recipe with its board, layout and trees resolved and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Resolved {
    pub name: String,
    #[serde(skip)]
    pub recipe_path: PathBuf,
    #[serde(skip)]
    pub board_dir: PathBuf,
    pub os: Os,
    pub packages: Packages,
    #[serde(skip)]
    pub overlays: Vec<PathBuf>,
    pub usr_filesystem: Filesystem,
    pub usr_compression: String,
    pub board: Board,
    pub kernel: Kernel,
    pub layout: Layout,
    pub oem: Oem,
    pub source_date_epoch: i64,
    /// Content hashes of overlays and the OEM tree, in order.
    pub tree_hashes: Vec<String>,
    /// The platforms to build: the recipe's, or the caller's selection. Not part of the
    /// recipe's identity (selecting platforms must not change the board image).
    #[serde(skip)]
    pub platforms: Vec<platform::Platform>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Os {
    pub name: String,
    pub id: String,
    /// The whole version (with a development build's `+` suffix).
    pub version: String,
    /// The version without the suffix (os-release VERSION_ID).
    pub version_id: String,
    /// The update channel the image is built for.
    pub channel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Packages {
    pub suite: String,
    pub mirrors: Vec<String>,
    pub components: Vec<String>,
    pub variant: String,
    pub include: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Board {
    pub name: String,
    pub arch: String,
    pub debian_arch: String,
    pub firmware: Vec<Firmware>,
    pub grub: board::GrubDef,
    pub qemu: board::QemuDef,
}

#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    pub source: board::KernelSource,
    /// The Debian kernel package (the prebuilt path); busybox-static comes from Debian either
    /// way.
    pub package: String,
    /// Set when the recipe builds its kernel from source instead.
    pub build: Option<KernelBuild>,
    pub cmdline: Vec<String>,
    /// The board's and the recipe's initramfs modules.
    pub initramfs_modules: Vec<String>,
    /// Those and the modules of every platform profile of the board: what the one initramfs
    /// of the board carries.
    pub board_initramfs_modules: Vec<String>,
}

/// A kernel built from source: where the source is, and the config fragments.
#[derive(Debug, Clone, Serialize)]
pub struct KernelBuild {
    /// A kernel tree or a tarball (absolute, or relative to the working directory).
    #[serde(skip)]
    pub source: PathBuf,
    #[serde(skip)]
    pub fragments: Vec<PathBuf>,
    /// SHA-256 over the fragments' names and bytes: what identifies them, wherever the
    /// checkout is.
    pub fragments_hash: String,
    pub base: recipe::ConfigBase,
}

#[derive(Debug, Clone, Serialize)]
pub struct Oem {
    pub id: String,
    #[serde(skip)]
    pub tree: PathBuf,
}

impl Resolved {
    /// The version file (`KEY=value` lines, as CoreOS's version.txt): in the image at
    /// /usr/lib/kiln/version.txt and beside a release's artifacts.
    pub fn version_txt(&self) -> String {
        let mut t = String::new();
        if let Ok(v) = version::Version::parse(&self.os.version) {
            t.push_str(&format!(
                "KILN_BUILD={}\nKILN_BRANCH={}\nKILN_PATCH={}\n",
                v.build, v.branch, v.patch
            ));
        }
        t.push_str(&format!(
            "KILN_VERSION={}\nKILN_VERSION_ID={}\nKILN_BOARD={}\nKILN_CHANNEL={}\nKILN_RECIPE={}\nKILN_RECIPE_HASH={}\n",
            self.os.version,
            self.os.version_id,
            self.board.name,
            self.os.channel,
            self.name,
            self.identity()
        ));
        t
    }

    /// A hash of everything that defines the image, independent of where the checkout
    /// lives. Seeds every identifier that would otherwise be random.
    pub fn identity(&self) -> String {
        let json = serde_json::to_vec(self).expect("model serializes");
        hex::encode(Sha256::digest(json))
    }

    /// The identity of one platform's image: the recipe's plus the platform's definition.
    pub fn platform_identity(&self, p: &platform::Platform) -> String {
        let json = serde_json::to_vec(p).expect("platform serializes");
        let mut h = Sha256::new();
        h.update(self.identity());
        h.update(json);
        hex::encode(h.finalize())
    }

    pub fn has_firmware(&self, f: Firmware) -> bool {
        self.board.firmware.contains(&f)
    }
}

/// The known board names in a board-profiles directory, for error messages.
pub fn known_boards(board_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(board_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    names
}

fn find_board_dir(recipe_path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(recipe_path).ok()?;
    abs.ancestors()
        .skip(1)
        .map(|d| d.join(BOARD_DIR_NAME))
        .find(|d| d.is_dir())
}

/// Read and check a recipe, its board profile, layout, overlays and OEM tree.
pub fn load(recipe_path: &Path, opts: &LoadOptions) -> Result<Resolved> {
    let recipe_src = SourceFile::read(recipe_path)?;
    let r: recipe::RecipeFile = recipe_src.parse()?;
    let recipe_dir = recipe_path.parent().unwrap_or(Path::new("."));

    let name = match &r.name {
        Some(n) => {
            check_name(n.get_ref()).map_err(|m| recipe_src.error_at(&n.span(), m))?;
            n.get_ref().clone()
        }
        None => {
            let stem = recipe_path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("image")
                .to_string();
            check_name(&stem).map_err(|m| {
                anyhow::anyhow!(
                    "{}: recipe file name: {m}; or set `name`",
                    recipe_path.display()
                )
            })?;
            stem
        }
    };
    check_name(r.os.id.get_ref()).map_err(|m| recipe_src.error_at(&r.os.id.span(), m))?;
    if let Some(v) = &r.os.version {
        if v.get_ref().is_empty() || v.get_ref().chars().any(|c| c.is_whitespace()) {
            return Err(recipe_src.error_at(
                &v.span(),
                "os.version must be non-empty and contain no whitespace",
            ));
        }
    }
    let channel = opts
        .channel
        .clone()
        .unwrap_or_else(|| if opts.release { "alpha" } else { "developer" }.to_string());
    check_name(&channel).map_err(|m| anyhow::anyhow!("channel `{channel}`: {m}"))?;

    // Board profile.
    let board_dir = match &opts.board_dir {
        Some(d) => d.clone(),
        None => find_board_dir(recipe_path).ok_or_else(|| {
            anyhow::anyhow!(
                "no `{BOARD_DIR_NAME}/` directory found above {}; pass --board-dir",
                recipe_path.display()
            )
        })?,
    };
    let board_name = r.board.get_ref();
    let board_path = board_dir.join(format!("{board_name}.toml"));
    if check_name(board_name).is_err() || !board_path.is_file() {
        let known = known_boards(&board_dir);
        return Err(recipe_src.error_at(
            &r.board.span(),
            format!(
                "unknown board `{board_name}`; known boards in {}: {}",
                board_dir.display(),
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    let board_src = SourceFile::read(&board_path)?;
    let b: board::BoardFile = board_src.parse()?;
    if b.name.get_ref() != board_name {
        return Err(board_src.error_at(
            &b.name.span(),
            format!(
                "board name `{}` does not match its file name `{board_name}.toml`",
                b.name.get_ref()
            ),
        ));
    }
    let mut firmware = Vec::new();
    for f in &b.firmware {
        if firmware.contains(f.get_ref()) {
            return Err(board_src.error_at(&f.span(), "firmware listed twice"));
        }
        firmware.push(*f.get_ref());
    }
    if firmware.is_empty() {
        bail!(
            "{}: `firmware` must name at least one of bios, uefi",
            board_path.display()
        );
    }
    if firmware.contains(&Firmware::Bios) && b.grub.bios_target.is_none() {
        bail!(
            "{}: firmware includes bios but grub.bios-target is not set",
            board_path.display()
        );
    }
    if firmware.contains(&Firmware::Uefi)
        && (b.grub.efi_target.is_none() || b.grub.efi_binary.is_none())
    {
        bail!(
            "{}: firmware includes uefi but grub.efi-target or grub.efi-binary is not set",
            board_path.display()
        );
    }

    // Layout, with the recipe's variant if it names one.
    let layout_path = board_dir.join(b.layout.file.get_ref());
    if !layout_path.is_file() {
        return Err(board_src.error_at(
            &b.layout.file.span(),
            format!("layout file {} does not exist", layout_path.display()),
        ));
    }
    let (variant, variant_src) = match &r.layout.variant {
        Some(v) => (v.clone(), &recipe_src),
        None => (b.layout.variant.clone(), &board_src),
    };
    let layout = load_layout(&layout_path, &variant, variant_src)?;
    check_layout_for_firmware(&layout, &firmware, &layout_path)?;

    // USR filesystem and compression.
    let usr_part = layout.slot(SlotName::A).expect("checked in load_layout");
    let usr_filesystem = r
        .rootfs
        .usr_filesystem
        .or(usr_part.filesystem)
        .unwrap_or(Filesystem::Erofs);
    if usr_filesystem == Filesystem::Vfat {
        bail!(
            "{}: USR cannot be vfat; use erofs or ext4",
            recipe_path.display()
        );
    }
    let usr_compression = match &r.rootfs.usr_compression {
        Some(c) => {
            if !["lz4", "lz4hc", "none"].contains(&c.get_ref().as_str()) {
                return Err(recipe_src.error_at(
                    &c.span(),
                    format!(
                        "unknown usr-compression `{}`; use lz4, lz4hc or none",
                        c.get_ref()
                    ),
                ));
            }
            if usr_filesystem != Filesystem::Erofs && c.get_ref() != "none" {
                return Err(recipe_src.error_at(
                    &c.span(),
                    "usr-compression needs usr-filesystem = \"erofs\"",
                ));
            }
            c.get_ref().clone()
        }
        None if usr_filesystem == Filesystem::Erofs => "lz4".into(),
        None => "none".into(),
    };

    // Packages.
    let variants = [
        "extract",
        "custom",
        "essential",
        "apt",
        "required",
        "minbase",
        "buildd",
        "important",
        "debootstrap",
        "standard",
    ];
    if !variants.contains(&r.packages.variant.get_ref().as_str()) {
        return Err(recipe_src.error_at(
            &r.packages.variant.span(),
            format!(
                "unknown mmdebstrap variant `{}`; use one of {}",
                r.packages.variant.get_ref(),
                variants.join(", ")
            ),
        ));
    }
    check_name(&r.packages.suite)
        .map_err(|m| anyhow::anyhow!("{}: packages.suite: {m}", recipe_path.display()))?;
    check_name(&b.debian_arch)
        .map_err(|m| anyhow::anyhow!("{}: debian-arch: {m}", board_path.display()))?;
    check_text(&r.os.name)
        .map_err(|m| anyhow::anyhow!("{}: os.name: {m}", recipe_path.display()))?;
    if r.packages.mirrors.is_empty() {
        bail!(
            "{}: packages.mirrors must name at least one mirror",
            recipe_path.display()
        );
    }

    let kernel_build = kernel_build(&r.kernel, recipe_dir, &recipe_src)?;

    // Overlays.
    let mut overlays = Vec::new();
    let mut tree_hashes = Vec::new();
    for o in &r.rootfs.overlays {
        let p = recipe_dir.join(o.get_ref());
        if !p.is_dir() {
            return Err(recipe_src.error_at(
                &o.span(),
                format!("overlay directory {} does not exist", p.display()),
            ));
        }
        tree::check_symlinks_inside(&p).map_err(|e| recipe_src.error_at(&o.span(), e))?;
        tree_hashes.push(tree::hash_tree(&p)?);
        overlays.push(p);
    }

    // OEM tree: the recipe's if it names one, else the board's.
    let (oem_tree, oem_span, oem_src) = match &r.oem.tree {
        Some(t) => (recipe_dir.join(t.get_ref()), t.span(), &recipe_src),
        None => (
            board_dir.join(b.oem.tree.get_ref()),
            b.oem.tree.span(),
            &board_src,
        ),
    };
    if !oem_tree.is_dir() {
        return Err(oem_src.error_at(
            &oem_span,
            format!("OEM tree {} does not exist", oem_tree.display()),
        ));
    }
    tree::check_symlinks_inside(&oem_tree).map_err(|e| oem_src.error_at(&oem_span, e))?;
    tree_hashes.push(tree::hash_tree(&oem_tree)?);
    let oem_id = r.oem.id.clone().unwrap_or(b.oem.id.clone());
    check_name(&oem_id).map_err(|m| anyhow::anyhow!("{}: oem id: {m}", recipe_path.display()))?;

    let mut cmdline = b.kernel.cmdline.clone();
    cmdline.extend(r.kernel.cmdline.iter().cloned());
    for arg in &cmdline {
        check_kernel_arg(arg).map_err(|m| {
            anyhow::anyhow!(
                "{m} (in {} or {})",
                board_path.display(),
                recipe_path.display()
            )
        })?;
    }
    let mut initramfs_modules = b.kernel.initramfs_modules.clone();
    initramfs_modules.extend(r.kernel.initramfs_modules.iter().cloned());

    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"))?,
        // 1980-01-01, the earliest time FAT can store.
        Err(_) => r.source_date_epoch.unwrap_or(DEFAULT_EPOCH),
    };
    if !(DEFAULT_EPOCH..=u32::MAX as i64).contains(&source_date_epoch) {
        bail!("source-date-epoch {source_date_epoch} is out of range: use {DEFAULT_EPOCH} (1980-01-01, FAT's first day) to {}", u32::MAX);
    }
    let version = match (&r.os.version, &r.version) {
        (Some(v), None) => {
            if opts.release {
                let parsed = version::Version::parse(v.get_ref())
                    .map_err(|e| recipe_src.error_at(&v.span(), e))?;
                if parsed.is_dev() {
                    return Err(recipe_src.error_at(&v.span(), "a release version has no + suffix"));
                }
            }
            v.get_ref().clone()
        }
        (None, Some(scheme)) => scheme
            .get_ref()
            .version_at(source_date_epoch, !opts.release)
            .map_err(|e| recipe_src.error_at(&scheme.span(), format!("{e:#}")))?
            .to_string(),
        (Some(v), Some(_)) => {
            return Err(recipe_src.error_at(
                &v.span(),
                "os.version and a [version] scheme both set the version: keep one",
            ))
        }
        (None, None) => bail!(
            "{}: the recipe has no version: set os.version = \"1.0.0\", or a [version] table \
             with epoch = \"YYYY-MM-DD\" (BUILD counts days since it)",
            recipe_path.display()
        ),
    };

    // Platforms: the recipe's list (each must exist), or the caller's selection.
    let known = known_platforms(&board_dir);
    for p in &r.platforms {
        if !known.contains(p.get_ref()) {
            return Err(recipe_src.error_at(&p.span(), unknown_platform(p.get_ref(), &known)));
        }
    }
    let names: Vec<String> = match &opts.platforms {
        None => r.platforms.iter().map(|p| p.get_ref().clone()).collect(),
        Some(PlatformSelection::All) => known.clone(),
        Some(PlatformSelection::Names(n)) => {
            for name in n {
                if !known.contains(name) {
                    bail!("{}", unknown_platform(name, &known));
                }
            }
            n.clone()
        }
    };
    // Every platform of the board is loaded (and so checked): the board's one initramfs
    // carries the modules of all of them, whichever are built now, so the board image and
    // the update payload do not depend on the platform selection.
    let mut all = Vec::new();
    let mut board_initramfs_modules = initramfs_modules.clone();
    for name in &known {
        let p = load_platform(
            &board_dir,
            name,
            &layout_path,
            &firmware,
            &cmdline,
            &initramfs_modules,
        )?;
        for m in &p.initramfs_modules {
            // First mention wins: the order is the load order of unrelated drivers.
            if !board_initramfs_modules.contains(m) {
                board_initramfs_modules.push(m.clone());
            }
        }
        all.push(p);
    }
    let mut platforms: Vec<platform::Platform> = Vec::new();
    for name in names {
        if platforms.iter().any(|p| p.name == name) {
            continue;
        }
        if let Some(p) = all.iter().find(|p| p.name == name) {
            platforms.push(p.clone());
        }
    }

    Ok(Resolved {
        platforms,
        name,
        recipe_path: recipe_path.to_path_buf(),
        board_dir,
        os: Os {
            name: r.os.name.clone(),
            id: r.os.id.get_ref().clone(),
            version_id: version.split('+').next().unwrap_or(&version).to_string(),
            version,
            channel,
        },
        packages: Packages {
            suite: r.packages.suite.clone(),
            mirrors: r.packages.mirrors.clone(),
            components: r.packages.components.clone(),
            variant: r.packages.variant.get_ref().clone(),
            include: r.packages.include.clone(),
        },
        overlays,
        usr_filesystem,
        usr_compression,
        board: Board {
            name: board_name.clone(),
            arch: b.arch.clone(),
            debian_arch: b.debian_arch.clone(),
            firmware,
            grub: b.grub.clone(),
            qemu: b.qemu.clone(),
        },
        kernel: Kernel {
            build: kernel_build,
            source: b.kernel.source,
            package: r.kernel.package.clone().unwrap_or(b.kernel.package.clone()),
            cmdline,
            initramfs_modules,
            board_initramfs_modules,
        },
        layout,
        oem: Oem {
            id: oem_id,
            tree: oem_tree,
        },
        source_date_epoch,
        tree_hashes,
    })
}

/// The recipe's kernel source and fragments, checked: the source exists (a directory must look
/// like a kernel tree; a tarball is checked when it is unpacked), every fragment exists, and
/// fragments come only with a source.
fn kernel_build(
    k: &recipe::KernelOverride,
    recipe_dir: &Path,
    src: &SourceFile,
) -> Result<Option<KernelBuild>> {
    let source = match &k.source {
        Some(s) if s.get_ref() != "debian" => s,
        _ => {
            if let Some(f) = k.config.first() {
                return Err(src.error_at(
                    &f.span(),
                    "kernel config fragments need a kernel source to build: set \
                     kernel.source to a kernel tree or tarball (for Debian's, install \
                     linux-source-6.1: /usr/src/linux-source-6.1.tar.xz)",
                ));
            }
            return Ok(None);
        }
    };
    let path = recipe_dir.join(source.get_ref());
    if path.is_dir() {
        if let Err(m) = check_kernel_tree(&path) {
            return Err(src.error_at(&source.span(), m));
        }
    } else if !path.is_file() {
        return Err(src.error_at(
            &source.span(),
            format!(
                "kernel source {} does not exist; give a kernel tree or a .tar, .tar.gz or \
                 .tar.xz tarball, or \"debian\" for the board's kernel package",
                path.display()
            ),
        ));
    }
    if k.config.is_empty() {
        return Err(src.error_at(
            &source.span(),
            "a kernel built from source needs its config: list the fragments in kernel.config \
             (for example the files of kernel-config/)",
        ));
    }
    let mut fragments = Vec::new();
    let mut h = Sha256::new();
    for f in &k.config {
        let p = recipe_dir.join(f.get_ref());
        let bytes = std::fs::read(&p).map_err(|e| {
            src.error_at(
                &f.span(),
                format!("cannot read kernel config fragment {}: {e}", p.display()),
            )
        })?;
        h.update(f.get_ref().as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
        fragments.push(p);
    }
    Ok(Some(KernelBuild {
        source: path,
        fragments,
        fragments_hash: hex::encode(h.finalize()),
        base: k.config_base.unwrap_or_default(),
    }))
}

/// A directory is a kernel tree if it has the top-level Makefile (with its VERSION line),
/// Kconfig and arch/.
pub fn check_kernel_tree(dir: &Path) -> std::result::Result<(), String> {
    let makefile = std::fs::read_to_string(dir.join("Makefile")).unwrap_or_default();
    let ok = makefile.lines().any(|l| l.starts_with("VERSION ="))
        && makefile.lines().any(|l| l.starts_with("PATCHLEVEL ="))
        && dir.join("Kconfig").is_file()
        && dir.join("arch").is_dir();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a kernel source tree (no top-level Makefile with VERSION and \
             PATCHLEVEL, Kconfig and arch/)",
            dir.display()
        ))
    }
}

fn unknown_platform(name: &str, known: &[String]) -> String {
    format!(
        "unknown platform `{name}`; known platforms: {}",
        if known.is_empty() {
            "(none)".to_string()
        } else {
            known.join(", ")
        }
    )
}

fn load_platform(
    board_dir: &Path,
    name: &str,
    layout_path: &Path,
    board_firmware: &[Firmware],
    cmdline: &[String],
    modules: &[String],
) -> Result<platform::Platform> {
    let path = board_dir
        .join(PLATFORM_DIR_NAME)
        .join(format!("{name}.toml"));
    let src = SourceFile::read(&path)?;
    let f: platform::PlatformFile = src.parse()?;
    if f.name.get_ref() != name {
        return Err(src.error_at(
            &f.name.span(),
            format!(
                "platform name `{}` does not match its file name `{name}.toml`",
                f.name.get_ref()
            ),
        ));
    }
    check_name(f.oem_id.get_ref()).map_err(|m| src.error_at(&f.oem_id.span(), m))?;
    let tree = board_dir.join(f.oem_tree.get_ref());
    if !tree.is_dir() {
        return Err(src.error_at(
            &f.oem_tree.span(),
            format!("OEM tree {} does not exist", tree.display()),
        ));
    }
    tree::check_symlinks_inside(&tree).map_err(|e| src.error_at(&f.oem_tree.span(), e))?;
    let layout = load_layout(layout_path, &f.layout_variant, &src)?;
    check_layout_for_firmware(&layout, &[f.boot.firmware], layout_path)?;
    if !board_firmware.contains(&f.boot.firmware) {
        bail!(
            "{}: boot.firmware {} is not one the board supports",
            path.display(),
            f.boot.firmware.as_str()
        );
    }
    let mut all_cmdline = cmdline.to_vec();
    for arg in &f.cmdline {
        check_kernel_arg(arg).map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))?;
        all_cmdline.push(arg.clone());
    }
    let mut all_modules = modules.to_vec();
    all_modules.extend(f.initramfs_modules.iter().cloned());
    let a = &f.artifact;
    if let (Some(size), Some(mult)) = (&a.disk_size, a.size_multiple) {
        if mult.0 == 0 || size.get_ref().0 % mult.0 != 0 {
            return Err(src.error_at(
                &size.span(),
                format!(
                    "disk-size {} is not a multiple of size-multiple {}",
                    size.get_ref(),
                    mult
                ),
            ));
        }
    }
    if a.extension.is_empty() || a.extension.starts_with('.') || a.extension.contains('/') {
        bail!(
            "{}: artifact.extension `{}` must be like \"qcow2\" or \"tar.gz\"",
            path.display(),
            a.extension
        );
    }
    let kernel_requirements = match &f.kernel_requirements {
        Some(k) => {
            let p = board_dir.join(k.get_ref());
            if !p.is_file() {
                return Err(src.error_at(
                    &k.span(),
                    format!("kernel requirement list {} does not exist", p.display()),
                ));
            }
            Some(p)
        }
        None => None,
    };
    Ok(platform::Platform {
        kernel_requirements,
        name: name.to_string(),
        description: f.description.clone().unwrap_or_default(),
        oem_tree_hash: tree::hash_tree(&tree)?,
        oem: Oem {
            id: f.oem_id.get_ref().clone(),
            tree,
        },
        layout,
        cmdline: all_cmdline,
        initramfs_modules: all_modules,
        artifact: f.artifact.clone(),
        boot: f.boot.clone(),
    })
}

/// One kernel command-line argument, as grub.cfg will carry it.
fn check_kernel_arg(arg: &str) -> std::result::Result<(), String> {
    if arg.is_empty()
        || arg
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"\\;".contains(c))
    {
        return Err(format!(
            "kernel argument {arg:?} must be one argument without spaces, quotes, backslashes or semicolons"
        ));
    }
    Ok(())
}

/// Free text that ends up quoted in generated files (os-release, grub.cfg).
fn check_text(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_control() || "'\"\\$`".contains(c)) {
        return Err(format!(
            "`{s}` must be 1-64 characters without quotes, backslashes, $, ` or control characters"
        ));
    }
    Ok(())
}

/// Names used in file names and identifiers: lower-case letters, digits, `-`, `_`, `.`.
fn check_name(s: &str) -> std::result::Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name: use 1-64 lower-case letters, digits, '-', '_' or '.'"
        ))
    }
}

fn load_layout(
    path: &Path,
    variant: &toml::Spanned<String>,
    variant_src: &SourceFile,
) -> Result<Layout> {
    let src = SourceFile::read(path)?;
    let f: layout::LayoutFile = src.parse()?;
    let v = f.variants.get(variant.get_ref()).ok_or_else(|| {
        variant_src.error_at(
            &variant.span(),
            format!(
                "unknown layout variant `{}`; {} defines: {}",
                variant.get_ref(),
                path.display(),
                f.variants.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if f.alignment.0 == 0 || !f.alignment.0.is_multiple_of(512) {
        bail!(
            "{}: alignment must be a non-zero multiple of 512 bytes",
            path.display()
        );
    }
    let mut numbers = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut parts = Vec::new();
    for p in &f.partitions {
        let n = *p.number.get_ref();
        if !(1..=128).contains(&n) {
            return Err(src.error_at(&p.number.span(), "partition number must be 1..=128"));
        }
        if !numbers.insert(n) {
            return Err(src.error_at(
                &p.number.span(),
                format!("partition number {n} is used twice"),
            ));
        }
        let label = p.label.get_ref();
        if label.is_empty()
            || label.len() > 36
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(src.error_at(
                &p.label.span(),
                "a label has 1 to 36 ASCII letters, digits, '-' or '_' (it names the partition and its filesystem)",
            ));
        }
        let fs_limit = match p.filesystem {
            Some(Filesystem::Vfat) => Some(11),
            Some(Filesystem::Ext4) => Some(16),
            _ => None,
        };
        if let Some(max) = fs_limit.filter(|m| label.len() > *m) {
            return Err(src.error_at(
                &p.label.span(),
                format!(
                    "label `{label}` is longer than a {} filesystem label ({max} characters)",
                    p.filesystem.map(|f| f.as_str()).unwrap_or("")
                ),
            ));
        }
        if !labels.insert(label.clone()) {
            return Err(src.error_at(&p.label.span(), format!("label `{label}` is used twice")));
        }
        let type_guid = *f.types.get(p.type_name.get_ref()).ok_or_else(|| {
            src.error_at(
                &p.type_name.span(),
                format!(
                    "unknown partition type `{}`; [types] defines: {}",
                    p.type_name.get_ref(),
                    f.types.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if p.priority > 15 || p.tries > 15 {
            return Err(src.error_at(
                &p.number.span(),
                "priority and tries are 4-bit values (0..=15)",
            ));
        }
        let size = v.sizes.get(label).map(|s| *s.get_ref()).unwrap_or(p.size);
        if size.0 == 0 {
            return Err(src.error_at(
                &p.label.span(),
                "a partition cannot have size 0; leave the number out instead",
            ));
        }
        parts.push(Partition {
            number: n,
            label: label.clone(),
            type_name: p.type_name.get_ref().clone(),
            type_guid,
            uuid: p.uuid,
            size,
            content: p.content,
            filesystem: p.filesystem,
            slot: p.slot,
            priority: p.priority,
            tries: p.tries,
            successful: p.successful,
        });
    }
    for (label, size) in &v.sizes {
        if !labels.contains(label) {
            return Err(src.error_at(
                &size.span(),
                format!("variant resizes `{label}`, which is not a partition label"),
            ));
        }
    }
    parts.sort_by_key(|p| p.number);

    // Roles the build relies on.
    let mut roles: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &parts {
        let role = match (p.content, p.slot) {
            (_, Some(SlotName::A)) => "slot a",
            (_, Some(SlotName::B)) => "slot b",
            (Content::Usr, None) => "usr without slot",
            (Content::Esp, _) => "esp",
            (Content::BiosBoot, _) => "bios-boot",
            (Content::Oem, _) => "oem",
            (Content::Root, _) => "root",
            (Content::Empty, _) => continue,
        };
        *roles.entry(role).or_default() += 1;
    }
    if roles.contains_key("usr without slot") {
        bail!(
            "{}: a partition with content = \"usr\" needs slot = \"a\"",
            path.display()
        );
    }
    for role in ["slot a", "slot b", "root", "oem"] {
        match roles.get(role).copied().unwrap_or(0) {
            1 => {}
            0 => bail!("{}: the layout needs one {role} partition", path.display()),
            _ => bail!(
                "{}: the layout has more than one {role} partition",
                path.display()
            ),
        }
    }
    for role in ["esp", "bios-boot"] {
        if roles.get(role).copied().unwrap_or(0) > 1 {
            bail!(
                "{}: the layout has more than one {role} partition",
                path.display()
            );
        }
    }
    let a = parts
        .iter()
        .find(|p| p.slot == Some(SlotName::A))
        .expect("counted");
    let b = parts
        .iter()
        .find(|p| p.slot == Some(SlotName::B))
        .expect("counted");
    if a.content != Content::Usr
        || b.content != Content::Empty
        || a.uuid.is_none()
        || b.uuid.is_none()
    {
        bail!(
            "{}: slot a must have content = \"usr\", slot b content = \"empty\", both a fixed uuid",
            path.display()
        );
    }
    for p in &parts {
        let needs_fs = matches!(p.content, Content::Esp | Content::Oem | Content::Root);
        if needs_fs && p.filesystem.is_none() {
            bail!(
                "{}: partition {} needs a `filesystem`",
                path.display(),
                p.label
            );
        }
    }

    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("layout")
        .to_string();
    Ok(Layout {
        name,
        variant: variant.get_ref().clone(),
        alignment: f.alignment.0,
        partitions: parts,
    })
}

fn check_layout_for_firmware(layout: &Layout, firmware: &[Firmware], path: &Path) -> Result<()> {
    if layout.by_content(Content::Esp).is_none() {
        bail!(
            "{}: the layout needs an esp partition (kernels live there)",
            path.display()
        );
    }
    if firmware.contains(&Firmware::Bios) && layout.by_content(Content::BiosBoot).is_none() {
        bail!(
            "{}: BIOS firmware needs a bios-boot partition in the layout",
            path.display()
        );
    }
    Ok(())
}
