//! One 128-byte GPT partition entry.

use anyhow::{bail, ensure, Context, Result};
use uuid::Uuid;

use crate::attrs::Attributes;
use crate::bytes::{guid_le, le_u64, put};

/// Size of one entry as we write it (and the only size we accept).
pub const ENTRY_SIZE: usize = 128;
/// Partition names are UTF-16LE, at most this many code units.
pub const NAME_UNITS: usize = 36;

const NAME_OFFSET: usize = 56;

/// A used GPT partition entry. Unused entries are `None` in [`super::Gpt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub first_lba: u64,
    /// Inclusive, as in the on-disk format.
    pub last_lba: u64,
    pub attributes: Attributes,
    pub name: String,
}

impl PartitionEntry {
    /// Number of sectors covered (0 if the range is inverted, which
    /// validation rejects anyway).
    pub fn sectors(&self) -> u64 {
        self.last_lba
            .checked_sub(self.first_lba)
            .map_or(0, |d| d.saturating_add(1))
    }

    pub(crate) fn encode(&self) -> Result<[u8; ENTRY_SIZE]> {
        let mut raw = [0u8; ENTRY_SIZE];
        put(&mut raw, 0, &self.type_guid.to_bytes_le())?;
        put(&mut raw, 16, &self.part_guid.to_bytes_le())?;
        put(&mut raw, 32, &self.first_lba.to_le_bytes())?;
        put(&mut raw, 40, &self.last_lba.to_le_bytes())?;
        put(&mut raw, 48, &self.attributes.0.to_le_bytes())?;
        put(&mut raw, NAME_OFFSET, &encode_name(&self.name)?)?;
        Ok(raw)
    }

    /// Decodes one entry; an all-zero type GUID means "unused" per the spec.
    pub(crate) fn decode(raw: &[u8]) -> Result<Option<Self>> {
        ensure!(
            raw.len() == ENTRY_SIZE,
            "partition entry is {} bytes, expected {ENTRY_SIZE}",
            raw.len()
        );
        let type_guid = guid_le(raw, 0)?;
        if type_guid.is_nil() {
            return Ok(None);
        }
        let name_raw = raw.get(NAME_OFFSET..).unwrap_or_default();
        Ok(Some(PartitionEntry {
            type_guid,
            part_guid: guid_le(raw, 16)?,
            first_lba: le_u64(raw, 32)?,
            last_lba: le_u64(raw, 40)?,
            attributes: Attributes(le_u64(raw, 48)?),
            name: decode_name(name_raw).context("invalid partition name")?,
        }))
    }
}

/// Checks that a name fits the 36 code-unit field and survives a round trip.
pub fn check_name(name: &str) -> Result<()> {
    let units = name.encode_utf16().count();
    ensure!(
        units <= NAME_UNITS,
        "partition name {name:?} is {units} UTF-16 code units; GPT allows at most {NAME_UNITS}"
    );
    // A NUL would terminate the name on disk and silently truncate it.
    ensure!(
        !name.contains('\0'),
        "partition name {name:?} contains a NUL character"
    );
    Ok(())
}

fn encode_name(name: &str) -> Result<[u8; NAME_UNITS * 2]> {
    check_name(name)?;
    let mut out = [0u8; NAME_UNITS * 2];
    for (slot, unit) in out.chunks_exact_mut(2).zip(name.encode_utf16()) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
    Ok(out)
}

fn decode_name(raw: &[u8]) -> Result<String> {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    match String::from_utf16(&units) {
        Ok(s) => Ok(s),
        Err(_) => bail!("not valid UTF-16: {:?}", String::from_utf16_lossy(&units)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> PartitionEntry {
        PartitionEntry {
            type_guid: Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4),
            part_guid: Uuid::from_u128(0x7130c94a_213a_4e5a_8e26_6cce9662f132),
            first_lba: 2048,
            last_lba: 4095,
            attributes: Attributes(0x0101_0000_0000_0000),
            name: name.to_string(),
        }
    }

    #[test]
    fn round_trip_and_mixed_endian_guid() {
        let e = sample("USR-A");
        let raw = e.encode().unwrap();
        // First field of the type GUID is stored little-endian.
        assert_eq!(&raw[0..4], &[0xaf, 0x3d, 0xc6, 0x0f]);
        assert_eq!(&raw[56..62], &[b'U', 0, b'S', 0, b'R', 0]);
        assert_eq!(PartitionEntry::decode(&raw).unwrap(), Some(e));
    }

    #[test]
    fn name_limits() {
        let max = "x".repeat(NAME_UNITS);
        let raw = sample(&max).encode().unwrap();
        assert_eq!(PartitionEntry::decode(&raw).unwrap().unwrap().name, max);
        let err = sample(&"x".repeat(NAME_UNITS + 1)).encode().unwrap_err();
        assert!(format!("{err:#}").contains("at most 36"), "{err:#}");
        assert!(sample("a\0b").encode().is_err());
        // Non-BMP characters take two code units each.
        assert!(sample(&"\u{1F600}".repeat(18)).encode().is_ok());
        assert!(sample(&"\u{1F600}".repeat(19)).encode().is_err());
    }

    #[test]
    fn zero_type_is_unused_and_bad_utf16_is_an_error() {
        assert_eq!(PartitionEntry::decode(&[0u8; ENTRY_SIZE]).unwrap(), None);
        let mut raw = sample("A").encode().unwrap();
        raw[56] = 0x00;
        raw[57] = 0xD8; // lone high surrogate
        assert!(PartitionEntry::decode(&raw).is_err());
        assert!(PartitionEntry::decode(&raw[..100]).is_err());
    }
}
