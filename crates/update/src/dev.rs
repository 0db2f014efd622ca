//! The disk kiln writes to, as positioned reads, writes and a flush: an image file or a block
//! device, or in the tests a layer that records every write and flush (the power-cut replay
//! builds crash images from that record). Everything kiln-update writes to a disk goes
//! through [`BlockDev`], so a recording covers all of it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A disk: positioned I/O and a flush that makes every earlier write durable.
pub trait BlockDev: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Every write before this one is on stable storage when it returns (fsync).
    fn sync(&self) -> io::Result<()>;
}

/// An image file or a block device.
pub struct FileDev {
    file: File,
    len: u64,
}

impl FileDev {
    pub fn new(mut file: File) -> io::Result<Self> {
        // seek(End) gives a block device's size too, where metadata().len() is 0.
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Self { file, len })
    }
}

impl BlockDev for FileDev {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// A byte range of a disk seen as a whole device with a position (for the FAT library and
/// the GPT code, which want `Read + Write + Seek`). `flush` is the disk's [`BlockDev::sync`].
pub struct Window {
    dev: Arc<dyn BlockDev>,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    pub fn new(dev: Arc<dyn BlockDev>, start: u64, len: u64) -> Self {
        Self {
            dev,
            start,
            len,
            pos: 0,
        }
    }

    /// The whole disk.
    pub fn whole(dev: Arc<dyn BlockDev>) -> Self {
        let len = dev.len();
        Self::new(dev, 0, len)
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.dev
            .read_exact_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
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
        self.dev.write_all_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.dev.sync()
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

/// One thing a disk was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write { offset: u64, data: Vec<u8> },
    Sync,
}

/// A disk that records every write and sync before passing it on: the tests' power-cut replay
/// builds every disk a cut could leave from this record.
pub struct Recording<D: BlockDev> {
    inner: D,
    log: std::sync::Mutex<Vec<Op>>,
}

impl<D: BlockDev> Recording<D> {
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            log: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Takes the record so far.
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn push(&self, op: Op) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }
}

impl<D: BlockDev> BlockDev for Recording<D> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.push(Op::Write {
            offset,
            data: buf.to_vec(),
        });
        self.inner.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.push(Op::Sync);
        self.inner.sync()
    }
}
