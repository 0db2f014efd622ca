//! kiln's data model. A recipe names a board profile; the board names a disk layout and an
//! OEM tree; every platform file of the board says what its image and artifact add. [`load`]
//! reads them all, checks every reference and every file they point at, and returns one
//! [`Resolved`] value that the build consumes. Errors point at `file:line:column`.
//!
//! One module per concern: [`recipe`], [`board`], [`layout`], [`platform`], [`kernel`] and
//! [`version`] each read and resolve their part; [`identity`] defines what identifies an image.

pub mod board;
pub mod identity;
pub mod kernel;
pub mod layout;
mod names;
pub mod platform;
pub mod recipe;
pub mod source;
pub mod tree;
pub mod units;
pub mod version;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub use board::{Board, Firmware, BOARD_DIR_NAME};
pub use kernel::{check_tree as check_kernel_tree, Kernel, KernelBuild};
pub use kiln_disk::Slot;
pub use layout::{Content, Filesystem, Layout, Partition};
pub use platform::{Platform, PLATFORM_DIR_NAME};
pub use source::SourceFile;
pub use units::ByteSize;

use names::{check_name, check_text};

/// SOURCE_DATE_EPOCH when neither the environment nor the recipe sets one: 1980-01-01, the
/// earliest timestamp every filesystem in the image (FAT included) can store.
pub const DEFAULT_EPOCH: i64 = 315_532_800;

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
    /// The environment's SOURCE_DATE_EPOCH, which wins over the recipe's (the caller reads
    /// the environment; this crate does not).
    pub source_date_epoch: Option<String>,
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

/// The known board names in a board-profiles directory, for error messages.
pub fn known_boards(board_dir: &Path) -> Vec<String> {
    board::known_names(board_dir)
}

/// The known platform names, for error messages and `--platform all`.
pub fn known_platforms(board_dir: &Path) -> Vec<String> {
    board::known_names(&board_dir.join(PLATFORM_DIR_NAME))
}

/// A recipe with its board, layout, platforms and trees resolved and checked.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub recipe_path: PathBuf,
    pub board_dir: PathBuf,
    pub os: Os,
    pub packages: Packages,
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
    pub platforms: Vec<Platform>,
    identity: String,
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

#[derive(Debug, Clone)]
pub struct Oem {
    pub id: String,
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
    /// lives ([`identity`]). Seeds every identifier that would otherwise be random.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn has_firmware(&self, f: Firmware) -> bool {
        self.board.firmware.contains(&f)
    }
}

/// The mmdebstrap variants a recipe may name.
const VARIANTS: &[&str] = &[
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

/// Read and check a recipe, its board profile, layout, overlays, OEM tree and platforms.
pub fn load(recipe_path: &Path, opts: &LoadOptions) -> Result<Resolved> {
    let src = SourceFile::read(recipe_path)?;
    let r: recipe::RecipeFile = src.parse()?;
    let recipe_dir = recipe_path.parent().unwrap_or(Path::new("."));

    let name = recipe::name(&r, recipe_path, &src)?;
    check_name(r.os.id.get_ref()).map_err(|m| src.error_at(&r.os.id.span(), m))?;
    check_text(r.os.name.get_ref())
        .map_err(|m| src.error_at(&r.os.name.span(), format!("os.name: {m}")))?;
    let channel = opts
        .channel
        .clone()
        .unwrap_or_else(|| if opts.release { "alpha" } else { "developer" }.to_string());
    check_name(&channel).map_err(|m| anyhow::anyhow!("channel `{channel}`: {m}"))?;

    let board_dir = match &opts.board_dir {
        Some(d) => d.clone(),
        None => board::find_dir(recipe_path).ok_or_else(|| {
            anyhow::anyhow!(
                "no `{BOARD_DIR_NAME}/` directory found above {}; pass --board-dir",
                recipe_path.display()
            )
        })?,
    };
    let b = board::load(&board_dir, &r.board, &src)?;

    // Layout, with the recipe's variant if it names one.
    let layout_path = board_dir.join(b.file.layout.file.get_ref());
    if !layout_path.is_file() {
        return Err(b.src.error_at(
            &b.file.layout.file.span(),
            format!("layout file {} does not exist", layout_path.display()),
        ));
    }
    let layout = match &r.layout.variant {
        Some(v) => layout::load(&layout_path, v, &src)?,
        None => layout::load(&layout_path, &b.file.layout.variant, &b.src)?,
    };
    layout::check_for_firmware(&layout, &b.board.firmware, &layout_path)?;

    let (usr_filesystem, usr_compression) = recipe::usr_filesystem(&r, &layout, recipe_path, &src)?;

    if !VARIANTS.contains(&r.packages.variant.get_ref().as_str()) {
        return Err(src.error_at(
            &r.packages.variant.span(),
            format!(
                "unknown mmdebstrap variant `{}`; use one of {}",
                r.packages.variant.get_ref(),
                VARIANTS.join(", ")
            ),
        ));
    }
    check_name(&r.packages.suite)
        .map_err(|m| anyhow::anyhow!("{}: packages.suite: {m}", recipe_path.display()))?;
    if r.packages.mirrors.is_empty() {
        bail!(
            "{}: packages.mirrors must name at least one mirror",
            recipe_path.display()
        );
    }
    for m in &r.packages.mirrors {
        names::check_mirror(m.get_ref())
            .map_err(|e| src.error_at(&m.span(), format!("packages.mirrors: {e}")))?;
    }

    let mut kernel = kernel::resolve(&b.file, &b.src, &r.kernel, recipe_dir, &src)?;

    let (overlays, mut tree_hashes) = overlays(&r, recipe_dir, &src)?;
    let oem = oem(&r, &b, &board_dir, recipe_dir, &src)?;
    tree_hashes.push(tree::hash_tree(&oem.tree)?);

    let source_date_epoch = source_date_epoch(&r, opts)?;
    let version = version::resolve(&r, &src, source_date_epoch, opts.release)?;

    // Every platform of the board is read (and so checked), whichever are selected: the
    // board's one initramfs carries the modules of all of them, so the board image and the
    // update payload do not depend on the selection. Their modules go into the recipe's
    // identity, and that into each platform's: the files are read for their modules first.
    let known = known_platforms(&board_dir);
    let selected = select_platforms(&r, opts, &known, &src)?;
    for pname in &known {
        let path = board_dir
            .join(PLATFORM_DIR_NAME)
            .join(format!("{pname}.toml"));
        let f: platform::PlatformFile = SourceFile::read(&path)?.parse()?;
        for m in &f.initramfs_modules {
            // First mention wins: the order is the load order of unrelated drivers.
            if !kernel.board_initramfs_modules.contains(m) {
                kernel.board_initramfs_modules.push(m.clone());
            }
        }
    }

    let mut resolved = Resolved {
        platforms: Vec::new(),
        name,
        recipe_path: recipe_path.to_path_buf(),
        board_dir: board_dir.clone(),
        os: Os {
            name: r.os.name.get_ref().clone(),
            id: r.os.id.get_ref().clone(),
            version_id: version.split('+').next().unwrap_or(&version).to_string(),
            version,
            channel,
        },
        packages: Packages {
            suite: r.packages.suite.clone(),
            mirrors: r
                .packages
                .mirrors
                .iter()
                .map(|m| m.get_ref().clone())
                .collect(),
            components: r.packages.components.clone(),
            variant: r.packages.variant.get_ref().clone(),
            include: r.packages.include.clone(),
        },
        overlays,
        usr_filesystem,
        usr_compression,
        board: b.board,
        kernel,
        layout,
        oem,
        source_date_epoch,
        tree_hashes,
        identity: String::new(),
    };
    resolved.identity = identity::recipe(&resolved);

    let cx = platform::Context {
        board_dir: &board_dir,
        layout_path: &layout_path,
        board_firmware: &resolved.board.firmware,
        cmdline: &resolved.kernel.cmdline,
        initramfs_modules: &resolved.kernel.initramfs_modules,
        recipe_identity: &resolved.identity,
    };
    let all = known
        .iter()
        .map(|n| platform::load(n, &cx))
        .collect::<Result<Vec<_>>>()?;
    resolved.platforms = selected
        .iter()
        .filter_map(|n| all.iter().find(|p| &p.name == n).cloned())
        .collect();
    Ok(resolved)
}

/// The overlays, checked (they exist, their symlinks stay inside) and hashed.
fn overlays(
    r: &recipe::RecipeFile,
    recipe_dir: &Path,
    src: &SourceFile,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let mut overlays = Vec::new();
    let mut hashes = Vec::new();
    for o in &r.rootfs.overlays {
        let p = recipe_dir.join(o.get_ref());
        if !p.is_dir() {
            return Err(src.error_at(
                &o.span(),
                format!("overlay directory {} does not exist", p.display()),
            ));
        }
        tree::check_symlinks_inside(&p).map_err(|e| src.error_at(&o.span(), e))?;
        hashes.push(tree::hash_tree(&p)?);
        overlays.push(p);
    }
    Ok((overlays, hashes))
}

/// The OEM id and tree: the recipe's if it names them, else the board's.
fn oem(
    r: &recipe::RecipeFile,
    b: &board::Loaded,
    board_dir: &Path,
    recipe_dir: &Path,
    src: &SourceFile,
) -> Result<Oem> {
    let (tree, span, in_src) = match &r.oem.tree {
        Some(t) => (recipe_dir.join(t.get_ref()), t.span(), src),
        None => (
            board_dir.join(b.file.oem.tree.get_ref()),
            b.file.oem.tree.span(),
            &b.src,
        ),
    };
    if !tree.is_dir() {
        return Err(in_src.error_at(&span, format!("OEM tree {} does not exist", tree.display())));
    }
    tree::check_symlinks_inside(&tree).map_err(|e| in_src.error_at(&span, e))?;
    let id = r.oem.id.clone().unwrap_or(b.file.oem.id.clone());
    check_name(&id).map_err(|m| anyhow::anyhow!("{}: oem id: {m}", src.path.display()))?;
    Ok(Oem { id, tree })
}

/// SOURCE_DATE_EPOCH: the environment's (given by the caller), else the recipe's, else
/// 1980-01-01.
fn source_date_epoch(r: &recipe::RecipeFile, opts: &LoadOptions) -> Result<i64> {
    let epoch = match &opts.source_date_epoch {
        Some(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"))?,
        None => r.source_date_epoch.unwrap_or(DEFAULT_EPOCH),
    };
    if !(DEFAULT_EPOCH..=u32::MAX as i64).contains(&epoch) {
        bail!("source-date-epoch {epoch} is out of range: use {DEFAULT_EPOCH} (1980-01-01, FAT's first day) to {}", u32::MAX);
    }
    Ok(epoch)
}

/// The platforms to build: the recipe's list (each must exist), or the caller's selection;
/// each once, in order.
fn select_platforms(
    r: &recipe::RecipeFile,
    opts: &LoadOptions,
    known: &[String],
    src: &SourceFile,
) -> Result<Vec<String>> {
    for p in &r.platforms {
        if !known.contains(p.get_ref()) {
            return Err(src.error_at(&p.span(), unknown_platform(p.get_ref(), known)));
        }
    }
    let names: Vec<String> = match &opts.platforms {
        None => r.platforms.iter().map(|p| p.get_ref().clone()).collect(),
        Some(PlatformSelection::All) => known.to_vec(),
        Some(PlatformSelection::Names(n)) => {
            for name in n {
                if !known.contains(name) {
                    bail!("{}", unknown_platform(name, known));
                }
            }
            n.clone()
        }
    };
    let mut unique: Vec<String> = Vec::new();
    for n in names {
        if !unique.contains(&n) {
            unique.push(n);
        }
    }
    Ok(unique)
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
