//! Finding the kernel in an extracted Debian kernel package, and generating its module index.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_host::{tools::DEPMOD, Cmd};

/// A kernel as a package tree holds it.
#[derive(Debug, Clone)]
pub struct KernelTree {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// `<tree>/lib/modules/<version>` (or under usr/ for merged trees).
    pub modules: PathBuf,
}

/// Finds exactly one kernel under `<root>/boot` with its module directory.
pub fn find(root: &Path) -> Result<KernelTree> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .with_context(|| format!("no /boot in the kernel package tree {}", root.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(String::from))
        .collect();
    versions.sort();
    let version = match versions.as_slice() {
        [v] => v.clone(),
        [] => bail!(
            "no vmlinuz-* in {}: is the kernel package right?",
            boot.display()
        ),
        many => bail!(
            "several kernels in {}: {}; kiln needs exactly one",
            boot.display(),
            many.join(", ")
        ),
    };
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&version))
        .find(|p| p.is_dir())
        .with_context(|| {
            format!(
                "kernel {version} has no module directory in {}",
                root.display()
            )
        })?;
    Ok(KernelTree {
        vmlinuz: boot.join(format!("vmlinuz-{version}")),
        config: boot.join(format!("config-{version}")),
        modules,
        version,
    })
}

/// Runs depmod for a module tree whose base directory is `base` (holding lib/modules/<ver>).
pub fn depmod(base: &Path, version: &str) -> Result<()> {
    Cmd::new(DEPMOD)
        .arg("-b")
        .arg(base)
        .arg(version)
        .what("index the kernel's modules with depmod")
        .run()?;
    Ok(())
}
