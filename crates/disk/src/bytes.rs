//! Bounds-checked little-endian field access for on-disk structures.
//!
//! Decoding goes through these helpers so that a short or corrupt buffer
//! turns into an error instead of an out-of-bounds panic.

use anyhow::{anyhow, Result};
use uuid::Uuid;

fn field<const N: usize>(buf: &[u8], off: usize) -> Result<[u8; N]> {
    off.checked_add(N)
        .and_then(|end| buf.get(off..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| {
            anyhow!(
                "{N}-byte field at offset {off} lies outside a {}-byte buffer",
                buf.len()
            )
        })
}

pub(crate) fn le_u32(buf: &[u8], off: usize) -> Result<u32> {
    field::<4>(buf, off).map(u32::from_le_bytes)
}

pub(crate) fn le_u64(buf: &[u8], off: usize) -> Result<u64> {
    field::<8>(buf, off).map(u64::from_le_bytes)
}

/// GPT stores GUIDs mixed-endian (first three fields little-endian).
pub(crate) fn guid_le(buf: &[u8], off: usize) -> Result<Uuid> {
    field::<16>(buf, off).map(Uuid::from_bytes_le)
}

/// Copy `src` into `buf` at `off`; errors instead of panicking when it does
/// not fit (only reachable through a programming error, never bad input).
pub(crate) fn put(buf: &mut [u8], off: usize, src: &[u8]) -> Result<()> {
    let len = buf.len();
    off.checked_add(src.len())
        .and_then(|end| buf.get_mut(off..end))
        .ok_or_else(|| {
            anyhow!(
                "{}-byte field at offset {off} lies outside a {len}-byte buffer",
                src.len()
            )
        })?
        .copy_from_slice(src);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_an_error() {
        let buf = [1u8, 2, 3, 4, 5];
        assert_eq!(le_u32(&buf, 1).unwrap(), u32::from_le_bytes([2, 3, 4, 5]));
        assert!(le_u32(&buf, 2).is_err());
        assert!(le_u64(&buf, usize::MAX).is_err());
        let mut out = [0u8; 4];
        assert!(put(&mut out, 3, &[1, 2]).is_err());
        assert!(put(&mut out, usize::MAX, &[1]).is_err());
    }
}
