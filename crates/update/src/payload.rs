//! The kiln update payload, format version 1.
//!
//! One file carries everything an A/B update needs: the new `/usr` image, the kernel and the
//! initramfs, signed with an Ed25519 key (see [`crate::keys`]).
//!
//! ## Layout
//!
//! All integers are little-endian.
//!
//! ```text
//! 0      8 bytes   magic b"KILNUPD\0"
//! 8      u32       format version = 1
//! 12     u32       header length H (1 ..= 65536)
//! 16     H bytes   header: UTF-8 JSON (the Header struct below)
//! 16+H   64 bytes  Ed25519 signature (pure Ed25519, RFC 8032) over bytes [0, 16+H)
//! 80+H   body      xz data (one or more concatenated .xz streams) that decompresses to the
//!                  concatenation of the sections in header order
//! ```
//!
//! The header is a JSON object with these fields (no others are allowed):
//!
//! ```text
//! format        number   1, repeated inside the signed JSON
//! os-id         string   e.g. "kiln-demo"
//! os-name       string
//! version       string   the OS version the payload installs
//! board         string
//! arch          string
//! created       number   SOURCE_DATE_EPOCH of the build
//! key-id        string   the signer's key id: first 16 hex digits of sha256 of its public key
//! body-size     number   bytes of compressed body
//! body-sha256   string   hex sha256 of the compressed body
//! sections      array    exactly usr, kernel, initramfs, in that order; each:
//!   name        string   "usr", "kernel" or "initramfs"
//!   size        number   bytes of the uncompressed section
//!   sha256      string   hex sha256 of the uncompressed section
//!   detail      string   e.g. "erofs" or the kernel version; may be empty
//! ```
//!
//! The signature covers the magic, version, length and header, and the header pins the body
//! by size and sha256, so one signature check covers every byte up to the end of the body.
//! Bytes after the body are ignored: a payload may be read from a block device or a partition
//! that is larger than it.
//!
//! ## Reading
//!
//! [`open`] reads at most 80 + 65536 bytes and checks the magic, the format version, the
//! header length, the signature against the trusted keys, and then the header. [`verify_body`]
//! checks the body against the header without decompressing it; [`extract`] decompresses it
//! and hands each section to a sink in bounded chunks, checking each section's size and sha256
//! as it goes (and the body's, so a single pass over a stream is fully checked).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xz2::stream::{Check, MtStreamBuilder, Stream};

use crate::keys::{create_temp_beside, key_id, sync_parent_dir};

/// The first 8 bytes of every payload.
pub const MAGIC: [u8; 8] = *b"KILNUPD\0";
/// The only format version this kiln reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The largest header length the format allows.
pub const MAX_HEADER_LEN: u32 = 65536;
/// Magic, version and header length.
const PREAMBLE_LEN: usize = 16;
const SIGNATURE_LEN: usize = 64;
/// Read, write and hand to sinks in chunks of this size: large enough for fast device I/O,
/// small enough for the agent's memory.
const CHUNK: usize = 1 << 20;
/// What every .xz stream starts with.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// The signed header of a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Header {
    /// Equal to the format version in the preamble, repeated under the signature.
    pub format: u32,
    pub os_id: String,
    pub os_name: String,
    pub version: String,
    pub board: String,
    pub arch: String,
    /// SOURCE_DATE_EPOCH of the build.
    pub created: i64,
    /// [`key_id`] of the signer.
    pub key_id: String,
    /// Bytes of compressed body.
    pub body_size: u64,
    /// Hex sha256 of the compressed body.
    pub body_sha256: String,
    /// Exactly usr, kernel, initramfs, in that order.
    pub sections: Vec<Section>,
}

/// One part of the decompressed body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Section {
    pub name: SectionName,
    /// Bytes of the uncompressed section.
    pub size: u64,
    /// Hex sha256 of the uncompressed section.
    pub sha256: String,
    /// E.g. "erofs" or the kernel version; may be empty.
    pub detail: String,
}

/// The sections a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionName {
    Usr,
    Kernel,
    Initramfs,
}

impl SectionName {
    /// Every section, in the order a payload must have them.
    pub const ALL: [SectionName; 3] = [
        SectionName::Usr,
        SectionName::Kernel,
        SectionName::Initramfs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SectionName::Usr => "usr",
            SectionName::Kernel => "kernel",
            SectionName::Initramfs => "initramfs",
        }
    }
}

impl fmt::Display for SectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the builder knows about the OS a payload installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub os_id: String,
    pub os_name: String,
    pub version: String,
    pub board: String,
    pub arch: String,
    /// SOURCE_DATE_EPOCH of the build.
    pub created: i64,
}

/// A payload whose header has been read and whose signature verified.
#[derive(Debug, Clone)]
pub struct Opened {
    pub header: Header,
    /// 80 + H: the offset where the body starts.
    pub header_bytes_len: u64,
    /// The trusted key that verified the signature.
    pub signer: VerifyingKey,
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Writes a signed payload to `out` from the section files, which must be usr, kernel,
/// initramfs in that order, each with its detail string.
///
/// `compress(raw, body)` turns the raw concatenation of the sections into the xz body; `body`
/// is an existing empty file it may overwrite ([`xz_compress`] is a default). Temporary files
/// live next to `out`; `out` is replaced atomically and never left half-written.
pub fn create(
    out: &Path,
    meta: &Meta,
    sections: &[(SectionName, &Path, String)],
    key: &SigningKey,
    compress: &dyn Fn(&Path, &Path) -> Result<()>,
) -> Result<Header> {
    check_sections(sections.iter().map(|s| s.0))
        .context("cannot create the update payload: wrong sections")?;
    let (raw_file, raw) = create_temp_beside(out)?;
    let sections = concatenate_sections(raw_file, sections)?;
    let (_, body) = create_temp_beside(out)?;
    compress(raw.path(), body.path()).context("cannot compress the update payload body")?;
    drop(raw);
    let (body_size, body_sha256) = hash_body(body.path())?;
    let header = Header {
        format: FORMAT_VERSION,
        os_id: meta.os_id.clone(),
        os_name: meta.os_name.clone(),
        version: meta.version.clone(),
        board: meta.board.clone(),
        arch: meta.arch.clone(),
        created: meta.created,
        key_id: key_id(&key.verifying_key()),
        body_size,
        body_sha256,
        sections,
    };
    write_payload(out, &header, key, body.path())?;
    Ok(header)
}

/// Copies each section file into `raw`, hashing it on the way.
fn concatenate_sections(
    raw: File,
    sections: &[(SectionName, &Path, String)],
) -> Result<Vec<Section>> {
    let mut w = BufWriter::with_capacity(CHUNK, raw);
    let mut out = Vec::with_capacity(sections.len());
    for (name, path, detail) in sections {
        let mut src = File::open(path)
            .with_context(|| format!("cannot open the {name} section {}", path.display()))?;
        let (size, sha256) = copy_hashing(&mut src, &mut w)
            .with_context(|| format!("cannot copy the {name} section {}", path.display()))?;
        out.push(Section {
            name: *name,
            size,
            sha256,
            detail: detail.clone(),
        });
    }
    w.flush()
        .context("cannot write the uncompressed payload body")?;
    Ok(out)
}

/// Size and sha256 of the compressed body, after checking it is xz data at all.
fn hash_body(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path)
        .with_context(|| format!("cannot open the compressed body {}", path.display()))?;
    let mut magic = [0u8; XZ_MAGIC.len()];
    let n = read_full(&mut f, &mut magic)
        .with_context(|| format!("cannot read the compressed body {}", path.display()))?;
    if n < magic.len() || magic != XZ_MAGIC {
        bail!(
            "the compressor did not write xz data; the payload body must be .xz \
             (check the compress step)"
        );
    }
    f.seek(SeekFrom::Start(0))
        .with_context(|| format!("cannot rewind {}", path.display()))?;
    copy_hashing(&mut f, &mut io::sink())
        .with_context(|| format!("cannot read the compressed body {}", path.display()))
}

/// Writes magic, header, signature and body to a temporary file and renames it onto `out`.
fn write_payload(out: &Path, header: &Header, key: &SigningKey, body: &Path) -> Result<()> {
    let signed = signed_part(header)?;
    let signature = key.sign(&signed);
    let mut src = File::open(body)
        .with_context(|| format!("cannot open the compressed body {}", body.display()))?;
    let (file, tmp) = create_temp_beside(out)?;
    let mut w = BufWriter::with_capacity(CHUNK, file);
    w.write_all(&signed)
        .and_then(|()| w.write_all(&signature.to_bytes()))
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    // Hash again while copying: the body must be exactly what the header signed.
    let (size, sha256) = copy_hashing(&mut src, &mut w)
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    if size != header.body_size || sha256 != header.body_sha256 {
        bail!(
            "the compressed body changed while the payload was written; \
             is the compressor still running?"
        );
    }
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    // A payload is not secret: readable by all, like any other build output.
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    fs::rename(tmp.path(), out).with_context(|| format!("cannot create {}", out.display()))?;
    sync_parent_dir(out)
}

/// Bytes [0, 16+H): magic, version, header length and header JSON.
fn signed_part(header: &Header) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(header).context("cannot encode the payload header")?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n <= MAX_HEADER_LEN)
        .ok_or_else(|| {
            anyhow!(
                "the payload header is {} bytes, more than the {MAX_HEADER_LEN} the format allows; \
                 shorten the OS metadata or section details",
                json.len()
            )
        })?;
    let mut out = Vec::with_capacity(PREAMBLE_LEN + json.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// A compressor for [`create`]: multi-threaded xz at `level` (0..=9) with CRC64 checks, on
/// `threads` threads (0: one per CPU, like `xz -T0`).
pub fn xz_compress(level: u32, threads: u32) -> impl Fn(&Path, &Path) -> Result<()> {
    move |raw: &Path, out: &Path| compress_file(raw, out, level, thread_count(threads))
}

fn thread_count(threads: u32) -> u32 {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

fn compress_file(raw: &Path, out: &Path, level: u32, threads: u32) -> Result<()> {
    if level > 9 {
        bail!("xz level {level} is out of range; use 0 (fastest) to 9 (smallest)");
    }
    let raw_size = fs::metadata(raw)
        .with_context(|| format!("cannot read {}", raw.display()))?
        .len();
    let stream = MtStreamBuilder::new()
        .preset(level)
        .threads(threads)
        .block_size(xz_block_size(raw_size, level, threads))
        .check(Check::Crc64)
        .encoder()
        .with_context(|| {
            format!("cannot start the xz encoder (level {level}, {threads} threads)")
        })?;
    let mut src = File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
    let dst = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut xz = xz2::write::XzEncoder::new_stream(BufWriter::with_capacity(CHUNK, dst), stream);
    copy_hashing(&mut src, &mut xz)
        .with_context(|| format!("cannot compress {}", raw.display()))?;
    xz.finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// xz blocks are compressed in parallel, one per thread, so split the input into at least as
/// many blocks as threads (else a small image is compressed by one thread), but no larger than
/// liblzma's default of 3 × the preset's dictionary, which bounds each thread's memory.
fn xz_block_size(raw_size: u64, level: u32, threads: u32) -> u64 {
    const DICT_KIB: [u64; 10] = [256, 1024, 2048, 4096, 4096, 8192, 8192, 16384, 32768, 65536];
    const MIB: u64 = 1 << 20;
    let dict = DICT_KIB[(level as usize).min(9)] * 1024;
    let most = (3 * dict).max(MIB);
    raw_size
        .div_ceil(u64::from(threads.max(1)))
        .clamp(MIB, most)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads the preamble, header and signature from `r` (at most 80 + 65536 bytes), verifies the
/// signature with one of the `trusted` keys and checks the header.
///
/// On success `r` is positioned at the start of the body.
pub fn open<R: Read + ?Sized>(r: &mut R, trusted: &[VerifyingKey]) -> Result<Opened> {
    let (signed, signature) = read_signed_part(r)?;
    let signer = find_signer(&signed, &signature, trusted)?;
    // Only now, with the bytes authenticated, is the header worth interpreting.
    let header = parse_header(&signed[PREAMBLE_LEN..])?;
    let signer_id = key_id(&signer);
    if header.key_id != signer_id {
        bail!(
            "the payload header names signing key {}, but it was signed by key {signer_id}; \
             the payload was made by a broken tool",
            header.key_id
        );
    }
    Ok(Opened {
        header,
        header_bytes_len: (signed.len() + SIGNATURE_LEN) as u64,
        signer,
    })
}

/// Reads and checks the header of the payload at `path` WITHOUT verifying its signature.
///
/// For display only (`kiln update show`): anyone can write such a header, so nothing may be
/// decided on it. Use [`open`] to get a verified header.
pub fn read_header_unverified(path: &Path) -> Result<Header> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (signed, _) =
        read_signed_part(&mut f).with_context(|| format!("cannot read {}", path.display()))?;
    parse_header(&signed[PREAMBLE_LEN..]).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads bytes [0, 16+H) and the signature after them, checking the preamble on the way.
fn read_signed_part<R: Read + ?Sized>(r: &mut R) -> Result<(Vec<u8>, Signature)> {
    let mut preamble = [0u8; PREAMBLE_LEN];
    let n = read_full(r, &mut preamble).context("cannot read the payload")?;
    if n < MAGIC.len() || preamble[..MAGIC.len()] != MAGIC {
        bail!("not a kiln update payload: it does not start with the KILNUPD magic");
    }
    if n < PREAMBLE_LEN {
        bail!("truncated: the payload ends after {n} bytes, inside its 16-byte preamble");
    }
    let version = u32_at(&preamble, 8);
    if version != FORMAT_VERSION {
        bail!(
            "unsupported payload format version {version}: this kiln reads format version \
             {FORMAT_VERSION} only; use a kiln release that reads version {version}"
        );
    }
    let header_len = u32_at(&preamble, 12);
    if !(1..=MAX_HEADER_LEN).contains(&header_len) {
        bail!("corrupt payload: header length {header_len} is outside 1..={MAX_HEADER_LEN}");
    }
    let mut signed = vec![0u8; PREAMBLE_LEN + header_len as usize];
    signed[..PREAMBLE_LEN].copy_from_slice(&preamble);
    read_exactly(r, &mut signed[PREAMBLE_LEN..], "header")?;
    let mut signature = [0u8; SIGNATURE_LEN];
    read_exactly(r, &mut signature, "signature")?;
    Ok((signed, Signature::from_bytes(&signature)))
}

fn u32_at(bytes: &[u8; PREAMBLE_LEN], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Fills `buf`, with a "truncated" error naming `what` if the input ends first.
fn read_exactly<R: Read + ?Sized>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    let n = read_full(r, buf).with_context(|| format!("cannot read the payload {what}"))?;
    if n < buf.len() {
        bail!(
            "truncated: the payload ends inside its {what} ({n} of {} bytes)",
            buf.len()
        );
    }
    Ok(())
}

/// The trusted key that made `signature` over `signed`.
fn find_signer(
    signed: &[u8],
    signature: &Signature,
    trusted: &[VerifyingKey],
) -> Result<VerifyingKey> {
    let claimed = || claimed_key_id(&signed[PREAMBLE_LEN..]);
    if trusted.is_empty() {
        bail!(
            "no trusted keys, so the payload (signed by key {}) cannot be verified; \
             install the signer's public key as a *.pub file among the trusted keys",
            claimed()
        );
    }
    // verify_strict also rejects malleable signatures and weak keys.
    if let Some(k) = trusted
        .iter()
        .find(|k| k.verify_strict(signed, signature).is_ok())
    {
        return Ok(*k);
    }
    let ids: Vec<String> = trusted.iter().map(key_id).collect();
    bail!(
        "the payload signature does not verify with any trusted key: the payload says it is \
         signed by key {}, the trusted keys are {}; wrong key or tampered payload",
        claimed(),
        ids.join(", ")
    )
}

/// The key id an unverified header claims, for error messages only. It is untrusted input
/// headed for a terminal, so anything but a plain hex id is not shown.
fn claimed_key_id(json: &[u8]) -> String {
    let value: Option<serde_json::Value> = serde_json::from_slice(json).ok();
    match value
        .as_ref()
        .and_then(|v| v.get("key-id"))
        .and_then(|v| v.as_str())
    {
        Some(id)
            if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            id.to_owned()
        }
        _ => "(unknown: the header is unreadable)".to_owned(),
    }
}

/// Parses and checks the header JSON.
fn parse_header(json: &[u8]) -> Result<Header> {
    let header: Header = serde_json::from_slice(json)
        .map_err(|e| anyhow!("corrupt payload: the header is not a valid kiln header: {e}"))?;
    if header.format != FORMAT_VERSION {
        bail!(
            "corrupt payload: the signed header says format {} \
             but the preamble says {FORMAT_VERSION}",
            header.format
        );
    }
    check_sections(header.sections.iter().map(|s| s.name)).context("corrupt payload")?;
    check_sha256_hex("body-sha256", &header.body_sha256)?;
    for s in &header.sections {
        check_sha256_hex(&format!("the {} section's sha256", s.name), &s.sha256)?;
    }
    Ok(header)
}

fn check_sha256_hex(what: &str, value: &str) -> Result<()> {
    let ok = value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !ok {
        bail!("corrupt payload: {what} is not 64 lowercase hex digits");
    }
    Ok(())
}

/// Sections must be exactly usr, kernel, initramfs, in that order.
fn check_sections(names: impl Iterator<Item = SectionName>) -> Result<()> {
    let names: Vec<SectionName> = names.collect();
    if names == SectionName::ALL {
        return Ok(());
    }
    let listed: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let problem = section_problem(&names);
    bail!(
        "the sections are [{}]: {problem}; a format-{FORMAT_VERSION} payload has exactly usr, \
         kernel, initramfs, in that order",
        listed.join(", ")
    )
}

fn section_problem(names: &[SectionName]) -> String {
    for want in SectionName::ALL {
        match names.iter().filter(|&&n| n == want).count() {
            0 => return format!("{want} is missing"),
            1 => {}
            n => return format!("{want} appears {n} times"),
        }
    }
    "they are out of order".to_owned()
}

/// Reads exactly `header.body_size` bytes from `r` and checks their sha256 against the header.
///
/// Reads nothing past the body, so `r` may be a device that is larger than the payload.
pub fn verify_body<R: Read + ?Sized>(r: &mut R, header: &Header) -> Result<()> {
    let mut body = (&mut *r).take(header.body_size);
    let (size, sha256) =
        copy_hashing(&mut body, &mut io::sink()).context("cannot read the payload body")?;
    check_body(size, &sha256, header)
}

fn check_body(size: u64, sha256: &str, header: &Header) -> Result<()> {
    if size < header.body_size {
        bail!(
            "truncated: the body has {size} of {} bytes",
            header.body_size
        );
    }
    if sha256 != header.body_sha256 {
        bail!(
            "corrupt: body sha256 is {sha256}, the signed header says {}",
            header.body_sha256
        );
    }
    Ok(())
}

/// Decompresses the body from `r` (reading at most `header.body_size` bytes) and hands each
/// section's bytes, in order and in chunks of up to 1 MiB, to `sink`.
///
/// Each section's size and sha256, the total size, and the body's size and sha256 are checked
/// as the data streams past, but the sink sees bytes before the checks that cover them: treat
/// nothing it wrote as valid unless `extract` returns Ok.
pub fn extract<R: Read + ?Sized>(
    r: &mut R,
    header: &Header,
    sink: &mut dyn FnMut(SectionName, &[u8]) -> Result<()>,
) -> Result<()> {
    check_sections(header.sections.iter().map(|s| s.name)).context("cannot extract the payload")?;
    // Only the .xz format (no legacy .lzma), with all concatenated streams.
    let stream = Stream::new_stream_decoder(u64::MAX, xz2::stream::CONCATENATED)
        .context("cannot start the xz decoder")?;
    let body = HashingReader::new((&mut *r).take(header.body_size));
    let mut xz = xz2::bufread::XzDecoder::new_stream(BufReader::with_capacity(CHUNK, body), stream);
    let mut buf = vec![0u8; CHUNK];
    for section in &header.sections {
        extract_section(&mut xz, section, &mut buf, sink)?;
    }
    // Reading to the end also makes the decoder check the last block and the stream index.
    let extra = read_full(&mut xz, &mut buf[..1]).context("cannot decompress the payload body")?;
    if extra != 0 {
        let total = header
            .sections
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.size));
        bail!("corrupt: the body decompresses to more than the {total} bytes of its sections");
    }
    let mut rest = xz.into_inner();
    io::copy(&mut rest, &mut io::sink()).context("cannot read the payload body")?;
    let body = rest.into_inner();
    check_body(body.count, &hex::encode(body.hasher.finalize()), header)
}

/// Streams one section from the decoder to the sink, then checks its sha256.
fn extract_section(
    xz: &mut impl Read,
    section: &Section,
    buf: &mut [u8],
    sink: &mut dyn FnMut(SectionName, &[u8]) -> Result<()>,
) -> Result<()> {
    let name = section.name;
    let mut hasher = Sha256::new();
    let mut left = section.size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = read_full(xz, &mut buf[..want])
            .with_context(|| format!("cannot decompress the {name} section of the payload body"))?;
        if n == 0 {
            bail!(
                "corrupt: the body ends inside the {name} section ({} of {} bytes)",
                section.size - left,
                section.size
            );
        }
        hasher.update(&buf[..n]);
        sink(name, &buf[..n]).with_context(|| format!("cannot store the {name} section"))?;
        left -= n as u64;
    }
    let sha256 = hex::encode(hasher.finalize());
    if sha256 != section.sha256 {
        bail!(
            "corrupt: the {name} section's sha256 is {sha256}, the signed header says {}",
            section.sha256
        );
    }
    Ok(())
}

/// Counts and hashes what passes through, to check the compressed body while decoding it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// I/O helpers

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Copies `src` to `dst` in 1 MiB chunks, returning the size and hex sha256 of what was copied.
fn copy_hashing<R: Read + ?Sized, W: Write + ?Sized>(
    src: &mut R,
    dst: &mut W,
) -> io::Result<(u64, String)> {
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = read_full(src, &mut buf)?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        size += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{OsRng, RngCore};
    use std::io::Cursor;
    use std::path::PathBuf;

    const MIB: usize = 1 << 20;

    fn test_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn other_key() -> SigningKey {
        SigningKey::from_bytes(&[8u8; 32])
    }

    fn random_bytes(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        OsRng.fill_bytes(&mut v);
        v
    }

    fn meta() -> Meta {
        Meta {
            os_id: "kiln-test".into(),
            os_name: "Kiln Test".into(),
            version: "1.2.3".into(),
            board: "generic".into(),
            arch: "x86_64".into(),
            created: 1_700_000_000,
        }
    }

    /// Section contents: usr is a few MiB so the xz body has several blocks.
    fn contents() -> Vec<(SectionName, Vec<u8>)> {
        contents_with_usr(4 * MIB + 12345)
    }

    /// Smaller, for the tests about refusing things (debug-build hashing is slow).
    fn small_contents() -> Vec<(SectionName, Vec<u8>)> {
        contents_with_usr(300_000)
    }

    fn contents_with_usr(usr_size: usize) -> Vec<(SectionName, Vec<u8>)> {
        vec![
            (SectionName::Usr, random_bytes(usr_size)),
            (SectionName::Kernel, random_bytes(100_000)),
            (SectionName::Initramfs, random_bytes(50_001)),
        ]
    }

    /// Writes the section files and a payload made from them into `dir`.
    fn make_payload(
        dir: &Path,
        contents: &[(SectionName, Vec<u8>)],
        compress: &dyn Fn(&Path, &Path) -> Result<()>,
    ) -> Result<(PathBuf, Header)> {
        let mut files = Vec::new();
        for (name, bytes) in contents {
            let p = dir.join(name.as_str());
            fs::write(&p, bytes).unwrap();
            files.push(p);
        }
        let sections: Vec<(SectionName, &Path, String)> = contents
            .iter()
            .zip(&files)
            .map(|((n, _), p)| (*n, p.as_path(), format!("{n}-detail")))
            .collect();
        let out = dir.join("update.kupd");
        let header = create(&out, &meta(), &sections, &test_key(), compress)?;
        Ok((out, header))
    }

    /// Extracts into one Vec per section, checking the sink is called in section order.
    fn extract_all(r: &mut impl Read, header: &Header) -> Result<Vec<(SectionName, Vec<u8>)>> {
        let mut got: Vec<(SectionName, Vec<u8>)> = Vec::new();
        extract(r, header, &mut |name, bytes| {
            assert!(bytes.len() <= CHUNK);
            match got.last_mut() {
                Some((n, v)) if *n == name => v.extend_from_slice(bytes),
                _ => got.push((name, bytes.to_vec())),
            }
            Ok(())
        })?;
        Ok(got)
    }

    /// A payload from the given preamble version and header JSON, signed by `key`, with `body`.
    fn craft(version: u32, header_json: &[u8], key: &SigningKey, body: &[u8]) -> Vec<u8> {
        let mut v = b"KILNUPD\0".to_vec();
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
        v.extend_from_slice(header_json);
        let sig = key.sign(&v);
        v.extend_from_slice(&sig.to_bytes());
        v.extend_from_slice(body);
        v
    }

    fn sample_header() -> Header {
        let sha = "ab".repeat(32);
        Header {
            format: 1,
            os_id: "kiln-test".into(),
            os_name: "Kiln Test".into(),
            version: "1".into(),
            board: "generic".into(),
            arch: "x86_64".into(),
            created: 0,
            key_id: key_id(&test_key().verifying_key()),
            body_size: 0,
            body_sha256: sha.clone(),
            sections: SectionName::ALL
                .iter()
                .map(|&name| Section {
                    name,
                    size: 1,
                    sha256: sha.clone(),
                    detail: String::new(),
                })
                .collect(),
        }
    }

    /// The number of blocks in a single-stream .xz file, from its index (xz file format 1.0.4,
    /// sections 2.1.2 and 4): the footer's backward size locates the index, which starts with
    /// a 0x00 indicator and the record count as a variable-length integer.
    fn xz_block_count(xz: &[u8]) -> u64 {
        let footer = &xz[xz.len() - 12..];
        assert_eq!(&footer[10..], b"YZ");
        let backward = (u32::from_le_bytes(footer[4..8].try_into().unwrap()) as usize + 1) * 4;
        let index = &xz[xz.len() - 12 - backward..];
        assert_eq!(index[0], 0);
        let (mut count, mut shift) = (0u64, 0);
        for &b in &index[1..] {
            count |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        count
    }

    fn open_err(bytes: &[u8], trusted: &[VerifyingKey]) -> String {
        format!("{:#}", open(&mut Cursor::new(bytes), trusted).unwrap_err())
    }

    fn trusted() -> Vec<VerifyingKey> {
        vec![other_key().verifying_key(), test_key().verifying_key()]
    }

    #[test]
    fn round_trip_create_open_verify_extract() {
        let dir = tempfile::tempdir().unwrap();
        let contents = contents();
        let (out, made) = make_payload(dir.path(), &contents, &xz_compress(0, 4)).unwrap();
        // Only the inputs and the payload: no temporaries left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 4);
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o644
        );

        let mut f = File::open(&out).unwrap();
        let opened = open(&mut f, &trusted()).unwrap();
        assert_eq!(opened.header, made);
        assert_eq!(opened.signer, test_key().verifying_key());
        assert_eq!(opened.header.sections[0].detail, "usr-detail");
        assert_eq!(opened.header.sections[0].size, contents[0].1.len() as u64);
        assert_eq!(f.stream_position().unwrap(), opened.header_bytes_len);
        verify_body(&mut f, &opened.header).unwrap();
        assert_eq!(
            f.stream_position().unwrap(),
            fs::metadata(&out).unwrap().len()
        );
        // 4 threads over ~4.2 MiB: 1 MiB blocks, so the decoder crosses block boundaries.
        let bytes = fs::read(&out).unwrap();
        let blocks = xz_block_count(&bytes[opened.header_bytes_len as usize..]);
        assert!(blocks >= 4, "{blocks} xz blocks");
        f.seek(SeekFrom::Start(opened.header_bytes_len)).unwrap();
        assert_eq!(extract_all(&mut f, &opened.header).unwrap(), contents);
        assert_eq!(read_header_unverified(&out).unwrap(), made);
    }

    #[test]
    fn layout_is_the_documented_one() {
        let dir = tempfile::tempdir().unwrap();
        let contents = contents();
        let (out, made) = make_payload(dir.path(), &contents, &xz_compress(0, 2)).unwrap();
        let bytes = fs::read(&out).unwrap();
        assert_eq!(&bytes[..8], b"KILNUPD\0");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        let h = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let json: serde_json::Value = serde_json::from_slice(&bytes[16..16 + h]).unwrap();
        assert_eq!(json["format"], 1);
        assert_eq!(json["key-id"], key_id(&test_key().verifying_key()).as_str());
        assert_eq!(json["body-size"], made.body_size);
        assert_eq!(json["sections"][1]["name"], "kernel");
        let sig = Signature::from_slice(&bytes[16 + h..80 + h]).unwrap();
        test_key()
            .verifying_key()
            .verify_strict(&bytes[..16 + h], &sig)
            .unwrap();
        let body = &bytes[80 + h..];
        assert_eq!(body.len() as u64, made.body_size);
        assert_eq!(hex::encode(Sha256::digest(body)), made.body_sha256);
        let mut raw = Vec::new();
        xz2::read::XzDecoder::new_multi_decoder(body)
            .read_to_end(&mut raw)
            .unwrap();
        let want: Vec<u8> = contents.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(raw, want);
    }

    #[test]
    fn several_concatenated_xz_streams_extract() {
        // A compressor that writes each half of the input as its own .xz stream.
        let two_streams = |raw: &Path, out: &Path| -> Result<()> {
            let data = fs::read(raw)?;
            let (a, b) = data.split_at(data.len() / 2);
            let mut w = xz2::write::XzEncoder::new(Vec::new(), 0);
            w.write_all(a)?;
            let mut body = w.finish()?;
            let mut w = xz2::write::XzEncoder::new(Vec::new(), 0);
            w.write_all(b)?;
            body.extend(w.finish()?);
            fs::write(out, body)?;
            Ok(())
        };
        let dir = tempfile::tempdir().unwrap();
        let contents = contents();
        let (out, _) = make_payload(dir.path(), &contents, &two_streams).unwrap();
        let mut f = File::open(&out).unwrap();
        let opened = open(&mut f, &trusted()).unwrap();
        // extract checks the body itself, so one pass without verify_body works.
        assert_eq!(extract_all(&mut f, &opened.header).unwrap(), contents);
    }

    #[test]
    fn create_refuses_wrong_sections_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut contents = small_contents();
        contents.swap(1, 2);
        let err = format!(
            "{:#}",
            make_payload(dir.path(), &contents, &xz_compress(0, 1)).unwrap_err()
        );
        assert!(
            err.contains("initramfs") && err.contains("out of order"),
            "{err}"
        );

        let failing = |_: &Path, _: &Path| -> Result<()> { bail!("compressor broke") };
        contents.swap(1, 2);
        let err = format!(
            "{:#}",
            make_payload(dir.path(), &contents, &failing).unwrap_err()
        );
        assert!(err.contains("compressor broke"), "{err}");
        let not_xz = |raw: &Path, out: &Path| -> Result<()> { Ok(fs::copy(raw, out).map(|_| ())?) };
        let err = format!(
            "{:#}",
            make_payload(dir.path(), &contents, &not_xz).unwrap_err()
        );
        assert!(err.contains("did not write xz data"), "{err}");
        // Only the three section inputs remain.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn wrong_key_and_no_keys_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (out, made) = make_payload(dir.path(), &small_contents(), &xz_compress(0, 2)).unwrap();
        let bytes = fs::read(&out).unwrap();
        let other = other_key().verifying_key();
        let err = open_err(&bytes, &[other]);
        assert!(err.contains("wrong key or tampered payload"), "{err}");
        assert!(err.contains(&made.key_id), "{err}");
        assert!(err.contains(&key_id(&other)), "{err}");
        let err = open_err(&bytes, &[]);
        assert!(err.contains("no trusted keys"), "{err}");
        assert!(err.contains(&made.key_id), "{err}");
    }

    #[test]
    fn flipped_bytes_refused_by_the_right_step() {
        let dir = tempfile::tempdir().unwrap();
        let (out, made) = make_payload(dir.path(), &small_contents(), &xz_compress(0, 2)).unwrap();
        let bytes = fs::read(&out).unwrap();
        let h = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;

        // In the header and in the signature: open refuses.
        for at in [16 + 5, 16 + h / 2, 16 + h - 1, 16 + h, 16 + h + 40, 79 + h] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            let err = open_err(&bad, &trusted());
            assert!(err.contains("does not verify"), "byte {at}: {err}");
        }

        // In the body: open accepts, verify_body (and extract) refuse.
        let mut bad = bytes.clone();
        bad[80 + h + made.body_size as usize / 2] ^= 0x01;
        let mut r = Cursor::new(&bad);
        let opened = open(&mut r, &trusted()).unwrap();
        let err = format!("{:#}", verify_body(&mut r, &opened.header).unwrap_err());
        assert!(err.contains("corrupt: body sha256 is"), "{err}");
        assert!(err.contains(&made.body_sha256), "{err}");
        r.set_position(opened.header_bytes_len);
        assert!(extract_all(&mut r, &opened.header).is_err());
    }

    #[test]
    fn truncated_body_refused_and_trailing_bytes_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let contents = contents();
        let (out, made) = make_payload(dir.path(), &contents, &xz_compress(0, 2)).unwrap();
        let bytes = fs::read(&out).unwrap();

        let short = &bytes[..bytes.len() - 10];
        let mut r = Cursor::new(short);
        let opened = open(&mut r, &trusted()).unwrap();
        let err = format!("{:#}", verify_body(&mut r, &opened.header).unwrap_err());
        let want = format!(
            "truncated: the body has {} of {} bytes",
            made.body_size - 10,
            made.body_size
        );
        assert!(err.contains(&want), "{err}");
        r.set_position(opened.header_bytes_len);
        assert!(extract_all(&mut r, &opened.header).is_err());

        // A block device: the payload followed by whatever the device held before.
        let mut device = bytes.clone();
        device.extend(random_bytes(3 * MIB));
        let mut r = Cursor::new(&device);
        let opened = open(&mut r, &trusted()).unwrap();
        verify_body(&mut r, &opened.header).unwrap();
        assert_eq!(r.position(), bytes.len() as u64);
        r.set_position(opened.header_bytes_len);
        assert_eq!(extract_all(&mut r, &opened.header).unwrap(), contents);
        assert_eq!(r.position(), bytes.len() as u64);
    }

    #[test]
    fn bad_magic_and_other_versions_refused() {
        let json = serde_json::to_vec(&sample_header()).unwrap();
        let good = craft(1, &json, &test_key(), b"");
        open(&mut Cursor::new(&good), &trusted()).unwrap();

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(open_err(&bad, &trusted()).contains("not a kiln update payload"));
        assert!(open_err(b"KILN", &trusted()).contains("not a kiln update payload"));
        assert!(open_err(b"", &trusted()).contains("not a kiln update payload"));

        let v2 = craft(2, &json, &test_key(), b"");
        let err = open_err(&v2, &trusted());
        assert!(
            err.contains("unsupported payload format version 2"),
            "{err}"
        );
        assert!(err.contains("reads format version 1"), "{err}");
        assert!(
            format!("{:#}", read_signed_part(&mut Cursor::new(&v2)).unwrap_err())
                .contains("version 2")
        );
    }

    #[test]
    fn header_length_out_of_range_refused_without_reading_it() {
        for len in [0u32, MAX_HEADER_LEN + 1, u32::MAX] {
            let mut preamble = b"KILNUPD\0".to_vec();
            preamble.extend_from_slice(&1u32.to_le_bytes());
            preamble.extend_from_slice(&len.to_le_bytes());
            // Only the preamble is there: reading further would be a "truncated" error.
            let err = open_err(&preamble, &trusted());
            assert!(
                err.contains(&format!("header length {len} is outside 1..=65536")),
                "{err}"
            );
        }
    }

    #[test]
    fn largest_header_accepted() {
        let mut json = serde_json::to_vec(&sample_header()).unwrap();
        json.resize(MAX_HEADER_LEN as usize, b' ');
        let bytes = craft(1, &json, &test_key(), b"");
        let opened = open(&mut Cursor::new(&bytes), &trusted()).unwrap();
        assert_eq!(opened.header_bytes_len, 80 + 65536);
        let mut too_big = json.clone();
        too_big.push(b' ');
        let err = open_err(&craft(1, &too_big, &test_key(), b""), &trusted());
        assert!(err.contains("header length 65537"), "{err}");
    }

    #[test]
    fn truncated_header_or_signature_refused() {
        let json = serde_json::to_vec(&sample_header()).unwrap();
        let bytes = craft(1, &json, &test_key(), b"");
        let err = open_err(&bytes[..100], &trusted());
        assert!(err.contains("truncated") && err.contains("header"), "{err}");
        let err = open_err(&bytes[..bytes.len() - 1], &trusted());
        assert!(
            err.contains("truncated") && err.contains("signature"),
            "{err}"
        );
        let err = open_err(&bytes[..12], &trusted());
        assert!(err.contains("truncated"), "{err}");
    }

    /// Signs `json` with the trusted test key and returns what open says.
    fn open_signed_json(json: &str) -> String {
        open_err(&craft(1, json.as_bytes(), &test_key(), b""), &trusted())
    }

    #[test]
    fn bad_header_json_refused() {
        let err = open_signed_json("not json");
        assert!(err.contains("header is not a valid kiln header"), "{err}");

        let mut v = serde_json::to_value(sample_header()).unwrap();
        v.as_object_mut().unwrap().remove("body-sha256");
        let err = open_signed_json(&v.to_string());
        assert!(err.contains("missing field `body-sha256`"), "{err}");

        let mut v = serde_json::to_value(sample_header()).unwrap();
        v["surprise"] = 1.into();
        let err = open_signed_json(&v.to_string());
        assert!(err.contains("unknown field `surprise`"), "{err}");

        let mut v = serde_json::to_value(sample_header()).unwrap();
        v["format"] = 2.into();
        let err = open_signed_json(&v.to_string());
        assert!(err.contains("signed header says format 2"), "{err}");

        let mut v = serde_json::to_value(sample_header()).unwrap();
        v["sections"][0]["name"] = "boot".into();
        let err = open_signed_json(&v.to_string());
        assert!(err.contains("unknown variant `boot`"), "{err}");

        let mut v = serde_json::to_value(sample_header()).unwrap();
        v["body-sha256"] = "AB".repeat(32).into();
        let err = open_signed_json(&v.to_string());
        assert!(
            err.contains("body-sha256 is not 64 lowercase hex digits"),
            "{err}"
        );

        let mut v = serde_json::to_value(sample_header()).unwrap();
        v["key-id"] = "0123456789abcdef".into();
        let err = open_signed_json(&v.to_string());
        assert!(err.contains("names signing key 0123456789abcdef"), "{err}");
    }

    #[test]
    fn wrong_section_lists_refused() {
        let with_names = |names: &[SectionName]| {
            let mut h = sample_header();
            let template = h.sections[0].clone();
            h.sections = names
                .iter()
                .map(|&name| Section {
                    name,
                    ..template.clone()
                })
                .collect();
            open_signed_json(&serde_json::to_string(&h).unwrap())
        };
        use SectionName::*;
        let err = with_names(&[Kernel, Usr, Initramfs]);
        assert!(
            err.contains("[kernel, usr, initramfs]: they are out of order"),
            "{err}"
        );
        let err = with_names(&[Usr, Kernel]);
        assert!(err.contains("initramfs is missing"), "{err}");
        let err = with_names(&[Usr, Kernel, Initramfs, Usr]);
        assert!(err.contains("usr appears 2 times"), "{err}");
        let err = with_names(&[]);
        assert!(err.contains("usr is missing"), "{err}");
    }

    #[test]
    fn extract_refuses_sections_that_do_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let contents = small_contents();
        let (out, made) = make_payload(dir.path(), &contents, &xz_compress(0, 2)).unwrap();
        let bytes = fs::read(&out).unwrap();
        let body = &bytes[bytes.len() - made.body_size as usize..];

        // Re-sign headers with altered sections over the same, genuine body.
        let extract_with = |h: &Header| {
            let payload = craft(1, &serde_json::to_vec(h).unwrap(), &test_key(), body);
            let mut r = Cursor::new(payload);
            let opened = open(&mut r, &trusted()).unwrap();
            let pos = r.position();
            verify_body(&mut r, &opened.header).unwrap();
            r.set_position(pos);
            format!("{:#}", extract_all(&mut r, &opened.header).unwrap_err())
        };

        let mut h = made.clone();
        h.sections[1].sha256 = "00".repeat(32);
        let err = extract_with(&h);
        assert!(
            err.contains("corrupt: the kernel section's sha256 is"),
            "{err}"
        );

        let mut h = made.clone();
        h.sections[2].size += 1;
        let err = extract_with(&h);
        assert!(
            err.contains("body ends inside the initramfs section"),
            "{err}"
        );

        let mut h = made.clone();
        h.sections[2].size -= 1;
        let err = extract_with(&h);
        assert!(err.contains("initramfs section's sha256"), "{err}");

        let mut h = made.clone();
        h.sections[0].size -= 1;
        h.sections[2].size -= 1;
        let err = extract_with(&h);
        assert!(err.contains("usr section's sha256"), "{err}");
    }

    #[test]
    fn extract_refuses_a_body_longer_than_the_sections() {
        let dir = tempfile::tempdir().unwrap();
        let contents = small_contents();
        let (out, made) = make_payload(dir.path(), &contents, &xz_compress(0, 2)).unwrap();
        let bytes = fs::read(&out).unwrap();
        let body = &bytes[bytes.len() - made.body_size as usize..];
        // Header sections describe all but the last byte of initramfs.
        let mut h = made.clone();
        let last = &contents[2].1;
        h.sections[2].size -= 1;
        h.sections[2].sha256 = hex::encode(Sha256::digest(&last[..last.len() - 1]));
        let payload = craft(1, &serde_json::to_vec(&h).unwrap(), &test_key(), body);
        let mut r = Cursor::new(payload);
        let opened = open(&mut r, &trusted()).unwrap();
        let err = format!("{:#}", extract_all(&mut r, &opened.header).unwrap_err());
        assert!(err.contains("decompresses to more than"), "{err}");
    }

    #[test]
    fn block_size_spreads_work_over_threads_within_limits() {
        const M: u64 = 1 << 20;
        assert_eq!(xz_block_size(10 * M, 6, 2), 5 * M);
        assert_eq!(xz_block_size(100, 6, 2), M);
        assert_eq!(xz_block_size(10_000 * M, 6, 2), 24 * M);
        assert_eq!(xz_block_size(10_000 * M, 9, 1), 192 * M);
        assert_eq!(xz_block_size(10 * M, 0, 0), M);
    }

    #[test]
    fn zero_threads_means_one_per_cpu() {
        let cpus = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(thread_count(0), cpus);
        assert_eq!(thread_count(3), 3);
        let dir = tempfile::tempdir().unwrap();
        let contents = small_contents();
        let (out, made) = make_payload(dir.path(), &contents, &xz_compress(1, 0)).unwrap();
        let mut f = File::open(&out).unwrap();
        open(&mut f, &trusted()).unwrap();
        assert_eq!(extract_all(&mut f, &made).unwrap(), contents);
    }

    #[test]
    fn xz_compress_refuses_bad_level() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        fs::write(&raw, b"x").unwrap();
        let err = format!(
            "{:#}",
            xz_compress(10, 1)(&raw, &dir.path().join("out")).unwrap_err()
        );
        assert!(err.contains("xz level 10 is out of range"), "{err}");
    }
}
