//! Board profiles: what a hardware family needs (architecture, firmware, GRUB targets, QEMU
//! machine, default layout, kernel source, OEM tree). Recipes name a board and may override
//! some of its values.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::names::check_name;
use crate::source::SourceFile;

/// Where to look for board profiles when the caller does not say.
pub const BOARD_DIR_NAME: &str = "board-profiles";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BoardFile {
    pub name: Spanned<String>,
    pub description: Option<String>,
    /// Kernel/ELF architecture name, e.g. x86_64.
    pub arch: String,
    /// Debian architecture, e.g. amd64.
    pub debian_arch: String,
    pub firmware: Vec<Spanned<Firmware>>,
    pub grub: GrubDef,
    pub qemu: QemuDef,
    pub layout: LayoutRef,
    pub kernel: KernelDef,
    pub oem: OemRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GrubDef {
    /// grub-mkimage format for BIOS, e.g. i386-pc (from grub-pc-bin).
    pub bios_target: Option<String>,
    /// grub-mkimage format for UEFI, e.g. x86_64-efi (from grub-efi-amd64-bin).
    pub efi_target: Option<String>,
    /// File name under \EFI\BOOT on the ESP, e.g. BOOTX64.EFI.
    pub efi_binary: Option<String>,
    /// GRUB modules built into the core images (no module directory is shipped).
    pub modules: Vec<String>,
    /// Extra modules for the BIOS image only (disk access through the BIOS, for instance).
    #[serde(default)]
    pub bios_modules: Vec<String>,
    /// Extra modules for the UEFI image only (the GOP video driver Linux wants, for instance).
    #[serde(default)]
    pub efi_modules: Vec<String>,
    /// Seconds GRUB's menu waits.
    #[serde(default)]
    pub timeout: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QemuDef {
    pub binary: String,
    pub machine: String,
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    pub cpu: Option<String>,
    /// Disk interface used by `kiln run` and the boot tests (virtio, ahci, ...).
    pub disk: String,
    pub ovmf_code: String,
    pub ovmf_vars: String,
}

fn default_memory() -> u32 {
    1024
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LayoutRef {
    /// Layout file, relative to the board-profiles directory.
    pub file: Spanned<String>,
    pub variant: Spanned<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelDef {
    pub source: KernelSource,
    /// Debian package providing the kernel image and modules.
    pub package: String,
    /// Kernel command-line arguments common to every image of the board.
    #[serde(default)]
    pub cmdline: Vec<Spanned<String>>,
    /// Modules the initramfs carries and loads (with their dependencies): disk controllers
    /// and the filesystems of ROOT and USR.
    pub initramfs_modules: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelSource {
    /// A prebuilt kernel from a Debian package.
    Debian,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OemRef {
    pub id: String,
    /// OEM tree, relative to the board-profiles directory.
    pub tree: Spanned<String>,
}

/// A board as the build uses it.
#[derive(Debug, Clone)]
pub struct Board {
    pub name: String,
    pub arch: String,
    pub debian_arch: String,
    pub firmware: Vec<Firmware>,
    pub grub: GrubDef,
    pub qemu: QemuDef,
}

/// A board profile read and checked, with its file kept for positions in errors.
pub struct Loaded {
    pub file: BoardFile,
    pub src: SourceFile,
    pub board: Board,
}

/// The `.toml` names in a directory (boards in board-profiles/, platforms in platforms/),
/// for error messages and `--platform all`.
pub fn known_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
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

/// The nearest `board-profiles/` above `start` (a recipe file or a working directory).
pub fn find_dir(start: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(start).ok()?;
    abs.ancestors()
        .map(|d| d.join(BOARD_DIR_NAME))
        .find(|d| d.is_dir())
}

/// Reads the board `name` names (in `recipe`, for the error if it is unknown).
pub fn load(board_dir: &Path, name: &Spanned<String>, recipe: &SourceFile) -> Result<Loaded> {
    let board_name = name.get_ref();
    let path = board_dir.join(format!("{board_name}.toml"));
    if check_name(board_name).is_err() || !path.is_file() {
        let known = known_names(board_dir);
        return Err(recipe.error_at(
            &name.span(),
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
    let src = SourceFile::read(&path)?;
    let b: BoardFile = src.parse()?;
    if b.name.get_ref() != board_name {
        return Err(src.error_at(
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
            return Err(src.error_at(&f.span(), "firmware listed twice"));
        }
        firmware.push(*f.get_ref());
    }
    if firmware.is_empty() {
        bail!(
            "{}: `firmware` must name at least one of bios, uefi",
            path.display()
        );
    }
    if firmware.contains(&Firmware::Bios) && b.grub.bios_target.is_none() {
        bail!(
            "{}: firmware includes bios but grub.bios-target is not set",
            path.display()
        );
    }
    if firmware.contains(&Firmware::Uefi)
        && (b.grub.efi_target.is_none() || b.grub.efi_binary.is_none())
    {
        bail!(
            "{}: firmware includes uefi but grub.efi-target or grub.efi-binary is not set",
            path.display()
        );
    }
    check_name(&b.debian_arch)
        .map_err(|m| anyhow::anyhow!("{}: debian-arch: {m}", path.display()))?;
    let board = Board {
        name: board_name.clone(),
        arch: b.arch.clone(),
        debian_arch: b.debian_arch.clone(),
        firmware,
        grub: b.grub.clone(),
        qemu: b.qemu.clone(),
    };
    Ok(Loaded {
        file: b,
        src,
        board,
    })
}
