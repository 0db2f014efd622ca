//! The VMware .vmx configuration that sits beside a monolithicSparse .vmdk.

use crate::options::{VmwareController, VmwareNic};
use crate::ova::VMX_HW_VERSION;

/// What the .vmx describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxInfo {
    /// displayName.
    pub name: String,
    /// The .vmdk beside the .vmx (a file name, relative to it).
    pub disk_file_name: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The SCSI controller (scsi0.virtualDev).
    pub controller: VmwareController,
    /// ethernet0.virtualDev, e.g. "vmxnet3".
    pub nic: VmwareNic,
    /// Boot with UEFI (`firmware = "efi"`) rather than BIOS.
    pub firmware_efi: bool,
    /// guestOS, e.g. "other-64" or "other5xlinux-64".
    pub guest_os: String,
}

/// Quotes a .vmx value. VMware escapes with `|` and two hex digits: `"` is `|22`, `|` is
/// `|7C`, and control characters likewise.
fn q(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' | '|' => s.push_str(&format!("|{:02X}", c as u32)),
            c if (c as u32) < 0x20 || c == '\u{7f}' => s.push_str(&format!("|{:02X}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The .vmx text: hardware version 13, the disk on scsi0:0, a NAT NIC with a generated
/// address, the serial port written to `serial0.log` beside the VM, UEFI when asked.
pub fn vmx(info: &VmxInfo) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        (".encoding", q("UTF-8")),
        ("config.version", q("8")),
        ("virtualHW.version", q(&VMX_HW_VERSION.to_string())),
        ("displayName", q(&info.name)),
        ("guestOS", q(&info.guest_os)),
        ("memsize", q(&info.memory_mib.to_string())),
        ("numvcpus", q(&info.cpus.to_string())),
    ];
    if info.firmware_efi {
        lines.push(("firmware", q("efi")));
    }
    lines.extend([
        // PCIe root ports for the PCIe devices below (pvscsi, vmxnet3).
        ("pciBridge0.present", q("TRUE")),
        ("pciBridge4.present", q("TRUE")),
        ("pciBridge4.virtualDev", q("pcieRootPort")),
        ("pciBridge4.functions", q("8")),
        ("scsi0.present", q("TRUE")),
        ("scsi0.virtualDev", q(info.controller.vmx_name())),
        ("scsi0:0.present", q("TRUE")),
        ("scsi0:0.fileName", q(&info.disk_file_name)),
        ("ethernet0.present", q("TRUE")),
        ("ethernet0.virtualDev", q(info.nic.vmx_name())),
        ("ethernet0.connectionType", q("nat")),
        ("ethernet0.addressType", q("generated")),
        ("serial0.present", q("TRUE")),
        ("serial0.fileType", q("file")),
        ("serial0.fileName", q("serial0.log")),
        ("floppy0.present", q("FALSE")),
    ]);
    let mut out = String::from("#!/usr/bin/vmware\n");
    for (k, v) in lines {
        out.push_str(k);
        out.push_str(" = ");
        out.push_str(&v);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> VmxInfo {
        VmxInfo {
            name: "kiln \"test\" | vm".into(),
            disk_file_name: "kiln.vmdk".into(),
            memory_mib: 1024,
            cpus: 2,
            controller: VmwareController::Pvscsi,
            nic: VmwareNic::Vmxnet3,
            firmware_efi: true,
            guest_os: "other5xlinux-64".into(),
        }
    }

    #[test]
    fn every_line_is_a_quoted_key_value() {
        let text = vmx(&info());
        let mut keys = std::collections::HashMap::new();
        for line in text.lines().skip(1) {
            let (k, v) = line.split_once(" = ").unwrap();
            assert!(
                v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                "{line}"
            );
            assert!(!v[1..v.len() - 1].contains('"'), "{line}");
            assert!(
                keys.insert(k.to_string(), v.to_string()).is_none(),
                "dup {k}"
            );
        }
        assert_eq!(keys["config.version"], "\"8\"");
        assert_eq!(keys["virtualHW.version"], "\"13\"");
        assert_eq!(keys["displayName"], "\"kiln |22test|22 |7C vm\"");
        assert_eq!(keys["guestOS"], "\"other5xlinux-64\"");
        assert_eq!(keys["memsize"], "\"1024\"");
        assert_eq!(keys["numvcpus"], "\"2\"");
        assert_eq!(keys["scsi0.virtualDev"], "\"pvscsi\"");
        assert_eq!(keys["scsi0:0.fileName"], "\"kiln.vmdk\"");
        assert_eq!(keys["ethernet0.virtualDev"], "\"vmxnet3\"");
        assert_eq!(keys["ethernet0.connectionType"], "\"nat\"");
        assert_eq!(keys["ethernet0.addressType"], "\"generated\"");
        assert_eq!(keys["serial0.fileType"], "\"file\"");
        assert_eq!(keys["firmware"], "\"efi\"");

        let mut bios = info();
        bios.firmware_efi = false;
        assert!(!vmx(&bios).contains("firmware"));
    }
}
