//! Writing a file so that it appears whole or not at all: the bytes go to a temporary file
//! beside the destination, which is flushed and renamed into place.

use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A file being written: it has the destination's own name, inside a hidden temporary
/// directory beside the destination (tools such as qemu-img record the name they wrote in
/// the file, and a VMDK must name itself, not a random temporary). It is removed when
/// dropped, unless [`Staged::commit`] renames it into place.
pub struct Staged {
    dir: tempfile::TempDir,
    path: PathBuf,
    dest: PathBuf,
}

impl Staged {
    /// Creates the empty temporary file for `dest`.
    pub fn new(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .with_context(|| format!("destination {} has no file name", dest.display()))?;
        let parent = parent_dir(dest);
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempdir_in(parent)
            .with_context(|| {
                format!(
                    "cannot create a temporary directory in {} for {}",
                    parent.display(),
                    dest.display()
                )
            })?;
        let path = dir.path().join(name);
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Staged {
            dir,
            path,
            dest: dest.to_path_buf(),
        })
    }

    /// The temporary file to write (it exists, empty).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the mode, flushes the data to disk and renames the file to its destination.
    pub fn commit(self, mode: u32) -> Result<()> {
        let tmp_shown = self.path.display().to_string();
        std::fs::set_permissions(&self.path, Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {tmp_shown}"))?;
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot flush {tmp_shown} to disk"))?;
        std::fs::rename(&self.path, &self.dest)
            .with_context(|| format!("cannot rename {tmp_shown} to {}", self.dest.display()))?;
        // Make the rename itself durable; failing that is not worth failing the write.
        if let Ok(d) = File::open(parent_dir(&self.dest)) {
            let _ = d.sync_all();
        }
        self.dir
            .close()
            .with_context(|| format!("cannot remove the staging directory of {tmp_shown}"))
    }
}

/// Flushes the filesystem holding `path` (one call for a tree's thousands of files, before
/// the tree is published by rename).
pub fn syncfs(path: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot flush {} to disk", path.display()));
    }
    Ok(())
}

/// The directory a path is in ("." for a bare file name).
pub fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `dest` atomically with the given mode.
pub fn write_file_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let staged = Staged::new(dest)?;
    std::fs::write(staged.path(), bytes)
        .with_context(|| format!("cannot write {}", staged.path().display()))?;
    staged.commit(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_file_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        {
            let s = Staged::new(&dest).unwrap();
            std::fs::write(s.path(), b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_file_atomic(&dest, b"whole", 0o644).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Replacing keeps one file, with the new bytes and mode.
        write_file_atomic(&dest, b"again", 0o600).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"again");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn staged_file_has_the_destination_name_in_a_hidden_directory() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("disk.vmdk");
        let s = Staged::new(&dest).unwrap();
        assert_eq!(s.path().file_name().unwrap(), "disk.vmdk");
        let staging = s.path().parent().unwrap();
        assert_eq!(staging.parent().unwrap(), dir.path());
        let name = staging.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".disk.vmdk.") && name.ends_with(".part"),
            "{name}"
        );
    }

    #[test]
    fn missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("missing").join("x");
        let e = format!("{:#}", write_file_atomic(&dest, b"", 0o644).unwrap_err());
        assert!(e.contains("missing"), "{e}");
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
    }
}
