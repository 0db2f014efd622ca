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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::{FileDev, Op, Recording};

    fn run(cmd: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(cmd)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} (dosfstools/mtools) must be installed: {e}"))
    }

    fn ok(cmd: &str, args: &[&str]) {
        let o = run(cmd, args);
        assert!(
            o.status.success(),
            "{cmd}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A FAT32 volume with /KILN/vmlinuz-b (40 KiB) and another file.
    fn volume(d: &std::path::Path) -> std::path::PathBuf {
        let img = d.join("esp.img");
        let i = img.to_str().unwrap();
        ok("mkfs.vfat", &["-F", "32", "-C", i, "65536", "-n", "T"]);
        ok("mmd", &["-i", i, "::/KILN"]);
        for (name, len) in [("KILN/vmlinuz-b", 40_000usize), ("KILN/keep", 3000)] {
            let src = d.join("src");
            std::fs::write(&src, vec![b'o'; len]).unwrap();
            ok(
                "mcopy",
                &["-i", i, src.to_str().unwrap(), &format!("::/{name}")],
            );
        }
        img
    }

    fn open(img: &std::path::Path) -> (Arc<Recording<FileDev>>, u64) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(img)
            .unwrap();
        let len = f.metadata().unwrap().len();
        (Arc::new(Recording::new(FileDev::new(f).unwrap())), len)
    }

    /// A replacement reaches the disk in the safe order: the old file's directory entry
    /// before the FATs free its clusters; the new file's data, then FAT copy 0, then copy 1,
    /// then its directory entry, each class synced before the next; FSInfo says "unknown"
    /// before any FAT sector changes; the boot sector is never written.
    #[test]
    fn replace_writes_in_the_safe_order() {
        let d = tempfile::tempdir().unwrap();
        let img = volume(d.path());
        let (rec, len) = open(&img);
        let regions = fat::regions(rec.as_ref(), 0, len).unwrap();
        let esp = Esp::open(rec.clone(), 0, len, "test").unwrap();
        let new: Vec<u8> = (0..90_000u32).map(|x| (x % 251) as u8).collect();
        esp.replace("KILN/vmlinuz-b", &new).unwrap();
        esp.close().unwrap();
        let ops = rec.take();
        // Each write as (class, is the FSInfo sector), and the sync count before it.
        let class = |o: u64| -> &'static str {
            if o < 512 || (6 * 512..7 * 512).contains(&o) {
                "boot"
            } else if Some(o / 512 * 512) == regions.fsinfo {
                "fsinfo"
            } else if o < regions.reserved_end {
                "reserved"
            } else if (regions.fats[0].0..regions.fats[0].0 + regions.fats[0].1).contains(&o) {
                "fat0"
            } else if (regions.fats[1].0..regions.fats[1].0 + regions.fats[1].1).contains(&o) {
                "fat1"
            } else if regions.dirs.contains(&(o / 512 * 512)) {
                "dir"
            } else {
                "data"
            }
        };
        let mut seq: Vec<(&str, usize)> = Vec::new();
        let mut syncs = 0;
        for op in &ops {
            match op {
                Op::Sync => syncs += 1,
                Op::Write { offset, data } => {
                    for s in (*offset..offset + data.len() as u64).step_by(512) {
                        let c = class(s);
                        if seq.last().map(|l| l.0) != Some(c) {
                            seq.push((c, syncs));
                        }
                    }
                }
            }
        }
        let names: Vec<&str> = seq.iter().map(|s| s.0).collect();
        assert!(!names.contains(&"boot"), "{names:?}");
        assert_eq!(
            names,
            [
                "fsinfo", "dir", "fat0", "fat1", // the old file removed
                "data", "fat0", "fat1", "dir",    // the new one written
                "fsinfo"  // the free count, at close
            ],
            "{seq:?}"
        );
        // A sync between each class and the next.
        for w in seq.windows(2) {
            assert!(w[1].1 > w[0].1, "no sync between {w:?}");
        }
        assert_eq!(ops.last(), Some(&Op::Sync));
        let o = run("fsck.vfat", &["-n", img.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let out = d.path().join("out");
        ok(
            "mcopy",
            &[
                "-n",
                "-i",
                img.to_str().unwrap(),
                "::/KILN/vmlinuz-b",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(std::fs::read(&out).unwrap(), new);
    }

    /// Clusters marked used that no file refers to (what a cut leaves) are freed in both FAT
    /// copies; the files stay as they were and fsck finds nothing.
    #[test]
    fn lost_clusters_are_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        let img = volume(d.path());
        let i = img.to_str().unwrap();
        let before = fat::lost_clusters(
            &FileDev::new(std::fs::File::open(&img).unwrap()).unwrap(),
            0,
            std::fs::metadata(&img).unwrap().len(),
        )
        .unwrap();
        assert!(before.is_empty(), "{before:?}");
        // A chain of three clusters near the end, in both FATs, that nothing refers to.
        let mut b = std::fs::read(&img).unwrap();
        let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
        let fat_size = u64::from(u32::from_le_bytes(b[36..40].try_into().unwrap()));
        for copy in 0..2u64 {
            let fat = ((reserved + copy * fat_size) * 512) as usize;
            for (c, next) in [(1000u32, 1001u32), (1001, 1002), (1002, 0x0fff_ffff)] {
                let at = fat + c as usize * 4;
                b[at..at + 4].copy_from_slice(&next.to_le_bytes());
            }
        }
        std::fs::write(&img, &b).unwrap();
        assert!(!run("fsck.vfat", &["-n", i]).status.success());
        let (rec, len) = open(&img);
        let esp = Esp::open(rec, 0, len, "test").unwrap();
        assert_eq!(esp.reclaim_lost_clusters().unwrap(), 3);
        esp.close().unwrap();
        let o = run("fsck.vfat", &["-n", i]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let (rec, len) = open(&img);
        let esp = Esp::open(rec, 0, len, "test").unwrap();
        assert_eq!(esp.reclaim_lost_clusters().unwrap(), 0);
        assert_eq!(esp.read("KILN/vmlinuz-b").unwrap(), vec![b'o'; 40_000]);
        assert_eq!(esp.read("KILN/keep").unwrap(), vec![b'o'; 3000]);
        esp.close().unwrap();
    }
}
