//! The EFI system partition's files, read and written in place through the fatfs crate:
//! inside a disk image file at the partition's offset, or on a partition of a live disk.
//! Nothing is mounted, so the same code serves the offline tools and the agent. The slot
//! state is not written here but by [`crate::store`], straight to its sectors.
//!
//! FAT has no journal, so what a power cut leaves depends on the order its sectors reach the
//! disk. The FAT library writes into a cache ([`FatCache`]); each step of a file replacement
//! is then written in the order that leaves at worst clusters marked used that no file
//! refers to (which readers ignore): a new file's data, then the FAT (copy by copy), then
//! its directory entry; a removed file's directory entry before the FAT frees its clusters.
//! The FSInfo free count is marked unknown while the FAT changes, and the boot sector is
//! never written (the library's dirty flag is dropped).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};

use crate::dev::BlockDev;
use crate::fat::{self, Regions};

/// The order a step's changes are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A file created or grown: data, FAT, then directory.
    Allocate,
    /// A file removed: directory, then FAT.
    Release,
}

/// A write-back cache of whole sectors of the ESP, between the FAT library and the disk. The
/// library's flushes do nothing; [`FatCache::commit`] writes what collected, class by class in
/// the step's [`Order`], with a sync after each class.
#[derive(Clone)]
pub struct FatCache {
    inner: Arc<Mutex<Cache>>,
    pos: u64,
}

struct Cache {
    dev: Arc<dyn BlockDev>,
    start: u64,
    len: u64,
    regions: Regions,
    dirty: BTreeMap<u64, Box<[u8; 512]>>,
    /// The FSInfo sector on the disk says "free count unknown".
    fsinfo_unknown: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Data,
    Fat(usize),
    Dir,
    /// The reserved sectors: FSInfo.
    Reserved,
}

impl Cache {
    fn sector(&self, n: u64) -> io::Result<[u8; 512]> {
        if let Some(s) = self.dirty.get(&n) {
            return Ok(**s);
        }
        let mut b = [0u8; 512];
        self.dev.read_exact_at(&mut b, self.start + n * 512)?;
        Ok(b)
    }

    fn class(&self, n: u64) -> Class {
        let at = n * 512;
        if at < self.regions.reserved_end {
            return Class::Reserved;
        }
        for (i, &(o, l)) in self.regions.fats.iter().enumerate() {
            if at >= o && at < o + l {
                return Class::Fat(i);
            }
        }
        if self.regions.dirs.contains(&at) {
            Class::Dir
        } else {
            Class::Data
        }
    }

    fn write_sectors(&self, sectors: &[(u64, &[u8; 512])]) -> io::Result<()> {
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut next = None;
        for &(n, s) in sectors {
            if next != Some(n) && !run.is_empty() {
                self.dev.write_all_at(&run, self.start + run_start * 512)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = n;
            }
            run.extend_from_slice(&s[..]);
            next = Some(n + 1);
        }
        if !run.is_empty() {
            self.dev.write_all_at(&run, self.start + run_start * 512)?;
        }
        self.dev.sync()
    }

    fn commit(&mut self, order: Order) -> io::Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        let fats = self.regions.fats.len();
        let mut classes: Vec<Class> = match order {
            Order::Allocate => vec![Class::Data],
            Order::Release => vec![Class::Dir],
        };
        classes.extend((0..fats).map(Class::Fat));
        classes.push(match order {
            Order::Allocate => Class::Dir,
            Order::Release => Class::Data,
        });
        classes.push(Class::Reserved);
        let fat_changes = dirty
            .keys()
            .any(|&n| matches!(self.class(n), Class::Fat(_)));
        // While the FAT changes the FSInfo free count would be stale: say "unknown" first.
        if let (true, false, Some(fsinfo)) = (fat_changes, self.fsinfo_unknown, self.regions.fsinfo)
        {
            let n = fsinfo / 512;
            let mut s = match dirty.get(&n) {
                Some(s) => **s,
                None => self.sector(n)?,
            };
            s[488..496].fill(0xff);
            self.write_sectors(&[(n, &s)])?;
            self.fsinfo_unknown = true;
        }
        for class in classes {
            let part: Vec<(u64, &[u8; 512])> = dirty
                .iter()
                .filter(|(n, _)| self.class(**n) == class)
                .map(|(n, s)| (*n, &**s))
                .collect();
            if part.is_empty() {
                continue;
            }
            if class == Class::Reserved
                && self
                    .regions
                    .fsinfo
                    .is_some_and(|f| part.iter().any(|(n, _)| *n == f / 512))
            {
                self.fsinfo_unknown = false;
            }
            self.write_sectors(&part)?;
        }
        Ok(())
    }
}

impl FatCache {
    /// The FAT volume at `start..start+len` of `dev` (whole sectors, as a partition is).
    pub fn new(dev: Arc<dyn BlockDev>, start: u64, len: u64) -> Result<Self> {
        let regions = fat::regions(dev.as_ref(), start, len)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Cache {
                dev,
                start,
                len: len - len % 512,
                regions,
                dirty: BTreeMap::new(),
                fsinfo_unknown: false,
            })),
            pos: 0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what the FAT library changed, in `order`, syncing after each class of sectors.
    pub fn commit(&self, order: Order) -> io::Result<()> {
        self.lock().commit(order)
    }
}

impl Read for FatCache {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let c = self.lock();
        let left = c.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        let mut done = 0;
        while done < n {
            let at = self.pos + done as u64;
            let (sec, off) = (at / 512, (at % 512) as usize);
            let take = (512 - off).min(n - done);
            if off == 0 && take == 512 && !c.dirty.contains_key(&sec) {
                // Whole clean sectors straight from the disk, as many as follow.
                let mut k = 1;
                while done + (k + 1) * 512 <= n && !c.dirty.contains_key(&(sec + k as u64)) {
                    k += 1;
                }
                c.dev
                    .read_exact_at(&mut buf[done..done + k * 512], c.start + at)?;
                done += k * 512;
                continue;
            }
            let s = c.sector(sec)?;
            buf[done..done + take].copy_from_slice(&s[off..off + take]);
            done += take;
        }
        drop(c);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for FatCache {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut c = self.lock();
        let left = c.len.saturating_sub(self.pos);
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = (buf.len() as u64).min(left) as usize;
        // The library's dirty flag (one byte of the boot sector): dropped, so kiln never
        // rewrites the boot sector; the write order above is what keeps the volume sound.
        if self.pos == c.regions.status_byte && n == 1 {
            drop(c);
            self.pos += 1;
            return Ok(1);
        }
        let mut done = 0;
        while done < n {
            let at = self.pos + done as u64;
            let (sec, off) = (at / 512, (at % 512) as usize);
            let take = (512 - off).min(n - done);
            let mut s = if take == 512 {
                [0u8; 512]
            } else {
                c.sector(sec)?
            };
            s[off..off + take].copy_from_slice(&buf[done..done + take]);
            c.dirty.insert(sec, Box::new(s));
            done += take;
        }
        drop(c);
        self.pos += n as u64;
        Ok(n)
    }

    /// The library's flushes: nothing reaches the disk before [`FatCache::commit`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for FatCache {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.lock().len;
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) if n <= len => {
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

/// An open ESP. Call [`Esp::close`] to write back the FAT's bookkeeping; dropping it
/// without closing drops what was not committed yet.
pub struct Esp {
    fs: fatfs::FileSystem<FatCache>,
    /// The same cache the FAT library writes through, to commit each step.
    cache: FatCache,
    what: String,
}

impl Esp {
    /// `dev` is the disk (image file or block device); the ESP spans `start..start+len`.
    pub fn open(dev: Arc<dyn BlockDev>, start: u64, len: u64, what: &str) -> Result<Self> {
        let cache = FatCache::new(dev, start, len)
            .with_context(|| format!("{what}: the EFI system partition is not a FAT filesystem"))?;
        let fs = fatfs::FileSystem::new(cache.clone(), fatfs::FsOptions::new())
            .with_context(|| format!("{what}: the EFI system partition is not a FAT filesystem"))?;
        Ok(Self {
            fs,
            cache,
            what: what.to_string(),
        })
    }

    /// Writes out what the FAT library changed in this step, in `order`: each step of a
    /// file replacement reaches the disk before the next one starts.
    fn commit(&self, order: Order) -> Result<()> {
        self.cache
            .commit(order)
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

    /// Frees clusters the FAT marks used but no file refers to (what a power cut while a file
    /// was written or removed leaves): their entries are zeroed in every FAT copy, copy by
    /// copy. Freeing what nothing refers to is safe at any point. Returns how many. The FAT
    /// library does not see this, so call it on an ESP opened for nothing else and close it
    /// (its free count would be off by what was freed).
    pub fn reclaim_lost_clusters(&self) -> Result<usize> {
        let (dev, start, len) = {
            let c = self.cache.lock();
            (c.dev.clone(), c.start, c.len)
        };
        // Reads through the disk, so nothing may be waiting in the cache.
        self.commit(Order::Allocate)?;
        let lost = fat::lost_clusters(dev.as_ref(), start, len)
            .with_context(|| format!("{}: cannot read the ESP's FAT", self.what))?;
        {
            let mut c = self.cache.lock();
            for (offsets, width) in &lost {
                for &o in offsets {
                    let (n, at) = (o / 512, (o % 512) as usize);
                    let mut s = c.sector(n)?;
                    s[at..at + width].fill(0);
                    c.dirty.insert(n, Box::new(s));
                }
            }
        }
        self.commit(Order::Release)?;
        Ok(lost.len())
    }

    /// Replaces `path` with `data`. FAT has no atomic replace, and kiln only replaces files of
    /// a slot that cannot boot, so the old file is removed (a `path.new` left by an older kiln
    /// too) and the new one written under its name, each step committed in its order.
    pub fn replace(&self, path: &str, data: &[u8]) -> Result<()> {
        let root = self.fs.root_dir();
        for old in [format!("{path}.new"), path.to_string()] {
            if root.open_file(&old).is_ok() {
                root.remove(&old)
                    .with_context(|| format!("{}: cannot remove /{old}", self.what))?;
                self.commit(Order::Release)?;
            }
        }
        {
            let mut f = root
                .create_file(path)
                .with_context(|| format!("{}: cannot create /{path}", self.what))?;
            f.truncate()?;
            f.write_all(data)
                .with_context(|| format!("{}: cannot write /{path} (ESP full?)", self.what))?;
            f.flush()?;
        }
        self.commit(Order::Allocate)
    }

    /// Writes back the FAT's bookkeeping and syncs the device.
    pub fn close(self) -> Result<()> {
        let what = self.what;
        self.fs
            .unmount()
            .with_context(|| format!("{what}: cannot finish writing the ESP"))?;
        self.cache
            .commit(Order::Allocate)
            .with_context(|| format!("{what}: cannot write the ESP"))
    }
}
