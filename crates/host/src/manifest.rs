//! Manifests of what kiln keeps in its cache: a stage's output, an unpacked kernel source.
//! [`record`] writes one into a finished directory before it is published; [`verify`] checks
//! the directory against it before it is reused, so files that a tmp cleaner removed, a
//! power cut truncated or anything else changed are found, and the directory is made again
//! instead of trusted.
//!
//! Each entry has its path, type and permissions (`mode`), owner, size, modification time, a
//! symlink's target, a device's numbers, and for a regular file its `digest`: SHA-256 over
//! the file's size and each 64 KiB block that is not all zeros, with the block's index (so a
//! sparse disk image is hashed at the speed of its data, not of its apparent size).
//!
//! [`Check::Quick`], what every reuse does, walks the directory and compares the tree (no
//! entry missing, none added) and every entry's metadata, without reading any file: that is
//! what finds the cache's failure modes (a file a tmp cleaner removed, one cut short or left
//! empty, a partial copy or restore), and a file rewritten in place by any ordinary means has
//! a new modification time (kiln sets every stage file's to SOURCE_DATE_EPOCH, and nothing of
//! kiln writes a published stage). What it cannot see is a change that keeps the size and the
//! time, such as bits rotting on the disk; [`Check::Full`] recomputes every digest too, which
//! is what the crash tests ask for (`KILN_CACHE_VERIFY=full` makes every build do it).

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's name inside the directory it describes (not itself an entry).
pub const FILE: &str = "kiln-manifest.json";
const FORMAT: u32 = 1;
const BLOCK: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The tree and every entry's metadata.
    Quick,
    /// And every file's digest.
    Full,
}

impl Check {
    /// Quick, unless `KILN_CACHE_VERIFY=full`.
    pub fn from_env() -> Check {
        match std::env::var("KILN_CACHE_VERIFY").as_deref() {
            Ok("full") => Check::Full,
            _ => Check::Quick,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Relative to the directory, bytes outside printable ASCII and `%` as `%XX`.
    path: String,
    mode: u32,
    uid: u32,
    gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// Modification time, seconds and nanoseconds (files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime: Option<(i64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rdev: Option<u64>,
}

/// Writes the manifest of `dir` into it, every digest computed.
pub fn record(dir: &Path) -> Result<()> {
    let entries = walk(dir, true)
        .with_context(|| format!("cannot record the manifest of {}", dir.display()))?;
    let m = Manifest {
        format: FORMAT,
        entries,
    };
    let path = dir.join(FILE);
    std::fs::write(&path, serde_json::to_vec(&m)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Checks `dir` against its manifest; `Err` says what is wrong (a missing manifest too).
pub fn verify(dir: &Path, check: Check) -> std::result::Result<(), String> {
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("it has no {FILE}"))
        }
        Err(e) => return Err(format!("cannot read its {FILE}: {e}")),
    };
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("its {FILE} is unreadable: {e}"))?;
    if m.format != FORMAT {
        return Err(format!("its {FILE} has format {}, not {FORMAT}", m.format));
    }
    let now = walk(dir, false).map_err(|e| format!("{e:#}"))?;
    compare(dir, &m.entries, &now, check)
}

/// The entries under `dir` in a fixed order (depth first, each directory's entries by
/// name), with the files' digests if `digests`.
fn walk(dir: &Path, digests: bool) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk_into(dir, Path::new(""), digests, &mut out)
        .with_context(|| format!("cannot walk {}", dir.display()))?;
    Ok(out)
}

fn walk_into(base: &Path, rel: &Path, digests: bool, out: &mut Vec<Entry>) -> Result<()> {
    let here = base.join(rel);
    let mut children: Vec<std::fs::DirEntry> = std::fs::read_dir(&here)
        .with_context(|| format!("cannot read {}", here.display()))?
        .collect::<std::io::Result<_>>()?;
    children.sort_by_key(|a| a.file_name());
    for c in children {
        let name = c.file_name();
        if rel.as_os_str().is_empty() && name == FILE {
            continue;
        }
        let path = rel.join(&name);
        // fstatat on the directory's descriptor: no path lookup per entry.
        let m = c
            .metadata()
            .with_context(|| format!("cannot stat {}", base.join(&path).display()))?;
        let ft = m.file_type();
        let mut entry = Entry {
            path: escape(path.as_os_str().as_bytes()),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: None,
            mtime: None,
            digest: None,
            target: None,
            rdev: None,
        };
        if ft.is_file() {
            entry.size = Some(m.len());
            entry.mtime = Some((m.mtime(), m.mtime_nsec()));
            if digests {
                let p = base.join(&path);
                let f = File::open(&p).with_context(|| format!("cannot open {}", p.display()))?;
                entry.digest = Some(digest(&f, m.len())?);
            }
        } else if ft.is_symlink() {
            let t = std::fs::read_link(c.path())?;
            entry.target = Some(escape(t.as_os_str().as_bytes()));
        } else if !ft.is_dir() {
            entry.rdev = Some(m.rdev());
        }
        out.push(entry);
        if ft.is_dir() {
            walk_into(base, &path, digests, out)?;
        }
    }
    Ok(())
}

fn compare(
    dir: &Path,
    recorded: &[Entry],
    now: &[Entry],
    check: Check,
) -> std::result::Result<(), String> {
    let known: std::collections::HashSet<&str> = recorded.iter().map(|e| e.path.as_str()).collect();
    let present: std::collections::HashSet<&str> = now.iter().map(|e| e.path.as_str()).collect();
    if let Some(e) = recorded.iter().find(|e| !present.contains(e.path.as_str())) {
        let more = recorded
            .iter()
            .filter(|e| !present.contains(e.path.as_str()))
            .count();
        return Err(if more > 1 {
            format!("{} is missing, and {} more", e.path, more - 1)
        } else {
            format!("{} is missing", e.path)
        });
    }
    if let Some(e) = now.iter().find(|e| !known.contains(e.path.as_str())) {
        return Err(format!("{} is there but was not recorded", e.path));
    }
    for (r, n) in recorded.iter().zip(now) {
        let what = &r.path;
        if r.mode != n.mode {
            return Err(format!("{what}: mode {:o}, recorded {:o}", n.mode, r.mode));
        }
        if (r.uid, r.gid) != (n.uid, n.gid) {
            return Err(format!(
                "{what}: owner {}:{}, recorded {}:{}",
                n.uid, n.gid, r.uid, r.gid
            ));
        }
        if r.size != n.size {
            return Err(format!(
                "{what}: {} bytes, recorded {}",
                n.size.unwrap_or(0),
                r.size.unwrap_or(0)
            ));
        }
        if r.target != n.target {
            return Err(format!("{what}: the symlink's target changed"));
        }
        if r.rdev != n.rdev {
            return Err(format!("{what}: the device numbers changed"));
        }
        if r.mtime != n.mtime {
            return Err(format!("{what}: it was modified after it was recorded"));
        }
        let Some(size) = r.size else { continue };
        if check == Check::Full {
            let f = File::open(dir.join(unescape(what))).map_err(|e| format!("{what}: {e}"))?;
            let d = digest(&f, size).map_err(|e| format!("{what}: {e:#}"))?;
            if Some(d) != r.digest {
                return Err(format!("{what}: its content changed"));
            }
        }
    }
    Ok(())
}

/// SHA-256 over the size and each non-zero 64 KiB block (index, then bytes). Holes are
/// skipped with SEEK_DATA; a data block of zeros counts as a hole, so the digest depends on
/// the bytes only, not on how the file is stored.
pub fn digest(f: &File, size: u64) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"kiln-manifest-digest-1\0");
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; BLOCK as usize];
    let mut off = 0u64;
    while off < size {
        let (start, end) = match data_run(f, off, size)? {
            Some(r) => r,
            None => break,
        };
        let mut b = start / BLOCK * BLOCK;
        while b < end {
            let n = BLOCK.min(size - b) as usize;
            f.read_exact_at(&mut buf[..n], b)?;
            if !is_zero(&buf[..n]) {
                h.update((b / BLOCK).to_le_bytes());
                h.update(&buf[..n]);
            }
            b += BLOCK;
        }
        off = b;
    }
    Ok(hex::encode(h.finalize()))
}

/// The next run of data at or after `off`: (start, end), or none past the last.
fn data_run(f: &File, off: u64, size: u64) -> Result<Option<(u64, u64)>> {
    let fd = f.as_raw_fd();
    // SAFETY: lseek on a descriptor we own; the offset is only read back.
    let start = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            // A filesystem without SEEK_DATA: all of it is data.
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((off, size))),
            _ => Err(e.into()),
        };
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(Some((start as u64, (end as u64).min(size))))
}

fn is_zero(b: &[u8]) -> bool {
    let (head, mid, tail) = unsafe {
        // SAFETY: any bytes are a valid u128; align_to only reinterprets the aligned middle.
        b.align_to::<u128>()
    };
    head.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if (0x20..0x7f).contains(&c) && c != b'%' {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

fn unescape(s: &str) -> std::path::PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("root/etc")).unwrap();
        std::fs::write(p.join("root/etc/hostname"), "kiln\n").unwrap();
        std::fs::write(p.join("root/big"), vec![7u8; 100_000]).unwrap();
        symlink("etc/hostname", p.join("root/link")).unwrap();
        std::fs::write(p.join(std::ffi::OsStr::from_bytes(b"odd\xff%name")), "x").unwrap();
        // Sparse: 1 GiB with 4 KiB of data in the middle.
        let f = File::create(p.join("fs.img")).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(b"superblock", 1 << 29).unwrap();
        d
    }

    #[test]
    fn an_untouched_directory_verifies() {
        let d = tree();
        record(d.path()).unwrap();
        verify(d.path(), Check::Quick).unwrap();
        verify(d.path(), Check::Full).unwrap();
    }

    /// Writes `bytes` at `off` in a file and gives it back its modification time: a change
    /// no metadata shows (bits rotting on the disk).
    fn rot(p: &Path, bytes: &[u8], off: u64) {
        let f = File::options().write(true).open(p).unwrap();
        let mtime = f.metadata().unwrap().modified().unwrap();
        f.write_all_at(bytes, off).unwrap();
        f.set_modified(mtime).unwrap();
    }

    /// Each kind of damage is found and named; what no metadata shows only by the full check.
    #[test]
    fn damage_is_found() {
        type Damage = fn(&Path);
        let cases: &[(&str, Damage, Check, &str)] = &[
            (
                "removed",
                |p| std::fs::remove_file(p.join("root/etc/hostname")).unwrap(),
                Check::Quick,
                "root/etc/hostname is missing",
            ),
            (
                "emptied",
                |p| std::fs::write(p.join("root/big"), b"").unwrap(),
                Check::Quick,
                "root/big: 0 bytes, recorded 100000",
            ),
            (
                "added",
                |p| std::fs::write(p.join("root/etc/extra"), b"").unwrap(),
                Check::Quick,
                "root/etc/extra is there but was not recorded",
            ),
            (
                "rewritten",
                |p| std::fs::write(p.join("root/etc/hostname"), "nlik\n").unwrap(),
                Check::Quick,
                "root/etc/hostname: it was modified after it was recorded",
            ),
            (
                "written into",
                |p| {
                    File::options()
                        .write(true)
                        .open(p.join("root/big"))
                        .unwrap()
                        .write_all_at(b"x", 50_000)
                        .unwrap()
                },
                Check::Quick,
                "root/big: it was modified",
            ),
            (
                "rotted",
                |p| rot(&p.join("root/big"), b"x", 50_000),
                Check::Full,
                "root/big: its content changed",
            ),
            (
                "sparse data rotted",
                |p| rot(&p.join("fs.img"), b"S", 1 << 29),
                Check::Full,
                "fs.img: its content changed",
            ),
            (
                "mode changed",
                |p| {
                    std::fs::set_permissions(
                        p.join("root/big"),
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .unwrap()
                },
                Check::Quick,
                "root/big: mode",
            ),
            (
                "symlink retargeted",
                |p| {
                    std::fs::remove_file(p.join("root/link")).unwrap();
                    symlink("/etc/shadow", p.join("root/link")).unwrap();
                },
                Check::Quick,
                "root/link: the symlink's target changed",
            ),
            (
                "odd name removed",
                |p| {
                    std::fs::remove_file(p.join(std::ffi::OsStr::from_bytes(b"odd\xff%name")))
                        .unwrap()
                },
                Check::Quick,
                "odd%FF%25name is missing",
            ),
            (
                "manifest removed",
                |p| std::fs::remove_file(p.join(FILE)).unwrap(),
                Check::Quick,
                "it has no kiln-manifest.json",
            ),
            (
                "manifest cut",
                |p| std::fs::write(p.join(FILE), b"{\"format\":1,").unwrap(),
                Check::Quick,
                "is unreadable",
            ),
        ];
        for (name, damage, check, want) in cases {
            let d = tree();
            record(d.path()).unwrap();
            damage(d.path());
            if *check == Check::Full {
                verify(d.path(), Check::Quick).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let e = verify(d.path(), *check).expect_err(name);
            assert!(e.contains(want), "{name}: {e}");
        }
    }

    #[test]
    fn the_digest_depends_on_the_bytes_not_on_holes() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let fa = File::create(&a).unwrap();
        fa.set_len(10 << 20).unwrap();
        fa.write_all_at(b"data", 5 << 20).unwrap();
        // The same bytes with the zeros written out.
        let mut bytes = vec![0u8; 10 << 20];
        bytes[5 << 20..(5 << 20) + 4].copy_from_slice(b"data");
        std::fs::write(&b, &bytes).unwrap();
        let da = digest(&File::open(&a).unwrap(), 10 << 20).unwrap();
        let db = digest(&File::open(&b).unwrap(), 10 << 20).unwrap();
        assert_eq!(da, db);
        // A different size with the same data is a different digest.
        fa.set_len(11 << 20).unwrap();
        assert_ne!(digest(&File::open(&a).unwrap(), 11 << 20).unwrap(), da);
        assert_eq!(
            unescape(&escape(b"a%b\xffc")).as_os_str().as_bytes(),
            b"a%b\xffc"
        );
    }
}
