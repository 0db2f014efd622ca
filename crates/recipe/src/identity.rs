//! The identity of an image: a SHA-256 over everything that defines it, independent of where
//! the checkout lives. It seeds every identifier that would otherwise be random (disk GUID,
//! filesystem UUIDs, hash seeds, FAT serials, VHD and VMDK ids), so it is written here field by
//! field, apart from the types the rest of the crate evolves: a new internal field must not
//! change the bytes of every image. The JSON below is the identity's definition; it is the
//! shape kiln has hashed since its first platforms, and `tests/data/golden/minimal.sha256`
//! pins it. A field added to what defines an image is added here only when it differs from
//! the value every image had before it existed (as `guest-os` below), so existing images keep
//! their identity.

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::board::{Firmware, GrubDef, KernelSource, QemuDef};
use crate::layout::{Content, Filesystem, Layout};
use crate::platform::{
    defaults, ArtifactFile, BootDef, FormatName, PackingName, Platform, Sidecar,
};
use crate::recipe::ConfigBase;
use crate::units::ByteSize;
use crate::Resolved;

#[derive(Serialize)]
struct RecipeId<'a> {
    name: &'a str,
    os: OsId<'a>,
    packages: PackagesId<'a>,
    usr_filesystem: Filesystem,
    usr_compression: &'a str,
    board: BoardId<'a>,
    kernel: KernelId<'a>,
    layout: LayoutId<'a>,
    oem: OemId<'a>,
    source_date_epoch: i64,
    tree_hashes: &'a [String],
}

#[derive(Serialize)]
struct OsId<'a> {
    name: &'a str,
    id: &'a str,
    version: &'a str,
    version_id: &'a str,
    channel: &'a str,
}

#[derive(Serialize)]
struct PackagesId<'a> {
    suite: &'a str,
    mirrors: &'a [String],
    components: &'a [String],
    variant: &'a str,
    include: &'a [String],
}

#[derive(Serialize)]
struct BoardId<'a> {
    name: &'a str,
    arch: &'a str,
    debian_arch: &'a str,
    firmware: &'a [Firmware],
    grub: &'a GrubDef,
    qemu: &'a QemuDef,
}

#[derive(Serialize)]
struct KernelId<'a> {
    source: KernelSource,
    package: &'a str,
    build: Option<KernelBuildId<'a>>,
    cmdline: &'a [String],
    initramfs_modules: &'a [String],
    board_initramfs_modules: &'a [String],
}

#[derive(Serialize)]
struct KernelBuildId<'a> {
    fragments_hash: &'a str,
    base: ConfigBase,
}

#[derive(Serialize)]
struct OemId<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct LayoutId<'a> {
    name: &'a str,
    variant: &'a str,
    alignment: u64,
    partitions: Vec<PartitionId<'a>>,
}

#[derive(Serialize)]
struct PartitionId<'a> {
    number: u32,
    label: &'a str,
    type_name: &'a str,
    type_guid: Uuid,
    uuid: Option<Uuid>,
    size: ByteSize,
    content: Content,
    filesystem: Option<Filesystem>,
    /// Lower case, as layout files write it.
    slot: Option<&'static str>,
    priority: u8,
    tries: u8,
    successful: bool,
}

#[derive(Serialize)]
struct PlatformId<'a> {
    name: &'a str,
    description: &'a str,
    oem: OemId<'a>,
    layout: LayoutId<'a>,
    cmdline: &'a [String],
    initramfs_modules: &'a [String],
    artifact: ArtifactId<'a>,
    boot: &'a BootDef,
    oem_tree_hash: &'a str,
}

/// The `[artifact]` table with the defaults of the first platform files applied, and the
/// VMware names in the fields they had before the controller was named once.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ArtifactId<'a> {
    format: FormatName,
    compat: Option<&'static str>,
    subformat: Option<&'a str>,
    adapter: Option<&'static str>,
    packing: PackingName,
    xz_level: u32,
    extension: &'a str,
    size_multiple: Option<ByteSize>,
    disk_size: Option<ByteSize>,
    sidecars: Vec<Sidecar>,
    memory_mib: u32,
    cpus: u32,
    scsi: Option<&'static str>,
    nic: Option<&'static str>,
    /// Not in the identity while it is the guest OS every VMware image had before it was
    /// data.
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_os: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ovf_os_type: Option<&'a str>,
}

/// The .vmx guest OS and OVF OS type kiln wrote before they were data.
const FIRST_GUEST_OS: &str = "other5xlinux-64";
const FIRST_OVF_OS_TYPE: &str = "otherLinux64Guest";

fn layout(l: &Layout) -> LayoutId<'_> {
    LayoutId {
        name: &l.name,
        variant: &l.variant,
        alignment: l.alignment,
        partitions: l
            .partitions
            .iter()
            .map(|p| PartitionId {
                number: p.number,
                label: &p.label,
                type_name: &p.type_name,
                type_guid: p.type_guid,
                uuid: p.uuid,
                size: p.size,
                content: p.content,
                filesystem: p.filesystem,
                slot: p.slot.map(|s| s.key()),
                priority: p.priority,
                tries: p.tries,
                successful: p.successful,
            })
            .collect(),
    }
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The recipe's identity.
pub(crate) fn recipe(r: &Resolved) -> String {
    let id = RecipeId {
        name: &r.name,
        os: OsId {
            name: &r.os.name,
            id: &r.os.id,
            version: &r.os.version,
            version_id: &r.os.version_id,
            channel: &r.os.channel,
        },
        packages: PackagesId {
            suite: &r.packages.suite,
            mirrors: &r.packages.mirrors,
            components: &r.packages.components,
            variant: &r.packages.variant,
            include: &r.packages.include,
        },
        usr_filesystem: r.usr_filesystem,
        usr_compression: &r.usr_compression,
        board: BoardId {
            name: &r.board.name,
            arch: &r.board.arch,
            debian_arch: &r.board.debian_arch,
            firmware: &r.board.firmware,
            grub: &r.board.grub,
            qemu: &r.board.qemu,
        },
        kernel: KernelId {
            source: r.kernel.source,
            package: &r.kernel.package,
            build: r.kernel.build.as_ref().map(|b| KernelBuildId {
                fragments_hash: &b.fragments_hash,
                base: b.base,
            }),
            cmdline: &r.kernel.cmdline,
            initramfs_modules: &r.kernel.initramfs_modules,
            board_initramfs_modules: &r.kernel.board_initramfs_modules,
        },
        layout: layout(&r.layout),
        oem: OemId { id: &r.oem.id },
        source_date_epoch: r.source_date_epoch,
        tree_hashes: &r.tree_hashes,
    };
    let json = serde_json::to_vec(&id).expect("plain data serializes");
    hex_sha256(&[&json])
}

/// A platform image's identity: the recipe's and the platform's definition (`file` is its
/// `[artifact]` table as written).
pub(crate) fn platform(recipe_identity: &str, p: &Platform, file: &ArtifactFile) -> String {
    let vmware = p.artifact.vmware.as_ref();
    let artifact = ArtifactId {
        format: *file.format.get_ref(),
        compat: file.compat.as_ref().map(|c| c.get_ref().as_str()),
        subformat: file.subformat.as_ref().map(|s| s.get_ref().as_str()),
        adapter: vmware.map(|v| v.controller.vmdk_adapter().as_str()),
        packing: file
            .packing
            .as_ref()
            .map_or(PackingName::None, |p| *p.get_ref()),
        xz_level: file
            .xz_level
            .as_ref()
            .map_or(defaults::XZ_LEVEL, |l| *l.get_ref()),
        extension: &p.artifact.extension,
        size_multiple: p.artifact.size.multiple,
        disk_size: p.artifact.size.fixed,
        sidecars: p.artifact.sidecars.clone(),
        memory_mib: file
            .memory_mib
            .as_ref()
            .map_or(defaults::MEMORY_MIB, |m| *m.get_ref()),
        cpus: file.cpus.as_ref().map_or(defaults::CPUS, |c| *c.get_ref()),
        scsi: vmware.map(|v| v.controller.vmx_name()),
        nic: vmware.map(|v| v.nic.vmx_name()),
        guest_os: vmware
            .map(|v| v.guest_os.as_str())
            .filter(|g| *g != FIRST_GUEST_OS),
        ovf_os_type: vmware
            .map(|v| v.ovf_os_type.as_str())
            .filter(|g| *g != FIRST_OVF_OS_TYPE),
    };
    let id = PlatformId {
        name: &p.name,
        description: &p.description,
        oem: OemId { id: &p.oem.id },
        layout: layout(&p.layout),
        cmdline: &p.cmdline,
        initramfs_modules: &p.initramfs_modules,
        artifact,
        boot: &p.boot,
        oem_tree_hash: &p.oem_tree_hash,
    };
    let json = serde_json::to_vec(&id).expect("plain data serializes");
    hex_sha256(&[recipe_identity.as_bytes(), &json])
}
