//! Where a file's bytes are on a FAT filesystem, read without the FAT library and without
//! writing anything: the boot sector's geometry, the directories along the path (long and
//! short names), and the file's cluster chain. The slot state is then written straight to
//! those sectors, as GRUB's `save_env` does, so a state write never touches the FAT, the
//! directories or the boot sector. The bytes come from image files kiln did not make, so
//! every number is checked and every loop is bounded.

use anyhow::{bail, ensure, Context, Result};

use crate::dev::BlockDev;

/// A FAT volume's geometry, from its boot sector.
#[derive(Debug, Clone)]
struct Geometry {
    /// Where the volume starts on the disk.
    base: u64,
    cluster_bytes: u64,
    fat_offset: u64,
    /// Bytes of one FAT, and how many there are.
    fat_len: u64,
    fats: u64,
    /// FAT32's FSInfo sector (bytes from the volume's start).
    fsinfo: Option<u64>,
    /// FAT12, FAT16 or FAT32.
    bits: u32,
    /// FAT12/16: the fixed root directory (offset, bytes). FAT32: its first cluster.
    root: Root,
    data_offset: u64,
    /// Clusters 2..cluster_count+2 exist.
    cluster_count: u64,
}

#[derive(Debug, Clone)]
enum Root {
    Fixed { offset: u64, len: u64 },
    Cluster(u32),
}

/// A file's place on the disk: byte ranges in file order, and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub extents: Vec<(u64, u64)>,
    pub len: u64,
}

impl Located {
    /// The file as one byte range of the disk, if its clusters are contiguous.
    pub fn contiguous(&self) -> Option<u64> {
        let first = self.extents.first()?;
        let mut end = first.0;
        for &(off, len) in &self.extents {
            if off != end {
                return None;
            }
            end = off + len;
        }
        Some(first.0)
    }
}

/// What the sectors of a FAT volume hold, for writing its changes in a safe order: each
/// copy of the FAT, the directories, the FSInfo sector and the boot sector's status byte.
/// Offsets are from the volume's start.
#[derive(Debug, Clone)]
pub struct Regions {
    /// Each FAT copy, in order.
    pub fats: Vec<(u64, u64)>,
    /// The sectors of every directory (the root and all below it).
    pub dirs: std::collections::BTreeSet<u64>,
    pub fsinfo: Option<u64>,
    /// The byte that holds the volume's dirty flag (0x41 on FAT32, 0x25 on FAT12/16).
    pub status_byte: u64,
    /// The reserved sectors (boot sector, FSInfo, backup boot sector) end here.
    pub reserved_end: u64,
}

/// The [`Regions`] of the FAT volume at `base..base+len` of `dev`.
pub fn regions(dev: &dyn BlockDev, base: u64, len: u64) -> Result<Regions> {
    let g = Geometry::read(dev, base, len)?;
    let mut dirs = std::collections::BTreeSet::new();
    let mut todo = vec![g.root.clone()];
    // Directories may not loop; a volume with more than this many is not an ESP kiln made.
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        seen += 1;
        ensure!(
            seen <= 4096,
            "more than 4096 directories on the FAT volume (a loop?)"
        );
        let ranges = match &d {
            Root::Fixed { offset, len } => vec![(base + offset, *len)],
            Root::Cluster(c) => g.chain(dev, u64::from(*c), 4 << 20)?,
        };
        for (off, l) in &ranges {
            for s in (off - base) / 512..(off - base + l).div_ceil(512) {
                dirs.insert(s * 512);
            }
        }
        let bytes = g.dir_bytes(dev, &d)?;
        for e in entries(&bytes, g.bits) {
            if e.dir && e.short != "." && e.short != ".." && e.first >= 2 {
                todo.push(Root::Cluster(
                    u32::try_from(e.first)
                        .context("a directory's first cluster is out of range")?,
                ));
            }
        }
    }
    Ok(Regions {
        fats: (0..g.fats)
            .map(|i| (g.fat_offset + i * g.fat_len, g.fat_len))
            .collect(),
        dirs,
        fsinfo: g.fsinfo,
        status_byte: if g.bits == 32 { 0x41 } else { 0x25 },
        reserved_end: g.fat_offset,
    })
}

/// Clusters the FAT marks used that no file or directory refers to: what a power cut in the
/// middle of allocating or freeing leaves. Each is returned as the byte offsets (from the
/// volume's start) of its entry in every FAT copy and the entry's width, to be zeroed.
pub fn lost_clusters(dev: &dyn BlockDev, base: u64, len: u64) -> Result<Vec<(Vec<u64>, usize)>> {
    let g = Geometry::read(dev, base, len)?;
    let mut used = std::collections::BTreeSet::new();
    let mut todo = vec![g.root.clone()];
    let mut seen = 0;
    let mark = |used: &mut std::collections::BTreeSet<u64>, first: u64, max: u64| -> Result<()> {
        let mut c = Some(first);
        let mut n = 0u64;
        while let Some(cl) = c {
            ensure!(
                n <= max,
                "a FAT chain from cluster {first} is too long or loops"
            );
            if !used.insert(cl) {
                break;
            }
            n += 1;
            c = g.next(dev, cl)?;
        }
        Ok(())
    };
    while let Some(d) = todo.pop() {
        seen += 1;
        ensure!(
            seen <= 4096,
            "more than 4096 directories on the FAT volume (a loop?)"
        );
        if let Root::Cluster(c) = d {
            mark(&mut used, u64::from(c), (4 << 20) / g.cluster_bytes)?;
        }
        let bytes = g.dir_bytes(dev, &d)?;
        for e in entries(&bytes, g.bits) {
            if e.short == "." || e.short == ".." || e.first < 2 {
                continue;
            }
            if e.dir {
                todo.push(Root::Cluster(
                    u32::try_from(e.first)
                        .context("a directory's first cluster is out of range")?,
                ));
            } else if g.valid_cluster(e.first) {
                mark(&mut used, e.first, e.size.div_ceil(g.cluster_bytes) + 1)?;
            }
        }
    }
    // The FAT itself, read once: 4 bytes a cluster on FAT32, at most a few MiB.
    let width = (g.bits / 8).max(2) as usize;
    let mut table = vec![0u8; g.fat_len as usize];
    dev.read_exact_at(&mut table, base + g.fat_offset)
        .context("cannot read the FAT")?;
    let mut lost = Vec::new();
    for c in 2..g.cluster_count + 2 {
        let v = match g.bits {
            12 => {
                let o = (c + c / 2) as usize;
                let v = le16(&table, o);
                if c % 2 == 1 {
                    v >> 4
                } else {
                    v & 0xfff
                }
            }
            16 => le16(&table, (c * 2) as usize),
            _ => le32(&table, (c * 4) as usize) & 0x0fff_ffff,
        };
        let bad = match g.bits {
            12 => 0xff7,
            16 => 0xfff7,
            _ => 0x0fff_fff7,
        };
        // FAT12 entries share bytes; kiln's ESPs are FAT32, so only FAT16/32 are reclaimed.
        if v != 0 && v != bad && g.bits != 12 && !used.contains(&c) {
            let off = c * width as u64;
            lost.push((
                (0..g.fats)
                    .map(|i| g.fat_offset + i * g.fat_len + off)
                    .collect(),
                width,
            ));
        }
    }
    Ok(lost)
}

fn le16(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}
fn le32(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}

impl Geometry {
    fn read(dev: &dyn BlockDev, base: u64, len: u64) -> Result<Self> {
        let mut bs = [0u8; 512];
        ensure!(
            len >= 512,
            "the partition is too small to hold a FAT filesystem"
        );
        dev.read_exact_at(&mut bs, base)
            .context("cannot read the FAT boot sector")?;
        ensure!(
            bs[510] == 0x55 && bs[511] == 0xaa,
            "no FAT boot sector (no 55 AA signature)"
        );
        let bytes_per_sector = le16(&bs, 11);
        let sectors_per_cluster = u64::from(bs[13]);
        let reserved = le16(&bs, 14);
        let fats = u64::from(bs[16]);
        let root_entries = le16(&bs, 17);
        let total16 = le16(&bs, 19);
        let fat16 = le16(&bs, 22);
        let total32 = le32(&bs, 32);
        let fat32 = le32(&bs, 36);
        ensure!(
            matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096),
            "FAT boot sector: {bytes_per_sector} bytes per sector"
        );
        ensure!(
            sectors_per_cluster.is_power_of_two() && sectors_per_cluster <= 128,
            "FAT boot sector: {sectors_per_cluster} sectors per cluster"
        );
        ensure!(
            reserved > 0 && fats > 0,
            "FAT boot sector: no reserved sectors or no FAT"
        );
        let fat_sectors = if fat16 != 0 { fat16 } else { fat32 };
        let total = if total16 != 0 { total16 } else { total32 };
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let meta = reserved + fats * fat_sectors + root_sectors;
        ensure!(
            fat_sectors > 0 && total > meta,
            "FAT boot sector: {total} sectors cannot hold its {meta} sectors of tables"
        );
        ensure!(
            total * bytes_per_sector <= len,
            "the FAT filesystem ({} bytes) is larger than its partition ({len} bytes)",
            total * bytes_per_sector
        );
        let cluster_count = (total - meta) / sectors_per_cluster;
        // The FAT type follows from the cluster count alone (Microsoft's FAT specification).
        let bits = match cluster_count {
            0..=4084 => 12,
            4085..=65524 => 16,
            _ => 32,
        };
        let root = if bits == 32 {
            let c = le32(&bs, 44) as u32;
            Root::Cluster(c)
        } else {
            Root::Fixed {
                offset: (reserved + fats * fat_sectors) * bytes_per_sector,
                len: root_entries * 32,
            }
        };
        // Every cluster needs its entry in the FAT.
        ensure!(
            (cluster_count + 2) * u64::from(bits) / 8 <= fat_sectors * bytes_per_sector,
            "FAT boot sector: the FAT is too small for {cluster_count} clusters"
        );
        let fsinfo = match le16(&bs, 48) {
            n if bits == 32 && n > 0 && n < reserved => Some(n * bytes_per_sector),
            _ => None,
        };
        Ok(Self {
            base,
            cluster_bytes: sectors_per_cluster * bytes_per_sector,
            fat_offset: reserved * bytes_per_sector,
            fat_len: fat_sectors * bytes_per_sector,
            fats,
            fsinfo,
            bits,
            root,
            data_offset: meta * bytes_per_sector,
            cluster_count,
        })
    }

    fn valid_cluster(&self, c: u64) -> bool {
        c >= 2 && c < self.cluster_count + 2
    }

    /// The FAT entry of cluster `c`: the next cluster, or None at the end of the chain.
    fn next(&self, dev: &dyn BlockDev, c: u64) -> Result<Option<u64>> {
        let (off, eoc) = match self.bits {
            12 => (c + c / 2, 0xff8),
            16 => (c * 2, 0xfff8),
            _ => (c * 4, 0x0fff_fff8),
        };
        let mut b = [0u8; 4];
        let n = if self.bits == 32 { 4 } else { 2 };
        dev.read_exact_at(&mut b[..n], self.base + self.fat_offset + off)
            .context("cannot read the FAT")?;
        let v = match self.bits {
            12 => {
                let v = le16(&b, 0);
                if c % 2 == 1 {
                    v >> 4
                } else {
                    v & 0xfff
                }
            }
            16 => le16(&b, 0),
            _ => le32(&b, 0) & 0x0fff_ffff,
        };
        if v >= eoc {
            return Ok(None);
        }
        ensure!(
            self.valid_cluster(v),
            "the FAT chain goes from cluster {c} to {v}, which is free, bad or outside the volume"
        );
        Ok(Some(v))
    }

    /// A cluster chain as byte ranges of the disk, merged where clusters follow each other.
    fn chain(&self, dev: &dyn BlockDev, first: u64, max_bytes: u64) -> Result<Vec<(u64, u64)>> {
        ensure!(
            self.valid_cluster(first),
            "the directory entry names cluster {first}, outside the volume"
        );
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut c = Some(first);
        let mut bytes = 0u64;
        while let Some(cl) = c {
            // A chain longer than what it must hold is a loop or a damaged FAT.
            ensure!(
                bytes < max_bytes,
                "the FAT chain from cluster {first} is longer than its file or loops"
            );
            let off = self.base + self.data_offset + (cl - 2) * self.cluster_bytes;
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += self.cluster_bytes,
                _ => out.push((off, self.cluster_bytes)),
            }
            bytes += self.cluster_bytes;
            c = self.next(dev, cl)?;
        }
        Ok(out)
    }

    /// The bytes of a directory (the fixed root, or a cluster chain of at most 4 MiB).
    fn dir_bytes(&self, dev: &dyn BlockDev, dir: &Root) -> Result<Vec<u8>> {
        let ranges = match dir {
            Root::Fixed { offset, len } => vec![(self.base + offset, *len)],
            Root::Cluster(c) => self.chain(dev, u64::from(*c), 4 << 20)?,
        };
        let mut v = Vec::new();
        for (off, len) in ranges {
            let start = v.len();
            v.resize(start + len as usize, 0);
            dev.read_exact_at(&mut v[start..], off)
                .context("cannot read a FAT directory")?;
        }
        Ok(v)
    }
}

/// One directory entry: its names, first cluster, size and whether it is a directory.
struct Entry {
    long: Option<String>,
    short: String,
    first: u64,
    size: u64,
    dir: bool,
}

fn entries(dir: &[u8], bits: u32) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
    for e in dir.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xe5 => {
                lfn.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3f == 0x0f {
            // A long-name piece: 13 UTF-16 units at fixed places, pieces in reverse order.
            let mut units = [0u16; 13];
            for (i, o) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .iter()
                .enumerate()
            {
                units[i] = u16::from_le_bytes([e[*o], e[o + 1]]);
            }
            if e[0] & 0x40 != 0 {
                lfn.clear();
            }
            lfn.push((e[13], units));
            continue;
        }
        if attr & 0x08 != 0 {
            // The volume label.
            lfn.clear();
            continue;
        }
        let sum = e[..11]
            .iter()
            .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b));
        let long = if !lfn.is_empty() && lfn.iter().all(|(c, _)| *c == sum) {
            let mut units: Vec<u16> = lfn.iter().rev().flat_map(|(_, u)| *u).collect();
            if let Some(end) = units.iter().position(|&u| u == 0) {
                units.truncate(end);
            }
            String::from_utf16(&units).ok()
        } else {
            None
        };
        lfn.clear();
        let name = String::from_utf8_lossy(&e[..8]).trim_end().to_string();
        let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_string();
        let short = if ext.is_empty() {
            name
        } else {
            format!("{name}.{ext}")
        };
        let hi = if bits == 32 { le16(e, 20) } else { 0 };
        out.push(Entry {
            long,
            short,
            first: hi << 16 | le16(e, 26),
            size: le32(e, 28),
            dir: attr & 0x10 != 0,
        });
    }
    out
}

/// Finds `path` (e.g. `kiln/slots.env`) on the FAT volume at `base..base+len` of `dev`:
/// `None` if it (or a directory on the way) does not exist. Names compare without regard to
/// ASCII case, as FAT does.
pub fn locate(dev: &dyn BlockDev, base: u64, len: u64, path: &str) -> Result<Option<Located>> {
    let g = Geometry::read(dev, base, len)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut dir = g.root.clone();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let bytes = g.dir_bytes(dev, &dir)?;
        let Some(e) = entries(&bytes, g.bits).into_iter().find(|e| {
            e.long
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(part))
                || e.short.eq_ignore_ascii_case(part)
        }) else {
            return Ok(None);
        };
        if last {
            if e.dir {
                bail!("/{path} is a directory");
            }
            if e.size == 0 {
                return Ok(Some(Located {
                    extents: Vec::new(),
                    len: 0,
                }));
            }
            let chain = g.chain(dev, e.first, e.size)?;
            let have: u64 = chain.iter().map(|(_, l)| l).sum();
            ensure!(
                have >= e.size,
                "/{path} is {} bytes but its clusters hold {have}",
                e.size
            );
            // The file's bytes only, not the rest of its last cluster.
            let mut left = e.size;
            let mut extents = Vec::new();
            for (off, l) in chain {
                let take = l.min(left);
                if take > 0 {
                    extents.push((off, take));
                }
                left -= take;
            }
            return Ok(Some(Located {
                extents,
                len: e.size,
            }));
        }
        ensure!(e.dir, "/{} is not a directory", parts[..=i].join("/"));
        dir = Root::Cluster(
            u32::try_from(e.first).context("a directory's first cluster is out of range")?,
        );
    }
    bail!("/{path}: an empty path")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::FileDev;

    fn run(cmd: &str, args: &[&str]) {
        let o = std::process::Command::new(cmd)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} (dosfstools/mtools) must be installed: {e}"));
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// mkfs.vfat and mtools make the volume; the locator finds each file's bytes, as mtools
    /// reads them, for FAT12, FAT16 and FAT32, long and short names.
    #[test]
    fn finds_files_that_mtools_wrote() {
        let d = tempfile::tempdir().unwrap();
        for (fat, kib) in [("12", 2048), ("16", 32768), ("32", 131072)] {
            let img = d.path().join(format!("fat{fat}.img"));
            let i = img.to_str().unwrap();
            run(
                "mkfs.vfat",
                &["-F", fat, "-C", i, &kib.to_string(), "-n", "T"],
            );
            run("mmd", &["-i", i, "::/kiln"]);
            let mut want = Vec::new();
            for (name, len) in [
                ("kiln/slots.env", 1024usize),
                ("kiln/slots-b.env", 1024),
                ("kiln/A-Long-Name.bin", 70_000),
                ("top.txt", 3),
            ] {
                let data: Vec<u8> = (0..len).map(|x| (x * 7 + len) as u8).collect();
                let src = d.path().join("src");
                std::fs::write(&src, &data).unwrap();
                run(
                    "mcopy",
                    &["-i", i, src.to_str().unwrap(), &format!("::/{name}")],
                );
                want.push((name, data));
            }
            let f = std::fs::File::open(&img).unwrap();
            let len = f.metadata().unwrap().len();
            let dev = FileDev::new(f).unwrap();
            for (name, data) in want {
                let l = locate(&dev, 0, len, name).unwrap().unwrap();
                assert_eq!(l.len, data.len() as u64, "FAT{fat} {name}");
                let mut got = Vec::new();
                for (off, n) in &l.extents {
                    let mut b = vec![0; *n as usize];
                    dev.read_exact_at(&mut b, *off).unwrap();
                    got.extend(b);
                }
                assert_eq!(got, data, "FAT{fat} {name}");
            }
            assert_eq!(locate(&dev, 0, len, "kiln/none.env").unwrap(), None);
            assert_eq!(locate(&dev, 0, len, "none/slots.env").unwrap(), None);
            assert!(locate(&dev, 0, len, "kiln").is_err());
        }
    }

    /// Garbage and damaged volumes are errors, never a panic or an endless loop.
    #[test]
    fn damaged_volumes_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("f.img");
        let i = img.to_str().unwrap();
        run("mkfs.vfat", &["-F", "32", "-C", i, "131072"]);
        run("mmd", &["-i", i, "::/kiln"]);
        let src = d.path().join("src");
        std::fs::write(&src, vec![b'#'; 1024]).unwrap();
        run(
            "mcopy",
            &["-i", i, src.to_str().unwrap(), "::/kiln/slots.env"],
        );
        let good = std::fs::read(&img).unwrap();
        let found = {
            let dev = FileDev::new(std::fs::File::open(&img).unwrap()).unwrap();
            locate(&dev, 0, good.len() as u64, "kiln/slots.env")
                .unwrap()
                .unwrap()
        };
        // The FAT entry of the file's first cluster made to point at itself: a loop.
        let reserved = u16::from_le_bytes([good[14], good[15]]) as u64;
        let data_start = found.extents[0].0;
        let spc = good[13] as u64;
        let fats = good[16] as u64;
        let fat_size = u32::from_le_bytes(good[36..40].try_into().unwrap()) as u64;
        let first = (data_start - (reserved + fats * fat_size) * 512) / (spc * 512) + 2;
        let mut looped = good.clone();
        let at = (reserved * 512 + first * 4) as usize;
        looped[at..at + 4].copy_from_slice(&(first as u32).to_le_bytes());
        let mut cases = vec![("loop", looped)];
        let mut zeroed = good.clone();
        zeroed[..512].fill(0);
        cases.push(("no boot sector", zeroed));
        for seed in 0..200u32 {
            let mut b = good[..1 << 20].to_vec();
            let mut x = seed.wrapping_mul(2654435761) | 1;
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let at = (x as usize) % b.len().min(64 * 1024);
                b[at] = (x >> 8) as u8;
            }
            cases.push(("random", b));
        }
        for (what, bytes) in cases {
            std::fs::write(&img, &bytes).unwrap();
            let dev = FileDev::new(std::fs::File::open(&img).unwrap()).unwrap();
            // Random damage may leave the file findable; it must never panic or hang.
            let r = locate(&dev, 0, bytes.len() as u64, "kiln/slots.env");
            if what != "random" {
                assert!(!matches!(r, Ok(Some(_))), "{what}");
            }
        }
    }
}
