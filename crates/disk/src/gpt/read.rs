//! Reading and checking a GPT, falling back to the backup copy.

use std::io::{Read, Seek};

use anyhow::{bail, ensure, Context, Result};

use super::entry::PartitionEntry;
use super::header::{Header, HeaderCopy};
use super::io::read_at;
use super::{check_entries, Gpt, ENTRY_COUNT, ENTRY_SIZE, MIN_DISK_SECTORS, SECTOR_SIZE};

/// A GPT read from disk, with which copy it came from and what was wrong
/// with the other one (useful for `kiln inspect` and for repairs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadGpt {
    pub gpt: Gpt,
    /// The copy `gpt` was decoded from: the primary unless it was invalid.
    pub source: HeaderCopy,
    /// Usable range as recorded on disk (may differ from what we write if
    /// another tool made the table or the disk was resized).
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    /// Why the primary copy was rejected, if it was.
    pub primary_error: Option<String>,
    /// Why the backup copy (at the last LBA) was rejected, if it was.
    pub backup_error: Option<String>,
}

impl ReadGpt {
    /// True when both copies are valid.
    pub fn is_intact(&self) -> bool {
        self.primary_error.is_none() && self.backup_error.is_none()
    }
}

impl Gpt {
    /// Reads the GPT of a disk of `disk_size_bytes` bytes (a partial last
    /// sector is ignored). Uses the primary copy if valid, else the backup.
    pub fn read<D: Read + Seek>(dev: &mut D, disk_size_bytes: u64) -> Result<ReadGpt> {
        let disk_sectors = disk_size_bytes / SECTOR_SIZE;
        ensure!(
            disk_sectors >= MIN_DISK_SECTORS,
            "disk of {disk_size_bytes} bytes is too small to hold a GPT \
             (needs at least {MIN_DISK_SECTORS} sectors of {SECTOR_SIZE} bytes)"
        );
        let primary = load_copy(dev, disk_sectors, HeaderCopy::Primary);
        let backup = load_copy(dev, disk_sectors, HeaderCopy::Backup);
        let err_text = |e: anyhow::Error| format!("{e:#}");
        let (source, (header, entries), primary_error, backup_error) = match (primary, backup) {
            (Ok(p), b) => (HeaderCopy::Primary, p, None, b.err().map(err_text)),
            (Err(pe), Ok(b)) => (HeaderCopy::Backup, b, Some(err_text(pe)), None),
            (Err(pe), Err(be)) => bail!("no valid GPT found: {pe:#}; {be:#}"),
        };
        Ok(ReadGpt {
            gpt: Gpt {
                disk_guid: header.disk_guid,
                disk_sectors,
                entries,
            },
            source,
            first_usable_lba: header.first_usable_lba,
            last_usable_lba: header.last_usable_lba,
            primary_error,
            backup_error,
        })
    }
}

/// Reads and fully checks one copy: header, entry array CRC and entries.
fn load_copy<D: Read + Seek>(
    dev: &mut D,
    disk_sectors: u64,
    which: HeaderCopy,
) -> Result<(Header, Vec<Option<PartitionEntry>>)> {
    let lba = match which {
        HeaderCopy::Primary => 1,
        HeaderCopy::Backup => disk_sectors - 1,
    };
    let mut sector = [0u8; SECTOR_SIZE as usize];
    read_at(dev, lba, &mut sector)
        .with_context(|| format!("reading {which} GPT header at LBA {lba}"))?;
    let header = Header::decode(&sector, which)?;
    let array_sectors = check_header(&header, which, lba, disk_sectors)?;

    // Bounded by check_header: at most 128 x 128 bytes.
    let mut array = vec![0u8; header.num_entries as usize * ENTRY_SIZE];
    read_at(dev, header.entries_lba, &mut array).with_context(|| {
        format!(
            "reading {which} GPT entry array at LBA {} ({array_sectors} sectors)",
            header.entries_lba
        )
    })?;
    let computed = crc32fast::hash(&array);
    ensure!(
        computed == header.entries_crc,
        "{which} GPT partition entry array CRC mismatch (stored 0x{:08x}, computed 0x{computed:08x})",
        header.entries_crc
    );

    let mut entries = Vec::with_capacity(ENTRY_COUNT);
    for (raw, n) in array.chunks_exact(ENTRY_SIZE).zip(1u32..) {
        entries.push(
            PartitionEntry::decode(raw)
                .with_context(|| format!("{which} GPT partition entry {n}"))?,
        );
    }
    entries.resize(ENTRY_COUNT, None);
    check_entries(&entries, header.first_usable_lba, header.last_usable_lba)
        .with_context(|| format!("{which} GPT partition table"))?;
    Ok((header, entries))
}

/// Checks a header's LBAs against the disk; returns the entry array's
/// length in sectors.
fn check_header(h: &Header, which: HeaderCopy, lba: u64, disk_sectors: u64) -> Result<u64> {
    ensure!(
        h.my_lba == lba,
        "{which} GPT header says it is at LBA {} but was read from LBA {lba}",
        h.my_lba
    );
    ensure!(
        h.entry_size as usize == ENTRY_SIZE,
        "{which} GPT header has partition entry size {}; only {ENTRY_SIZE} is supported",
        h.entry_size
    );
    ensure!(
        h.num_entries as usize <= ENTRY_COUNT,
        "{which} GPT header has {} partition entries; at most {ENTRY_COUNT} are supported",
        h.num_entries
    );
    // The LBA of the backup header bounds the usable area from above.
    let backup_header_lba = match which {
        HeaderCopy::Primary => {
            ensure!(
                h.alternate_lba > 1 && h.alternate_lba < disk_sectors,
                "primary GPT header's backup LBA {} is outside the disk (LBA 2..{disk_sectors})",
                h.alternate_lba
            );
            h.alternate_lba
        }
        HeaderCopy::Backup => {
            ensure!(
                h.alternate_lba == 1,
                "backup GPT header's primary LBA is {}, expected 1",
                h.alternate_lba
            );
            h.my_lba
        }
    };
    ensure!(
        h.first_usable_lba >= 2
            && h.first_usable_lba <= h.last_usable_lba
            && h.last_usable_lba < backup_header_lba,
        "{which} GPT usable area LBA {}..={} does not fit between the headers at LBA 1 and {backup_header_lba}",
        h.first_usable_lba,
        h.last_usable_lba
    );
    let array_bytes = u64::from(h.num_entries) * ENTRY_SIZE as u64;
    let array_sectors = array_bytes.div_ceil(SECTOR_SIZE);
    let array_end = h.entries_lba.checked_add(array_sectors);
    // The array must sit between the header and the usable area (primary)
    // or between the usable area and the header (backup).
    let placed = match which {
        HeaderCopy::Primary => {
            h.entries_lba >= 2 && array_end.is_some_and(|end| end <= h.first_usable_lba)
        }
        HeaderCopy::Backup => {
            h.entries_lba > h.last_usable_lba && array_end.is_some_and(|end| end <= h.my_lba)
        }
    };
    ensure!(
        placed,
        "{which} GPT entry array at LBA {} ({array_sectors} sectors) overlaps the headers or the usable area {}..={}",
        h.entries_lba,
        h.first_usable_lba,
        h.last_usable_lba
    );
    Ok(array_sectors)
}
