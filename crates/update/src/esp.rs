//! The EFI system partition's files, read and written in place through the fatfs crate:
//! inside a disk image file at the partition's offset, or on a partition of a live disk.
//! Nothing is mounted, so the same code serves the offline tools and the agent. The slot
//! state is not written here but by [`crate::store`], straight to its sectors.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::dev::{BlockDev, WriteBack};

/// An open ESP. Call [`Esp::close`] to write back the FAT's state; dropping it without
/// closing leaves the volume's dirty flag set (fsck would then check it).
pub struct Esp {
    fs: fatfs::FileSystem<WriteBack>,
    /// The same cache the FAT library writes through, to write it out after unmounting.
    cache: WriteBack,
    what: String,
}

impl Esp {
    /// `dev` is the disk (image file or block device); the ESP spans `start..start+len`.
    pub fn open(dev: Arc<dyn BlockDev>, start: u64, len: u64, what: &str) -> Result<Self> {
        let cache = WriteBack::new(dev, start, len);
        let fs = fatfs::FileSystem::new(cache.clone(), fatfs::FsOptions::new())
            .with_context(|| format!("{what}: the EFI system partition is not a FAT filesystem"))?;
        Ok(Self {
            fs,
            cache,
            what: what.to_string(),
        })
    }

    /// Writes out what the FAT library changed so far and syncs: each step of a file
    /// replacement reaches the disk before the next one starts.
    fn flush(&self) -> Result<()> {
        self.cache
            .sync()
            .with_context(|| format!("{}: cannot write the ESP", self.what))
    }

    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        let mut f =
            self.fs.root_dir().open_file(path).with_context(|| {
                format!("{}: no /{path} on the EFI system partition", self.what)
            })?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .with_context(|| format!("{}: cannot read /{path}", self.what))?;
        Ok(v)
    }

    pub fn exists(&self, path: &str) -> bool {
        self.fs.root_dir().open_file(path).is_ok()
    }

    /// Bytes free, plus what `replacing` files hold now (they are about to be replaced).
    pub fn room_for(&self, replacing: &[&str]) -> Result<u64> {
        let st = self
            .fs
            .stats()
            .context("cannot read the ESP's free space")?;
        let mut free = u64::from(st.free_clusters()) * u64::from(st.cluster_size());
        let root = self.fs.root_dir();
        for p in replacing {
            if let Ok(mut f) = root.open_file(p) {
                let size = f.seek(SeekFrom::End(0)).unwrap_or(0);
                let cs = u64::from(st.cluster_size());
                free += size.div_ceil(cs) * cs;
            }
        }
        Ok(free)
    }

    /// Replaces `path` with `data`: written to `path.new`, then renamed over the old file.
    /// FAT has no atomic replace; kiln only replaces files of a slot that cannot boot. Each
    /// step (stale file removed, new file written, old file removed, rename) is written out
    /// and synced before the next, so a power cut leaves the ESP between two of them.
    pub fn replace(&self, path: &str, data: &[u8]) -> Result<()> {
        let root = self.fs.root_dir();
        let tmp = format!("{path}.new");
        if root.open_file(&tmp).is_ok() {
            root.remove(&tmp)
                .with_context(|| format!("{}: cannot remove a stale /{tmp}", self.what))?;
            self.flush()?;
        }
        {
            let mut f = root
                .create_file(&tmp)
                .with_context(|| format!("{}: cannot create /{tmp}", self.what))?;
            f.truncate()?;
            f.write_all(data)
                .with_context(|| format!("{}: cannot write /{tmp} (ESP full?)", self.what))?;
            f.flush()?;
        }
        if root.open_file(path).is_ok() {
            root.remove(path)
                .with_context(|| format!("{}: cannot remove /{path}", self.what))?;
            self.flush()?;
        }
        root.rename(&tmp, &root, path)
            .with_context(|| format!("{}: cannot rename /{tmp} to /{path}", self.what))?;
        self.flush()
    }

    /// Writes back the FAT's bookkeeping and syncs the device.
    pub fn close(self) -> Result<()> {
        let what = self.what;
        self.fs
            .unmount()
            .with_context(|| format!("{what}: cannot finish writing the ESP"))?;
        self.cache
            .sync()
            .with_context(|| format!("{what}: cannot write the ESP"))
    }
}
