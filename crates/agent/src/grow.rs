//! Growing ROOT to the end of a disk that is larger than the image (cloud disks are): move
//! the backup GPT to the new end, extend ROOT's entry if it is the last partition (both in
//! kiln-disk's `gpt::grow`, which writes the new backup and syncs before touching the
//! primary), tell the kernel (BLKPG), then grow the mounted ext4 online (EXT4_IOC_RESIZE_FS).
//! Every step checks first, so running it again does nothing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::blockdev;
use crate::mounts::MountInfo;

// <linux/blkpg.h>
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

// _IOW('f', 16, __u64)
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// Grows the partition and filesystem mounted at `mount_point`. Returns what it did.
pub fn grow(mount_point: &Path) -> Result<String> {
    let mi = MountInfo::read()?;
    let point = mount_point.to_str().context("mount point is not UTF-8")?;
    let m = mi
        .get(point)
        .with_context(|| format!("{point} is not a mount point"))?;
    if m.fstype != "ext4" {
        bail!("{point} is {}, only ext4 is grown", m.fstype);
    }
    let part = blockdev::partition_of(m.major, m.minor)?;
    blockdev::check_boot_disk(&part.disk, point)?;
    let disk_name = part
        .disk
        .file_name()
        .context("bad disk path")?
        .to_string_lossy()
        .into_owned();
    let disk_sectors = blockdev::sectors(&disk_name)?;
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part.disk)
        .with_context(|| format!("cannot open {}", part.disk.display()))?;
    let mut did = Vec::new();

    // The partition table: backup at the end, ROOT to the end if nothing follows it. The
    // new backup is made durable before the primary (on a grown disk the only valid copy)
    // changes: fsync on the device writes its dirty pages and flushes the disk's cache.
    let g = kiln_disk::gpt::grow::grow(
        &mut disk,
        disk_sectors * 512,
        part.part_guid,
        &mut |d: &mut File| {
            d.sync_all()
                .with_context(|| format!("cannot sync {}", part.disk.display()))
        },
    )?;
    if g.rewritten {
        did.push(format!("GPT rewritten for {} sectors", disk_sectors));
    }
    if g.extended {
        resize_partition(&disk, g.number, g.first_lba, g.last_lba)?;
        did.push(format!(
            "partition {} now ends at sector {}",
            g.number, g.last_lba
        ));
    }

    // The filesystem: as large as the partition.
    let part_sectors = blockdev::sectors(
        &part
            .dev
            .file_name()
            .context("bad partition path")?
            .to_string_lossy(),
    )?;
    let (blocks, block_size) = ext4_blocks(&part.dev)?;
    let want = part_sectors * 512 / block_size;
    if want > blocks {
        let dir = File::open(mount_point)?;
        let mut n: u64 = want;
        // SAFETY: the ioctl reads one u64 from a valid pointer.
        if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &mut n as *mut u64) } != 0 {
            return Err(std::io::Error::last_os_error()).context("EXT4_IOC_RESIZE_FS failed");
        }
        // The kernel leaves out a last block group too small to hold its own metadata, so
        // what it did is read back rather than assumed (and a later boot has nothing to do).
        // SAFETY: syncfs on a descriptor we own.
        unsafe { libc::syncfs(dir.as_raw_fd()) };
        let (now, _) = ext4_blocks(&part.dev)?;
        if now > blocks {
            did.push(format!("filesystem grown from {blocks} to {now} blocks"));
        }
    }
    Ok(if did.is_empty() {
        "nothing to grow".into()
    } else {
        did.join("; ")
    })
}

fn resize_partition(disk: &File, number: u32, first_lba: u64, last_lba: u64) -> Result<()> {
    let mut p = BlkpgPartition {
        start: (first_lba * 512) as libc::c_longlong,
        length: ((last_lba - first_lba + 1) * 512) as libc::c_longlong,
        pno: number as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut p as *mut BlkpgPartition as *mut libc::c_void,
    };
    // SAFETY: arg points at a live, correctly sized blkpg_partition.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &mut arg as *mut BlkpgIoctlArg) } != 0 {
        return Err(std::io::Error::last_os_error()).context("BLKPG_RESIZE_PARTITION failed");
    }
    Ok(())
}

/// Block count and block size from an ext4 superblock.
fn ext4_blocks(dev: &Path) -> Result<(u64, u64)> {
    let mut f = File::open(dev)?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024))?;
    f.read_exact(&mut sb)?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        bail!("{} is not ext4", dev.display());
    }
    let le32 = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes")) as u64;
    let lo = le32(0x04);
    let hi = le32(0x150);
    let feature_incompat = le32(0x60);
    // INCOMPAT_64BIT: the high half of the block count is valid.
    let blocks = if feature_incompat & 0x80 != 0 {
        lo | (hi << 32)
    } else {
        lo
    };
    let block_size = 1024u64 << le32(0x18);
    Ok((blocks, block_size))
}
