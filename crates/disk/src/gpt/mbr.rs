//! The protective MBR at LBA 0 that keeps MBR-only tools off a GPT disk.

use anyhow::{ensure, Result};

use super::SECTOR_SIZE;
use crate::bytes::put;

/// Bytes 0..440 hold boot code (e.g. GRUB's boot.img); 440..446 are the
/// disk signature and a reserved word, which we leave zero.
pub const BOOT_CODE_SIZE: usize = 440;

const PART_TABLE: usize = 446;
const PROTECTIVE_TYPE: u8 = 0xEE;

/// Builds the protective MBR sector for a disk of `disk_sectors` sectors.
pub(crate) fn encode(
    disk_sectors: u64,
    boot_code: Option<&[u8]>,
) -> Result<[u8; SECTOR_SIZE as usize]> {
    let mut s = [0u8; SECTOR_SIZE as usize];
    if let Some(code) = boot_code {
        ensure!(
            code.len() <= BOOT_CODE_SIZE,
            "boot code is {} bytes but the MBR boot-code area holds {BOOT_CODE_SIZE}",
            code.len()
        );
        put(&mut s, 0, code)?;
    }
    // The one partition covers the whole disk (or as much as 32 bits can say).
    let size = u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX);
    let entry: [u8; 16] = {
        let mut e = [0u8; 16];
        // Status 0 (not bootable); CHS start 0/0/2 like other tools write.
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        e[4] = PROTECTIVE_TYPE;
        e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..16].copy_from_slice(&size.to_le_bytes());
        e
    };
    put(&mut s, PART_TABLE, &entry)?;
    put(&mut s, 510, &[0x55, 0xAA])?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let s = encode(1 << 20, Some(&[0xEB, 0x63, 0x90])).unwrap();
        assert_eq!(&s[..3], &[0xEB, 0x63, 0x90]);
        assert!(s[440..446].iter().all(|&b| b == 0));
        assert_eq!(s[446 + 4], 0xEE);
        assert_eq!(&s[446 + 8..446 + 12], &1u32.to_le_bytes());
        assert_eq!(&s[446 + 12..446 + 16], &((1u32 << 20) - 1).to_le_bytes());
        assert!(s[462..510].iter().all(|&b| b == 0));
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }

    #[test]
    fn size_is_capped_and_boot_code_limited() {
        let s = encode(u64::MAX, None).unwrap();
        assert_eq!(&s[446 + 12..446 + 16], &u32::MAX.to_le_bytes());
        assert!(encode(100, Some(&[0u8; 441])).is_err());
        assert!(encode(100, Some(&[0u8; 440])).is_ok());
    }
}
