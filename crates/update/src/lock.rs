//! The one lock every writer of a kiln disk's slot state takes: an exclusive `flock` on the
//! whole disk, the image file offline or the block device in a running system.
//!
//! Why the disk and not a lock file on ROOT (/run, /var/lib/kiln): the disk is what changes,
//! and every writer opens it anyway. In a running system every agent reaches the disk through
//! its /dev node, one inode, so they serialise on it; offline every `kiln slot` and
//! `kiln update` opens the image file, so they serialise on that. A lock file in /run would
//! not cover a tool that has no /run of that system (an offline tool, or a second system with
//! the disk attached). A running VM and a host tool on the same image file cannot share any
//! lock of ours; the host tools check QEMU's own image lock for that (kiln-cli).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Opens `path` and takes an exclusive flock on it, waiting for the current holder. Held
/// until the file is closed. If the path was renamed over while we waited (a qcow2 working
/// copy replaces its original so), the lock is taken again on what the path names now, so
/// two holders never hold locks on two different files of the same name.
pub fn open_locked(path: &Path, writable: bool) -> Result<File> {
    for _ in 0..100 {
        let f = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        flock_exclusive(&f, path)?;
        let held = f
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(f),
            // Replaced while we waited: lock the new file instead.
            _ => continue,
        }
    }
    bail!(
        "{}: the file was replaced 100 times while kiln waited for its lock; is another program rewriting it in a loop?",
        path.display()
    )
}

/// An exclusive flock on `f`, retried when a signal interrupts the wait.
pub fn flock_exclusive(f: &File, what: &Path) -> Result<()> {
    loop {
        // SAFETY: flock on a descriptor this process owns; released when it closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("cannot lock {}", what.display()));
        }
    }
}
