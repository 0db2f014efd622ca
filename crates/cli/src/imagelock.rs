//! The image file locks `kiln slot` and `kiln update` take before they change an image.
//!
//! Two kinds, because two kinds of program share an image file on a host:
//!
//! - other kiln tools, and they serialise on kiln-update's exclusive flock of the image
//!   ([`kiln_update::lock`]; a raw image's and a qcow2's original file, taken by the caller
//!   in `update::Image::open`, since a qcow2's changes are made to a raw copy);
//! - a VM running the image, whose guest agent may write the same slot state through its own
//!   disk at any moment: no lock inside the guest reaches the host. QEMU marks an image it
//!   uses with its own locks (open file description byte locks: 100 + n for each permission it
//!   holds, 200 + n for each it does not let others have; WRITE is n = 1), so kiln refuses an
//!   image QEMU has open that way, and holds QEMU's "no one else writes" byte while it changes
//!   it, so a VM will not start on an image kiln is changing ("Failed to get "write" lock").

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// QEMU's lock bytes for the WRITE permission (raw-posix's RAW_LOCK_PERM_BASE and
/// RAW_LOCK_SHARED_BASE, plus the bit number of BLK_PERM_WRITE).
const QEMU_USES_WRITE: i64 = 101;
const QEMU_UNSHARES_WRITE: i64 = 201;

fn ofd(f: &File, cmd: libc::c_int, kind: libc::c_int, byte: i64) -> std::io::Result<libc::flock> {
    // SAFETY: a zeroed flock is a valid value; fcntl fills it or reads it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: fcntl on a descriptor we own with a valid flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl)
}

/// Refuses an image QEMU has open and does not let others write (a VM with the image as its
/// disk), then keeps QEMU from opening it for writing until the returned file is closed. Only
/// the "others may not write" byte is held: kiln's own qemu-img readers of a qcow2 (which
/// lock nothing that conflicts with it) must still open it.
pub fn refuse_if_in_use_by_qemu(image: &Path) -> Result<File> {
    let f = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    for byte in [QEMU_USES_WRITE, QEMU_UNSHARES_WRITE] {
        let fl = ofd(&f, libc::F_OFD_GETLK, libc::F_WRLCK, byte)
            .with_context(|| format!("cannot test the locks of {}", image.display()))?;
        if i32::from(fl.l_type) != libc::F_UNLCK {
            bail!(
                "{} is in use: QEMU has it open (a running VM, whose agent may change the slot state at any moment) and lets no one else write it; stop the VM first, or use kiln-agent inside it",
                image.display()
            );
        }
    }
    match ofd(&f, libc::F_OFD_SETLK, libc::F_RDLCK, QEMU_UNSHARES_WRITE) {
        Ok(_) => Ok(f),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => bail!(
            "{} is in use: QEMU opened it just now; stop the VM first",
            image.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", image.display())),
    }
}
