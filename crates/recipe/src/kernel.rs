//! The kernel an image boots: the board's Debian package or a tree built from source with the
//! recipe's kconfig fragments, its command line and the modules the initramfs carries.

use std::path::{Path, PathBuf};

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::board::{BoardFile, KernelSource};
use crate::names::check_kernel_arg;
use crate::recipe::{ConfigBase, KernelOverride};
use crate::source::SourceFile;

#[derive(Debug, Clone)]
pub struct Kernel {
    pub source: KernelSource,
    /// The Debian kernel package (the prebuilt path); busybox-static comes from Debian either
    /// way.
    pub package: String,
    /// Set when the recipe builds its kernel from source instead.
    pub build: Option<KernelBuild>,
    pub cmdline: Vec<String>,
    /// The board's and the recipe's initramfs modules.
    pub initramfs_modules: Vec<String>,
    /// Those and the modules of every platform profile of the board: what the one initramfs
    /// of the board carries. Filled in once the platforms are read.
    pub board_initramfs_modules: Vec<String>,
}

/// A kernel built from source: where the source is, and the config fragments.
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// A kernel tree or a tarball (absolute, or relative to the working directory).
    pub source: PathBuf,
    pub fragments: Vec<PathBuf>,
    /// SHA-256 over the fragments' names and bytes: what identifies them, wherever the
    /// checkout is.
    pub fragments_hash: String,
    pub base: ConfigBase,
}

/// The board's kernel with the recipe's overrides, every argument checked.
pub fn resolve(
    board: &BoardFile,
    board_src: &SourceFile,
    k: &KernelOverride,
    recipe_dir: &Path,
    recipe: &SourceFile,
) -> Result<Kernel> {
    let mut cmdline = Vec::new();
    for (args, src) in [(&board.kernel.cmdline, board_src), (&k.cmdline, recipe)] {
        for arg in args {
            check_kernel_arg(arg.get_ref()).map_err(|m| src.error_at(&arg.span(), m))?;
            cmdline.push(arg.get_ref().clone());
        }
    }
    let mut initramfs_modules = board.kernel.initramfs_modules.clone();
    initramfs_modules.extend(k.initramfs_modules.iter().cloned());
    Ok(Kernel {
        build: build(k, recipe_dir, recipe)?,
        source: board.kernel.source,
        package: k.package.clone().unwrap_or(board.kernel.package.clone()),
        board_initramfs_modules: initramfs_modules.clone(),
        cmdline,
        initramfs_modules,
    })
}

/// The recipe's kernel source and fragments, checked: the source exists (a directory must look
/// like a kernel tree; a tarball is checked when it is unpacked), every fragment exists, and
/// fragments come only with a source.
fn build(k: &KernelOverride, recipe_dir: &Path, src: &SourceFile) -> Result<Option<KernelBuild>> {
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
        if let Err(m) = check_tree(&path) {
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
pub fn check_tree(dir: &Path) -> std::result::Result<(), String> {
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
