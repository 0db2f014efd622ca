//! Turns kiln's raw GPT disk image into each platform's artifacts: qcow2, vmdk and vhd
//! through `qemu-img convert`, a sparse raw copy, the xz-compressed raw, the GCE tarball,
//! the VMware OVA and .vmx, a QEMU launch script, sidecar JSON for EC2 and OpenStack, and
//! a DIGESTS file.
//!
//! Every artifact is written under a temporary name in its destination directory and
//! renamed into place only when complete; on error the temporary is removed. Timestamps
//! and owners in archives come from the caller's `epoch`, so the same input gives the same
//! bytes. Sizes are in bytes.

pub mod digests;
mod disk;
mod gce;
pub mod image;
mod launch;
pub mod options;
mod ova;
mod sidecar;
mod util;
mod vmx;
pub mod xz;

pub use digests::digests;
pub use disk::{check_size, convert, move_raw, DiskFormat, Stamp, VHD_MAX_BYTES};
pub use gce::{check_gce_size, gce_tarball};
pub use image::{unpack, ImageFormat, SparseView, WorkingCopy};
pub use launch::{qemu_launch_script, LaunchScriptInfo};
pub use options::{
    Qcow2Compat, VhdSubformat, VmdkAdapter, VmdkSubformat, VmwareController, VmwareNic,
};
pub use ova::{ova, ovf_xml, OvfInfo, VMX_HW_VERSION};
pub use sidecar::{
    ec2_register_json, openstack_properties_json, write_json, S3_BUCKET_PLACEHOLDER,
    SNAPSHOT_ID_PLACEHOLDER,
};
pub use vmx::{vmx, VmxInfo};
pub use xz::xz_compress;

#[cfg(test)]
mod testutil {
    use std::io::{Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub use kiln_host::qemu_img;

    /// A sparse raw disk of `size` bytes named src.raw in `dir`, with data at its start,
    /// middle and last sector (where a GPT's backup header would be).
    pub fn make_raw(dir: &Path, size: u64) -> PathBuf {
        let path = dir.join("src.raw");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (i, off) in [0, (size / 2) & !511, size - 512].into_iter().enumerate() {
            f.seek(SeekFrom::Start(off)).unwrap();
            let block: Vec<u8> = (0..512u32)
                .map(|b| (b as u8) ^ (i as u8 * 37 + 1))
                .collect();
            f.write_all(&block).unwrap();
        }
        path
    }

    /// `qemu-img info` of an artifact, which must succeed.
    pub fn qemu_info(path: &Path, format: &str) -> qemu_img::Info {
        qemu_img::info(path, format).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `qemu-img check` of an artifact, which must pass.
    pub fn qemu_check(path: &Path, format: &str) {
        qemu_img::check(path, format).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// `qemu-img compare` of the raw image and an artifact: the guest sees the same bytes.
    pub fn qemu_compare(raw: &Path, artifact: &Path, format: &str) {
        qemu_img::compare(raw, "raw", artifact, format).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Runs a shell command, asserting success; returns stdout.
    pub fn sh_bytes(script: &str) -> Vec<u8> {
        let o = Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    }

    pub fn sh(script: &str) -> String {
        String::from_utf8(sh_bytes(script)).unwrap()
    }
}
