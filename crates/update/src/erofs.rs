//! Just enough of EROFS to read one small uncompressed file, such as `/usr/lib/os-release`,
//! out of a USR slot of an image file: what an offline tool must know of the system it keeps
//! (its OS id) without mounting anything. Plain and inline layouts only; compressed and
//! chunked files are refused (mkfs.erofs stores a file this small uncompressed, since
//! compressing it could not save a block). Every offset is checked against the partition.
//!
//! The on-disk format is Linux's `fs/erofs/erofs_fs.h`.

use anyhow::{bail, Context, Result};

use crate::dev::BlockDev;

pub const MAGIC: u32 = 0xe0f5_e1e2;
const SUPER_OFFSET: u64 = 1024;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
/// Largest directory read while looking a name up.
const MAX_DIR: u64 = 16 << 20;

/// An EROFS filesystem at `offset..offset+len` of `dev`.
pub struct Erofs<'a> {
    dev: &'a dyn BlockDev,
    offset: u64,
    len: u64,
    block: u64,
    meta: u64,
    root: u64,
}

struct Inode {
    mode: u16,
    layout: u16,
    size: u64,
    blkaddr: u64,
    /// Where inline data would start: after the inode and its extended attributes.
    inline_at: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> Erofs<'a> {
    /// Reads the superblock; `Ok(None)` when the range does not hold EROFS.
    pub fn open(dev: &'a dyn BlockDev, offset: u64, len: u64) -> Result<Option<Self>> {
        let mut sb = [0u8; 128];
        if len < SUPER_OFFSET + sb.len() as u64 {
            return Ok(None);
        }
        dev.read_exact_at(&mut sb, offset + SUPER_OFFSET)
            .context("cannot read the EROFS superblock")?;
        if u32_at(&sb, 0) != MAGIC {
            return Ok(None);
        }
        let bits = sb[12];
        if !(9..=16).contains(&bits) {
            bail!("EROFS block size 2^{bits} is not one EROFS uses");
        }
        Ok(Some(Self {
            dev,
            offset,
            len,
            block: 1 << bits,
            meta: u64::from(u32_at(&sb, 40)),
            root: u64::from(u16_at(&sb, 14)),
        }))
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        let end = at.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            bail!("corrupt EROFS: a read at byte {at} goes past the end of the filesystem");
        }
        self.dev
            .read_exact_at(buf, self.offset + at)
            .context("cannot read the EROFS filesystem")
    }

    fn inode(&self, nid: u64) -> Result<Inode> {
        let at = self
            .meta
            .checked_mul(self.block)
            .and_then(|m| m.checked_add(nid.checked_mul(32)?))
            .context("corrupt EROFS: an inode number out of range")?;
        let mut b = [0u8; 64];
        let compact = {
            self.read_at(at, &mut b[..32])?;
            u16_at(&b, 0) & 1 == 0
        };
        let (size, isize) = if compact {
            (u64::from(u32_at(&b, 8)), 32)
        } else {
            self.read_at(at, &mut b)?;
            (
                u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
                64,
            )
        };
        let icount = u64::from(u16_at(&b, 2));
        let xattrs = if icount == 0 {
            0
        } else {
            12 + (icount - 1) * 4
        };
        Ok(Inode {
            mode: u16_at(&b, 4),
            layout: (u16_at(&b, 0) >> 1) & 0x7,
            size,
            blkaddr: u64::from(u32_at(&b, 16)),
            inline_at: at + isize + xattrs,
        })
    }

    /// The bytes of an inode with a plain (0) or inline (2) layout, at most `max`.
    fn data(&self, ino: &Inode, max: u64, what: &str) -> Result<Vec<u8>> {
        if ino.size > max {
            bail!(
                "{what} is {} bytes, more than the {max} kiln reads",
                ino.size
            );
        }
        let mut v = vec![0u8; ino.size as usize];
        // A file whose data is all inline has no block address (EROFS_NULL_ADDR, all ones).
        let start = || {
            ino.blkaddr
                .checked_mul(self.block)
                .context("corrupt EROFS: a block address out of range")
        };
        match ino.layout {
            0 if v.is_empty() => {}
            0 => self.read_at(start()?, &mut v)?,
            2 => {
                let full = (ino.size / self.block * self.block) as usize;
                if full > 0 {
                    self.read_at(start()?, &mut v[..full])?;
                }
                self.read_at(ino.inline_at, &mut v[full..])?;
            }
            1 | 3 => bail!("{what} is compressed; kiln reads only uncompressed files of EROFS"),
            n => bail!("{what} has EROFS data layout {n}, which kiln does not read"),
        }
        Ok(v)
    }

    /// The nid of `name` in directory inode `dir`.
    fn lookup(&self, dir: &Inode, name: &str, what: &str) -> Result<Option<u64>> {
        let data = self.data(dir, MAX_DIR, what)?;
        for blk in data.chunks(self.block as usize) {
            if blk.len() < 12 {
                bail!("corrupt EROFS: a directory block of {} bytes", blk.len());
            }
            let first = usize::from(u16_at(blk, 8));
            let n = first / 12;
            if first % 12 != 0 || n == 0 || first > blk.len() {
                bail!("corrupt EROFS: directory entries in {what}");
            }
            for i in 0..n {
                let e = i * 12;
                let off = usize::from(u16_at(blk, e + 8));
                let end = if i + 1 < n {
                    usize::from(u16_at(blk, e + 20))
                } else {
                    blk.len()
                };
                let raw = blk
                    .get(off..end)
                    .context("corrupt EROFS: a name outside its directory block")?;
                // The last name of a block is padded with zeros.
                let raw = raw.split(|&b| b == 0).next().unwrap_or(raw);
                if raw == name.as_bytes() {
                    return Ok(Some(u64::from_le_bytes(
                        blk[e..e + 8].try_into().expect("8 bytes"),
                    )));
                }
            }
        }
        Ok(None)
    }

    /// The regular file at `path` (relative to the filesystem's root, no symlinks followed),
    /// at most `max` bytes; `Ok(None)` when it does not exist.
    pub fn read_file(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let mut ino = self.inode(self.root)?;
        let mut seen = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if ino.mode & S_IFMT != S_IFDIR {
                bail!("/{seen} is not a directory");
            }
            let Some(nid) = self.lookup(&ino, part, &format!("/{seen}"))? else {
                return Ok(None);
            };
            if !seen.is_empty() {
                seen.push('/');
            }
            seen.push_str(part);
            ino = self.inode(nid)?;
        }
        if ino.mode & S_IFMT != S_IFREG {
            bail!("/{seen} is not a regular file");
        }
        self.data(&ino, max, &format!("/{seen}")).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::FileDev;
    use std::os::unix::fs::FileExt;

    /// A USR tree made by mkfs.erofs with lz4 (as the minimal recipe's is), placed at an
    /// offset inside a larger file like a partition of a disk image.
    #[test]
    fn reads_os_release_out_of_an_erofs_made_by_mkfs_erofs() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("usr");
        std::fs::create_dir_all(src.join("lib/kiln")).unwrap();
        std::fs::write(src.join("lib/os-release"), "NAME=\"Kiln\"\nID=kiln\n").unwrap();
        // Enough names that /lib takes more than one directory block.
        for i in 0..600 {
            std::fs::write(
                src.join(format!("lib/file-with-a-long-name-{i:04}")),
                [i as u8],
            )
            .unwrap();
        }
        std::fs::write(src.join("lib/big"), vec![b'x'; 1 << 20]).unwrap();
        std::os::unix::fs::symlink("os-release", src.join("lib/link")).unwrap();
        let img = d.path().join("usr.erofs");
        let o = std::process::Command::new("mkfs.erofs")
            .arg("-zlz4hc")
            .arg(&img)
            .arg(&src)
            .output()
            .expect("mkfs.erofs (erofs-utils) must be installed");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let fs_bytes = std::fs::read(&img).unwrap();
        let disk = d.path().join("disk");
        let at = 3 << 20;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&disk)
            .unwrap();
        f.write_all_at(&fs_bytes, at).unwrap();
        f.set_len(at + fs_bytes.len() as u64 + (1 << 20)).unwrap();
        let f = FileDev::new(f).unwrap();
        let e = Erofs::open(&f, at, fs_bytes.len() as u64).unwrap().unwrap();
        assert_eq!(
            e.read_file("lib/os-release", 4096).unwrap().unwrap(),
            b"NAME=\"Kiln\"\nID=kiln\n"
        );
        assert_eq!(
            e.read_file("lib/file-with-a-long-name-0599", 16)
                .unwrap()
                .unwrap(),
            [87]
        );
        assert!(e.read_file("lib/missing", 4096).unwrap().is_none());
        let big = e.read_file("lib/big", 4096).unwrap_err().to_string();
        assert!(big.contains("more than the 4096"), "{big}");
        let big = e.read_file("lib/big", 2 << 20).unwrap_err().to_string();
        assert!(big.contains("is compressed"), "{big}");
        let link = e.read_file("lib/link", 4096).unwrap_err().to_string();
        assert!(link.contains("not a regular file"), "{link}");
        assert!(e.read_file("lib/os-release/x", 4096).is_err());
        // Not EROFS, or cut short: no filesystem, or an error, never a panic.
        assert!(Erofs::open(&f, 0, 1 << 20).unwrap().is_none());
        let short = Erofs::open(&f, at, 8192).unwrap().unwrap();
        assert!(short.read_file("lib/os-release", 4096).is_err());
    }
}
