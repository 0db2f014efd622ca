//! kiln's build: a chain of named stages, one module each ([`stages`]), each a function of
//! declared inputs whose hash names its output in the cache:
//!
//! ```text
//! recipe ─┬─ packages (mmdebstrap) ───────────────┬─ tree ─┬─ usr (erofs) ─┬──────────┐
//!         ├─ kernel (package or source, busybox) ─┤        └─ root (ext4) ─┤          │
//!         │                                       └─ initramfs ─ esp ──────┼─ disk ─ artifact
//!         ├─ grub (BIOS core, EFI image) ──────────────────────┘           │
//!         └─ oem (ext4) ───────────────────────────────────────────────────┘
//!                                      usr + kernel + initramfs ─ payload
//! ```
//!
//! Data flows one way; independent stages run in parallel; a stage whose key is in the cache
//! is not run again, and `--explain` says for each stage why it was (or was not) built.

mod cache;
mod context;
mod ids;
mod images;
pub mod inputs;
mod options;
mod output;
pub mod report;
pub mod stages;
mod staging;
mod versions;

use std::time::Instant;

use anyhow::{Context as _, Result};
use kiln_recipe::{Resolved, Slot};

pub use cache::CacheDirs;
pub use context::Build;
pub use options::{BuildOptions, Signing};
pub use output::{BuildOutput, InstalledPackage};
pub use report::StageReport;

use context::Shared;
use stages::{
    grub::Grub, initramfs::Initramfs, kernel::DebianKernel, kernel_source::SourceKernel,
    packages::PackageTree, payload::Payload, tree::Tree, usr::Usr, Built,
};

pub fn build(r: &Resolved, opts: &BuildOptions) -> Result<BuildOutput> {
    let started = Instant::now();
    // Before anything is created or locked: a layout or size a format cannot take.
    let images = images::plan(r)?;
    let b = Build::start(r, opts)?;
    let out = build_images(&b, &images, started);
    if out.is_err() {
        b.output_lock().remove_if_made_and_empty();
    }
    out
}

fn build_images(b: &Build, images: &[images::Image], started: Instant) -> Result<BuildOutput> {
    let r = b.recipe;
    let opts = b.opts;
    let epoch = r.source_date_epoch;

    // The packages and the kernel are independent downloads: side by side.
    let packages = PackageTree {
        packages: &r.packages,
        arch: &r.board.debian_arch,
        epoch,
        mmdebstrap: &b.tools.mmdebstrap,
        debs: &b.debs,
    };
    let (packages, kernel) = both(|| b.run(&packages), || kernel(b))?;
    // Before any image is written: the kernel has what every platform built needs.
    stages::kernel::check_requirements(r, &kernel)?;

    let update_key = opts.signing.as_ref().map(|s| s.key.verifying_key());
    let tree = Tree::new(
        r,
        &packages,
        &kernel,
        &opts.agent,
        &b.agent_hash,
        update_key.as_ref(),
        b.work(),
    );
    let usr = Usr {
        tree: &tree,
        filesystem: r.usr_filesystem,
        compression: &r.usr_compression,
        slot: r.layout.usr(Slot::A),
        identity: r.identity(),
        epoch,
        tools: format!("{} {}", b.tools.erofs, b.tools.e2fsprogs),
    };
    let grub = Grub {
        grub: &r.board.grub,
        firmware: &r.board.firmware,
        esp_number: r.layout.esp().number,
        tools: &b.tools.grub,
    };
    let initramfs = Initramfs {
        kernel: &kernel,
        agent: &opts.agent,
        agent_hash: &b.agent_hash,
        modules: &r.kernel.board_initramfs_modules,
        usr_fs: r.usr_filesystem.as_str(),
        oem_spec: format!("PARTLABEL={}", r.layout.oem().label),
        epoch,
        arch: &r.board.arch,
    };
    let (usr, (grub, initramfs)) = both(
        || b.run(&usr),
        || both(|| b.run(&grub), || b.run(&initramfs)),
    )?;

    // Every image in parallel, and the payload beside them (it needs only USR, the kernel
    // and the initramfs), all into a staging directory published when everything succeeded.
    let mut staging = staging::Staging::create(&opts.output_dir)?;
    let shared = Shared {
        kernel: &kernel,
        tree: &tree,
        usr: &usr,
        grub: &grub,
        initramfs: &initramfs,
    };
    let (payload, files) = both(
        || payload(b, &usr, &kernel, &initramfs),
        || {
            all(images, |img| {
                images::build(b, &shared, img, staging.path())
                    .with_context(|| format!("{} image", img.name))
            })
        },
    )?;
    b.report(StageReport::step(
        "tree",
        tree.seconds().is_some(),
        if tree.seconds().is_some() {
            "built: USR or a ROOT was built"
        } else {
            "not needed: USR and every ROOT were cached"
        },
        tree.seconds().unwrap_or(0.0),
    ));

    let mut image = None;
    let mut artifacts = Vec::new();
    for (img, files) in images.iter().zip(files) {
        for f in files {
            let dest = staging.add(f)?;
            match img.platform {
                None => image = Some(dest),
                Some(_) => artifacts.push(dest),
            }
        }
    }
    let image = image.context("the board image was not written")?;
    let payload = match payload {
        Some(p) => {
            let tmp = staging.path().join("update.payload");
            std::fs::copy(&p.file, &tmp)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .with_context(|| format!("cannot copy the payload to {}", tmp.display()))?;
            Some(staging.add_as(tmp, &format!("{}_update.payload", r.name))?)
        }
        None => None,
    };
    staging.publish()?;

    Ok(BuildOutput {
        image_size: std::fs::metadata(&image)?.len(),
        image,
        artifacts,
        payload,
        kernel_config_sha256: kernel
            .config
            .as_deref()
            .map(kiln_host::hash::sha256_file)
            .transpose()?,
        recipe_hash: r.identity().to_string(),
        packages: stages::packages::installed_packages(&packages.root)?,
        tools: b.tools.as_map(),
        kernel_version: kernel.version.clone(),
        stages: in_order(b.reports(), images),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The reports in the order of the build's steps, whatever order parallel stages finished
/// in: the shared stages, then each image's (the board's first).
fn in_order(mut reports: Vec<StageReport>, images: &[images::Image]) -> Vec<StageReport> {
    const STEPS: &[&str] = &[
        "packages",
        "kernel",
        "tree",
        "usr",
        "grub",
        "initramfs",
        "payload",
        "oem",
        "root",
        "esp",
        "disk",
    ];
    reports.sort_by_key(|s| {
        let (name, platform) = match s.stage.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s.stage.as_str(), None),
        };
        let step = STEPS.iter().position(|x| *x == name).unwrap_or(STEPS.len());
        let image = match platform {
            Some(p) => {
                1 + images
                    .iter()
                    .position(|i| i.platform_name() == Some(p))
                    .unwrap_or(0)
            }
            None => 0,
        };
        (image, step)
    });
    reports
}

/// The kernel stage: Debian's package, or built from the recipe's source.
fn kernel(b: &Build) -> Result<Built<stages::kernel::KernelFiles>> {
    let r = b.recipe;
    let debian = DebianKernel {
        package: &r.kernel.package,
        packages: &r.packages,
        arch: &r.board.debian_arch,
        epoch: r.source_date_epoch,
        mmdebstrap: &b.tools.mmdebstrap,
        kmod: &b.tools.kmod,
        debs: &b.debs,
    };
    let Some(build) = &r.kernel.build else {
        return b.run(&debian);
    };
    kiln_boot::kbuild::check_arch(&r.board.arch)?;
    let source_hash = kiln_boot::kbuild::source_hash(&build.source)?;
    let k = b.run(&SourceKernel {
        build,
        source_hash: &source_hash,
        toolchain: &kiln_boot::kbuild::toolchain()?,
        debian,
        recipe: r,
        cache_root: &b.opts.cache.root,
    })?;
    tracing::info!(
        "kernel {} built from source; migration report: {}",
        k.version,
        stages::kernel_source::migration_report(&k).display()
    );
    Ok(k)
}

/// The signed update payload, or none (said once) without a key.
fn payload(
    b: &Build,
    usr: &Built<stages::usr::UsrImage>,
    kernel: &Built<stages::kernel::KernelFiles>,
    initramfs: &Built<stages::initramfs::InitramfsImage>,
) -> Result<Option<Built<stages::payload::PayloadFile>>> {
    let Some(sig) = &b.opts.signing else {
        tracing::warn!("no update payload: no signing key, so the image trusts no update (give --signing-key FILE, or --dev-key for an insecure development key)");
        return Ok(None);
    };
    b.run(&Payload {
        recipe: b.recipe,
        usr,
        kernel,
        initramfs,
        key: &sig.key,
        xz_chunks: &b.opts.cache.root.join("xz-chunks"),
    })
    .context("update payload")
    .map(Some)
}

/// Runs two steps side by side.
fn both<A: Send, B: Send>(
    a: impl FnOnce() -> Result<A> + Send,
    b: impl FnOnce() -> Result<B> + Send,
) -> Result<(A, B)> {
    std::thread::scope(|s| {
        let h = s.spawn(b);
        let a = a();
        let b = h.join().expect("a build thread panicked");
        Ok((a?, b?))
    })
}

/// Runs `f` on every item side by side; the results in order.
fn all<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a build thread panicked"))
            .collect()
    })
}
