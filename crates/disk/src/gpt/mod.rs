//! GUID Partition Table (UEFI spec, chapter 5) on 512-byte logical sectors.
//!
//! Layout we write, for a disk of N sectors:
//! - LBA 0: protective MBR (optionally carrying 440 bytes of boot code)
//! - LBA 1: primary header; LBA 2..=33: primary entry array (128 x 128 bytes)
//! - LBA 34..=N-34: usable for partitions
//! - LBA N-33..=N-2: backup entry array; LBA N-1: backup header

mod entry;
pub mod grow;
mod header;
mod io;
mod mbr;
mod read;
mod write;

#[cfg(test)]
mod tests;

use anyhow::{ensure, Context, Result};
use uuid::Uuid;

pub use entry::{check_name, PartitionEntry, ENTRY_SIZE, NAME_UNITS};
pub use header::HeaderCopy;
pub use mbr::BOOT_CODE_SIZE;
pub use read::ReadGpt;

pub const SECTOR_SIZE: u64 = 512;
/// Number of entries in the array; partition number = index + 1.
pub const ENTRY_COUNT: usize = 128;
/// Sectors taken by one copy of the entry array (16 KiB).
pub const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT * ENTRY_SIZE) as u64 / SECTOR_SIZE;
/// MBR + primary header + primary array.
pub const FIRST_USABLE_LBA: u64 = 2 + ENTRY_ARRAY_SECTORS;
/// Backup array + backup header at the end of the disk.
pub const BACKUP_SECTORS: u64 = ENTRY_ARRAY_SECTORS + 1;
/// Smallest disk with both GPT copies and one usable sector.
pub const MIN_DISK_SECTORS: u64 = FIRST_USABLE_LBA + BACKUP_SECTORS + 1;

/// An in-memory GPT: the disk GUID, the disk size and all 128 entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Uuid,
    pub disk_sectors: u64,
    /// Exactly [`ENTRY_COUNT`] slots; `None` is an all-zero unused entry.
    pub entries: Vec<Option<PartitionEntry>>,
}

impl Gpt {
    /// An empty table for a disk of `disk_sectors` sectors.
    pub fn new(disk_guid: Uuid, disk_sectors: u64) -> Self {
        Gpt {
            disk_guid,
            disk_sectors,
            entries: vec![None; ENTRY_COUNT],
        }
    }

    pub fn first_usable_lba(&self) -> u64 {
        FIRST_USABLE_LBA
    }

    pub fn last_usable_lba(&self) -> u64 {
        self.disk_sectors.saturating_sub(BACKUP_SECTORS + 1)
    }

    pub fn disk_size_bytes(&self) -> u64 {
        self.disk_sectors.saturating_mul(SECTOR_SIZE)
    }

    /// The used entry for partition `number` (1-based), if any.
    pub fn partition(&self, number: u32) -> Option<&PartitionEntry> {
        self.entries.get(index(number)?)?.as_ref()
    }

    pub fn partition_mut(&mut self, number: u32) -> Option<&mut PartitionEntry> {
        self.entries.get_mut(index(number)?)?.as_mut()
    }

    /// Sets (or with `None`, clears) partition `number` (1-based).
    pub fn set_partition(&mut self, number: u32, entry: Option<PartitionEntry>) -> Result<()> {
        let slot = index(number)
            .and_then(|i| self.entries.get_mut(i))
            .with_context(|| format!("partition number {number} is outside 1..={ENTRY_COUNT}"))?;
        *slot = entry;
        Ok(())
    }

    /// Used entries with their 1-based partition numbers, in table order.
    pub fn partitions(&self) -> impl Iterator<Item = (u32, &PartitionEntry)> {
        self.entries
            .iter()
            .zip(1u32..)
            .filter_map(|(e, n)| e.as_ref().map(|e| (n, e)))
    }

    /// Checks everything `write` relies on: table size, disk size, names,
    /// ranges inside the usable area, and no overlaps.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.entries.len() == ENTRY_COUNT,
            "GPT must have exactly {ENTRY_COUNT} entries, got {}",
            self.entries.len()
        );
        ensure!(
            self.disk_sectors >= MIN_DISK_SECTORS,
            "disk of {} sectors is too small for a GPT (needs at least {MIN_DISK_SECTORS})",
            self.disk_sectors
        );
        ensure!(
            self.disk_sectors.checked_mul(SECTOR_SIZE).is_some(),
            "disk of {} sectors is too large to address in bytes",
            self.disk_sectors
        );
        check_entries(
            &self.entries,
            self.first_usable_lba(),
            self.last_usable_lba(),
        )
    }
}

fn index(number: u32) -> Option<usize> {
    let i = usize::try_from(number.checked_sub(1)?).ok()?;
    (i < ENTRY_COUNT).then_some(i)
}

fn describe(number: usize, e: &PartitionEntry) -> String {
    format!("partition {number} ({:?})", e.name)
}

/// Per-entry and cross-entry checks shared by writing and reading (reading
/// passes the usable range from the on-disk header).
pub(crate) fn check_entries(
    entries: &[Option<PartitionEntry>],
    first_usable: u64,
    last_usable: u64,
) -> Result<()> {
    let mut used = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(e) = e else { continue };
        let n = i + 1;
        let what = describe(n, e);
        // A nil type GUID is how the spec marks an unused entry.
        ensure!(
            !e.type_guid.is_nil(),
            "{what} has the nil type GUID, which marks an unused entry"
        );
        check_name(&e.name).with_context(|| what.clone())?;
        ensure!(
            e.first_lba <= e.last_lba,
            "{what} ends at LBA {} before it starts at LBA {}",
            e.last_lba,
            e.first_lba
        );
        ensure!(
            e.first_lba >= first_usable && e.last_lba <= last_usable,
            "{what} spans LBA {}..={}, outside the usable area {first_usable}..={last_usable}",
            e.first_lba,
            e.last_lba
        );
        used.push((e.first_lba, e.last_lba, what));
    }
    used.sort();
    for pair in used.windows(2) {
        if let [(a_first, a_last, a), (b_first, b_last, b)] = pair {
            ensure!(
                b_first > a_last,
                "{a} (LBA {a_first}..={a_last}) and {b} (LBA {b_first}..={b_last}) overlap"
            );
        }
    }
    Ok(())
}
