//! Where a release build goes: a hidden directory beside `<out>/<board>/<version>/`, renamed
//! into place when the release is complete, so a reader sees a whole release or none. A
//! release is never rewritten. The board's release directory is locked from before the
//! build looks for an existing release until the release is in place: a second release build
//! waits, then finds the release made and is refused, and never removes a running build's
//! partial release.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use kiln_pipeline::BuildOutput;
use kiln_recipe::Resolved;

use crate::release::{self, Manifest};

/// A release being built: the build writes into `staging`; [`Staging::publish`] makes it the
/// release at `dir`. Dropped unpublished, the staging directory goes.
pub struct Staging {
    pub dir: PathBuf,
    pub staging: PathBuf,
    published: bool,
    _lock: kiln_host::lock::DirLock,
}

impl Staging {
    /// Locks the board's release directory (waiting for another release build of the board),
    /// refuses a release that exists, and removes what a killed release build left.
    pub fn prepare(out: &Path, r: &Resolved) -> Result<Self> {
        let board_dir = out.join(&r.board.name);
        let dir = board_dir.join(&r.os.version);
        let lock = kiln_host::lock::DirLock::acquire(&board_dir, "release build of")?;
        // Holding the lock: a build that held it before may have made it.
        if dir.exists() {
            bail!(
                "release {} of board {} already exists at {}: a release is never rebuilt in place \
                 (bump the version, or remove it)",
                r.os.version,
                r.board.name,
                dir.display()
            );
        }
        let partial = format!(".{}.partial-", r.os.version);
        for e in std::fs::read_dir(&board_dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&partial) {
                std::fs::remove_dir_all(e.path())?;
            }
        }
        let staging = board_dir.join(format!("{partial}{}", std::process::id()));
        Ok(Staging {
            dir,
            staging,
            published: false,
            _lock: lock,
        })
    }

    /// Turns the finished build in the staging directory into the signed release.
    pub fn publish(
        mut self,
        r: &Resolved,
        out: &BuildOutput,
        key: &SigningKey,
    ) -> Result<Manifest> {
        // The board image is the uncompressed disk every platform artifact is made from; the
        // release ships the artifacts (metal's is the same disk, compressed).
        std::fs::remove_file(&out.image)
            .with_context(|| format!("cannot remove {}", out.image.display()))?;
        let m = release::finish(&self.staging, r, out, key)?;
        kiln_host::atomic::syncfs(&self.staging)?;
        kiln_host::failpoint::hit("release-publish");
        std::fs::rename(&self.staging, &self.dir).with_context(|| {
            format!(
                "cannot move the release into place at {}",
                self.dir.display()
            )
        })?;
        self.published = true;
        Ok(m)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
