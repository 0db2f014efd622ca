//! The EFI system partition, read and written in place through the fatfs crate: inside a
//! disk image file at the partition's offset, or on a partition of a live disk. Nothing is
//! mounted, so the same code serves the offline tools and the agent.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use anyhow::{bail, Context, Result};

use crate::state::{SlotState, ENV_PATH, ENV_SIZE};

/// A byte range of a file or block device, seen as a whole device.
pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    pub fn new(file: File, start: u64, len: u64) -> Self {
        Self {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) if n <= self.len => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// An open ESP. Call [`Esp::close`] to write back the FAT's state; dropping it without
/// closing leaves the volume's dirty flag set (fsck would then check it).
pub struct Esp {
    fs: fatfs::FileSystem<Window>,
    what: String,
}

impl Esp {
    /// `file` is the disk (image file or block device); the ESP spans `start..start+len`.
    pub fn open(file: File, start: u64, len: u64, what: &str) -> Result<Self> {
        let fs = fatfs::FileSystem::new(Window::new(file, start, len), fatfs::FsOptions::new())
            .with_context(|| format!("{what}: the EFI system partition is not a FAT filesystem"))?;
        Ok(Self {
            fs,
            what: what.to_string(),
        })
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

    /// The first `max` bytes of `path` at most: a FAT entry can claim any size, and only
    /// what is needed is read into memory.
    pub fn read_at_most(&self, path: &str, max: u64) -> Result<Vec<u8>> {
        let f =
            self.fs.root_dir().open_file(path).with_context(|| {
                format!("{}: no /{path} on the EFI system partition", self.what)
            })?;
        let mut v = Vec::new();
        f.take(max)
            .read_to_end(&mut v)
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
    /// FAT has no atomic replace; kiln only replaces files of a slot that cannot boot.
    pub fn replace(&self, path: &str, data: &[u8]) -> Result<()> {
        let root = self.fs.root_dir();
        let tmp = format!("{path}.new");
        if root.open_file(&tmp).is_ok() {
            root.remove(&tmp)
                .with_context(|| format!("{}: cannot remove a stale /{tmp}", self.what))?;
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
        }
        root.rename(&tmp, &root, path)
            .with_context(|| format!("{}: cannot rename /{tmp} to /{path}", self.what))?;
        Ok(())
    }

    pub fn read_state(&self) -> Result<SlotState> {
        // One byte more than a block: enough to tell a block from a longer file.
        let b = self.read_at_most(ENV_PATH, ENV_SIZE as u64 + 1).with_context(|| {
            format!(
                "{}: this is not a kiln A/B image (kiln keeps the slot state in /{ENV_PATH} on the ESP)",
                self.what
            )
        })?;
        SlotState::from_env(&b).with_context(|| format!("{}: /{ENV_PATH}", self.what))
    }

    /// Overwrites the state in place: the same clusters GRUB's `save_env` writes to, in one
    /// 1024-byte write.
    pub fn write_state(&self, s: &SlotState) -> Result<()> {
        let block = s.to_env()?;
        let mut f = self
            .fs
            .root_dir()
            .open_file(ENV_PATH)
            .with_context(|| format!("{}: no /{ENV_PATH} on the ESP", self.what))?;
        let len = f.seek(SeekFrom::End(0))?;
        if len != ENV_SIZE as u64 {
            bail!(
                "{}: /{ENV_PATH} is {len} bytes, not {ENV_SIZE}: it is not a GRUB environment block",
                self.what
            );
        }
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&block)
            .with_context(|| format!("{}: cannot write /{ENV_PATH}", self.what))?;
        f.flush()?;
        Ok(())
    }

    /// Writes back the FAT's bookkeeping and syncs the device.
    pub fn close(self) -> Result<()> {
        let what = self.what;
        self.fs
            .unmount()
            .with_context(|| format!("{what}: cannot finish writing the ESP"))?;
        Ok(())
    }
}
