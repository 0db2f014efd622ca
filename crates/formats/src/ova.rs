//! The VMware OVA: an OVF 1.0 envelope, its manifest and a streamOptimized VMDK in a ustar
//! tar, in that order.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_host::atomic::{parent_dir, write_file_atomic, Staged};
use kiln_host::hash::sha256_sha512_file;
use kiln_host::tools::{self, TAR};
use kiln_host::Cmd;

use crate::disk::{convert, DiskFormat, Stamp};
use crate::options::{VmdkSubformat, VmwareController, VmwareNic};
use crate::util::{check_plain_name, source_size, xml_escape};

/// The virtual hardware version the OVF and the .vmx ask for (ESXi 6.5, Workstation 12.5
/// and later): it has UEFI, pvscsi and vmxnet3.
pub const VMX_HW_VERSION: u32 = 13;

/// The largest member a ustar tar can hold (11 octal digits).
const USTAR_MAX: u64 = (1 << 33) - 1;

/// What the OVF descriptor says about the virtual machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfInfo {
    /// The VM's name, also the base name of the .ovf, .mf and .vmdk members.
    pub name: String,
    /// The disk's virtual size in bytes (the raw image's size).
    pub capacity_bytes: u64,
    pub memory_mib: u32,
    pub cpus: u32,
    /// vSphere guest id, e.g. "otherLinux64Guest".
    pub os_type: String,
    /// Boot with UEFI (`firmware=efi`) rather than BIOS.
    pub firmware_efi: bool,
    /// The network adapter.
    pub nic: VmwareNic,
    /// The SCSI controller (its OVF name, and the adapter type the disk records).
    pub controller: VmwareController,
}

/// The OVF 1.0 descriptor for one VM whose disk is the streamOptimized VMDK `disk_file_name`
/// of `disk_file_size` bytes. Every string from `info` is XML-escaped.
pub fn ovf_xml(info: &OvfInfo, disk_file_name: &str, disk_file_size: u64) -> String {
    let name = xml_escape(&info.name);
    let href = xml_escape(disk_file_name);
    let os_type = xml_escape(&info.os_type);
    let nic = info.nic.ovf_name();
    let scsi = info.controller.ovf_name();
    let (cpus, mem, cap) = (info.cpus, info.memory_mib, info.capacity_bytes);
    let mut x = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        x,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{href}" ovf:id="file1" ovf:size="{disk_file_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{cap}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="{os_type}">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-{hw:02}</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{mem}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>{scsi}</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>{nic} ethernet adapter on &quot;VM Network&quot;</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>{nic}</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
"#,
        hw = VMX_HW_VERSION,
    );
    if info.firmware_efi {
        x.push_str(
            "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n",
        );
    }
    x.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    x
}

/// Writes the OVA `dest` for the raw disk `raw`: converts it to `<name>.vmdk`
/// (streamOptimized), writes `<name>.ovf` ([`ovf_xml`]) and `<name>.mf` (`SHA256(<file>)=
/// <hex>` for both, as ovftool writes it), and packs them in that order — .ovf, .mf, .vmdk —
/// into a ustar tar with mode 0644, owner 0 and mtime `stamp.created`; the VMDK carries
/// `stamp`'s identifiers.
pub fn ova(raw: &Path, info: &OvfInfo, dest: &Path, stamp: &Stamp) -> Result<()> {
    let epoch = stamp.created;
    check_plain_name("VM name", &info.name)?;
    let size = source_size(raw)?;
    if info.capacity_bytes != size {
        bail!(
            "the OVF capacity ({} bytes) differs from the size of {} ({size} bytes)",
            info.capacity_bytes,
            raw.display()
        );
    }
    if info.cpus == 0 || info.memory_mib == 0 {
        bail!(
            "a VM needs at least one CPU and some memory (got {} CPUs, {} MiB)",
            info.cpus,
            info.memory_mib
        );
    }
    if info.os_type.is_empty() {
        bail!("the OVF needs a guest OS type");
    }
    if epoch < 0 {
        bail!("timestamp {epoch} is before 1970: give a SOURCE_DATE_EPOCH of 0 or later");
    }
    tools::require(TAR)?;

    // Everything is made in a scratch directory beside dest, removed on return.
    let work = tempfile::Builder::new()
        .prefix(".kiln-ova.")
        .tempdir_in(parent_dir(dest))
        .with_context(|| {
            format!(
                "cannot create a scratch directory beside {}",
                dest.display()
            )
        })?;
    let vmdk_name = format!("{}.vmdk", info.name);
    let ovf_name = format!("{}.ovf", info.name);
    let mf_name = format!("{}.mf", info.name);
    let vmdk = work.path().join(&vmdk_name);
    convert(
        raw,
        &DiskFormat::Vmdk {
            subformat: VmdkSubformat::StreamOptimized,
            adapter: info.controller.vmdk_adapter(),
        },
        &vmdk,
        stamp,
    )?;
    let vmdk_size = std::fs::metadata(&vmdk)
        .with_context(|| format!("cannot stat {}", vmdk.display()))?
        .len();
    if vmdk_size > USTAR_MAX {
        bail!(
            "the streamOptimized VMDK is {vmdk_size} bytes, more than the 8 GiB a ustar OVA \
             member can hold"
        );
    }
    let ovf = ovf_xml(info, &vmdk_name, vmdk_size);
    write_file_atomic(&work.path().join(&ovf_name), ovf.as_bytes(), 0o644)?;
    let (ovf_sha, _) = sha256_sha512_file(&work.path().join(&ovf_name))?;
    let (vmdk_sha, _) = sha256_sha512_file(&vmdk)?;
    let mf = format!("SHA256({ovf_name})= {ovf_sha}\nSHA256({vmdk_name})= {vmdk_sha}\n");
    write_file_atomic(&work.path().join(&mf_name), mf.as_bytes(), 0o644)?;

    let staged = Staged::new(dest)?;
    let mut cmd = Cmd::new(TAR);
    cmd.args([
        "--create",
        "--format=ustar",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--mode=0644",
        "--no-recursion",
    ])
    .arg(format!("--mtime=@{epoch}"))
    .arg("--file")
    .arg(staged.path())
    .arg("--directory")
    .arg(work.path())
    .arg("--")
    // Members in the order the OVF specification requires: descriptor, manifest, disk.
    .args([&ovf_name, &mf_name, &vmdk_name])
    .what(format!("write the OVA {}", dest.display()))
    .run()?;
    staged.commit(0o644)?;
    work.close().with_context(|| {
        format!(
            "cannot remove the scratch directory beside {}",
            dest.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn stamp(created: i64) -> Stamp {
        Stamp {
            created,
            id: [1; 16],
        }
    }

    fn info(size: u64) -> OvfInfo {
        OvfInfo {
            name: "kiln-vmware".into(),
            capacity_bytes: size,
            memory_mib: 1024,
            cpus: 2,
            os_type: "otherLinux64Guest".into(),
            firmware_efi: true,
            nic: VmwareNic::Vmxnet3,
            controller: VmwareController::Pvscsi,
        }
    }

    #[test]
    fn ovf_is_well_formed_and_escaped() {
        let mut i = info(4 << 20);
        i.name = r#"a<b>&"c'"#.into();
        let xml = ovf_xml(&i, "d&<.vmdk", 12345);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let ovf = "http://schemas.dmtf.org/ovf/envelope/1";
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "Envelope");
        let file = doc.descendants().find(|n| n.has_tag_name("File")).unwrap();
        assert_eq!(file.attribute((ovf, "href")), Some("d&<.vmdk"));
        assert_eq!(file.attribute((ovf, "size")), Some("12345"));
        let disk = doc.descendants().find(|n| n.has_tag_name("Disk")).unwrap();
        assert_eq!(disk.attribute((ovf, "capacity")), Some("4194304"));
        assert!(disk
            .attribute((ovf, "format"))
            .unwrap()
            .ends_with("#streamOptimized"));
        let name = doc.descendants().find(|n| n.has_tag_name("Name")).unwrap();
        assert_eq!(name.text(), Some(r#"a<b>&"c'"#));
        let os = doc
            .descendants()
            .find(|n| n.has_tag_name("OperatingSystemSection"))
            .unwrap();
        assert_eq!(os.attribute((ovf, "id")), Some("101"));
        let vmw = "http://www.vmware.com/schema/ovf";
        assert_eq!(os.attribute((vmw, "osType")), Some("otherLinux64Guest"));
        let config = doc
            .descendants()
            .find(|n| n.has_tag_name("Config"))
            .unwrap();
        assert_eq!(config.attribute((vmw, "key")), Some("firmware"));
        assert_eq!(config.attribute((vmw, "value")), Some("efi"));
        // Resource types: CPU, memory, SCSI controller, disk, ethernet.
        let rasd =
            "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
        let types: Vec<&str> = doc
            .descendants()
            .filter(|n| n.tag_name().namespace() == Some(rasd) && n.has_tag_name("ResourceType"))
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(types, ["3", "4", "6", "17", "10"]);

        i.firmware_efi = false;
        let xml = ovf_xml(&i, "d.vmdk", 1);
        roxmltree::Document::parse(&xml).unwrap();
        assert!(!xml.contains("firmware"));
    }

    #[test]
    fn ova_members_in_order_and_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 << 20);
        let dest = dir.path().join("kiln.ova");
        ova(&raw, &info(4 << 20), &dest, &stamp(1735689600)).unwrap();
        let listing = sh(&format!("TZ=UTC tar --full-time -tvf '{}'", dest.display()));
        let rows: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let names: Vec<&str> = rows.iter().map(|r| r[5]).collect();
        assert_eq!(
            names,
            ["kiln-vmware.ovf", "kiln-vmware.mf", "kiln-vmware.vmdk"]
        );
        for r in &rows {
            assert_eq!(&r[..2], ["-rw-r--r--", "0/0"], "{listing}");
            assert_eq!(&r[3..5], ["2025-01-01", "00:00:00"], "{listing}");
        }
        let header = std::fs::read(&dest).unwrap();
        assert_eq!(&header[257..263], b"ustar\0", "POSIX ustar magic");

        let out = dir.path().join("x");
        std::fs::create_dir(&out).unwrap();
        sh(&format!(
            "tar -xf '{}' -C '{}'",
            dest.display(),
            out.display()
        ));
        // The manifest verifies: turn "SHA256(f)= h" into sha256sum's "h  f".
        sh(&format!(
            "cd '{}' && sed -n 's/^SHA256(\\(.*\\))= \\(.*\\)$/\\2  \\1/p' kiln-vmware.mf | sha256sum -c",
            out.display()
        ));
        let vmdk = out.join("kiln-vmware.vmdk");
        let i = qemu_info(&vmdk, "vmdk");
        assert_eq!(i.vmdk_create_type(), Some("streamOptimized"), "{i:?}");
        qemu_check(&vmdk, "vmdk");
        qemu_compare(&raw, &vmdk, "vmdk");
        let ovf = std::fs::read_to_string(out.join("kiln-vmware.ovf")).unwrap();
        let size = std::fs::metadata(&vmdk).unwrap().len();
        assert!(ovf.contains(&format!("ovf:size=\"{size}\"")));
        assert!(ovf.contains("<rasd:ResourceSubType>VirtualSCSI<"));
        // Nothing but the source and the OVA are left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn bad_input_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 << 20);
        let dest = dir.path().join("kiln.ova");
        let mut bad = info(4 << 20);
        bad.name = "../evil".into();
        assert!(ova(&raw, &bad, &dest, &stamp(0)).is_err());
        let e = ova(&raw, &info(8 << 20), &dest, &stamp(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("8388608"), "{e}");
        let mut bad = info(4 << 20);
        bad.os_type = String::new();
        assert!(ova(&raw, &bad, &dest, &stamp(0)).is_err());
        assert!(ova(
            &dir.path().join("missing.raw"),
            &info(4 << 20),
            &dest,
            &stamp(0)
        )
        .is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
