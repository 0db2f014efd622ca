//! The build: stages wired together, run in parallel where they are independent.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln_boot::{grub, initramfs, kernel};
use kiln_disk::{Attributes, PartitionSpec, Slot};
use kiln_fs::{erofs::Erofs, ext4::Ext4, stage as st, vfat::Vfat};
use kiln_host::hash::sha256_file;
use kiln_host::tools::{self, Tool};
use kiln_recipe::{Content, Filesystem, Firmware, Partition, Resolved, SlotName};
use serde::Serialize;

use crate::cache::CacheDirs;
use crate::ids;
use crate::key::Key;
use crate::packages::Bootstrap;
use crate::report::StageReport;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub cache: CacheDirs,
    pub output_dir: PathBuf,
    /// The static kiln-agent binary installed into the image and the initramfs.
    pub agent: PathBuf,
    /// Ignore cached stages (downloaded packages are still reused).
    pub rebuild: bool,
    /// Also keep each platform's raw disk as `<recipe>_<platform>_image.raw`.
    pub keep_raw: bool,
    /// Signs the update payload; its public half is installed in the image. Without one,
    /// no payload is made and the image trusts no update.
    pub signing: Option<Signing>,
}

#[derive(Clone)]
pub struct Signing {
    pub key: kiln_update::SigningKey,
    /// A generated development key: said so in the build's output.
    pub insecure: bool,
}

impl std::fmt::Debug for Signing {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signing {{ key_id: {}, insecure: {} }}",
            kiln_update::keys::key_id(&self.key.verifying_key()),
            self.insecure
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildOutput {
    /// The board image (raw), `<recipe>_image.bin`.
    pub image: PathBuf,
    /// Every platform artifact, sidecar and DIGESTS file.
    pub artifacts: Vec<PathBuf>,
    pub image_size: u64,
    /// The signed update payload, `<recipe>_update.payload`, when a key was given.
    pub payload: Option<PathBuf>,
    pub kernel_version: String,
    /// SHA-256 of the kernel's config, when it has one.
    pub kernel_config_sha256: Option<String>,
    /// The recipe hash (Resolved::identity) the image carries.
    pub recipe_hash: String,
    /// What dpkg installed in the image.
    pub packages: Vec<crate::packages::InstalledPackage>,
    /// Versions of kiln and of the host tools that shaped the image.
    pub tools: std::collections::BTreeMap<String, String>,
    pub stages: Vec<StageReport>,
    pub seconds: f64,
}

/// Host tools every build needs, checked before any work starts.
fn required_tools(r: &Resolved) -> Vec<Tool> {
    let mut t = vec![
        tools::MMDEBSTRAP,
        tools::MKE2FS,
        tools::DEBUGFS,
        tools::MKFS_VFAT,
        tools::MCOPY,
        tools::MMD,
        tools::GRUB_MKIMAGE,
        tools::DEPMOD,
    ];
    if !r.platforms.is_empty() {
        t.extend([tools::QEMU_IMG, tools::TAR, tools::PIGZ]);
    }
    if r.usr_filesystem == Filesystem::Erofs {
        t.push(tools::MKFS_EROFS);
    }
    if r.has_firmware(Firmware::Bios) {
        t.push(tools::GRUB_BIOS_BOOT_IMG);
    }
    if r.has_firmware(Firmware::Uefi) {
        t.push(tools::GRUB_EFI_LINUX_MOD);
    }
    if r.kernel.build.is_some() {
        t.extend(kiln_boot::kbuild::TOOLS);
    }
    t
}

/// Versions of the host tools that shape each stage's output; part of the stage keys.
struct ToolVersions {
    mmdebstrap: String,
    e2fsprogs: String,
    erofs: String,
    vfat: String,
    grub: String,
    kmod: String,
}

impl ToolVersions {
    fn as_map(&self) -> std::collections::BTreeMap<String, String> {
        [
            ("kiln", env!("CARGO_PKG_VERSION").to_string()),
            ("mmdebstrap", self.mmdebstrap.clone()),
            ("e2fsprogs", self.e2fsprogs.clone()),
            ("erofs-utils", self.erofs.clone()),
            ("dosfstools mtools", self.vfat.clone()),
            ("grub", self.grub.clone()),
            ("kmod", self.kmod.clone()),
            ("qemu-utils", tools::package_version("qemu-utils")),
            ("xz-utils", tools::package_version("xz-utils")),
            ("pigz", tools::package_version("pigz")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn probe() -> Self {
        Self {
            mmdebstrap: tools::package_version("mmdebstrap"),
            e2fsprogs: tools::package_version("e2fsprogs"),
            erofs: tools::package_version("erofs-utils"),
            vfat: format!(
                "{} {}",
                tools::package_version("dosfstools"),
                tools::package_version("mtools")
            ),
            grub: format!(
                "{} {} {}",
                tools::package_version("grub-common"),
                tools::package_version("grub-pc-bin"),
                tools::package_version("grub-efi-amd64-bin")
            ),
            kmod: tools::package_version("kmod"),
        }
    }
}

/// The built pieces of the boot path a stage produced.
struct KernelStage {
    dir: PathBuf,
    version: String,
}

impl KernelStage {
    fn tree(&self) -> kernel::KernelTree {
        kernel::KernelTree {
            version: self.version.clone(),
            vmlinuz: self.dir.join("vmlinuz"),
            config: self.dir.join("config"),
            modules: self.dir.join("modules/lib/modules").join(&self.version),
        }
    }
}

/// One disk image the build writes: the board image, or a platform's.
struct Variant<'a> {
    /// "board" or the platform name.
    name: String,
    /// Seeds the disk GUID, the OEM and ESP identifiers.
    identity: String,
    oem_id: &'a str,
    oem_tree: &'a Path,
    /// Content hash of the OEM tree, computed when the recipe was loaded.
    oem_tree_hash: &'a str,
    layout: &'a kiln_recipe::Layout,
    cmdline: Vec<String>,
    platform: Option<&'a kiln_recipe::platform::Platform>,
}

/// Shared stage results every variant builds on.
struct Shared<'a> {
    r: &'a Resolved,
    opts: &'a BuildOptions,
    versions: &'a ToolVersions,
    identity: &'a str,
    kernel_key: &'a str,
    kst: &'a KernelStage,
    grub_key: &'a str,
    grub_dir: &'a Path,
    usr_image: &'a Path,
    initrd: &'a Path,
    initramfs_key: &'a str,
    tree_key: &'a str,
    root_tree: &'a Path,
}

pub fn build(r: &Resolved, opts: &BuildOptions) -> Result<BuildOutput> {
    let started = Instant::now();
    // mmdebstrap's root mode keeps file ownership as the packages say; run kiln as root (in a
    // container, root of its user namespace is enough: nothing is mounted).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kiln build must run as root (root in a user namespace is enough): the package tree keeps the owners the packages set");
    }
    tools::check_all(&required_tools(r))?;
    initramfs::check_static(&opts.agent, "kiln-agent")?;
    let cache = &opts.cache;
    let _lock = cache.lock()?;
    let versions = ToolVersions::probe();
    let identity = r.identity();
    let epoch = r.source_date_epoch;
    let arch = &r.board.debian_arch;
    let debs = cache.debs(&r.packages.suite, arch)?;
    let agent_hash = sha256_file(&opts.agent)?;
    let mut reports = Vec::new();

    // The board image and each platform's: what differs between them.
    let board_cmdline = r.kernel.cmdline.clone();
    let mut variants = vec![Variant {
        name: "board".into(),
        identity: identity.clone(),
        oem_id: &r.oem.id,
        oem_tree: &r.oem.tree,
        oem_tree_hash: r.tree_hashes.last().expect("the OEM tree is hashed last"),
        layout: &r.layout,
        cmdline: board_cmdline,
        platform: None,
    }];
    for p in &r.platforms {
        variants.push(Variant {
            name: p.name.clone(),
            identity: r.platform_identity(p),
            oem_id: &p.oem.id,
            oem_tree: &p.oem.tree,
            oem_tree_hash: &p.oem_tree_hash,
            layout: &p.layout,
            cmdline: p.cmdline.clone(),
            platform: Some(p),
        });
    }
    // Plans first: a layout or size a format cannot take fails before any work.
    let plans = variants
        .iter()
        .map(|v| plan_disk(v, r))
        .collect::<Result<Vec<_>>>()?;

    let packages_json = serde_json::to_string(&r.packages)?;
    let packages_key = Key::new("packages")
        .add("packages", &packages_json)
        .add("arch", arch)
        .add("epoch", epoch.to_string())
        .add("mmdebstrap", &versions.mmdebstrap)
        .finish();
    // A kernel from source is keyed by the source, the fragments and the toolchain: an
    // unchanged one is never rebuilt.
    // The source's hash is computed once: it reads the whole tarball.
    let source_hash = match &r.kernel.build {
        Some(b) => Some(kiln_boot::kbuild::source_hash(&b.source)?),
        None => None,
    };
    let source_key = match (&r.kernel.build, &source_hash) {
        (Some(b), Some(hash)) => {
            kiln_boot::kbuild::check_arch(&r.board.arch)?;
            Some(format!(
                "{hash}\n{}\n{:?}\n{}",
                b.fragments_hash,
                b.base,
                kiln_boot::kbuild::toolchain()?
            ))
        }
        _ => None,
    };
    let kernel_key = Key::new("kernel")
        .add("source", source_key.as_deref().unwrap_or("debian"))
        .add("package", &r.kernel.package)
        .add("suite", &r.packages.suite)
        .add("mirrors", r.packages.mirrors.join(" "))
        .add("components", r.packages.components.join(" "))
        .add("arch", arch)
        .add("epoch", epoch.to_string())
        .add("mmdebstrap", &versions.mmdebstrap)
        .add("kmod", &versions.kmod)
        .finish();

    // Packages and the kernel are independent downloads: fetch them side by side.
    let (packages, kernel_stage) = std::thread::scope(|s| {
        let k = s.spawn(|| {
            cache.stage("kernel", &kernel_key, opts.rebuild, |out| {
                match &r.kernel.build {
                    Some(b) => kernel_source_stage(
                        r,
                        b,
                        source_hash.as_deref().expect("hashed with the key"),
                        cache,
                        &kernel_key,
                        &debs,
                        out,
                    ),
                    None => kernel_stage(r, &debs, epoch, out),
                }
            })
        });
        let p = cache.stage("packages", &packages_key, opts.rebuild, |out| {
            let root = out.join("root");
            Bootstrap {
                packages: &r.packages,
                variant: &r.packages.variant,
                include: &r.packages.include,
                arch,
                epoch,
                deb_cache: &debs,
            }
            .run(&root, &out.join("mmdebstrap.log"))?;
            st::normalize_times(&root, epoch)
        });
        (p, k.join().expect("kernel stage thread"))
    });
    let (packages_dir, rep) = packages?;
    reports.push(rep);
    let (kernel_dir, rep) = kernel_stage?;
    reports.push(rep);
    let kver = std::fs::read_to_string(kernel_dir.join("version"))?
        .trim()
        .to_string();
    let kst = KernelStage {
        dir: kernel_dir,
        version: kver.clone(),
    };
    if r.kernel.build.is_some() {
        tracing::info!(
            "kernel {kver} built from source; migration report: {}",
            kst.dir.join("migration-report.txt").display()
        );
    }
    // Before any image is written: the kernel has what every platform built needs.
    check_kernel(r, &kst.dir.join("config"))?;

    let usr_part = r.layout.slot(SlotName::A).expect("layout checked");
    let esp_number = r
        .layout
        .by_content(Content::Esp)
        .expect("layout checked")
        .number;
    let update_key_pem = opts
        .signing
        .as_ref()
        .map(|s| kiln_update::keys::public_pem(&s.key.verifying_key()));
    let tree_key = Key::new("tree")
        .add("packages", &packages_key)
        .add("kernel", &kernel_key)
        .add("agent", &agent_hash)
        .add("identity", &identity)
        .add("update-key", update_key_pem.as_deref().unwrap_or("none"))
        .finish();
    let usr_key = Key::new("usr")
        .add("tree", &tree_key)
        .add("fs", r.usr_filesystem.as_str())
        .add("compression", &r.usr_compression)
        .add("size", usr_part.size.0.to_string())
        .add(
            "tools",
            format!("{} {}", versions.erofs, versions.e2fsprogs),
        )
        .finish();
    let grub_key = Key::new("grub")
        .add("board", serde_json::to_string(&r.board.grub)?)
        .add("firmware", format!("{:?}", r.board.firmware))
        .add("esp-number", esp_number.to_string())
        .add("tools", &versions.grub)
        .finish();

    // USR and every ROOT share the assembled tree; make it only if one of them is missing.
    let work = cache.work_dir()?;
    let root_missing = variants.iter().any(|v| {
        let size = v.layout.by_content(Content::Root).expect("checked").size.0;
        !cache
            .stage_dir("root", &root_key(&tree_key, size, &versions))
            .is_dir()
    });
    let need_tree = opts.rebuild || root_missing || !cache.stage_dir("usr", &usr_key).is_dir();
    let tree_start = Instant::now();
    let (usr_tree, root_tree) = if need_tree {
        assemble_tree(
            r,
            &packages_dir.join("root"),
            &kst,
            &opts.agent,
            opts.signing.as_ref(),
            work.path(),
        )?
    } else {
        (PathBuf::new(), PathBuf::new())
    };
    reports.push(StageReport {
        stage: "tree".into(),
        cached: !need_tree,
        seconds: tree_start.elapsed().as_secs_f64(),
        tool_peak_rss_kib: 0,
    });

    // One initramfs for the board, with the modules of every platform of the board: a
    // slot's kernel and initramfs travel in the update payload, which serves every platform.
    let modules = &r.kernel.board_initramfs_modules;
    let oem_spec = format!(
        "PARTLABEL={}",
        r.layout
            .by_content(Content::Oem)
            .expect("layout checked")
            .label
    );
    let initramfs_key = Key::new("initramfs")
        .add("kernel", &kernel_key)
        .add("agent", &agent_hash)
        .add("modules", modules.join(" "))
        .add("usr-fs", r.usr_filesystem.as_str())
        .add("oem", &oem_spec)
        .add("init", initramfs::INIT_SCRIPT)
        .add("epoch", epoch.to_string())
        .finish();

    let (usr, grub_imgs, initrd) = std::thread::scope(|s| {
        let g = s.spawn(|| {
            cache.stage("grub", &grub_key, opts.rebuild, |out| {
                grub_stage(r, esp_number, out)
            })
        });
        let i = s.spawn(|| {
            cache.stage("initramfs", &initramfs_key, opts.rebuild, |out| {
                initramfs::build(
                    &initramfs::Inputs {
                        kernel: &kst.tree(),
                        busybox: &kst.dir.join("busybox"),
                        agent: &opts.agent,
                        modules,
                        usr_fstype: r.usr_filesystem.as_str(),
                        oem_spec: &oem_spec,
                        epoch,
                    },
                    &out.join("initrd.img"),
                )
                .map(|_| ())
            })
        });
        let u = cache.stage("usr", &usr_key, opts.rebuild, |out| {
            usr_stage(r, usr_part, &identity, &usr_tree, out)
        });
        (
            u,
            g.join().expect("grub thread"),
            i.join().expect("initramfs thread"),
        )
    });
    let (usr_dir, rep) = usr?;
    reports.push(rep);
    let (grub_dir, rep) = grub_imgs?;
    reports.push(rep);
    let (initrd_dir, rep) = initrd?;
    reports.push(rep);

    let shared = Shared {
        r,
        opts,
        versions: &versions,
        identity: &identity,
        kernel_key: &kernel_key,
        kst: &kst,
        grub_key: &grub_key,
        grub_dir: &grub_dir,
        usr_image: &usr_dir.join("fs.img"),
        initrd: &initrd_dir.join("initrd.img"),
        initramfs_key: &initramfs_key,
        tree_key: &tree_key,
        root_tree: &root_tree,
    };
    // Every image in parallel: the board image and each platform's. They are written into a
    // staging directory beside the outputs and moved into place only when all succeeded, so a
    // failed build leaves the output directory as it was.
    std::fs::create_dir_all(&opts.output_dir).with_context(|| {
        format!(
            "cannot create output directory {}",
            opts.output_dir.display()
        )
    })?;
    remove_stale_staging(&opts.output_dir)?;
    let staging = opts
        .output_dir
        .join(format!(".kiln-staging-{}", std::process::id()));
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    // The update payload: this build's USR, kernel and initramfs, signed.
    // Made while the images are written: it needs only USR, the kernel and the initramfs.
    let make_payload = || -> Result<Option<(PathBuf, StageReport)>> {
        Ok(match &opts.signing {
            None => {
                tracing::warn!("no signing key: no update payload is made, and the image trusts no update (give --signing-key FILE, or --dev-key for an insecure development key)");
                None
            }
            Some(sig) => {
                let payload_key = Key::new("payload")
                    .add("usr", &usr_key)
                    .add("kernel", &kernel_key)
                    .add("initramfs", &initramfs_key)
                    .add("os", serde_json::to_string(&r.os)?)
                    .add("board", &r.board.name)
                    .add("epoch", epoch.to_string())
                    .add("key", update_key_pem.as_deref().unwrap_or(""))
                    .add("format", kiln_update::payload::FORMAT_VERSION.to_string())
                    .finish();
                let (dir, rep) = cache.stage("payload", &payload_key, opts.rebuild, |out| {
                    payload_stage(
                        r,
                        sig,
                        &usr_dir.join("fs.img"),
                        &kst,
                        &initrd_dir.join("initrd.img"),
                        &cache.root.join("xz-chunks"),
                        &out.join("update.payload"),
                    )
                })?;
                Some((dir.join("update.payload"), rep))
            }
        })
    };
    let (payload, results) = std::thread::scope(|s| {
        let p = s.spawn(make_payload);
        let handles: Vec<_> = variants
            .iter()
            .zip(&plans)
            .map(|(v, plan)| {
                let shared = &shared;
                let (work, staging) = (work.path(), staging.as_path());
                s.spawn(move || build_variant(shared, v, plan, work, staging))
            })
            .collect();
        let results: Vec<Result<(Vec<StageReport>, Vec<PathBuf>)>> = handles
            .into_iter()
            .map(|h| h.join().expect("image thread"))
            .collect();
        (p.join().expect("payload thread"), results)
    });
    let payload = match payload {
        Ok(p) => p.map(|(path, rep)| {
            reports.push(rep);
            path
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context("update payload"));
        }
    };
    let mut image = PathBuf::new();
    let mut artifacts = Vec::new();
    let mut staged = Vec::new();
    for (v, res) in variants.iter().zip(results) {
        let (reps, files) = match res {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e.context(format!("{} image", v.name)));
            }
        };
        reports.extend(reps);
        for f in files {
            let dest = opts.output_dir.join(f.file_name().expect("file name"));
            if v.platform.is_none() {
                image = dest.clone();
            } else {
                artifacts.push(dest.clone());
            }
            staged.push((f, dest));
        }
    }
    let mut payload_out = None;
    if let Some(p) = &payload {
        let dest = opts.output_dir.join(format!("{}_update.payload", r.name));
        let tmp = staging.join("update.payload");
        std::fs::copy(p, &tmp)
            .with_context(|| format!("cannot copy the payload to {}", tmp.display()))?;
        staged.push((tmp, dest.clone()));
        payload_out = Some(dest);
    }
    for (from, to) in &staged {
        std::fs::rename(from, to)
            .with_context(|| format!("cannot move {} into place", to.display()))?;
    }
    std::fs::remove_dir_all(&staging)?;
    drop(work);

    Ok(BuildOutput {
        image_size: std::fs::metadata(&image)?.len(),
        image,
        artifacts,
        payload: payload_out,
        kernel_config_sha256: kst
            .dir
            .join("config")
            .is_file()
            .then(|| sha256_file(&kst.dir.join("config")))
            .transpose()?,
        recipe_hash: identity.clone(),
        packages: crate::packages::installed_packages(&packages_dir.join("root"))?,
        tools: versions.as_map(),
        kernel_version: kver,
        stages: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Staging directories of builds that were killed (the build lock is held: none is live).
fn remove_stale_staging(out: &Path) -> Result<()> {
    for e in std::fs::read_dir(out)?.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(".kiln-staging-")
        {
            std::fs::remove_dir_all(e.path())
                .with_context(|| format!("cannot remove {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn root_key(tree_key: &str, size: u64, versions: &ToolVersions) -> String {
    Key::new("root")
        .add("tree", tree_key)
        .add("size", size.to_string())
        .add("tools", &versions.e2fsprogs)
        .finish()
}

/// One image: its OEM partition, initramfs, ROOT of its size, ESP, the disk, and for a
/// platform the artifact in its format with its sidecars and digests.
fn build_variant(
    sh: &Shared,
    v: &Variant,
    plan: &kiln_disk::DiskPlan,
    work: &Path,
    staging: &Path,
) -> Result<(Vec<StageReport>, Vec<PathBuf>)> {
    let (r, opts, cache) = (sh.r, sh.opts, &sh.opts.cache);
    let epoch = r.source_date_epoch;
    let mut reports = Vec::new();
    let tag = |stage: &str| {
        if v.platform.is_some() {
            format!("{stage}:{}", v.name)
        } else {
            stage.to_string()
        }
    };
    let oem_part = v.layout.by_content(Content::Oem).expect("layout checked");
    let root_part = v.layout.by_content(Content::Root).expect("layout checked");
    let usr_part = v.layout.slot(SlotName::A).expect("layout checked");
    let esp_part = v.layout.by_content(Content::Esp).expect("layout checked");

    let oem_key = Key::new("oem")
        .add("identity", &v.identity)
        .add("oem", v.oem_id)
        .add("tree", v.oem_tree_hash)
        .add("size", oem_part.size.0.to_string())
        .add("tools", &sh.versions.e2fsprogs)
        .finish();
    let (oem_dir, rep) = cache.stage(&tag("oem"), &oem_key, opts.rebuild, |out| {
        oem_stage(v, oem_part, epoch, out)
    })?;
    reports.push(rep);

    let (root_dir, rep) = cache.stage(
        &tag("root"),
        &root_key(sh.tree_key, root_part.size.0, sh.versions),
        opts.rebuild,
        |out| {
            Ext4 {
                label: &root_part.label,
                uuid: ids::derive(sh.identity, "root-fs"),
                hash_seed: ids::derive(sh.identity, "root-hash-seed"),
                epoch,
                size: root_part.size.0,
                what: &root_part.label,
                origin: "the image's state tree (/etc, /var, /home, ...)",
            }
            .build(sh.root_tree, &out.join("fs.img"))
        },
    )?;
    reports.push(rep);

    // The ESP: GRUB for UEFI, grub.cfg, the slot state, slot A's kernel and initramfs.
    let slots_env = initial_state(r, v)?
        .to_env()
        .context("the initial slot state cannot be written")?;
    let cfg = grub::config(
        &kiln_update::state::grub_script(
            &[SlotName::A, SlotName::B]
                .iter()
                .map(|&s| {
                    Ok(kiln_update::state::GrubEntry {
                        slot: slot_of(s),
                        title: r.os.name.clone(),
                        cmdline: kernel_cmdline(v, s)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        r.board.grub.timeout,
    );
    let esp_key = Key::new("esp")
        .add("kernel", sh.kernel_key)
        .add("initramfs", sh.initramfs_key)
        .add("grub", sh.grub_key)
        .add("state", &slots_env)
        .add("grub.cfg", &cfg)
        .add("identity", &v.identity)
        .add("size", esp_part.size.0.to_string())
        .add("tools", &sh.versions.vfat)
        .finish();
    let (esp_dir, rep) = cache.stage(&tag("esp"), &esp_key, opts.rebuild, |out| {
        std::fs::write(out.join("grub.cfg"), &cfg)?;
        std::fs::write(out.join("slots.env"), &slots_env)?;
        let mut files = vec![
            ("/grub/grub.cfg".to_string(), out.join("grub.cfg")),
            (
                format!("/{}", kiln_update::state::ENV_PATH),
                out.join("slots.env"),
            ),
            (
                format!("/{}", kiln_update::state::kernel_path(Slot::A)),
                sh.kst.dir.join("vmlinuz"),
            ),
            (
                format!("/{}", kiln_update::state::initrd_path(Slot::A)),
                sh.initrd.to_path_buf(),
            ),
        ];
        if let (true, Some(bin)) = (r.has_firmware(Firmware::Uefi), &r.board.grub.efi_binary) {
            files.push((format!("/EFI/BOOT/{bin}"), sh.grub_dir.join("grub.efi")));
        }
        Vfat {
            label: &esp_part.label,
            serial: ids::derive_serial(&v.identity, "esp-serial"),
            epoch,
            size: esp_part.size.0,
            what: &esp_part.label,
        }
        .build(&files, &out.join("fs.img"))
    })?;
    reports.push(rep);

    // The disk: GPT, boot code, partitions at their offsets.
    let disk_start = Instant::now();
    let vwork = work.join(format!("image-{}", v.name));
    std::fs::create_dir_all(&vwork)?;
    let mut contents: Vec<(u32, PathBuf)> = vec![
        (esp_part.number, esp_dir.join("fs.img")),
        (usr_part.number, sh.usr_image.to_path_buf()),
        (root_part.number, root_dir.join("fs.img")),
        (oem_part.number, oem_dir.join("fs.img")),
    ];
    let mut boot_code = None;
    if r.has_firmware(Firmware::Bios) {
        let bb = v
            .layout
            .by_content(Content::BiosBoot)
            .expect("checked for bios");
        let pp = plan.partition(bb.number).expect("planned");
        let lba = pp.offset_bytes / 512;
        let core = grub::patch_core(
            std::fs::read(sh.grub_dir.join("core.img"))?,
            lba,
            pp.size_bytes,
        )?;
        let core_path = vwork.join("core.img");
        std::fs::write(&core_path, core)?;
        contents.push((bb.number, core_path));
        boot_code = Some(grub::bios_boot_code(lba)?);
    }
    let files = match v.platform {
        None => {
            let image = staging.join(format!("{}_image.bin", r.name));
            write_disk(plan, &contents, boot_code.as_deref(), &image)?;
            vec![image]
        }
        Some(p) => {
            let raw = vwork.join("disk.raw");
            write_disk(plan, &contents, boot_code.as_deref(), &raw)?;
            let files = crate::artifact::produce(
                r,
                p,
                &v.identity,
                &raw,
                staging,
                opts.keep_raw,
                &cache.root.join("xz-chunks"),
            )?;
            if !opts.keep_raw {
                std::fs::remove_file(&raw)
                    .with_context(|| format!("cannot remove {}", raw.display()))?;
            }
            files
        }
    };
    reports.push(StageReport {
        stage: tag("disk"),
        cached: false,
        seconds: disk_start.elapsed().as_secs_f64(),
        tool_peak_rss_kib: 0,
    });
    Ok((reports, files))
}

fn slot_of(s: SlotName) -> Slot {
    match s {
        SlotName::A => Slot::A,
        SlotName::B => Slot::B,
    }
}

/// The state a new image starts in: the slots as the layout declares them (by default A
/// priority 1 and successful, B empty), with this build's version in A.
fn initial_state(r: &Resolved, v: &Variant) -> Result<kiln_update::state::SlotState> {
    let fields = |s: SlotName| -> Result<kiln_update::state::SlotFields> {
        let p = v
            .layout
            .slot(s)
            .with_context(|| format!("the layout has no USR-{s:?} slot"))?;
        Ok(kiln_update::state::SlotFields {
            priority: p.priority,
            tries: p.tries,
            successful: p.successful,
            version: if s == SlotName::A {
                r.os.version.clone()
            } else {
                String::new()
            },
        })
    };
    Ok(kiln_update::state::SlotState {
        board: r.board.name.clone(),
        a: fields(SlotName::A)?,
        b: fields(SlotName::B)?,
    })
}

fn kernel_cmdline(v: &Variant, slot: SlotName) -> Result<String> {
    let usr = v
        .layout
        .slot(slot)
        .and_then(|p| p.uuid)
        .with_context(|| format!("the layout's USR-{slot:?} has no fixed partition GUID"))?;
    let root = v.layout.by_content(Content::Root).expect("checked");
    let mut args = vec![
        format!("mount.usr=PARTUUID={usr}"),
        "mount.usrflags=ro".to_string(),
        format!("root=LABEL={}", root.label),
    ];
    args.extend(v.cmdline.iter().cloned());
    args.push(format!("kiln.oem.id={}", v.oem_id));
    Ok(args.join(" "))
}

fn plan_disk(v: &Variant, r: &Resolved) -> Result<kiln_disk::DiskPlan> {
    let specs = v
        .layout
        .partitions
        .iter()
        .map(|p| {
            Ok(PartitionSpec {
                number: p.number,
                label: p.label.clone(),
                type_guid: p.type_guid,
                part_guid: p
                    .uuid
                    .unwrap_or_else(|| ids::derive(&v.identity, &format!("part-{}", p.label))),
                size_bytes: p.size.0,
                // The slot state lives in /kiln/slots.env on the ESP, not in these bits.
                attributes: Attributes::default(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut plan = kiln_disk::plan(&specs, v.layout.alignment)?;
    plan.gpt.disk_guid = ids::derive(&v.identity, "disk");
    if let Some(p) = v.platform {
        let size = crate::artifact::disk_size(r, p, plan.disk_size_bytes)?;
        plan.disk_size_bytes = size;
        plan.gpt.disk_sectors = size / 512;
    }
    Ok(plan)
}

fn write_disk(
    plan: &kiln_disk::DiskPlan,
    contents: &[(u32, PathBuf)],
    boot_code: Option<&[u8]>,
    image: &Path,
) -> Result<u64> {
    let tmp = kiln_host::atomic::Staged::new(image)?;
    let f = &std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path())
        .with_context(|| format!("cannot open {}", tmp.path().display()))?;
    f.set_len(plan.disk_size_bytes)?;
    let mut w = f;
    plan.gpt.write(&mut w, boot_code)?;
    for (number, src) in contents {
        let p = plan
            .partition(*number)
            .with_context(|| format!("partition {number} not planned"))?;
        kiln_disk::copy_sparse(src, f, p.offset_bytes, p.size_bytes, &p.label)?;
    }
    // 0600, the mode the disk image had when it was a tempfile.
    tmp.commit(0o600)
        .with_context(|| format!("cannot write {}", image.display()))?;
    Ok(plan.disk_size_bytes)
}

/// The kernel package and busybox-static, extracted (not installed) with mmdebstrap.
fn kernel_stage(r: &Resolved, debs: &Path, epoch: i64, out: &Path) -> Result<()> {
    let tree = out.join("extract");
    let include = vec![r.kernel.package.clone(), "busybox-static".to_string()];
    Bootstrap {
        packages: &r.packages,
        variant: "extract",
        include: &include,
        arch: &r.board.debian_arch,
        epoch,
        deb_cache: debs,
    }
    .run(&tree, &out.join("mmdebstrap.log"))?;
    let k = kernel::find(&tree)?;
    std::fs::rename(&k.vmlinuz, out.join("vmlinuz"))?;
    if k.config.exists() {
        std::fs::rename(&k.config, out.join("config"))?;
    }
    let mods = out.join("modules/lib/modules");
    std::fs::create_dir_all(&mods)?;
    std::fs::rename(&k.modules, mods.join(&k.version))?;
    kernel::depmod(&out.join("modules"), &k.version)?;
    take_busybox(&tree, out)?;
    std::fs::write(out.join("version"), format!("{}\n", k.version))?;
    std::fs::remove_dir_all(&tree)?;
    st::normalize_times(out, epoch)
}

/// The kernel config against each selected platform's requirement list: a miss fails the
/// build, listing every miss.
fn check_kernel(r: &Resolved, config: &Path) -> Result<()> {
    if !r.platforms.iter().any(|p| p.kernel_requirements.is_some()) {
        return Ok(());
    }
    if !config.is_file() {
        bail!(
            "the kernel has no config file ({}) to check the platforms' kernel requirements against",
            config.display()
        );
    }
    let c = kiln_boot::kconfig::Config::read(config)?;
    let lines: Vec<String> = kiln_boot::kconfig::check_platforms(&c, r, None)?
        .iter()
        .flat_map(|pc| pc.lines())
        .collect();
    if !lines.is_empty() {
        bail!(
            "the kernel does not meet the platforms' kernel requirements; no image was written:\n  {}\n\
             fix the kernel config (or the requirement lists named by the platform profiles); \
             `kiln kernel check --config {}` shows the same",
            lines.join("\n  "),
            config.display()
        );
    }
    tracing::info!(
        "kernel: meets the requirements of {} platform(s)",
        r.platforms.len()
    );
    Ok(())
}

/// A kernel built from source, and busybox-static from Debian: the same outputs as
/// `kernel_stage` (vmlinuz, config, modules/, busybox, version), plus the migration report
/// and the build log.
fn kernel_source_stage(
    r: &Resolved,
    b: &kiln_recipe::KernelBuild,
    hash: &str,
    cache: &CacheDirs,
    key: &str,
    debs: &Path,
    out: &Path,
) -> Result<()> {
    use kiln_boot::kbuild;
    let epoch = r.source_date_epoch;
    let logs = cache.root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = logs.join(format!("kernel-{}.log", &key[..16]));
    let report_path = logs.join(format!("kernel-{}.migration.txt", &key[..16]));
    let _ = std::fs::remove_file(&log);
    tracing::info!(
        "kernel: building from {}; log: {}",
        b.source.display(),
        log.display()
    );

    let tree = kbuild::tree(&b.source, hash, &cache.root.join("kernel-src"))?;
    let work = cache.work_dir()?;
    let build = kbuild::Build {
        tree: &tree,
        dir: &work.path().join("kbuild"),
        arch: &r.board.arch,
        log: &log,
        epoch,
    };
    let (asked, resolved) = build.configure(&b.fragments, b.base)?;
    let release = build.release()?;
    let migration = kbuild::migration(&asked, &resolved, &kbuild::symbols(&tree)?);
    let violations: Vec<String> = kiln_boot::kconfig::check_platforms(&resolved, r, None)?
        .iter()
        .flat_map(|pc| pc.lines())
        .collect();
    let fragments: Vec<String> = b
        .fragments
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let report = migration.report(
        &format!(
            "kernel {release} from {}\nconfig: {} under {}",
            b.source.display(),
            fragments.join(", "),
            b.base.make_target()
        ),
        &violations,
    );
    std::fs::write(&report_path, &report)?;
    tracing::info!(
        "kernel {release}: {} option(s) no longer exist, {} changed by the migration, {} requirement(s) violated; report: {}",
        migration.gone.len(),
        migration.changed.len(),
        violations.len(),
        report_path.display()
    );
    if !violations.is_empty() {
        bail!(
            "the configured kernel does not meet the platforms' kernel requirements (nothing was compiled):\n  {}\n\
             fix the recipe's kernel fragments; the migration report is {}",
            violations.join("\n  "),
            report_path.display()
        );
    }
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let image = build.compile(jobs)?;
    build.install_modules(&out.join("modules"), &release)?;
    std::fs::copy(&image, out.join("vmlinuz"))?;
    std::fs::copy(build.dir.join(".config"), out.join("config"))?;
    std::fs::write(out.join("migration-report.txt"), &report)?;
    std::fs::copy(&log, out.join("build.log"))?;
    std::fs::write(out.join("version"), format!("{release}\n"))?;

    // busybox for the initramfs, from Debian as on the prebuilt path.
    let extract = out.join("extract");
    Bootstrap {
        packages: &r.packages,
        variant: "extract",
        include: &["busybox-static".to_string()],
        arch: &r.board.debian_arch,
        epoch,
        deb_cache: debs,
    }
    .run(&extract, &out.join("mmdebstrap.log"))?;
    take_busybox(&extract, out)?;
    std::fs::remove_dir_all(&extract)?;
    st::normalize_times(out, epoch)
}

/// Moves busybox-static's binary from an extracted package tree to `<out>/busybox`.
fn take_busybox(tree: &Path, out: &Path) -> Result<()> {
    let busybox = ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|p| tree.join(p))
        .find(|p| p.is_file())
        .context("busybox-static did not provide /bin/busybox")?;
    std::fs::rename(busybox, out.join("busybox"))?;
    Ok(())
}

const PAYLOAD_XZ_LEVEL: u32 = 1;

/// Signs this build's USR image, kernel and initramfs into an update payload.
fn payload_stage(
    r: &Resolved,
    sig: &Signing,
    usr: &Path,
    k: &KernelStage,
    initrd: &Path,
    xz_chunks: &Path,
    out: &Path,
) -> Result<()> {
    use kiln_update::payload::{self, Meta, SectionName};
    let meta = Meta {
        os_id: r.os.id.clone(),
        os_name: r.os.name.clone(),
        version: r.os.version.clone(),
        board: r.board.name.clone(),
        arch: r.board.debian_arch.clone(),
        created: r.source_date_epoch,
    };
    let vmlinuz = k.dir.join("vmlinuz");
    let sections = [
        (SectionName::Usr, usr, r.usr_filesystem.as_str().to_string()),
        (SectionName::Kernel, vmlinuz.as_path(), k.version.clone()),
        (SectionName::Initramfs, initrd, String::new()),
    ];
    // The chunked, cached compressor of the xz artifacts: unchanged 16 MiB chunks of a USR
    // image come from the cache. Level 1: on the erofs (lz4) USR of the minimal recipe it
    // measured 146 MB in 22 s against 131 MB in 92 s at level 6 (2 cores), and xz
    // decompresses both at the same speed.
    let compress = |raw: &Path, xz: &Path| -> Result<()> {
        kiln_formats::xz_compress(raw, xz, 0, PAYLOAD_XZ_LEVEL, Some(xz_chunks))
    };
    payload::create(out, &meta, &sections, &sig.key, &compress)?;
    Ok(())
}

fn grub_stage(r: &Resolved, esp_number: u32, out: &Path) -> Result<()> {
    // `(,gptN)`: the partition on the disk GRUB was loaded from, on BIOS and UEFI alike.
    let prefix = format!("(,gpt{esp_number})/grub");
    let g = &r.board.grub;
    if r.has_firmware(Firmware::Bios) {
        let mut m = g.modules.clone();
        m.extend(g.bios_modules.iter().cloned());
        grub::mkimage(
            g.bios_target.as_deref().expect("checked"),
            &prefix,
            &m,
            &out.join("core.img"),
        )?;
    }
    if r.has_firmware(Firmware::Uefi) {
        let mut m = g.modules.clone();
        m.extend(g.efi_modules.iter().cloned());
        grub::mkimage(
            g.efi_target.as_deref().expect("checked"),
            &prefix,
            &m,
            &out.join("grub.efi"),
        )?;
    }
    Ok(())
}

fn oem_stage(v: &Variant, part: &Partition, epoch: i64, out: &Path) -> Result<()> {
    let tree = out.join("tree");
    std::fs::create_dir_all(&tree)?;
    st::apply_overlay(v.oem_tree, &tree)?;
    st::write_file_in(
        &tree,
        Path::new("oem-release"),
        format!("ID={}\n", v.oem_id).as_bytes(),
        0o644,
    )?;
    st::normalize_times(&tree, epoch)?;
    Ext4 {
        label: &part.label,
        uuid: ids::derive(&v.identity, "oem-fs"),
        hash_seed: ids::derive(&v.identity, "oem-hash-seed"),
        epoch,
        size: part.size.0,
        what: &part.label,
        origin: &format!("the OEM tree {}", v.oem_tree.display()),
    }
    .build(&tree, &out.join("fs.img"))?;
    std::fs::remove_dir_all(&tree)?;
    Ok(())
}

fn usr_stage(
    r: &Resolved,
    part: &Partition,
    identity: &str,
    tree: &Path,
    out: &Path,
) -> Result<()> {
    let img = out.join("fs.img");
    match r.usr_filesystem {
        Filesystem::Erofs => {
            Erofs {
                uuid: ids::derive(identity, "usr-fs"),
                epoch: r.source_date_epoch,
                compression: &r.usr_compression,
                limit: part.size.0,
                what: &part.label,
            }
            .build(tree, &img)?;
        }
        Filesystem::Ext4 => Ext4 {
            label: &part.label,
            uuid: ids::derive(identity, "usr-fs"),
            hash_seed: ids::derive(identity, "usr-hash-seed"),
            epoch: r.source_date_epoch,
            size: part.size.0,
            what: &part.label,
            origin: "the image's /usr",
        }
        .build(tree, &img)?,
        Filesystem::Vfat => bail!("USR cannot be vfat"),
    }
    Ok(())
}

const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The image's tree: packages, kernel modules, agent, os-release and overlays, split into
/// the USR tree and the ROOT tree (with merged-/usr symlinks and an empty /usr mount point).
fn assemble_tree(
    r: &Resolved,
    packages: &Path,
    k: &KernelStage,
    agent: &Path,
    signing: Option<&Signing>,
    work: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let image = work.join("image");
    std::fs::create_dir_all(&image)?;
    st::link_or_copy_tree(packages, &image, Path::new(""))
        .context("cannot copy the package tree")?;
    for d in MERGED {
        let p = image.join(d);
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            bail!("/{d} in the package tree is a directory, not a link into /usr; kiln needs a merged-/usr suite (bookworm or later)");
        }
    }
    st::link_or_copy_tree(
        &k.dir.join("modules/lib/modules"),
        &image,
        Path::new("usr/lib/modules"),
    )
    .context("cannot copy the kernel modules")?;

    for o in &r.overlays {
        st::apply_overlay(o, &image)
            .with_context(|| format!("cannot apply overlay {}", o.display()))?;
    }
    // What kiln writes wins over overlays: the version the system reports must be true.
    st::write_file_in(
        &image,
        Path::new("usr/bin/kiln-agent"),
        &std::fs::read(agent)?,
        0o755,
    )?;
    // The key updates must be signed with; the agent trusts every key in this directory.
    if let Some(sig) = signing {
        let public = sig.key.verifying_key();
        st::write_file_in(
            &image,
            &Path::new(kiln_update::TRUSTED_KEYS_DIR)
                .join(format!("{}.pub", kiln_update::keys::key_id(&public))),
            kiln_update::keys::public_pem(&public).as_bytes(),
            0o644,
        )?;
    }
    st::write_file_in(
        &image,
        Path::new("usr/lib/kiln/version.txt"),
        r.version_txt().as_bytes(),
        0o644,
    )?;
    let os_release = format!(
        "NAME=\"{}\"\nID={}\nVERSION=\"{}\"\nVERSION_ID={}\nPRETTY_NAME=\"{} {}\"\nKILN_CHANNEL={}\nKILN_BOARD={}\nKILN_RECIPE={}\nKILN_RECIPE_HASH={}\n",
        r.os.name,
        r.os.id,
        r.os.version,
        r.os.version_id,
        r.os.name,
        r.os.version,
        r.os.channel,
        r.board.name,
        r.name,
        r.identity()
    );
    st::write_file_in(
        &image,
        Path::new("usr/lib/os-release"),
        os_release.as_bytes(),
        0o644,
    )?;
    let etc_os = st::resolve_in_root(&image, Path::new("etc/os-release"), false)?;
    if etc_os.symlink_metadata().is_ok() {
        std::fs::remove_file(&etc_os)?;
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", &etc_os)?;
    st::create_dir_all_in(&image, Path::new("usr/share/oem"))?;
    st::write_file_in(
        &image,
        Path::new("etc/hostname"),
        format!("{}\n", r.name).as_bytes(),
        0o644,
    )?;
    // mmdebstrap copies the host's resolv.conf; it does not belong in an image.
    let resolv = st::resolve_in_root(&image, Path::new("etc/resolv.conf"), false)?;
    if resolv.symlink_metadata().is_ok() {
        std::fs::remove_file(&resolv)?;
    }

    // Split: /usr becomes the USR tree, the rest is ROOT with an empty /usr.
    let usr = work.join("usr");
    std::fs::rename(image.join("usr"), &usr)?;
    std::fs::create_dir(image.join("usr"))?;
    for d in MERGED {
        let p = image.join(d);
        if p.symlink_metadata().is_ok() {
            std::fs::remove_file(&p)?;
        }
        if usr.join(d).is_dir() {
            std::os::unix::fs::symlink(format!("usr/{d}"), &p)?;
        }
    }
    st::normalize_times(&image, r.source_date_epoch)?;
    st::normalize_times(&usr, r.source_date_epoch)?;
    Ok((usr, image))
}
