//! Board profiles: what a hardware family needs (architecture, firmware, GRUB targets, QEMU
//! machine, default layout, kernel source, OEM tree). Recipes name a board and may override
//! some of its values.

use serde::{Deserialize, Serialize};
use toml::Spanned;

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
    pub cmdline: Vec<String>,
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
