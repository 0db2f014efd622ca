//! Directory locks: an exclusive `flock` on a directory itself, so that builds writing into
//! one output or release directory run one at a time, and no lock file is left among the
//! outputs.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A locked directory; the lock goes when this is dropped (or the process dies).
pub struct DirLock {
    _dir: File,
    path: PathBuf,
    /// The directory did not exist and was made for this lock.
    created: bool,
}

impl DirLock {
    /// Makes `dir` if it is missing and locks it, waiting while another process holds it
    /// (saying so once, with `what` naming who waits for what).
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        let mut said = false;
        loop {
            let created = !dir.exists();
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let f = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                if !said {
                    tracing::info!("waiting for another kiln {what} {}", dir.display());
                    said = true;
                }
                // SAFETY: as above.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("cannot lock {}", dir.display()));
                }
            }
            // The holder may have removed the directory (and another made a new one under
            // its name): the lock must be on what the path names now.
            let held = f.metadata()?;
            match std::fs::metadata(dir) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(DirLock {
                        _dir: f,
                        path: dir.to_path_buf(),
                        created,
                    })
                }
                _ => continue,
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory if this lock made it and it is still empty: a failed build
    /// leaves no output directory behind where there was none.
    pub fn remove_if_made_and_empty(&self) {
        if self.created {
            // Fails, as it should, when anything is in it.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_and_the_directory_stays_empty() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let first = DirLock::acquire(&out, "test using").unwrap();
        assert!(std::fs::read_dir(&out).unwrap().next().is_none());
        let (tx, rx) = mpsc::channel();
        let o = out.clone();
        let t = std::thread::spawn(move || {
            let l = DirLock::acquire(&o, "test using").unwrap();
            tx.send(()).unwrap();
            drop(l);
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_removed_directory_is_made_again_and_locked_anew() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let first = DirLock::acquire(&out, "test using").unwrap();
        let (tx, rx) = mpsc::channel();
        let o = out.clone();
        let t = std::thread::spawn(move || {
            let l = DirLock::acquire(&o, "test using").unwrap();
            tx.send(l.created).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        first.remove_if_made_and_empty();
        assert!(!out.exists());
        drop(first);
        // The waiter's lock was on the removed directory: it made and locked a new one.
        assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        t.join().unwrap();
        assert!(out.is_dir());
    }
}
