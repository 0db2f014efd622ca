//! The host tools kiln runs, and the Debian package that provides each, so a missing tool is
//! reported as something to install rather than a bare "No such file or directory".

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// (tool, Debian package). Files that are not on $PATH are looked up by path.
pub const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mke2fs", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("mkfs.erofs", "erofs-utils"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("grub-mkimage", "grub-common"),
    ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
    ("/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin"),
    ("depmod", "kmod"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("pigz", "pigz"),
    ("tar", "tar"),
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    // Building a kernel from source.
    ("make", "make"),
    ("gcc", "gcc"),
    ("ld", "binutils"),
    ("bc", "bc"),
    ("bison", "bison"),
    ("flex", "flex"),
    ("perl", "perl"),
    ("xz", "xz-utils"),
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
];

/// The Debian package that provides `tool`, if kiln knows it.
pub fn package_of(tool: &str) -> Option<&'static str> {
    TOOLS.iter().find(|(t, _)| *t == tool).map(|(_, p)| *p)
}

/// Finds `tool` on $PATH (or checks it exists, for an absolute path).
pub fn find(tool: &str) -> Option<PathBuf> {
    if tool.starts_with('/') {
        return Path::new(tool).exists().then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `tool` or fails naming the package to install.
pub fn require(tool: &str) -> Result<PathBuf> {
    check_all(&[tool])?;
    Ok(find(tool).expect("checked"))
}

/// Checks several tools at once, so one error lists everything that is missing.
pub fn check_all(tools: &[&str]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| find(t).is_none())
        .map(|t| match package_of(t) {
            Some(p) => format!("  {t} (Debian package {p})"),
            None => format!("  {t}"),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = tools
        .iter()
        .filter(|t| find(t).is_none())
        .filter_map(|t| package_of(t))
        .collect();
    pkgs.sort();
    pkgs.dedup();
    bail!(
        "missing host tools:\n{}\ninstall them with: apt-get install {}",
        missing.join("\n"),
        pkgs.join(" ")
    )
}

/// A tool's version as `dpkg-query` knows its package, for cache keys and manifests.
/// Falls back to the tool's path when dpkg does not know it.
pub fn package_version(package: &str) -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("{package}={}", String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| format!("{package}=unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_its_package() {
        let err = check_all(&["mkfs.erofs-does-not-exist"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mkfs.erofs-does-not-exist"), "{err}");
        assert_eq!(package_of("mkfs.vfat"), Some("dosfstools"));
    }
}
