//! Copying partition contents into an image without materialising holes.
//!
//! Precondition: the destination range is unwritten space of a fresh sparse
//! file (reads as zeros). Zero runs are therefore skipped rather than
//! written, which keeps the image sparse; copying onto a used device with
//! this function would leave stale data where the source has zeros.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};

/// Granularity of the zero check within data extents.
const CHUNK: u64 = 64 * 1024;

const MIB: f64 = 1024.0 * 1024.0;

/// Copies the file at `src` into `dst` at byte `dst_offset`, skipping holes
/// and all-zero 64 KiB chunks. `what` names the destination partition for
/// error messages; `limit` is its size in bytes. Returns the source length.
///
/// Uses positioned writes only, so several partitions can be copied into
/// the same `dst` from several threads at once.
pub fn copy_sparse(src: &Path, dst: &File, dst_offset: u64, limit: u64, what: &str) -> Result<u64> {
    let file = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading metadata of {}", src.display()))?
        .len();
    ensure!(
        len <= limit,
        "{}: content is {len} bytes ({:.2} MiB) but partition {what} holds {limit} bytes ({:.2} MiB)",
        src.display(),
        len as f64 / MIB,
        limit as f64 / MIB
    );
    ensure!(
        dst_offset.checked_add(len).is_some(),
        "destination offset {dst_offset} + {len} bytes overflows"
    );

    let mut buf = vec![0u8; CHUNK as usize];
    for (start, end) in data_extents(&file, len)
        .with_context(|| format!("finding data extents of {}", src.display()))?
    {
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(CHUNK);
            let chunk = buf.get_mut(..n as usize).unwrap_or_default();
            file.read_exact_at(chunk, pos)
                .with_context(|| format!("reading {} at byte {pos}", src.display()))?;
            if chunk.iter().any(|&b| b != 0) {
                let at = dst_offset + pos;
                dst.write_all_at(chunk, at)
                    .with_context(|| format!("writing partition {what} at image byte {at}"))?;
            }
            pos += n;
        }
    }
    Ok(len)
}

/// Byte ranges `[start, end)` of `file` (of length `len`) that may hold
/// data. Falls back to one range covering the file where the filesystem or
/// OS cannot report holes.
fn data_extents(file: &File, len: u64) -> Result<Vec<(u64, u64)>> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        seek_data_extents(file, len)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        let _ = file;
        Ok(if len == 0 { vec![] } else { vec![(0, len)] })
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn seek_data_extents(file: &File, len: u64) -> Result<Vec<(u64, u64)>> {
    use std::io;
    use std::os::unix::io::AsRawFd;

    let fd = file.as_raw_fd();
    // lseek moves this descriptor's offset; harmless, as we only use pread.
    let seek = |off: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let off = libc::off_t::try_from(off)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: lseek on a descriptor we own for the lifetime of `file`.
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            return Ok(u64::try_from(r).ok());
        }
        let err = io::Error::last_os_error();
        // ENXIO: no data (or hole) at or after `off`.
        if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        }
    };

    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            // EINVAL/EOPNOTSUPP: no hole support here; treat the rest as data.
            Err(e) if pos == 0 && is_unsupported(&e) => return Ok(vec![(0, len)]),
            Err(e) => return Err(e).context("lseek(SEEK_DATA)"),
        };
        if start >= len {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE)
            .context("lseek(SEEK_HOLE)")?
            .unwrap_or(len)
            .min(len);
        // Guard against a filesystem reporting a non-advancing extent.
        if end <= start {
            extents.push((start, len));
            break;
        }
        extents.push((start, end));
        pos = end;
    }
    Ok(extents)
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fresh read-write destination (File::create is write-only).
    fn fresh(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .unwrap()
    }

    fn sparse_source(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        // 1 MiB hole, 100 KiB data (with a zero 64 KiB run inside), hole to 3 MiB.
        let path = dir.join("src.img");
        let f = File::create(&path).unwrap();
        let mut want = vec![0u8; 3 << 20];
        let mut data = vec![0xA5u8; 100 * 1024];
        data[10_000..10_000 + CHUNK as usize].fill(0);
        f.write_all_at(&data, 1 << 20).unwrap();
        want[1 << 20..(1 << 20) + data.len()].copy_from_slice(&data);
        f.set_len(3 << 20).unwrap();
        (path, want)
    }

    #[test]
    fn copies_data_at_offset_and_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, want) = sparse_source(dir.path());
        let dst = fresh(&dir.path().join("dst.img"));
        let offset = 5 << 20;
        dst.set_len(16 << 20).unwrap();
        let n = copy_sparse(&src, &dst, offset, 3 << 20, "TEST").unwrap();
        assert_eq!(n, 3 << 20);

        let mut got = vec![0u8; want.len()];
        dst.read_exact_at(&mut got, offset).unwrap();
        assert!(got == want, "copied content differs");
        // Nothing before the offset was written.
        let mut head = vec![0xFFu8; offset as usize];
        dst.read_exact_at(&mut head, 0).unwrap();
        assert!(head.iter().all(|&b| b == 0));
        // The image stays sparse: far fewer blocks than its 16 MiB.
        use std::os::unix::fs::MetadataExt;
        let blocks = dst.metadata().unwrap().blocks() * 512;
        assert!(blocks < 1 << 20, "destination uses {blocks} bytes");
    }

    #[test]
    fn leading_hole_is_found() {
        // Holds on filesystems with SEEK_HOLE support (ext4, xfs, tmpfs,
        // btrfs), which is where kiln builds.
        let dir = tempfile::tempdir().unwrap();
        let (src, _) = sparse_source(dir.path());
        let extents = data_extents(&File::open(src).unwrap(), 3 << 20).unwrap();
        assert!(!extents.is_empty());
        for (start, end) in extents {
            assert!(
                start >= 1 << 20 && start < end && end <= 3 << 20,
                "{start}..{end}"
            );
        }
    }

    #[test]
    fn non_sparse_source_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("dense");
        let mut content = vec![0u8; 300_000];
        content[299_999] = 7;
        content[0] = 1;
        File::create(&src).unwrap().write_all(&content).unwrap();
        let dst = fresh(&dir.path().join("dst"));
        copy_sparse(&src, &dst, 512, 300_000, "X").unwrap();
        let mut got = vec![0u8; content.len()];
        dst.read_exact_at(&mut got, 512).unwrap();
        assert!(got == content);
    }

    #[test]
    fn too_large_names_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, _) = sparse_source(dir.path());
        let dst = fresh(&dir.path().join("dst"));
        let err = copy_sparse(&src, &dst, 0, 2 << 20, "OEM").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(
                "content is 3145728 bytes (3.00 MiB) but partition OEM holds 2097152 bytes (2.00 MiB)"
            ),
            "{msg}"
        );
        assert_eq!(dst.metadata().unwrap().len(), 0);
    }

    #[test]
    fn empty_and_missing_sources() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        let dst = fresh(&dir.path().join("dst"));
        assert_eq!(copy_sparse(&empty, &dst, 0, 0, "E").unwrap(), 0);
        let err = copy_sparse(&dir.path().join("nope"), &dst, 0, 1, "E").unwrap_err();
        assert!(format!("{err:#}").contains("opening"));
    }

    #[test]
    fn parallel_copies_into_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let dst = fresh(&dir.path().join("dst"));
        let srcs: Vec<_> = (0..4u8)
            .map(|i| {
                let p = dir.path().join(format!("s{i}"));
                std::fs::write(&p, vec![i + 1; 200_000]).unwrap();
                p
            })
            .collect();
        std::thread::scope(|s| {
            for (i, p) in srcs.iter().enumerate() {
                let dst = &dst;
                s.spawn(move || copy_sparse(p, dst, i as u64 * (1 << 20), 1 << 20, "P").unwrap());
            }
        });
        for i in 0..4u8 {
            let mut got = vec![0u8; 200_000];
            dst.read_exact_at(&mut got, u64::from(i) * (1 << 20))
                .unwrap();
            assert!(got.iter().all(|&b| b == i + 1));
        }
    }
}
