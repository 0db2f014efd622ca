//! Sidecar JSON beside the disk artifacts: what to pass to the cloud's own tools.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use kiln_host::atomic::write_file_atomic;

use crate::util::gib_ceil;

/// The placeholder for the snapshot id that `aws ec2 import-snapshot` reports.
pub const SNAPSHOT_ID_PLACEHOLDER: &str = "<snapshot-id from import-snapshot>";
/// The placeholder for the S3 bucket the raw disk was uploaded to.
pub const S3_BUCKET_PLACEHOLDER: &str = "<s3-bucket the disk was uploaded to>";

/// An AMI name: 3-128 characters from letters, digits and `()[] ./-'@_`; others become `-`.
fn ami_name(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    while n.len() < 3 {
        n.push('_');
    }
    n
}

/// Parameters for EC2: `import-snapshot` is the `--cli-input-json` of `aws ec2
/// import-snapshot` (a RAW disk at `s3://<bucket>/<disk_file_name>`), `register-image` that of
/// `aws ec2 register-image` once [`SNAPSHOT_ID_PLACEHOLDER`] is replaced: x86_64, hvm, ENA,
/// boot mode uefi-preferred or legacy-bios, root device /dev/xvda on a gp3 volume of the
/// disk's size rounded up to whole GiB.
pub fn ec2_register_json(
    name: &str,
    version: &str,
    disk_file_name: &str,
    size_bytes: u64,
    uefi: bool,
) -> Value {
    let description = format!("{name} {version}");
    json!({
        "import-snapshot": {
            "Description": description,
            "DiskContainer": {
                "Description": description,
                "Format": "RAW",
                "UserBucket": {
                    "S3Bucket": S3_BUCKET_PLACEHOLDER,
                    "S3Key": disk_file_name,
                },
            },
        },
        "register-image": {
            "Name": ami_name(&format!("{name}-{version}")),
            "Description": description,
            "Architecture": "x86_64",
            "VirtualizationType": "hvm",
            "EnaSupport": true,
            "BootMode": if uefi { "uefi-preferred" } else { "legacy-bios" },
            "RootDeviceName": "/dev/xvda",
            "BlockDeviceMappings": [{
                "DeviceName": "/dev/xvda",
                "Ebs": {
                    "SnapshotId": SNAPSHOT_ID_PLACEHOLDER,
                    "VolumeSize": gib_ceil(size_bytes),
                    "VolumeType": "gp3",
                    "DeleteOnTermination": true,
                },
            }],
        },
    })
}

/// Glance image parameters for the qcow2 (`openstack image create --disk-format qcow2
/// --container-format bare --min-disk N --property k=v ...`): virtio disk and NIC, the
/// firmware type, no guest agent, the OS and x86_64; `min_disk` is the disk's size rounded
/// up to whole GiB.
pub fn openstack_properties_json(
    name: &str,
    os_distro: &str,
    os_version: &str,
    size_bytes: u64,
    uefi: bool,
) -> Value {
    json!({
        "name": name,
        "disk_format": "qcow2",
        "container_format": "bare",
        "min_disk": gib_ceil(size_bytes),
        "properties": {
            "architecture": "x86_64",
            "hw_disk_bus": "virtio",
            "hw_vif_model": "virtio",
            "hw_firmware_type": if uefi { "uefi" } else { "bios" },
            "hw_qemu_guest_agent": "no",
            "os_distro": os_distro,
            "os_version": os_version,
        },
    })
}

/// Writes `value` to `dest` as pretty JSON with a trailing newline (atomically, mode 0644).
pub fn write_json(value: &Value, dest: &Path) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_file_atomic(dest, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_parameters() {
        let v = ec2_register_json(
            "kiln",
            "0.1.0+2025-01-01-1200",
            "kiln.raw",
            (1 << 30) + 1,
            true,
        );
        let r = &v["register-image"];
        assert_eq!(r["Name"], "kiln-0.1.0-2025-01-01-1200");
        assert_eq!(r["Architecture"], "x86_64");
        assert_eq!(r["VirtualizationType"], "hvm");
        assert_eq!(r["EnaSupport"], true);
        assert_eq!(r["BootMode"], "uefi-preferred");
        assert_eq!(r["RootDeviceName"], "/dev/xvda");
        let m = &r["BlockDeviceMappings"][0];
        assert_eq!(m["DeviceName"], "/dev/xvda");
        assert_eq!(m["Ebs"]["VolumeSize"], 2);
        assert_eq!(m["Ebs"]["VolumeType"], "gp3");
        assert_eq!(m["Ebs"]["DeleteOnTermination"], true);
        assert_eq!(m["Ebs"]["SnapshotId"], SNAPSHOT_ID_PLACEHOLDER);
        let d = &v["import-snapshot"]["DiskContainer"];
        assert_eq!(d["Format"], "RAW");
        assert_eq!(d["UserBucket"]["S3Key"], "kiln.raw");
        let bios = ec2_register_json("k", "1", "k.raw", 1 << 30, false);
        assert_eq!(bios["register-image"]["BootMode"], "legacy-bios");
        assert_eq!(bios["register-image"]["Name"], "k-1");
        assert_eq!(
            bios["register-image"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"],
            1
        );
    }

    #[test]
    fn openstack_properties_and_file() {
        let v = openstack_properties_json("kiln", "debian", "12", 6 << 30, false);
        assert_eq!(v["disk_format"], "qcow2");
        assert_eq!(v["container_format"], "bare");
        assert_eq!(v["min_disk"], 6);
        let p = &v["properties"];
        assert_eq!(p["hw_disk_bus"], "virtio");
        assert_eq!(p["hw_vif_model"], "virtio");
        assert_eq!(p["hw_firmware_type"], "bios");
        assert_eq!(p["hw_qemu_guest_agent"], "no");
        assert_eq!(p["os_distro"], "debian");
        assert_eq!(p["os_version"], "12");
        assert_eq!(p["architecture"], "x86_64");
        let uefi = openstack_properties_json("kiln", "debian", "12", 1, true);
        assert_eq!(uefi["properties"]["hw_firmware_type"], "uefi");
        assert_eq!(uefi["min_disk"], 1);

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("openstack.json");
        write_json(&v, &dest).unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        assert!(text.ends_with("}\n") && text.contains("\n  \"min_disk\": 6"));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }
}
