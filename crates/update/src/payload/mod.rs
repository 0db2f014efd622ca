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
use std::io::{self, Read, Write};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod read;
#[cfg(test)]
mod tests;
mod write;
mod xzmem;

pub use read::{extract, open, read_header_unverified, verify_body, verify_file};
pub use write::create;
pub use xzmem::{check_xz_memory, XZ_MEMLIMIT};

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

/// Reads until `buf` is full or the input ends; returns how much was read.
pub(crate) fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
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
pub(crate) fn copy_hashing<R: Read + ?Sized, W: Write + ?Sized>(
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
