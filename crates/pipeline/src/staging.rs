//! The output directory is changed all at once: images are written into a staging directory
//! beside the outputs and moved into place only when every one succeeded, so a failed build
//! leaves the output directory as it was.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const PREFIX: &str = ".kiln-staging-";

pub struct Staging {
    dir: PathBuf,
    out: PathBuf,
    moves: Vec<(PathBuf, PathBuf)>,
}

impl Staging {
    /// Creates the output directory if needed and a staging directory in it; removes what a
    /// killed build left (the build lock is held: none is live).
    pub fn create(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create output directory {}", out.display()))?;
        for e in std::fs::read_dir(out)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
        let dir = out.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
            moves: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A staged file goes to the output directory under its own name; returns where.
    pub fn add(&mut self, staged: PathBuf) -> Result<PathBuf> {
        let name = staged
            .file_name()
            .with_context(|| format!("{} has no file name", staged.display()))?;
        self.add_as(staged.clone(), name.to_string_lossy().as_ref())
    }

    /// A staged file goes to the output directory as `name`.
    pub fn add_as(&mut self, staged: PathBuf, name: &str) -> Result<PathBuf> {
        let dest = self.out.join(name);
        self.moves.push((staged, dest.clone()));
        Ok(dest)
    }

    /// Moves every staged file into place.
    pub fn publish(mut self) -> Result<()> {
        for (from, to) in std::mem::take(&mut self.moves) {
            std::fs::rename(&from, &to)
                .with_context(|| format!("cannot move {} into place", to.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Published or failed, the staging directory goes.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
