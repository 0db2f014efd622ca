//! The kernel stage, Debian's way: the board's kernel package and busybox-static extracted
//! (not installed) with mmdebstrap, the modules indexed with depmod. Its output is what a
//! kernel built from source gives too ([`super::kernel_source`]): [`KernelFiles`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_boot::kernel;
use kiln_recipe::{Packages, Resolved};

use super::packages::Bootstrap;
use super::Stage;
use crate::inputs::Inputs;

pub struct DebianKernel<'a> {
    /// The kernel package, e.g. linux-image-amd64.
    pub package: &'a str,
    /// The suite, mirrors and components it comes from.
    pub packages: &'a Packages,
    pub arch: &'a str,
    pub epoch: i64,
    pub mmdebstrap: &'a str,
    pub kmod: &'a str,
    /// Not an input: what the mirror serves.
    pub debs: &'a Path,
}

/// A kernel with its modules and the initramfs's busybox, as the later stages need them:
/// `vmlinuz`, `config` (if any), `modules/lib/modules/<version>`, `busybox`, `version`.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub dir: PathBuf,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// The kernel's config, when it has one.
    pub config: Option<PathBuf>,
    pub busybox: PathBuf,
}

impl KernelFiles {
    /// Reads a finished kernel stage's directory.
    pub fn read(dir: &Path) -> Result<Self> {
        let version = std::fs::read_to_string(dir.join("version"))
            .with_context(|| format!("the kernel stage {} has no version", dir.display()))?
            .trim()
            .to_string();
        let config = dir.join("config");
        Ok(KernelFiles {
            dir: dir.to_path_buf(),
            vmlinuz: dir.join("vmlinuz"),
            config: config.is_file().then_some(config),
            busybox: dir.join("busybox"),
            version,
        })
    }

    /// The module tree's base directory (holding `lib/modules/<version>`).
    pub fn modules_base(&self) -> PathBuf {
        self.dir.join("modules")
    }

    /// What the initramfs generator reads.
    pub fn tree(&self) -> kernel::KernelTree {
        kernel::KernelTree {
            version: self.version.clone(),
            vmlinuz: self.vmlinuz.clone(),
            config: self.dir.join("config"),
            modules: self.modules_base().join("lib/modules").join(&self.version),
        }
    }
}

/// The inputs both kernel stages share: where busybox-static comes from and the tools.
pub(super) fn common_inputs(i: Inputs, k: &DebianKernel) -> Inputs {
    i.add("package", k.package)
        .add("suite", &k.packages.suite)
        .add("mirrors", k.packages.mirrors.join(" "))
        .add("components", k.packages.components.join(" "))
        .add("arch", k.arch)
        .add("epoch", k.epoch.to_string())
        .add("mmdebstrap", k.mmdebstrap)
        .add("kmod", k.kmod)
}

impl Stage for DebianKernel<'_> {
    const NAME: &'static str = "kernel";
    type Output = KernelFiles;

    fn inputs(&self) -> Inputs {
        common_inputs(Inputs::new().add("source", "debian"), self)
    }

    fn build(&self, out: &Path) -> Result<()> {
        let tree = out.join("extract");
        let include = vec![self.package.to_string(), "busybox-static".to_string()];
        Bootstrap {
            packages: self.packages,
            variant: "extract",
            include: &include,
            arch: self.arch,
            epoch: self.epoch,
            deb_cache: self.debs,
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
        kiln_fs::stage::normalize_times(out, self.epoch)
    }

    fn output(&self, dir: &Path) -> Result<KernelFiles> {
        KernelFiles::read(dir)
    }
}

/// Moves busybox-static's binary from an extracted package tree to `<out>/busybox`.
pub(super) fn take_busybox(tree: &Path, out: &Path) -> Result<()> {
    let busybox = ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|p| tree.join(p))
        .find(|p| p.is_file())
        .context("busybox-static did not provide /bin/busybox")?;
    std::fs::rename(busybox, out.join("busybox"))?;
    Ok(())
}

/// The kernel config against each selected platform's requirement list, before any image is
/// written: a miss fails the build, listing every miss.
pub fn check_requirements(r: &Resolved, k: &KernelFiles) -> Result<()> {
    if !r.platforms.iter().any(|p| p.kernel_requirements.is_some()) {
        return Ok(());
    }
    let Some(config) = &k.config else {
        bail!(
            "the kernel has no config file ({}) to check the platforms' kernel requirements against",
            k.dir.join("config").display()
        );
    };
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
