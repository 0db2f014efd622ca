//! Disk image formats that qemu-img writes from a raw disk: qcow2, vmdk, vhd, and sparse raw.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_host::atomic::Staged;
use kiln_host::qemu_img;

use crate::options::{Qcow2Compat, VhdSubformat, VmdkAdapter, VmdkSubformat};
use crate::util::{source_size, GIB, MIB};

/// The largest virtual size a VHD may have (the VHD format and Azure both stop at 2040 GiB).
pub const VHD_MAX_BYTES: u64 = 2040 * GIB;

/// A disk image format and its qemu-img options, each option a type (a platform file's
/// mistake is refused when it is read, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw bytes, written sparse.
    Raw,
    /// qcow2 at a compatibility level.
    Qcow2 { compat: Qcow2Compat },
    /// VMDK: monolithicSparse beside a .vmx, streamOptimized inside an OVA; the adapter type
    /// its descriptor records.
    Vmdk {
        subformat: VmdkSubformat,
        adapter: VmdkAdapter,
    },
    /// VHD (qemu's "vpc"), dynamic (XenServer) or fixed (Azure). Written with
    /// `force_size=on`, so the virtual size is exactly the raw size.
    Vhd { subformat: VhdSubformat },
}

impl DiskFormat {
    /// qcow2 v3 (`compat=1.1`).
    pub fn qcow2() -> Self {
        DiskFormat::Qcow2 {
            compat: Qcow2Compat::V3,
        }
    }

    /// The format name qemu-img uses (`-O`, and `format` in `qemu-img info`).
    pub fn qemu_name(&self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 { .. } => "qcow2",
            DiskFormat::Vmdk { .. } => "vmdk",
            DiskFormat::Vhd { .. } => "vpc",
        }
    }

    /// The `-o` options for qemu-img convert.
    fn qemu_options(&self) -> Option<String> {
        match self {
            DiskFormat::Raw => None,
            DiskFormat::Qcow2 { compat } => Some(format!("compat={compat}")),
            DiskFormat::Vmdk { subformat, adapter } => {
                Some(format!("subformat={subformat},adapter_type={adapter}"))
            }
            DiskFormat::Vhd { subformat } => Some(format!("subformat={subformat},force_size=on")),
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskFormat::Raw => write!(f, "raw"),
            DiskFormat::Qcow2 { compat } => write!(f, "qcow2 (compat {compat})"),
            DiskFormat::Vmdk { subformat, adapter } => write!(f, "vmdk ({subformat}, {adapter})"),
            DiskFormat::Vhd { subformat } => write!(f, "vhd ({subformat})"),
        }
    }
}

/// Checks that `format` can hold a disk of `size` bytes exactly: VHD needs a whole number of
/// MiB (Azure's rule) and at most 2040 GiB; every other format a whole number of 512-byte
/// sectors.
pub fn check_size(format: &DiskFormat, size: u64) -> Result<()> {
    let shown = format!("{size} bytes ({})", kiln_fs::mib(size));
    if size == 0 {
        bail!("disk size is 0 bytes: a {format} image needs a non-empty disk");
    }
    match format {
        DiskFormat::Vhd { .. } => {
            if !size.is_multiple_of(MIB) {
                bail!(
                    "disk size {shown} is not a multiple of 1 MiB (1048576 bytes): a VHD's \
                     virtual size must be a whole number of MiB (Azure's rule)"
                );
            }
            if size > VHD_MAX_BYTES {
                bail!(
                    "disk size {shown} is more than 2040 GiB ({VHD_MAX_BYTES} bytes), the \
                     largest virtual size a VHD can have"
                );
            }
        }
        _ => {
            if !size.is_multiple_of(512) {
                bail!(
                    "disk size {shown} is not a multiple of 512 bytes: a {format} image holds \
                     whole 512-byte sectors"
                );
            }
        }
    }
    Ok(())
}

/// What qemu-img would otherwise make up for an image: the VHD footer's creation time and
/// unique id, the VMDK descriptor's content id (CID). Derived from the recipe and
/// SOURCE_DATE_EPOCH, they make the same disk give the same bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Seconds since 1970.
    pub created: i64,
    pub id: [u8; 16],
}

/// Converts the raw disk `raw` to `format` at `dest` with `qemu-img convert` (a raw result
/// is written sparse), with the identifiers of `stamp`. The size is checked first with
/// [`check_size`].
pub fn convert(raw: &Path, format: &DiskFormat, dest: &Path, stamp: &Stamp) -> Result<()> {
    let size = source_size(raw)?;
    check_size(format, size)
        .with_context(|| format!("cannot write {} as {format}", raw.display()))?;
    let options = format.qemu_options();
    kiln_host::tools::require(kiln_host::tools::QEMU_IMG)?;
    let staged = Staged::new(dest)?;
    qemu_img::convert(
        raw,
        "raw",
        staged.path(),
        format.qemu_name(),
        options.as_deref(),
    )
    .with_context(|| {
        format!(
            "cannot convert {} to {format} at {}",
            raw.display(),
            dest.display()
        )
    })?;
    match format {
        DiskFormat::Vhd { .. } => stamp_vhd(staged.path(), stamp),
        DiskFormat::Vmdk { .. } => stamp_vmdk(staged.path(), stamp),
        DiskFormat::Raw | DiskFormat::Qcow2 { .. } => Ok(()),
    }
    .with_context(|| format!("cannot set the identifiers of {}", dest.display()))?;
    staged.commit(0o644)?;
    tracing::debug!("wrote {} ({format})", dest.display());
    Ok(())
}

/// Seconds from 1970 to 2000-01-01 00:00:00 UTC, where VHD time starts.
const VHD_EPOCH: i64 = 946_684_800;

/// The VHD footer's checksum: the one's complement of the sum of its bytes, the checksum
/// field (64..68) left out.
fn vhd_checksum(footer: &[u8; 512]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, &b)| a.wrapping_add(b as u32));
    !sum
}

/// Sets the time stamp (offset 24) and unique id (68) of a VHD's footer, and of the copy of
/// it a dynamic VHD keeps at its start, with their checksum (64).
fn stamp_vhd(path: &Path, stamp: &Stamp) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len < 512 {
        bail!("{} is too short for a VHD footer", path.display());
    }
    let time = u32::try_from((stamp.created - VHD_EPOCH).max(0)).unwrap_or(u32::MAX);
    let mut written = 0;
    for off in [len - 512, 0] {
        let mut footer = [0u8; 512];
        f.read_exact_at(&mut footer, off)?;
        if &footer[..8] != b"conectix" {
            continue;
        }
        footer[24..28].copy_from_slice(&time.to_be_bytes());
        footer[68..84].copy_from_slice(&stamp.id);
        let sum = vhd_checksum(&footer);
        footer[64..68].copy_from_slice(&sum.to_be_bytes());
        f.write_all_at(&footer, off)?;
        written += 1;
        if len == 512 {
            break;
        }
    }
    if written == 0 {
        bail!("{} has no VHD footer", path.display());
    }
    f.sync_all()?;
    Ok(())
}

/// Sets the content id in the descriptor a sparse VMDK embeds (its place and size, in
/// sectors, are in the header at offsets 28 and 36).
fn stamp_vmdk(path: &Path, stamp: &Stamp) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut header = [0u8; 512];
    f.read_exact_at(&mut header, 0)?;
    if &header[..4] != b"KDMV" {
        bail!("{} is not a sparse VMDK", path.display());
    }
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
    let (offset, sectors) = (u64_at(28), u64_at(36));
    if offset == 0 || sectors == 0 || sectors > 2048 {
        bail!("{} has no embedded descriptor", path.display());
    }
    let mut area = vec![0u8; sectors as usize * 512];
    f.read_exact_at(&mut area, offset * 512)?;
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = std::str::from_utf8(&area[..end]).context("the VMDK descriptor is not text")?;
    // ffffffff means "no parent" in parentCID; never use it as our own.
    let mut cid = u32::from_be_bytes(stamp.id[..4].try_into().expect("4 bytes"));
    if cid == u32::MAX {
        cid = 0xfffffffe;
    }
    let mut found = false;
    let new: String = text
        .lines()
        .map(|l| {
            if l.starts_with("CID=") {
                found = true;
                format!("CID={cid:08x}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    if !found || new.len() > area.len() {
        bail!(
            "{}: the VMDK descriptor has no CID line to set",
            path.display()
        );
    }
    area.fill(0);
    area[..new.len()].copy_from_slice(new.as_bytes());
    f.write_all_at(&area, offset * 512)?;
    f.sync_all()?;
    Ok(())
}

/// Moves a finished raw disk to `dest`: a rename where both are on one filesystem, so the
/// bytes are not written twice (a kept raw disk is as large as the disk's data), else a
/// sparse copy to a temporary name, renamed, and the source removed.
pub fn move_raw(raw: &Path, dest: &Path) -> Result<()> {
    match std::fs::rename(raw, dest) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot move {} to {}", raw.display(), dest.display()))
        }
    }
    convert(raw, &DiskFormat::Raw, dest, &Stamp::default())?;
    std::fs::remove_file(raw).with_context(|| format!("cannot remove {}", raw.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    const STAMP: Stamp = Stamp {
        created: 1735689600,
        id: [7; 16],
    };

    fn vmdk(sub: &str) -> DiskFormat {
        DiskFormat::Vmdk {
            subformat: sub.parse().unwrap(),
            adapter: VmdkAdapter::Lsilogic,
        }
    }

    fn vhd(sub: &str) -> DiskFormat {
        DiskFormat::Vhd {
            subformat: sub.parse().unwrap(),
        }
    }

    #[test]
    fn every_format_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 * MIB);
        let cases = [
            (DiskFormat::Raw, "raw", "out.raw"),
            (DiskFormat::qcow2(), "qcow2", "out.qcow2"),
            (
                DiskFormat::Qcow2 {
                    compat: Qcow2Compat::V2,
                },
                "qcow2",
                "out-v2.qcow2",
            ),
            (vmdk("monolithicSparse"), "vmdk", "out.vmdk"),
            (vmdk("streamOptimized"), "vmdk", "out-stream.vmdk"),
            (vhd("dynamic"), "vpc", "out.vhd"),
            (vhd("fixed"), "vpc", "out-fixed.vhd"),
        ];
        for (format, name, file) in cases.iter().cloned() {
            let dest = dir.path().join(file);
            convert(&raw, &format, &dest, &STAMP).unwrap();
            let info = qemu_info(&dest, name);
            assert_eq!(info.format, name, "{format}: {info:?}");
            assert_eq!(info.virtual_size, 4 * MIB, "{format}: {info:?}");
            if format.qemu_name() != "raw" && format.qemu_name() != "vpc" {
                // qemu-img has no consistency check for raw and vpc.
                qemu_check(&dest, name);
            }
            qemu_compare(&raw, &dest, name);
            match &format {
                DiskFormat::Qcow2 { compat } => {
                    assert_eq!(info.qcow2_compat(), Some(compat.as_str()), "{info:?}")
                }
                DiskFormat::Vmdk { subformat, .. } => {
                    let sub = info.vmdk_create_type();
                    assert_eq!(sub, Some(subformat.as_str()), "{info:?}");
                }
                DiskFormat::Vhd { subformat } if *subformat == VhdSubformat::Fixed => {
                    // A fixed VHD is the raw bytes plus a 512-byte footer.
                    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 4 * MIB + 512);
                }
                _ => {}
            }
        }
        // The raw copy is sparse: far fewer blocks than its size.
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dir.path().join("out.raw")).unwrap();
        assert!(m.blocks() * 512 < m.len() / 2, "{} blocks", m.blocks());
        // Nothing left behind but the artifacts and the source.
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            cases.len() + 1
        );
    }

    /// qemu-img makes up VHD's time and unique id and VMDK's CID, and names its temporary
    /// file in the VMDK descriptor: with a stamp, two conversions give the same bytes, which
    /// qemu-img still reads as the same disk.
    #[test]
    fn vhd_and_vmdk_come_out_the_same_every_time() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 * MIB);
        for (format, name) in [
            (vhd("dynamic"), "vpc"),
            (vhd("fixed"), "vpc"),
            (vmdk("monolithicSparse"), "vmdk"),
            (vmdk("streamOptimized"), "vmdk"),
        ] {
            // The same name in two places: a VMDK names its own file in its descriptor.
            let (a, b) = (dir.path().join("a/disk.img"), dir.path().join("b/disk.img"));
            for d in ["a", "b"] {
                std::fs::create_dir_all(dir.path().join(d)).unwrap();
            }
            convert(&raw, &format, &a, &STAMP).unwrap();
            // qemu-img's own time stamps are in seconds.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            convert(&raw, &format, &b, &STAMP).unwrap();
            let bytes = std::fs::read(&a).unwrap();
            assert!(bytes == std::fs::read(&b).unwrap(), "{format} differs");
            qemu_compare(&raw, &a, name);
            if name == "vmdk" {
                qemu_check(&a, "vmdk");
                let text = String::from_utf8_lossy(&bytes[512..4096]).into_owned();
                assert!(text.contains("CID=07070707\n"), "{text}");
                assert!(text.contains("SPARSE \"disk.img\""), "{text}");
            } else {
                let f = std::fs::File::open(&a).unwrap();
                let len = f.metadata().unwrap().len();
                let mut footer = [0u8; 512];
                f.read_exact_at(&mut footer, len - 512).unwrap();
                // 2025-01-01 is 789004800 s after 2000-01-01.
                assert_eq!(&footer[24..28], &789004800u32.to_be_bytes());
                assert_eq!(&footer[68..84], &[7; 16]);
                assert_eq!(&footer[64..68], &vhd_checksum(&footer).to_be_bytes());
                if format == vhd("dynamic") {
                    assert_eq!(&bytes[..512], &footer[..], "the footer's copy at the start");
                }
            }
            let other = Stamp {
                id: [8; 16],
                ..STAMP
            };
            convert(&raw, &format, &b, &other).unwrap();
            assert!(
                bytes != std::fs::read(&b).unwrap(),
                "{format}: the id is used"
            );
        }
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert!(check_size(&vhd("fixed"), 1024 * MIB).is_ok());
        assert!(check_size(&vhd("dynamic"), VHD_MAX_BYTES).is_ok());
        let e = check_size(&vhd("fixed"), MIB + 512)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1049088 bytes") && e.contains("1 MiB"), "{e}");
        let e = check_size(&vhd("fixed"), VHD_MAX_BYTES + MIB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2040 GiB"), "{e}");
        assert!(check_size(&DiskFormat::qcow2(), 512 * 3).is_ok());
        let e = check_size(&DiskFormat::qcow2(), 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1000 bytes") && e.contains("512"), "{e}");
        assert!(check_size(&DiskFormat::Raw, 0).is_err());

        // convert refuses before writing anything.
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("odd.raw");
        std::fs::write(&raw, vec![1u8; 1000]).unwrap();
        let dest = dir.path().join("odd.vhd");
        let e = format!(
            "{:#}",
            convert(&raw, &vhd("fixed"), &dest, &STAMP).unwrap_err()
        );
        assert!(e.contains("1 MiB"), "{e}");
        assert!(!dest.exists());
    }

    #[test]
    fn unknown_options_are_rejected() {
        // Options are types now: a value qemu-img would take as more options (a comma), or
        // one kiln does not know, never becomes a DiskFormat.
        assert!("1.1,lazy_refcounts=on".parse::<Qcow2Compat>().is_err());
        assert!("monolithicFlat".parse::<VmdkSubformat>().is_err());
        assert!("pvscsi".parse::<VmdkAdapter>().is_err());
        let e = "sparse".parse::<VhdSubformat>().unwrap_err();
        assert!(e.contains("expected one of dynamic, fixed"), "{e}");
    }

    #[test]
    fn missing_source_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.qcow2");
        let e = convert(
            &dir.path().join("nope.raw"),
            &DiskFormat::qcow2(),
            &dest,
            &STAMP,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("nope.raw"), "{e:#}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn missing_destination_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), MIB);
        let dest = dir.path().join("missing-dir").join("out.qcow2");
        let e = format!(
            "{:#}",
            convert(&raw, &DiskFormat::qcow2(), &dest, &STAMP).unwrap_err()
        );
        assert!(e.contains("missing-dir"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
