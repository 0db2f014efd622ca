//! The 92-byte GPT header (one per copy: primary at LBA 1, backup at the
//! last LBA).

use std::fmt;

use anyhow::{bail, ensure, Result};
use uuid::Uuid;

use super::SECTOR_SIZE;
use crate::bytes::{guid_le, le_u32, le_u64, put};

pub(crate) const SIGNATURE: &[u8; 8] = b"EFI PART";
pub(crate) const REVISION: u32 = 0x0001_0000;
pub(crate) const HEADER_SIZE: u32 = 92;
const CRC_OFFSET: usize = 16;

/// Which of the two header copies a GPT was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCopy {
    Primary,
    Backup,
}

impl fmt::Display for HeaderCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderCopy::Primary => "primary",
            HeaderCopy::Backup => "backup",
        })
    }
}

/// The header fields that vary; signature, revision and size are fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Uuid,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

impl Header {
    /// Encodes a whole sector: header with its CRC, rest zero.
    pub fn encode(&self) -> Result<[u8; SECTOR_SIZE as usize]> {
        let mut s = [0u8; SECTOR_SIZE as usize];
        put(&mut s, 0, SIGNATURE)?;
        put(&mut s, 8, &REVISION.to_le_bytes())?;
        put(&mut s, 12, &HEADER_SIZE.to_le_bytes())?;
        // 16..20 CRC (zero while computing), 20..24 reserved.
        put(&mut s, 24, &self.my_lba.to_le_bytes())?;
        put(&mut s, 32, &self.alternate_lba.to_le_bytes())?;
        put(&mut s, 40, &self.first_usable_lba.to_le_bytes())?;
        put(&mut s, 48, &self.last_usable_lba.to_le_bytes())?;
        put(&mut s, 56, &self.disk_guid.to_bytes_le())?;
        put(&mut s, 72, &self.entries_lba.to_le_bytes())?;
        put(&mut s, 80, &self.num_entries.to_le_bytes())?;
        put(&mut s, 84, &self.entry_size.to_le_bytes())?;
        put(&mut s, 88, &self.entries_crc.to_le_bytes())?;
        let crc = header_crc(&s, HEADER_SIZE as usize)?;
        put(&mut s, CRC_OFFSET, &crc.to_le_bytes())?;
        Ok(s)
    }

    /// Decodes and checks signature, revision, size and CRC. Field sanity
    /// (LBAs versus the disk) is checked by the caller, which knows the disk.
    pub fn decode(sector: &[u8], which: HeaderCopy) -> Result<Self> {
        let sig = sector.get(..8).unwrap_or_default();
        if sig != SIGNATURE {
            bail!(
                "{which} GPT header has no \"EFI PART\" signature (found {:02x?})",
                sig
            );
        }
        let revision = le_u32(sector, 8)?;
        // Minor revisions are backward compatible; a new major is not.
        ensure!(
            revision >> 16 == REVISION >> 16,
            "{which} GPT header has unsupported revision 0x{revision:08x}"
        );
        let size = le_u32(sector, 12)?;
        ensure!(
            (HEADER_SIZE..=SECTOR_SIZE as u32).contains(&size),
            "{which} GPT header size {size} is outside {HEADER_SIZE}..={SECTOR_SIZE}"
        );
        let stored = le_u32(sector, CRC_OFFSET)?;
        let computed = header_crc(sector, size as usize)?;
        ensure!(
            stored == computed,
            "{which} GPT header CRC mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"
        );
        Ok(Header {
            my_lba: le_u64(sector, 24)?,
            alternate_lba: le_u64(sector, 32)?,
            first_usable_lba: le_u64(sector, 40)?,
            last_usable_lba: le_u64(sector, 48)?,
            disk_guid: guid_le(sector, 56)?,
            entries_lba: le_u64(sector, 72)?,
            num_entries: le_u32(sector, 80)?,
            entry_size: le_u32(sector, 84)?,
            entries_crc: le_u32(sector, 88)?,
        })
    }
}

/// CRC32 over the first `size` bytes with the CRC field taken as zero.
fn header_crc(sector: &[u8], size: usize) -> Result<u32> {
    let Some(bytes) = sector.get(..size) else {
        bail!(
            "GPT header size {size} exceeds the {}-byte sector",
            sector.len()
        );
    };
    let mut h = crc32fast::Hasher::new();
    h.update(bytes.get(..CRC_OFFSET).unwrap_or_default());
    h.update(&[0u8; 4]);
    h.update(bytes.get(CRC_OFFSET + 4..).unwrap_or_default());
    Ok(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            my_lba: 1,
            alternate_lba: 999,
            first_usable_lba: 34,
            last_usable_lba: 965,
            disk_guid: Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788),
            entries_lba: 2,
            num_entries: 128,
            entry_size: 128,
            entries_crc: 0xdead_beef,
        }
    }

    #[test]
    fn round_trip() {
        let s = sample().encode().unwrap();
        assert_eq!(&s[..8], b"EFI PART");
        assert!(s[92..].iter().all(|&b| b == 0));
        assert_eq!(Header::decode(&s, HeaderCopy::Primary).unwrap(), sample());
    }

    #[test]
    fn crc_mismatch_message() {
        let mut s = sample().encode().unwrap();
        s[40] ^= 1;
        let err = Header::decode(&s, HeaderCopy::Primary).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("primary GPT header CRC mismatch (stored 0x"),
            "{msg}"
        );
        assert!(msg.contains(", computed 0x"), "{msg}");
    }

    #[test]
    fn bad_size_and_signature() {
        let mut s = sample().encode().unwrap();
        s[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Header::decode(&s, HeaderCopy::Backup).is_err());
        let mut s = sample().encode().unwrap();
        s[0] = b'X';
        let err = Header::decode(&s, HeaderCopy::Backup).unwrap_err();
        assert!(err.to_string().contains("backup GPT header has no"));
        assert!(Header::decode(&[], HeaderCopy::Primary).is_err());
    }
}
