//! xz compression of raw disks. Disk images are mostly zeros (empty slots, an empty ROOT), and
//! LZMA spends as long on a zero as on data. So the input is cut into 16 MiB chunks, each
//! compressed as its own .xz stream (the format allows streams to follow each other, and every
//! decoder handles that), all-zero chunks reuse one precomputed stream, and the other chunks
//! are compressed in parallel. The output depends only on the input and the level.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use kiln_host::atomic::Staged;
use sha2::{Digest, Sha256};
use xz2::stream::{Check, Stream};
use xz2::write::XzEncoder;

const CHUNK: usize = 16 << 20;

type Slot = Arc<OnceLock<std::result::Result<Arc<Vec<u8>>, String>>>;

/// Compressed chunks by (content hash, level), shared by every image this process writes:
/// platforms with the same layout carry the same USR bytes at the same offsets, so the second
/// one finds the first one's streams (and waits for a stream still being made).
fn memo() -> &'static Mutex<HashMap<(String, u32), Slot>> {
    static MEMO: OnceLock<Mutex<HashMap<(String, u32), Slot>>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// A chunk's stream from the in-process memo, the on-disk chunk cache, or the encoder.
fn cached_chunk(data: &[u8], level: u32, dir: Option<&Path>) -> Result<Arc<Vec<u8>>> {
    let hash = hex::encode(Sha256::digest(data));
    let slot = memo()
        .lock()
        .expect("xz memo")
        .entry((hash.clone(), level))
        .or_default()
        .clone();
    let file: Option<PathBuf> = dir.map(|d| d.join(format!("{hash}-{level}.xz")));
    let r = slot.get_or_init(|| {
        if let Some(bytes) = file.as_ref().and_then(|f| std::fs::read(f).ok()) {
            return Ok(Arc::new(bytes));
        }
        compress_chunk(data, level)
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"))
    });
    if let (Some(f), Ok(bytes)) = (&file, r) {
        if !f.exists() {
            // Publish atomically; a failure to cache is not a failure to compress.
            let tmp = f.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, bytes.as_slice()).is_err() || std::fs::rename(&tmp, f).is_err()
            {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }
    r.clone().map_err(|e| anyhow::anyhow!(e))
}

fn compress_chunk(data: &[u8], level: u32) -> Result<Vec<u8>> {
    let stream =
        Stream::new_easy_encoder(level, Check::Crc64).context("cannot start the xz encoder")?;
    let mut enc = XzEncoder::new_stream(Vec::with_capacity(data.len() / 4), stream);
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Reads up to CHUNK bytes; fewer only at the end of the file.
fn read_chunk(input: &mut File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.resize(CHUNK, 0);
    let mut n = 0;
    while n < CHUNK {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(n)
}

/// Compresses `src` to `dest` as .xz (CRC64 checks) with `threads` workers (0: one per CPU)
/// at preset `level` (0-9), never holding more than `threads` chunks in memory. With
/// `chunk_cache`, compressed chunks are kept there by content hash for later builds.
pub fn xz_compress(
    src: &Path,
    dest: &Path,
    threads: u32,
    level: u32,
    chunk_cache: Option<&Path>,
) -> Result<()> {
    if level > 9 {
        bail!("xz compression level {level} is out of range: use 0 to 9");
    }
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads as usize
    };
    let mut input =
        File::open(src).with_context(|| format!("cannot open {} to compress", src.display()))?;
    if !input
        .metadata()
        .with_context(|| format!("cannot stat {}", src.display()))?
        .is_file()
    {
        bail!("{} is not a regular file", src.display());
    }
    let staged = Staged::new(dest)?;
    let out = File::create(staged.path())
        .with_context(|| format!("cannot create {}", staged.path().display()))?;
    let mut out = std::io::BufWriter::new(out);
    if let Some(d) = chunk_cache {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let zero_stream = cached_chunk(&vec![0u8; CHUNK], level, chunk_cache)?;
    let mut bufs: Vec<Vec<u8>> = (0..threads).map(|_| Vec::new()).collect();
    loop {
        let mut filled = 0;
        for b in bufs.iter_mut() {
            if read_chunk(&mut input, b)
                .with_context(|| format!("cannot read {}", src.display()))?
                == 0
            {
                break;
            }
            filled += 1;
        }
        if filled == 0 {
            break;
        }
        let streams: Vec<Result<Option<Arc<Vec<u8>>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = bufs[..filled]
                .iter()
                .map(|b| {
                    s.spawn(move || {
                        if b.len() == CHUNK && b.iter().all(|&x| x == 0) {
                            Ok(None)
                        } else {
                            cached_chunk(b, level, chunk_cache).map(Some)
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("xz worker"))
                .collect()
        });
        for st in streams {
            match st.with_context(|| format!("cannot compress {}", src.display()))? {
                Some(bytes) => out.write_all(&bytes)?,
                None => out.write_all(&zero_stream)?,
            }
        }
        if filled < bufs.len() || bufs[filled - 1].len() < CHUNK {
            break;
        }
    }
    out.flush()
        .with_context(|| format!("cannot write {}", staged.path().display()))?;
    drop(out);
    staged.commit(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::util::MIB;
    use std::process::Command;

    #[test]
    fn compresses_and_is_independent_of_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 * MIB);
        let one = dir.path().join("one.raw.xz");
        let two = dir.path().join("two.raw.xz");
        xz_compress(&raw, &one, 1, 6, None).unwrap();
        xz_compress(&raw, &two, 2, 6, None).unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
        let out = Command::new("xz").args(["-dc"]).arg(&one).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, std::fs::read(&raw).unwrap());
        let list = Command::new("xz")
            .args(["--robot", "-lv"])
            .arg(&one)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(list.contains("CRC64"), "{list}");
        assert!(std::fs::metadata(&one).unwrap().len() < MIB / 4);
    }

    /// Whole zero chunks, data chunks and a partial last chunk, across thread counts.
    #[test]
    fn zero_chunks_and_chunk_boundaries_round_trip() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("big.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(40 * MIB + 4096).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"third chunk", 33 * MIB).unwrap();
        f.write_all_at(b"tail", 40 * MIB + 4000).unwrap();
        drop(f);
        let (one, three) = (dir.path().join("1.xz"), dir.path().join("3.xz"));
        let cache = dir.path().join("chunks");
        xz_compress(&raw, &one, 1, 0, None).unwrap();
        xz_compress(&raw, &three, 3, 0, Some(&cache)).unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&three).unwrap());
        // The first chunk, the partial last one (both with data) and the zero chunk were
        // cached; a run from the cache gives the same bytes.
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3);
        let again = dir.path().join("again.xz");
        xz_compress(&raw, &again, 2, 0, Some(&cache)).unwrap();
        assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&again).unwrap());
        let out = Command::new("xz").args(["-dc"]).arg(&one).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == std::fs::read(&raw).unwrap(),
            "round trip differs"
        );
        // xz sees one stream per 16 MiB chunk.
        let list = Command::new("xz")
            .args(["--robot", "-l"])
            .arg(&one)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&list.stdout);
        let totals = text
            .lines()
            .find(|l| l.starts_with("totals"))
            .unwrap()
            .to_string();
        assert_eq!(totals.split('\t').nth(1), Some("3"), "{text}");
    }

    #[test]
    fn bad_input_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.xz");
        assert!(xz_compress(&dir.path().join("missing"), &dest, 1, 6, None).is_err());
        let raw = make_raw(dir.path(), MIB);
        let e = xz_compress(&raw, &dest, 1, 10, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("level 10"), "{e}");
        assert!(xz_compress(dir.path(), &dest, 1, 6, None).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
