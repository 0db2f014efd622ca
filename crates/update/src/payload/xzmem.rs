//! How much memory the payload body's xz streams need to decompress, found from their indexes
//! and block headers without decompressing anything, so a body that asks for more than the
//! agent allows is refused before the first write to the disk.
//!
//! The xz format (xz-file-format-1.1.0): each stream is a 12-byte header, blocks, an index and
//! a 12-byte footer; streams may be separated by padding (multiples of four zero bytes). The
//! footer gives the index's size, the index each block's unpadded size, so the streams are
//! walked from the end. The memory a block needs is set by its LZMA2 dictionary size.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{bail, Context, Result};

use super::Header;

/// The most memory the payload reader gives liblzma's decoder. kiln writes payload bodies at
/// xz level 1 (a 1 MiB dictionary, about 1 MiB of decoder memory); 16 MiB admits every level
/// up to xz's default 6 (an 8 MiB dictionary) and keeps the agent small on a machine that is
/// busy running its workload. A body that needs more is refused.
pub const XZ_MEMLIMIT: u64 = 16 << 20;

/// What liblzma's LZMA2 decoder allocates besides the dictionary (its state and buffers,
/// rounded up generously), for the estimate checked against [`XZ_MEMLIMIT`].
const DECODER_OVERHEAD: u64 = 1 << 20;

/// An index larger than this is refused rather than read (kiln's bodies have one block per
/// 16 MiB chunk: a few hundred bytes of index).
const MAX_INDEX: u64 = 1 << 20;

const STREAM_HEADER_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = *b"YZ";
const LZMA2: u64 = 0x21;

/// Checks that every block of the body (at `body_start` in `r`, `header.body_size` bytes)
/// needs at most [`XZ_MEMLIMIT`] to decompress. Returns the largest need found.
pub fn check_xz_memory<R: Read + Seek + ?Sized>(
    r: &mut R,
    body_start: u64,
    header: &Header,
) -> Result<u64> {
    let mut body = Body {
        r,
        start: body_start,
        len: header.body_size,
    };
    let mut end = header.body_size;
    let mut need = 0u64;
    let mut streams = 0u64;
    while end > 0 {
        // Stream padding: zero words before a stream's end.
        let mut word = [0u8; 4];
        body.read_at(end.checked_sub(4).context(SHORT)?, &mut word)?;
        if word == [0; 4] {
            end -= 4;
            continue;
        }
        let start = check_stream(&mut body, end, &mut need)?;
        streams += 1;
        end = start;
    }
    if streams == 0 {
        bail!("the payload body holds no xz stream");
    }
    if need > XZ_MEMLIMIT {
        bail!(
            "the payload body needs {} MiB of memory to decompress (an xz dictionary of {} MiB), more than the {} MiB kiln allows; kiln writes payloads at xz level 1 (1 MiB): remake it with kiln build or kiln update create",
            need >> 20,
            need.saturating_sub(DECODER_OVERHEAD) >> 20,
            XZ_MEMLIMIT >> 20
        );
    }
    Ok(need)
}

const SHORT: &str = "corrupt payload body: an xz stream is cut short";

/// The body as a byte range of the payload, read at offsets within it.
struct Body<'a, R: ?Sized> {
    r: &'a mut R,
    start: u64,
    len: u64,
}

impl<R: Read + Seek + ?Sized> Body<'_, R> {
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> Result<()> {
        let end = at.checked_add(buf.len() as u64).context(SHORT)?;
        if end > self.len {
            bail!(SHORT);
        }
        self.r
            .seek(SeekFrom::Start(self.start + at))
            .context("cannot read the payload body")?;
        self.r
            .read_exact(buf)
            .context("cannot read the payload body")
    }
}

/// Checks the stream that ends at `end`; returns where it starts.
fn check_stream<R: Read + Seek + ?Sized>(
    body: &mut Body<'_, R>,
    end: u64,
    need: &mut u64,
) -> Result<u64> {
    let mut footer = [0u8; 12];
    body.read_at(end.checked_sub(12).context(SHORT)?, &mut footer)?;
    if footer[10..12] != FOOTER_MAGIC || footer[8] != 0 {
        bail!(
            "corrupt payload body: no xz stream footer at byte {}",
            end - 12
        );
    }
    let check_size = check_size(footer[9])?;
    let backward = u64::from(u32::from_le_bytes([
        footer[4], footer[5], footer[6], footer[7],
    ]));
    let index_size = (backward + 1) * 4;
    if index_size > MAX_INDEX {
        bail!(
            "the payload body's xz index is {index_size} bytes, more than the {MAX_INDEX} kiln reads: refused"
        );
    }
    let index_start = (end - 12).checked_sub(index_size).context(SHORT)?;
    let mut index = vec![0u8; index_size as usize];
    body.read_at(index_start, &mut index)?;
    let blocks = parse_index(&index)?;
    let total: u64 = blocks
        .iter()
        .try_fold(0u64, |t, &u| t.checked_add(u.checked_add(3)? & !3))
        .context(SHORT)?;
    let stream_start = index_start
        .checked_sub(total)
        .and_then(|s| s.checked_sub(12))
        .context(SHORT)?;
    let mut head = [0u8; 12];
    body.read_at(stream_start, &mut head)?;
    if head[..6] != STREAM_HEADER_MAGIC || head[6..8] != footer[8..10] {
        bail!("corrupt payload body: no xz stream header at byte {stream_start}");
    }
    let mut at = stream_start + 12;
    for unpadded in blocks {
        let dict = block_dictionary(body, at)?;
        *need = (*need).max(dict.saturating_add(DECODER_OVERHEAD));
        if unpadded <= check_size {
            bail!("corrupt payload body: an xz block of {unpadded} bytes");
        }
        at += (unpadded + 3) & !3;
    }
    Ok(stream_start)
}

/// Bytes of the integrity check for an xz check type.
fn check_size(flags: u8) -> Result<u64> {
    Ok(match flags & 0x0f {
        0x00 => 0,
        0x01 => 4,
        0x04 => 8,
        0x0a => 32,
        n => bail!("corrupt payload body: unknown xz check type {n:#x}"),
    })
}

/// An xz variable-length integer at `*pos` of `b` (at most 9 bytes).
fn varint(b: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b
            .get(*pos)
            .context("corrupt payload body: an xz number is cut short")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("corrupt payload body: an xz number is longer than 9 bytes")
}

/// The unpadded sizes of the blocks an index lists.
fn parse_index(index: &[u8]) -> Result<Vec<u64>> {
    if index.first() != Some(&0) {
        bail!("corrupt payload body: an xz index does not start with its indicator");
    }
    let mut pos = 1;
    let n = varint(index, &mut pos)?;
    // Each record takes at least two bytes: a count beyond that is corrupt.
    if n > index.len() as u64 / 2 {
        bail!(
            "corrupt payload body: an xz index lists {n} blocks in {} bytes",
            index.len()
        );
    }
    let mut blocks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let unpadded = varint(index, &mut pos)?;
        let _uncompressed = varint(index, &mut pos)?;
        blocks.push(unpadded);
    }
    Ok(blocks)
}

/// The LZMA2 dictionary size a block's header asks for (0 for a block without LZMA2).
fn block_dictionary<R: Read + Seek + ?Sized>(body: &mut Body<'_, R>, at: u64) -> Result<u64> {
    let mut size = [0u8; 1];
    body.read_at(at, &mut size)?;
    if size[0] == 0 {
        bail!("corrupt payload body: an xz index where a block header should be, at byte {at}");
    }
    let len = (usize::from(size[0]) + 1) * 4;
    let mut h = vec![0u8; len];
    body.read_at(at, &mut h)?;
    let flags = h[1];
    let filters = usize::from(flags & 0x03) + 1;
    let mut pos = 2;
    if flags & 0x40 != 0 {
        varint(&h, &mut pos)?;
    }
    if flags & 0x80 != 0 {
        varint(&h, &mut pos)?;
    }
    let mut dict = 0u64;
    for _ in 0..filters {
        let id = varint(&h, &mut pos)?;
        let props_len = varint(&h, &mut pos)?;
        let props = pos;
        pos = pos
            .checked_add(usize::try_from(props_len).unwrap_or(usize::MAX))
            .filter(|&p| p <= h.len())
            .context("corrupt payload body: an xz filter's properties are cut short")?;
        if id == LZMA2 {
            if props_len != 1 {
                bail!("corrupt payload body: LZMA2 properties of {props_len} bytes");
            }
            dict = lzma2_dictionary(h[props])?;
        }
    }
    Ok(dict)
}

/// The dictionary size an LZMA2 property byte encodes.
fn lzma2_dictionary(b: u8) -> Result<u64> {
    match b {
        0..=39 => Ok((2 | u64::from(b & 1)) << (b / 2 + 11)),
        40 => Ok(u64::from(u32::MAX)),
        _ => bail!("corrupt payload body: LZMA2 dictionary property {b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lzma2_dictionary_sizes() {
        assert_eq!(lzma2_dictionary(0).unwrap(), 4096);
        assert_eq!(lzma2_dictionary(16).unwrap(), 1 << 20);
        assert_eq!(lzma2_dictionary(19).unwrap(), 3 << 20);
        assert_eq!(lzma2_dictionary(40).unwrap(), u64::from(u32::MAX));
        assert!(lzma2_dictionary(41).is_err());
    }
}
