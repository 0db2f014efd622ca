//! Reading a payload: the signed part checked against the trusted keys, then the body against
//! the header, in one bounded pass.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use xz2::stream::Stream;

use super::*;
use crate::keys::key_id;

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
pub(super) fn read_signed_part<R: Read + ?Sized>(r: &mut R) -> Result<(Vec<u8>, Signature)> {
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
pub(super) fn check_sections(names: impl Iterator<Item = SectionName>) -> Result<()> {
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

/// Reads the payload from its first byte (`r` positioned there) to the end of its body, whose
/// start `body_start` [`open`] found: checks the body against the header, and returns the
/// SHA-256 of all those bytes, the digest of the payload file that a channel index names.
pub fn verify_file<R: Read + ?Sized>(
    r: &mut R,
    body_start: u64,
    header: &Header,
) -> Result<String> {
    let mut all = HashingReader::new((&mut *r).take(body_start.saturating_add(header.body_size)));
    let n = io::copy(&mut (&mut all).take(body_start), &mut io::sink())
        .context("cannot read the payload")?;
    if n < body_start {
        bail!("truncated: the payload ends inside its header");
    }
    verify_body(&mut all, header)?;
    Ok(hex::encode(all.hasher.finalize()))
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
    // Only the .xz format (no legacy .lzma), with all concatenated streams, and no more memory
    // than a payload kiln writes needs: the bytes are checked only as they stream past.
    let stream = Stream::new_stream_decoder(super::xzmem::XZ_MEMLIMIT, xz2::stream::CONCATENATED)
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
            .map_err(memlimit_error)
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

/// liblzma's "memory limit reached" as kiln's refusal; other errors as they are.
fn memlimit_error(e: io::Error) -> anyhow::Error {
    let limit = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<xz2::stream::Error>())
        .is_some_and(|x| matches!(x, xz2::stream::Error::MemLimit));
    if limit {
        anyhow!(
            "the payload body needs more than the {} MiB of memory kiln allows its xz decoder: refused",
            super::xzmem::XZ_MEMLIMIT >> 20
        )
    } else {
        anyhow::Error::new(e)
    }
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
