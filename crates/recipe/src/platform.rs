//! Platforms as data: one TOML file per platform under `<board-profiles>/platforms/` says
//! how its image differs from the board's (OEM id and tree, layout variant, kernel
//! arguments, initramfs modules), what artifact it ships (disk format and its options,
//! packing, sidecars, what VM descriptions say) and which virtual hardware boots it in tests.
//! Adding a platform is a data file and an OEM tree.
//!
//! Every option is checked when the file is read, against the format it belongs to, with
//! the file, line and column of the mistake and the allowed values: nothing reaches qemu-img
//! that it would refuse after the stages are built.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kiln_formats::{
    DiskFormat, Qcow2Compat, VhdSubformat, VmdkSubformat, VmwareController, VmwareNic,
};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::board::Firmware;
use crate::layout::Layout;
use crate::names::{check_descriptor_value, check_kernel_arg, check_name};
use crate::source::SourceFile;
use crate::units::ByteSize;
use crate::Oem;

/// Platform files live here, relative to the board profiles directory.
pub const PLATFORM_DIR_NAME: &str = "platforms";

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
    pub cmdline: Vec<Spanned<String>>,
    /// Appended to the board's and the recipe's initramfs modules: the platform's disk
    /// controllers and NICs.
    #[serde(default)]
    pub initramfs_modules: Vec<String>,
    /// The kernel options this platform needs (a kiln requirement list), relative to the
    /// board-profiles directory. `kiln build` checks the kernel against it before writing
    /// any image.
    pub kernel_requirements: Option<Spanned<String>>,
    pub artifact: ArtifactFile,
    pub boot: BootDef,
}

/// The `[artifact]` table as written: options are checked against the format in [`load`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactFile {
    pub format: Spanned<FormatName>,
    /// qcow2: "1.1" (qcow2 v3, the default) or "0.10" for QEMU older than 1.1.
    pub compat: Option<Spanned<Qcow2Compat>>,
    /// vmdk: monolithicSparse or streamOptimized; vhd: dynamic or fixed.
    pub subformat: Option<Spanned<String>>,
    /// How the disk file is packed: none, xz, or gce-tar (a .tar.gz holding disk.raw).
    pub packing: Option<Spanned<PackingName>>,
    /// xz preset (0-9) for `packing = "xz"` [default: 6].
    pub xz_level: Option<Spanned<u32>>,
    /// File name extension of the artifact, e.g. "bin.xz", "qcow2", "tar.gz".
    pub extension: Spanned<String>,
    /// The disk's size is rounded up to a multiple of this (GCE wants whole GiB).
    pub size_multiple: Option<Spanned<ByteSize>>,
    /// A fixed disk size; must be a multiple of `size-multiple` and hold the layout.
    pub disk_size: Option<Spanned<ByteSize>>,
    /// Files shipped next to the disk.
    #[serde(default)]
    pub sidecars: Vec<Spanned<Sidecar>>,
    /// Memory and CPUs written into VM descriptions (vmx, OVF, launch script).
    pub memory_mib: Option<Spanned<u32>>,
    pub cpus: Option<Spanned<u32>>,
    /// What VMware's descriptors say: for a vmdk, and the vmx and ova sidecars.
    pub vmware: Option<Spanned<VmwareFile>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmwareFile {
    /// The disk controller, named once: the vmdk descriptor's adapter type, the .vmx's
    /// `scsi0.virtualDev` and the OVF's controller follow from it.
    pub controller: VmwareController,
    /// The network adapter of the .vmx and the OVF.
    pub nic: VmwareNic,
    /// The .vmx's `guestOS`, e.g. other5xlinux-64.
    pub guest_os: Spanned<String>,
    /// The OVF's `vmw:osType`, e.g. otherLinux64Guest.
    pub ovf_os_type: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FormatName {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
}

impl FormatName {
    pub fn as_str(self) -> &'static str {
        match self {
            FormatName::Raw => "raw",
            FormatName::Qcow2 => "qcow2",
            FormatName::Vmdk => "vmdk",
            FormatName::Vhd => "vhd",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackingName {
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

impl Sidecar {
    fn as_str(self) -> &'static str {
        match self {
            Sidecar::LaunchScript => "launch-script",
            Sidecar::Vmx => "vmx",
            Sidecar::Ova => "ova",
            Sidecar::Ec2Json => "ec2-json",
            Sidecar::OpenstackJson => "openstack-json",
        }
    }
}

/// The virtual hardware that boots the platform's artifact in kiln's tests (and `kiln run
/// --platform`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootDef {
    pub firmware: Firmware,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    None,
    Xz { level: u32 },
    GceTar,
}

/// What VMware's descriptors say about the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmware {
    pub controller: VmwareController,
    pub nic: VmwareNic,
    pub guest_os: String,
    pub ovf_os_type: String,
}

/// How the disk's size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSize {
    /// Rounded up to a multiple of this.
    pub multiple: Option<ByteSize>,
    /// Exactly this, if it holds the layout.
    pub fixed: Option<ByteSize>,
}

/// What the platform ships, every option checked against its format.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The format and its qemu-img options (a vmdk's adapter type follows the VMware
    /// controller).
    pub format: DiskFormat,
    pub packing: Packing,
    pub extension: String,
    pub size: DiskSize,
    pub sidecars: Vec<Sidecar>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub vmware: Option<Vmware>,
}

/// A platform with everything resolved against the board and the recipe.
#[derive(Debug, Clone)]
pub struct Platform {
    pub name: String,
    pub description: String,
    pub oem: Oem,
    pub layout: Layout,
    pub cmdline: Vec<String>,
    pub initramfs_modules: Vec<String>,
    pub artifact: Artifact,
    pub boot: BootDef,
    pub oem_tree_hash: String,
    /// A check on the kernel, not part of the image.
    pub kernel_requirements: Option<PathBuf>,
    /// Seeds the platform image's identifiers: the recipe's identity and the platform's
    /// definition (see [`crate::identity`]).
    pub identity: String,
}

const DEFAULT_XZ_LEVEL: u32 = 6;
const DEFAULT_MEMORY_MIB: u32 = 1024;
const DEFAULT_CPUS: u32 = 2;

/// What the board and the recipe give every platform.
pub struct Context<'a> {
    pub board_dir: &'a Path,
    pub layout_path: &'a Path,
    pub board_firmware: &'a [Firmware],
    pub cmdline: &'a [String],
    pub initramfs_modules: &'a [String],
    pub recipe_identity: &'a str,
}

/// Reads and resolves `<board_dir>/platforms/<name>.toml`.
pub fn load(name: &str, cx: &Context) -> Result<Platform> {
    let path = cx
        .board_dir
        .join(PLATFORM_DIR_NAME)
        .join(format!("{name}.toml"));
    let src = SourceFile::read(&path)?;
    let f: PlatformFile = src.parse()?;
    if f.name.get_ref() != name {
        return Err(src.error_at(
            &f.name.span(),
            format!(
                "platform name `{}` does not match its file name `{name}.toml`",
                f.name.get_ref()
            ),
        ));
    }
    check_name(f.oem_id.get_ref()).map_err(|m| src.error_at(&f.oem_id.span(), m))?;
    let tree = cx.board_dir.join(f.oem_tree.get_ref());
    if !tree.is_dir() {
        return Err(src.error_at(
            &f.oem_tree.span(),
            format!("OEM tree {} does not exist", tree.display()),
        ));
    }
    crate::tree::check_symlinks_inside(&tree).map_err(|e| src.error_at(&f.oem_tree.span(), e))?;
    let layout = crate::layout::load(cx.layout_path, &f.layout_variant, &src)?;
    crate::layout::check_for_firmware(&layout, &[f.boot.firmware], cx.layout_path)?;
    if !cx.board_firmware.contains(&f.boot.firmware) {
        bail!(
            "{}: boot.firmware {} is not one the board supports",
            path.display(),
            f.boot.firmware.as_str()
        );
    }
    let mut cmdline = cx.cmdline.to_vec();
    for arg in &f.cmdline {
        check_kernel_arg(arg.get_ref()).map_err(|m| src.error_at(&arg.span(), m))?;
        cmdline.push(arg.get_ref().clone());
    }
    let mut initramfs_modules = cx.initramfs_modules.to_vec();
    initramfs_modules.extend(f.initramfs_modules.iter().cloned());
    let artifact = artifact(&f.artifact, &src)?;
    let kernel_requirements = match &f.kernel_requirements {
        Some(k) => {
            let p = cx.board_dir.join(k.get_ref());
            if !p.is_file() {
                return Err(src.error_at(
                    &k.span(),
                    format!("kernel requirement list {} does not exist", p.display()),
                ));
            }
            Some(p)
        }
        None => None,
    };
    let mut p = Platform {
        kernel_requirements,
        name: name.to_string(),
        description: f.description.clone().unwrap_or_default(),
        oem_tree_hash: crate::tree::hash_tree(&tree)?,
        oem: Oem {
            id: f.oem_id.get_ref().clone(),
            tree,
        },
        layout,
        cmdline,
        initramfs_modules,
        artifact,
        boot: f.boot.clone(),
        identity: String::new(),
    };
    p.identity = crate::identity::platform(cx.recipe_identity, &p, &f.artifact);
    Ok(p)
}

/// `what` is an option of another format or packing than the one the file chose.
fn misplaced(
    src: &SourceFile,
    span: std::ops::Range<usize>,
    what: &str,
    belongs: &str,
    chosen: &str,
) -> anyhow::Error {
    src.error_at(
        &span,
        format!("`{what}` is {belongs}; this platform's artifact is {chosen}: remove it or change the format"),
    )
}

/// Checks the `[artifact]` table against its format and resolves it.
fn artifact(a: &ArtifactFile, src: &SourceFile) -> Result<Artifact> {
    let name = *a.format.get_ref();
    let chosen = format!("format = \"{}\"", name.as_str());
    if let Some(c) = &a.compat {
        if name != FormatName::Qcow2 {
            return Err(misplaced(
                src,
                c.span(),
                "compat",
                "a qcow2 option",
                &chosen,
            ));
        }
    }
    let subformat = |allowed: &[&str]| -> Result<Option<String>> {
        match &a.subformat {
            None => Ok(None),
            Some(s) if allowed.is_empty() => Err(misplaced(
                src,
                s.span(),
                "subformat",
                "a vmdk or vhd option",
                &chosen,
            )),
            Some(s) if !allowed.contains(&s.get_ref().as_str()) => Err(src.error_at(
                &s.span(),
                format!(
                    "unknown {} subformat `{}`; expected one of {}",
                    name.as_str(),
                    s.get_ref(),
                    allowed.join(", ")
                ),
            )),
            Some(s) => Ok(Some(s.get_ref().clone())),
        }
    };
    let vmware = match &a.vmware {
        None => None,
        Some(v) => {
            let needs = name == FormatName::Vmdk
                || a.sidecars
                    .iter()
                    .any(|s| matches!(s.get_ref(), Sidecar::Vmx | Sidecar::Ova));
            if !needs {
                return Err(src.error_at(
                    &v.span(),
                    format!("[artifact.vmware] describes a VMware machine: it goes with format = \"vmdk\" or the vmx and ova sidecars; this platform's artifact is {chosen}"),
                ));
            }
            let f = v.get_ref();
            for (key, val) in [("guest-os", &f.guest_os), ("ovf-os-type", &f.ovf_os_type)] {
                check_descriptor_value(val.get_ref())
                    .map_err(|m| src.error_at(&val.span(), format!("{key}: {m}")))?;
            }
            Some(Vmware {
                controller: f.controller,
                nic: f.nic,
                guest_os: f.guest_os.get_ref().clone(),
                ovf_os_type: f.ovf_os_type.get_ref().clone(),
            })
        }
    };
    let format = match name {
        FormatName::Raw => {
            subformat(&[])?;
            DiskFormat::Raw
        }
        FormatName::Qcow2 => {
            subformat(&[])?;
            DiskFormat::Qcow2 {
                compat: a.compat.as_ref().map_or(Qcow2Compat::V3, |c| *c.get_ref()),
            }
        }
        FormatName::Vmdk => {
            let Some(v) = &vmware else {
                return Err(src.error_at(
                    &a.format.span(),
                    "a vmdk needs an [artifact.vmware] table: its controller is the disk's \
                     adapter type (controller, nic, guest-os, ovf-os-type)",
                ));
            };
            DiskFormat::Vmdk {
                subformat: subformat(VmdkSubformat::NAMES)?
                    .map_or(Ok(VmdkSubformat::MonolithicSparse), |s| s.parse())
                    .map_err(anyhow::Error::msg)?,
                adapter: v.controller.vmdk_adapter(),
            }
        }
        FormatName::Vhd => DiskFormat::Vhd {
            subformat: subformat(VhdSubformat::NAMES)?
                .map_or(Ok(VhdSubformat::Dynamic), |s| s.parse())
                .map_err(anyhow::Error::msg)?,
        },
    };

    let packing_name = a
        .packing
        .as_ref()
        .map_or(PackingName::None, |p| *p.get_ref());
    if let Some(l) = &a.xz_level {
        if packing_name != PackingName::Xz {
            return Err(misplaced(
                src,
                l.span(),
                "xz-level",
                "an option of packing = \"xz\"",
                "not packed with xz",
            ));
        }
        if *l.get_ref() > 9 {
            return Err(src.error_at(
                &l.span(),
                "xz-level is an xz preset: 0 (fastest) to 9 (smallest)",
            ));
        }
    }
    let packing = match packing_name {
        PackingName::None => Packing::None,
        PackingName::Xz => Packing::Xz {
            level: a
                .xz_level
                .as_ref()
                .map_or(DEFAULT_XZ_LEVEL, |l| *l.get_ref()),
        },
        PackingName::GceTar => Packing::GceTar,
    };
    if packing != Packing::None && format != DiskFormat::Raw {
        let p = a.packing.as_ref().expect("set: not none");
        return Err(src.error_at(
            &p.span(),
            format!(
                "packing = \"{}\" packs a raw disk; this platform's artifact is {chosen}",
                if packing == Packing::GceTar {
                    "gce-tar"
                } else {
                    "xz"
                }
            ),
        ));
    }

    let ext = a.extension.get_ref();
    if ext.is_empty()
        || ext.starts_with('.')
        || ext.contains('/')
        || ext.contains(char::is_whitespace)
    {
        return Err(src.error_at(
            &a.extension.span(),
            format!(
                "extension `{ext}` must be like \"qcow2\" or \"tar.gz\" (no leading dot, no /)"
            ),
        ));
    }

    let multiple = a.size_multiple.as_ref().map(|m| *m.get_ref());
    if let Some(m) = &a.size_multiple {
        if m.get_ref().0 == 0 || !m.get_ref().0.is_multiple_of(512) {
            return Err(src.error_at(
                &m.span(),
                "size-multiple must be a non-zero multiple of 512 bytes",
            ));
        }
        if packing == Packing::GceTar && !m.get_ref().0.is_multiple_of(1 << 30) {
            return Err(src.error_at(
                &m.span(),
                "a GCE image is a whole number of GiB: size-multiple must be a multiple of 1GiB",
            ));
        }
    } else if packing == Packing::GceTar && a.disk_size.is_none() {
        return Err(src.error_at(
            &a.format.span(),
            "a GCE image is a whole number of GiB: set size-multiple = \"1GiB\" (or a disk-size)",
        ));
    }
    if let (Some(size), Some(mult)) = (&a.disk_size, multiple) {
        if !size.get_ref().0.is_multiple_of(mult.0) {
            return Err(src.error_at(
                &size.span(),
                format!(
                    "disk-size {} is not a multiple of size-multiple {}",
                    size.get_ref(),
                    mult
                ),
            ));
        }
    }

    let mut sidecars = Vec::new();
    for s in &a.sidecars {
        let sc = *s.get_ref();
        if sidecars.contains(&sc) {
            return Err(src.error_at(
                &s.span(),
                format!("sidecar `{}` is listed twice", sc.as_str()),
            ));
        }
        let fits = match sc {
            // QEMU boots what it reads directly: not a packed disk.
            Sidecar::LaunchScript => packing == Packing::None,
            Sidecar::Vmx => matches!(
                format,
                DiskFormat::Vmdk {
                    subformat: VmdkSubformat::MonolithicSparse,
                    ..
                }
            ),
            Sidecar::Ova => vmware.is_some(),
            Sidecar::Ec2Json => format == DiskFormat::Raw,
            Sidecar::OpenstackJson => {
                matches!(format, DiskFormat::Qcow2 { .. }) && packing == Packing::None
            }
        };
        if !fits {
            let need = match sc {
                Sidecar::LaunchScript => "a disk QEMU reads as it is (packing = \"none\")",
                Sidecar::Vmx => "format = \"vmdk\" with subformat = \"monolithicSparse\"",
                Sidecar::Ova => "an [artifact.vmware] table (the OVF describes a VMware machine)",
                Sidecar::Ec2Json => "format = \"raw\" (EC2 imports a RAW disk)",
                Sidecar::OpenstackJson => {
                    "format = \"qcow2\", not packed (its disk_format is qcow2)"
                }
            };
            return Err(src.error_at(
                &s.span(),
                format!(
                    "sidecar `{}` needs {need}; this platform's artifact is {chosen}",
                    sc.as_str()
                ),
            ));
        }
        sidecars.push(sc);
    }

    let positive = |v: &Option<Spanned<u32>>, key: &str, default: u32| -> Result<u32> {
        match v {
            None => Ok(default),
            Some(x) if *x.get_ref() == 0 => {
                Err(src.error_at(&x.span(), format!("{key} must be at least 1")))
            }
            Some(x) => Ok(*x.get_ref()),
        }
    };
    Ok(Artifact {
        format,
        packing,
        extension: ext.clone(),
        size: DiskSize {
            multiple,
            fixed: a.disk_size.as_ref().map(|s| *s.get_ref()),
        },
        sidecars,
        memory_mib: positive(&a.memory_mib, "memory-mib", DEFAULT_MEMORY_MIB)?,
        cpus: positive(&a.cpus, "cpus", DEFAULT_CPUS)?,
        vmware,
    })
}

/// The defaults the identity of a platform records when its file leaves them out, as the
/// first platform files were read (see [`crate::identity`]).
pub(crate) mod defaults {
    pub const XZ_LEVEL: u32 = super::DEFAULT_XZ_LEVEL;
    pub const MEMORY_MIB: u32 = super::DEFAULT_MEMORY_MIB;
    pub const CPUS: u32 = super::DEFAULT_CPUS;
}
