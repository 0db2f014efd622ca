//! Fitting the table to a disk that grew under it (a cloud disk larger than the image): the
//! backup copy moves to the new end, and the partition to grow takes the space after it if it
//! is the last one. The agent runs this on the boot disk at first boot; the tests run it on
//! image files through a layer that records every write and sync.

use std::io::{Read, Seek, Write};

use anyhow::{Context, Result};
use uuid::Uuid;

use super::Gpt;

/// What [`grow`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    /// The partition's number, and its last sector after the change.
    pub number: u32,
    pub first_lba: u64,
    pub last_lba: u64,
    /// The partition was extended.
    pub extended: bool,
    /// The table was written (moved to the disk's end, or the partition extended).
    pub rewritten: bool,
}

/// Fits the GPT of `dev` (a disk of `disk_bytes`) to the disk: the backup at the end, and
/// partition `part_guid` extended to the end of the usable area when nothing follows it.
/// Writes with [`Gpt::rewrite_backup_first`], so the disk has a valid table at every point.
/// Does nothing when there is nothing to do, so running it again is harmless.
pub fn grow<D: Read + Write + Seek>(
    dev: &mut D,
    disk_bytes: u64,
    part_guid: Uuid,
    sync: &mut dyn FnMut(&mut D) -> Result<()>,
) -> Result<Grown> {
    let read = Gpt::read(dev, disk_bytes)?;
    let mut gpt = read.gpt;
    let (number, entry) = gpt
        .partitions()
        .find(|(_, e)| e.part_guid == part_guid)
        .map(|(n, e)| (n, e.clone()))
        .with_context(|| format!("no partition with GUID {part_guid} in the GPT"))?;
    let new_last = gpt.last_usable_lba();
    let last_of_others = gpt
        .partitions()
        .filter(|(n, _)| *n != number)
        .map(|(_, e)| e.last_lba)
        .max()
        .unwrap_or(0);
    let extend = entry.first_lba > last_of_others && entry.last_lba < new_last;
    // A damaged copy is rewritten too: a cut in an earlier run can leave the primary invalid
    // (the new backup was durable, the primary not yet), and the disk then lives on its backup.
    let table_moved = read.last_usable_lba < new_last
        || read.backup_error.is_some()
        || read.primary_error.is_some();
    let mut last_lba = entry.last_lba;
    if extend {
        last_lba = new_last;
        if let Some(e) = gpt.partition_mut(number) {
            e.last_lba = new_last;
        }
    }
    let rewritten = extend || table_moved;
    if rewritten {
        gpt.rewrite_backup_first(dev, sync)
            .context("cannot rewrite the GPT")?;
    }
    Ok(Grown {
        number,
        first_lba: entry.first_lba,
        last_lba,
        extended: extend,
        rewritten,
    })
}
