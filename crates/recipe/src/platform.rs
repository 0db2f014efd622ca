//! Platforms as data: one TOML file per platform under `<board-profiles>/platforms/` says
//! how its image differs from the board's (OEM id and tree, layout variant, kernel
//! arguments, initramfs modules), what artifact it ships (disk format, packaging, sidecars),
//! and which virtual hardware boots it in tests. Adding a platform is a data file and an OEM
//! tree.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::units::ByteSize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PlatformFile {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub oem_id: Spanned<String>,
    /// OEM tree, relative to the board-profiles directory.
    pub oem_tree: Spanned<String>,
    /// Layout variant (base, vm, ...).
    pub layout_variant: Spanned<String>,
    /// Appended to the board's and the recipe's kernel arguments.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Appended to the board's and the recipe's initramfs modules: the platform's disk
    /// controllers and NICs.
    #[serde(default)]
    pub initramfs_modules: Vec<String>,
    /// The kernel options this platform needs (a kiln requirement list), relative to the
    /// board-profiles directory. `kiln build` checks the kernel against it before writing
    /// any image.
    pub kernel_requirements: Option<Spanned<String>>,
    pub artifact: ArtifactDef,
    pub boot: BootDef,
}

/// What the platform ships.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactDef {
    /// Disk format: raw, qcow2, vmdk or vhd.
    pub format: DiskFormatName,
    /// qcow2 compat level: "1.1" (qcow2 v3) or "0.10" for QEMU older than 1.1.
    pub compat: Option<String>,
    /// vmdk: monolithicSparse or streamOptimized; vhd: dynamic or fixed.
    pub subformat: Option<String>,
    /// vmdk adapter type: lsilogic, ide, buslogic.
    pub adapter: Option<String>,
    /// How the disk file is packed: none, xz, or gce-tar (a .tar.gz holding disk.raw).
    #[serde(default)]
    pub packing: Packing,
    /// xz preset (0-9) for `packing = "xz"`.
    #[serde(default = "default_xz_level")]
    pub xz_level: u32,
    /// File name extension of the artifact, e.g. "bin.xz", "qcow2", "tar.gz".
    pub extension: String,
    /// The disk's size is rounded up to a multiple of this (GCE wants whole GiB).
    pub size_multiple: Option<ByteSize>,
    /// A fixed disk size; must be a multiple of `size-multiple` and hold the layout.
    pub disk_size: Option<Spanned<ByteSize>>,
    /// Files shipped next to the disk.
    #[serde(default)]
    pub sidecars: Vec<Sidecar>,
    /// Memory and CPUs written into VM descriptions (vmx, OVF, launch script).
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// VM descriptions: SCSI controller (lsilogic, pvscsi) and NIC (vmxnet3, ...).
    pub scsi: Option<String>,
    pub nic: Option<String>,
}

fn default_xz_level() -> u32 {
    6
}

fn default_memory() -> u32 {
    1024
}

fn default_cpus() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormatName {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Packing {
    #[default]
    None,
    Xz,
    GceTar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sidecar {
    /// A POSIX sh script that boots the image with QEMU.
    LaunchScript,
    /// A VMware .vmx beside the vmdk.
    Vmx,
    /// An OVA (ovf, mf, streamOptimized vmdk).
    Ova,
    /// Parameters for EC2 ImportSnapshot/RegisterImage.
    Ec2Json,
    /// Image properties for the OpenStack image service.
    OpenstackJson,
}

/// The virtual hardware that boots the platform's artifact in kiln's tests (and `kiln run
/// --platform`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootDef {
    pub firmware: crate::Firmware,
    /// QEMU machine: q35, or pc for IDE.
    pub machine: String,
    /// QEMU disk device: virtio-blk-pci, ide-hd, scsi-hd (virtio-scsi), nvme, pvscsi, ...
    pub disk: String,
    /// QEMU NIC device: virtio-net-pci, vmxnet3, e1000, ...
    pub nic: String,
    /// Attach a config drive labelled config-2.
    #[serde(default)]
    pub config_drive: bool,
}

/// A platform with everything resolved against the board and the recipe.
#[derive(Debug, Clone, Serialize)]
pub struct Platform {
    pub name: String,
    pub description: String,
    pub oem: crate::Oem,
    pub layout: crate::Layout,
    pub cmdline: Vec<String>,
    pub initramfs_modules: Vec<String>,
    pub artifact: ArtifactDef,
    pub boot: BootDef,
    pub oem_tree_hash: String,
    /// A check on the kernel, not part of the image: left out of the platform's identity
    /// (as a path it would also make the identity depend on where the checkout is).
    #[serde(skip)]
    pub kernel_requirements: Option<std::path::PathBuf>,
}
