//! The host tools kiln runs and the files it reads from host packages, each with the Debian
//! package that provides it, so a missing one is reported as something to install rather
//! than a bare "No such file or directory". Call sites name a tool by its constant here.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::run::Cmd;

/// A program looked up on $PATH, or a file given by its absolute path, and the Debian
/// package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

const fn tool(name: &'static str, package: &'static str) -> Tool {
    Tool { name, package }
}

// Package trees and filesystems.
pub const MMDEBSTRAP: Tool = tool("mmdebstrap", "mmdebstrap");
pub const MKE2FS: Tool = tool("mke2fs", "e2fsprogs");
pub const DEBUGFS: Tool = tool("debugfs", "e2fsprogs");
pub const MKFS_EROFS: Tool = tool("mkfs.erofs", "erofs-utils");
pub const MKFS_VFAT: Tool = tool("mkfs.vfat", "dosfstools");
pub const MCOPY: Tool = tool("mcopy", "mtools");
pub const MMD: Tool = tool("mmd", "mtools");
// Boot.
pub const GRUB_MKIMAGE: Tool = tool("grub-mkimage", "grub-common");
pub const GRUB_BIOS_BOOT_IMG: Tool = tool("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin");
pub const GRUB_EFI_LINUX_MOD: Tool =
    tool("/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin");
pub const DEPMOD: Tool = tool("depmod", "kmod");
// Artifacts and VMs.
pub const QEMU_SYSTEM_X86_64: Tool = tool("qemu-system-x86_64", "qemu-system-x86");
pub const QEMU_IMG: Tool = tool("qemu-img", "qemu-utils");
pub const OVMF_CODE: Tool = tool("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf");
pub const OVMF_VARS: Tool = tool("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf");
pub const PIGZ: Tool = tool("pigz", "pigz");
pub const TAR: Tool = tool("tar", "tar");
pub const XZ: Tool = tool("xz", "xz-utils");
// Asking dpkg which versions shaped a build.
pub const DPKG_QUERY: Tool = tool("dpkg-query", "dpkg");
// `kiln bench` compares kiln with these.
pub const SHA256SUM: Tool = tool("sha256sum", "coreutils");
pub const CP: Tool = tool("cp", "coreutils");
// Building a kernel from source.
pub const MAKE: Tool = tool("make", "make");
pub const GCC: Tool = tool("gcc", "gcc");
pub const LD: Tool = tool("ld", "binutils");
pub const BC: Tool = tool("bc", "bc");
pub const BISON: Tool = tool("bison", "bison");
pub const FLEX: Tool = tool("flex", "flex");
pub const PERL: Tool = tool("perl", "perl");
pub const LIBELF_H: Tool = tool("/usr/include/libelf.h", "libelf-dev");
pub const OPENSSL_H: Tool = tool("/usr/include/openssl/ssl.h", "libssl-dev");

/// Every tool and file kiln knows, for looking up a name that comes from configuration (a
/// board profile's QEMU binary or firmware path).
pub const TOOLS: &[Tool] = &[
    MMDEBSTRAP,
    MKE2FS,
    DEBUGFS,
    MKFS_EROFS,
    MKFS_VFAT,
    MCOPY,
    MMD,
    GRUB_MKIMAGE,
    GRUB_BIOS_BOOT_IMG,
    GRUB_EFI_LINUX_MOD,
    DEPMOD,
    QEMU_SYSTEM_X86_64,
    QEMU_IMG,
    OVMF_CODE,
    OVMF_VARS,
    PIGZ,
    TAR,
    XZ,
    DPKG_QUERY,
    SHA256SUM,
    CP,
    MAKE,
    GCC,
    LD,
    BC,
    BISON,
    FLEX,
    PERL,
    LIBELF_H,
    OPENSSL_H,
];

/// The Debian package that provides `name`, if kiln knows it.
pub fn package_of(name: &str) -> Option<&'static str> {
    TOOLS.iter().find(|t| t.name == name).map(|t| t.package)
}

/// Finds `tool` on $PATH (or checks that it exists, for an absolute path).
pub fn find(tool: Tool) -> Option<PathBuf> {
    find_named(tool.name)
}

/// [`find`] for a name that comes from configuration rather than from this table.
pub fn find_named(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `tool` or fails naming the package to install.
pub fn require(tool: Tool) -> Result<PathBuf> {
    find(tool).ok_or_else(|| missing(&[(tool.name, Some(tool.package))]))
}

/// [`require`] for a name that comes from configuration; the package is named if the table
/// knows the name.
pub fn require_named(name: &str) -> Result<PathBuf> {
    find_named(name).ok_or_else(|| missing(&[(name, package_of(name))]))
}

/// Checks several tools at once, so one error lists everything that is missing.
pub fn check_all(tools: &[Tool]) -> Result<()> {
    let absent: Vec<(&str, Option<&str>)> = tools
        .iter()
        .filter(|t| find(**t).is_none())
        .map(|t| (t.name, Some(t.package)))
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    Err(missing(&absent))
}

/// The error for tools that are not there (each with its package, if known), then one
/// apt-get line for all of them.
fn missing(absent: &[(&str, Option<&str>)]) -> anyhow::Error {
    let lines: Vec<String> = absent
        .iter()
        .map(|(t, p)| match p {
            Some(p) => format!("  {t} (Debian package {p})"),
            None => format!("  {t}"),
        })
        .collect();
    let mut pkgs: Vec<&str> = absent.iter().filter_map(|(_, p)| *p).collect();
    pkgs.sort();
    pkgs.dedup();
    if pkgs.is_empty() {
        return anyhow::anyhow!(
            "missing host tools:\n{}\ninstall them or fix $PATH",
            lines.join("\n")
        );
    }
    anyhow::anyhow!(
        "missing host tools:\n{}\ninstall them with: apt-get install {}",
        lines.join("\n"),
        pkgs.join(" ")
    )
}

/// A package's version as dpkg knows it (`package=version`), for cache keys and manifests;
/// `package=unknown` when dpkg does not know the package or is not there (a build on a host
/// without dpkg still works, its cache keys just cannot tell tool versions apart).
pub fn package_version(package: &str) -> String {
    match query_version(package) {
        Ok(Some(v)) => format!("{package}={v}"),
        Ok(None) => format!("{package}=unknown"),
        Err(e) => {
            tracing::debug!("no version for {package}: {e:#}");
            format!("{package}=unknown")
        }
    }
}

fn query_version(package: &str) -> Result<Option<String>> {
    if find(DPKG_QUERY).is_none() {
        return Ok(None);
    }
    // Unchecked: dpkg-query exits 1 for a package that is not installed, which is an answer
    // ("unknown"), not a failure.
    let o = Cmd::new(DPKG_QUERY)
        .args(["-W", "-f", "${Version}", package])
        .output_unchecked()
        .context("cannot ask dpkg-query for a package version")?;
    if !o.status.success() {
        return Ok(None);
    }
    // Printed as is, even empty (a package dpkg knows but has removed): the text is part of
    // cache keys, so it must not change for the same host.
    Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let made_up = tool("mkfs.erofs-does-not-exist", "erofs-utils");
        let err = check_all(&[TAR, made_up]).unwrap_err().to_string();
        assert_eq!(
            err,
            "missing host tools:\n  mkfs.erofs-does-not-exist (Debian package erofs-utils)\n\
             install them with: apt-get install erofs-utils"
        );
        assert!(require(made_up)
            .unwrap_err()
            .to_string()
            .contains("erofs-utils"));
        assert_eq!(package_of("mkfs.vfat"), Some("dosfstools"));
        // A name from configuration that the table does not know: no package to name.
        let err = require_named("qemu-system-kiln-does-not-exist")
            .unwrap_err()
            .to_string();
        assert!(err.contains("  qemu-system-kiln-does-not-exist\n"), "{err}");
        assert!(err.ends_with("install them or fix $PATH"), "{err}");
    }

    #[test]
    fn one_error_lists_every_missing_tool_and_each_package_once() {
        let msg = missing(&[
            ("mke2fs", Some("e2fsprogs")),
            ("debugfs", Some("e2fsprogs")),
            ("mmdebstrap", Some("mmdebstrap")),
            ("odd", None),
        ])
        .to_string();
        assert!(
            msg.contains("  mke2fs (Debian package e2fsprogs)\n"),
            "{msg}"
        );
        assert!(
            msg.contains("  mmdebstrap (Debian package mmdebstrap)\n"),
            "{msg}"
        );
        assert!(msg.contains("  odd\n"), "{msg}");
        assert!(
            msg.ends_with("install them with: apt-get install e2fsprogs mmdebstrap"),
            "{msg}"
        );
    }

    #[test]
    fn finds_programs_and_files() {
        assert!(find(TAR).is_some_and(|p| p.is_absolute()));
        assert_eq!(find_named("/"), Some(PathBuf::from("/")));
        assert_eq!(find_named("bin/sh"), None);
        assert_eq!(find_named(""), None);
    }

    #[test]
    fn every_tool_is_listed_once() {
        for (i, t) in TOOLS.iter().enumerate() {
            assert!(
                !TOOLS[..i].iter().any(|u| u.name == t.name),
                "{} twice",
                t.name
            );
        }
    }

    #[test]
    fn package_versions_come_from_dpkg() {
        let v = package_version("tar");
        assert!(v.starts_with("tar="), "{v}");
        if find(DPKG_QUERY).is_some() {
            assert_ne!(v, "tar=unknown");
        }
        assert_eq!(
            package_version("kiln-no-such-package"),
            "kiln-no-such-package=unknown"
        );
    }
}
