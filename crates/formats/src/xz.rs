//! xz compression of raw disks. Disk images are mostly zeros (empty slots, an empty ROOT), and
//! LZMA spends as long on a zero as on data. So the input is cut into 16 MiB chunks, each
//! compressed as its own .xz stream (the format allows streams to follow each other, and every
//! decoder handles that), all-zero chunks reuse one precomputed stream, and the other chunks
//! are compressed in parallel. The output depends only on the input and the level.
//!
//! Compressed chunks are kept on disk by content hash and level, `<sha256>-<level>.chunk`:
//! a header (magic, the chunk's length and SHA-256, the stream's SHA-256) and the xz stream,
//! flushed before it is renamed into place. A chunk read back is used only if its header
//! describes this chunk and the stream has the SHA-256 the header gives, which finds any
//! damage the file took since kiln wrote it (a power cut, a full disk, a truncation, a stray
//! write) for the cost of hashing a few MiB; with `KILN_CACHE_VERIFY=full` the stream is also
//! decoded and must be one whole xz stream with CRC64 checks that decodes to exactly the
//! chunk's bytes. A chunk that fails is removed and compressed again. A bounded memo keeps
//! recently used streams in memory.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use kiln_host::atomic::Staged;
use sha2::{Digest, Sha256};
use xz2::stream::{Action, Check, Status, Stream};
use xz2::write::XzEncoder;

const CHUNK: usize = 16 << 20;
/// The most compressed bytes the memo keeps between uses; a build's xz artifacts and payload
/// hold hundreds of MiB of streams.
const MEMO_BUDGET: usize = if cfg!(test) { 4 << 20 } else { 64 << 20 };
/// Enough for any preset's dictionary (level 9: 64 MiB).
const DECODER_MEMLIMIT: u64 = 256 << 20;
/// Prefix of a chunk file being written (`<cache>/xz-chunks/.tmp-...`), removed by the next
/// build if kiln was killed.
pub const CHUNK_TMP_PREFIX: &str = ".tmp-";
/// A chunk file's first bytes (the format's version is its last digit).
const MAGIC: &[u8; 16] = b"kiln-xz-chunk-1\n";
/// Magic, the chunk's length (u64 LE), the chunk's SHA-256, the stream's SHA-256.
const HEADER: usize = 16 + 8 + 32 + 32;

/// Whether a name in the chunk directory is a chunk file of a kiln from before the header
/// (`<sha256>-<level>.xz`), which the next build removes.
pub fn is_headerless_chunk(name: &str) -> bool {
    name.strip_suffix(".xz")
        .and_then(|n| n.split_once('-'))
        .is_some_and(|(h, l)| {
            h.len() == 64
                && h.bytes().all(|b| b.is_ascii_hexdigit())
                && l.len() == 1
                && l.as_bytes()[0].is_ascii_digit()
        })
}

type Key = (String, u32);
type Slot = Arc<OnceLock<std::result::Result<Arc<Vec<u8>>, String>>>;

#[derive(Default)]
struct Memo {
    /// Streams being made or read: a second thread asking for one waits for the first.
    pending: HashMap<Key, Slot>,
    /// Recently used streams with the time of their last use, at most MEMO_BUDGET bytes.
    recent: HashMap<Key, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    clock: u64,
}

impl Memo {
    fn get(&mut self, k: &Key) -> Option<Arc<Vec<u8>>> {
        self.clock += 1;
        let now = self.clock;
        self.recent.get_mut(k).map(|(b, used)| {
            *used = now;
            b.clone()
        })
    }

    fn keep(&mut self, k: Key, b: Arc<Vec<u8>>) {
        if b.len() > MEMO_BUDGET || self.recent.contains_key(&k) {
            return;
        }
        self.clock += 1;
        self.bytes += b.len();
        self.recent.insert(k, (b, self.clock));
        while self.bytes > MEMO_BUDGET {
            let oldest = self
                .recent
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
                .expect("over budget means not empty");
            if let Some((b, _)) = self.recent.remove(&oldest) {
                self.bytes -= b.len();
            }
        }
    }
}

fn memo() -> &'static Mutex<Memo> {
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// A chunk's stream from the in-process memo, the on-disk chunk cache, or the encoder.
fn cached_chunk(data: &[u8], level: u32, dir: Option<&Path>) -> Result<Arc<Vec<u8>>> {
    let hash: [u8; 32] = Sha256::digest(data).into();
    let key = (hex::encode(hash), level);
    let file = dir.map(|d| d.join(format!("{}-{level}.chunk", key.0)));
    let slot = {
        let mut m = memo().lock().expect("xz memo");
        if let Some(b) = m.get(&key) {
            drop(m);
            if let Some(f) = &file {
                keep_on_disk(f, data.len(), &hash, &b);
            }
            return Ok(b);
        }
        m.pending.entry(key.clone()).or_default().clone()
    };
    let r = slot
        .get_or_init(|| {
            load_or_make(data, &hash, level, file.as_deref())
                .map(Arc::new)
                .map_err(|e| format!("{e:#}"))
        })
        .clone();
    let mut m = memo().lock().expect("xz memo");
    m.pending.remove(&key);
    if let Ok(b) = &r {
        m.keep(key, b.clone());
    }
    r.map_err(|e| anyhow::anyhow!(e))
}

/// The chunk's stream from `file` if that is sound, else compressed (and kept there).
fn load_or_make(data: &[u8], hash: &[u8; 32], level: u32, file: Option<&Path>) -> Result<Vec<u8>> {
    let Some(file) = file else {
        return compress_chunk(data, level);
    };
    match std::fs::read(file) {
        Ok(bytes) => {
            let full = kiln_host::manifest::Check::from_env() == kiln_host::manifest::Check::Full;
            match check_file(bytes, data, hash, full) {
                Ok(stream) => return Ok(stream),
                Err(why) => {
                    tracing::warn!(
                        "xz chunk {} is damaged ({why}); compressing it again",
                        file.display()
                    );
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot read xz chunk {}: {e}", file.display()),
    }
    let stream = compress_chunk(data, level)?;
    // A failure to cache is not a failure to compress.
    if let Err(e) = publish(file, &file_bytes(data.len(), hash, &stream)) {
        tracing::warn!("cannot keep xz chunk {}: {e:#}", file.display());
    }
    Ok(stream)
}

/// A chunk file: the header, then the stream.
fn file_bytes(len: usize, hash: &[u8; 32], stream: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + stream.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(len as u64).to_le_bytes());
    b.extend_from_slice(hash);
    b.extend_from_slice(&Sha256::digest(stream));
    b.extend_from_slice(stream);
    b
}

/// The stream of a chunk file if the file is the one kiln wrote for this chunk (and, with
/// `full`, the stream decodes to the chunk); else what is wrong.
fn check_file(
    mut bytes: Vec<u8>,
    data: &[u8],
    hash: &[u8; 32],
    full: bool,
) -> std::result::Result<Vec<u8>, String> {
    if bytes.is_empty() {
        return Err("it is empty".into());
    }
    if bytes.len() < HEADER || &bytes[..16] != MAGIC {
        return Err("it has no chunk header".into());
    }
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if len != data.len() as u64 || bytes[24..56] != hash[..] {
        return Err("its header describes another chunk".into());
    }
    let stream = bytes.split_off(HEADER);
    if Sha256::digest(&stream)[..] != bytes[56..88] {
        return Err("its stream is not the one it was written with".into());
    }
    if full {
        check_stream(&stream, data)?;
    }
    Ok(stream)
}

/// Makes sure a stream known to be good (compressed or checked in this process) is also in
/// the chunk cache, as a later build expects.
fn keep_on_disk(file: &Path, len: usize, hash: &[u8; 32], good: &[u8]) {
    let want = file_bytes(len, hash, good);
    if std::fs::read(file).is_ok_and(|b| b == want) {
        return;
    }
    if let Err(e) = publish(file, &want) {
        tracing::warn!("cannot keep xz chunk {}: {e:#}", file.display());
    }
}

/// Writes a chunk file whole: a temporary, flushed to disk, renamed into place.
fn publish(file: &Path, bytes: &[u8]) -> Result<()> {
    let name = file
        .file_name()
        .context("a chunk file has a name")?
        .to_string_lossy();
    let tmp = file.with_file_name(format!("{CHUNK_TMP_PREFIX}{name}-{}", std::process::id()));
    let r = (|| -> Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        // On disk before it has its name: a power cut must not leave a short chunk under it.
        f.sync_all()?;
        kiln_host::failpoint::hit("chunk-publish");
        std::fs::rename(&tmp, file)?;
        kiln_host::failpoint::hit("chunk-published");
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Whether `stream` is one whole .xz stream with CRC64 checks (as [`compress_chunk`] makes)
/// that decodes to exactly `data`; else what is wrong.
fn check_stream(stream: &[u8], data: &[u8]) -> std::result::Result<(), String> {
    // Magic and stream flags: no check other than CRC64 (0x04) is what kiln writes.
    if stream.len() < 12 || stream[..8] != [0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0x04] {
        return Err(if stream.is_empty() {
            "it is empty".into()
        } else {
            "it does not start with an xz stream header with CRC64 checks".into()
        });
    }
    let mut d = Stream::new_stream_decoder(DECODER_MEMLIMIT, 0)
        .map_err(|e| format!("cannot start the xz decoder: {e}"))?;
    let mut out = Vec::with_capacity(data.len() + 1);
    loop {
        let (inp, outp) = (d.total_in(), d.total_out());
        let status = d
            .process_vec(&stream[inp as usize..], &mut out, Action::Finish)
            .map_err(|e| format!("it is not a valid xz stream: {e}"))?;
        if status == Status::StreamEnd {
            break;
        }
        if out.len() == out.capacity() {
            return Err("it decodes to more than the chunk".into());
        }
        if (d.total_in(), d.total_out()) == (inp, outp) {
            return Err("the stream is cut short".into());
        }
    }
    if d.total_in() as usize != stream.len() {
        return Err(format!(
            "{} bytes follow its stream",
            stream.len() - d.total_in() as usize
        ));
    }
    if out.len() != data.len() {
        return Err(format!(
            "it decodes to {} bytes, not the chunk's {}",
            out.len(),
            data.len()
        ));
    }
    if out != data {
        return Err("it decodes to other bytes than the chunk's".into());
    }
    Ok(())
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

    /// Forgets the in-process copies, as a new process would start without them.
    fn forget_memo() {
        *memo().lock().unwrap() = Memo::default();
    }

    /// What a power cut, a full disk or a stray file leaves under a chunk's name is found on
    /// reuse and made again: the artifact is the input, compressed, whatever the cache holds.
    #[test]
    fn a_damaged_chunk_is_never_reused() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(2 * CHUNK as u64).unwrap();
        let data: Vec<u8> = (0..CHUNK as u32 / 2).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&data, 0).unwrap();
        drop(f);
        let want = std::fs::read(&raw).unwrap();
        let cache = dir.path().join("chunks");
        let good = dir.path().join("good.xz");
        xz_compress(&raw, &good, 1, 0, Some(&cache)).unwrap();
        let good_bytes = std::fs::read(&good).unwrap();
        let hash: [u8; 32] = Sha256::digest(&want[..CHUNK]).into();
        let chunk = cache.join(format!("{}-0.chunk", hex::encode(hash)));
        let chunk_bytes = std::fs::read(&chunk).unwrap();
        let stream = chunk_bytes[HEADER..].to_vec();
        let other_data = b"another chunk's data";
        let other = compress_chunk(other_data, 0).unwrap();
        let mut flipped = chunk_bytes.clone();
        let n = flipped.len();
        flipped[n / 2] ^= 1;
        let damages: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("cut short", chunk_bytes[..chunk_bytes.len() / 2].to_vec()),
            ("only the header", chunk_bytes[..HEADER].to_vec()),
            ("a flipped bit in the stream", flipped),
            (
                "trailing bytes",
                [chunk_bytes.clone(), b"junk".to_vec()].concat(),
            ),
            (
                "another chunk's file",
                file_bytes(other_data.len(), &Sha256::digest(other_data).into(), &other),
            ),
            (
                "a bare stream (a kiln from before the header)",
                stream.clone(),
            ),
            ("not a chunk", vec![0x5a; 4096]),
        ];
        for (what, bad) in damages {
            std::fs::write(&chunk, &bad).unwrap();
            forget_memo();
            let out = dir.path().join("again.xz");
            xz_compress(&raw, &out, 1, 0, Some(&cache)).unwrap();
            let o = Command::new("xz").arg("-dc").arg(&out).output().unwrap();
            assert!(
                o.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                o.stdout == want,
                "{what}: the artifact does not decompress to the disk"
            );
            assert!(
                std::fs::read(&out).unwrap() == good_bytes,
                "{what}: other bytes"
            );
            // The bad chunk was replaced by a good one.
            assert!(
                std::fs::read(&chunk).unwrap() == chunk_bytes,
                "{what}: chunk not remade"
            );
        }
        // A file consistent with itself, for this chunk, whose stream is of other data: only
        // decoding (KILN_CACHE_VERIFY=full) finds it.
        let forged = file_bytes(CHUNK, &hash, &other);
        let data = &want[..CHUNK];
        assert!(check_file(forged.clone(), data, &hash, false).is_ok());
        let e = check_file(forged, data, &hash, true).unwrap_err();
        assert!(e.contains("decodes to"), "{e}");
        assert_eq!(check_file(chunk_bytes, data, &hash, true).unwrap(), stream);
        // Each kind of bad stream is named by the full check.
        let half = compress_chunk(&data[..CHUNK / 2], 0).unwrap();
        for (bad, want) in [
            (Vec::new(), "it is empty"),
            (stream[..stream.len() / 2].to_vec(), "cut short"),
            (half, "decodes to 8388608 bytes, not the chunk's 16777216"),
            (
                [stream.clone(), stream.clone()].concat(),
                "bytes follow its stream",
            ),
            (vec![0x5a; 64], "does not start with an xz stream header"),
        ] {
            let e = check_stream(&bad, data).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    /// Compressed bytes the memo holds.
    fn memo_bytes() -> usize {
        let m = memo().lock().unwrap();
        let held: usize = m.recent.values().map(|(b, _)| b.len()).sum();
        assert_eq!(held, m.bytes);
        held
    }

    /// The in-process memo keeps a bounded number of compressed bytes, however many chunks
    /// a process compresses (a build compresses every data chunk of every xz artifact and
    /// of the payload).
    #[test]
    fn the_memo_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        // Three distinct chunks, each compressing to about 2 MiB.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let bytes: Vec<u8> = (0..3 * CHUNK)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 8 == 0 {
                    x as u8
                } else {
                    0
                }
            })
            .collect();
        std::fs::write(&raw, &bytes).unwrap();
        forget_memo();
        xz_compress(&raw, &dir.path().join("out.xz"), 2, 0, None).unwrap();
        let held = memo_bytes();
        assert!(held <= MEMO_BUDGET, "the memo holds {held} bytes");
    }
}
