//! Turning partition specs (number, label, size) into an on-disk layout.
//!
//! Partitions are laid out in ascending number order so the table is
//! sorted on disk; each starts on an `align_bytes` boundary (the first one
//! at the first boundary past the primary GPT, i.e. 1 MiB for 1 MiB
//! alignment). The disk ends one alignment unit (at least 33 sectors)
//! after the aligned end of the last partition, room for the backup GPT.

use std::collections::HashSet;

use anyhow::{bail, ensure, Context, Result};
use uuid::Uuid;

use crate::attrs::Attributes;
use crate::gpt::{
    check_name, Gpt, PartitionEntry, BACKUP_SECTORS, ENTRY_COUNT, FIRST_USABLE_LBA, SECTOR_SIZE,
};

/// Namespace for the disk GUID derived from a plan (a fixed random UUID),
/// so the same recipe yields the same image.
pub const DISK_GUID_NAMESPACE: Uuid = Uuid::from_u128(0x5b1c_0e6a_4f3d_4c8e_9a71_2d6f_8e40_b913);

/// One partition as a recipe describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// GPT partition number, 1..=128.
    pub number: u32,
    pub label: String,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    /// Rounded up to whole sectors.
    pub size_bytes: u64,
    pub attributes: Attributes,
}

/// Where a partition ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPartition {
    pub number: u32,
    pub label: String,
    pub offset_bytes: u64,
    /// The requested size rounded up to whole sectors.
    pub size_bytes: u64,
}

/// The result of [`plan`]: the table to write and where each partition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Its `disk_guid` is derived from the layout (see
    /// [`DISK_GUID_NAMESPACE`]); overwrite it to use another.
    pub gpt: Gpt,
    pub disk_size_bytes: u64,
    /// In ascending partition number (and so on-disk) order.
    pub partitions: Vec<PlannedPartition>,
}

impl DiskPlan {
    pub fn partition(&self, number: u32) -> Option<&PlannedPartition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    pub fn by_label(&self, label: &str) -> Option<&PlannedPartition> {
        self.partitions.iter().find(|p| p.label == label)
    }
}

/// Lays out `specs` with starts aligned to `align_bytes` (a non-zero
/// multiple of 512).
pub fn plan(specs: &[PartitionSpec], align_bytes: u64) -> Result<DiskPlan> {
    ensure!(!specs.is_empty(), "a disk needs at least one partition");
    ensure!(
        align_bytes > 0 && align_bytes.is_multiple_of(SECTOR_SIZE),
        "alignment {align_bytes} is not a positive multiple of the {SECTOR_SIZE}-byte sector"
    );
    check_specs(specs)?;

    let mut sorted: Vec<&PartitionSpec> = specs.iter().collect();
    sorted.sort_by_key(|s| s.number);

    let overflow = || "partition sizes overflow a 64-bit disk size";
    let mut cursor = FIRST_USABLE_LBA * SECTOR_SIZE;
    let mut partitions = Vec::with_capacity(sorted.len());
    let mut entries = vec![None; ENTRY_COUNT];
    for spec in sorted {
        let start = round_up(cursor, align_bytes).with_context(overflow)?;
        let size = round_up(spec.size_bytes, SECTOR_SIZE).with_context(overflow)?;
        let end = start.checked_add(size).with_context(overflow)?;
        let slot = entries
            .get_mut(spec.number as usize - 1)
            .with_context(|| format!("partition number {} out of range", spec.number))?;
        *slot = Some(PartitionEntry {
            type_guid: spec.type_guid,
            part_guid: spec.part_guid,
            first_lba: start / SECTOR_SIZE,
            last_lba: end / SECTOR_SIZE - 1,
            attributes: spec.attributes,
            name: spec.label.clone(),
        });
        partitions.push(PlannedPartition {
            number: spec.number,
            label: spec.label.clone(),
            offset_bytes: start,
            size_bytes: size,
        });
        cursor = end;
    }

    let tail = round_up(BACKUP_SECTORS * SECTOR_SIZE, align_bytes)
        .with_context(overflow)?
        .max(align_bytes);
    let disk_size_bytes = round_up(cursor, align_bytes)
        .and_then(|end| end.checked_add(tail))
        .with_context(overflow)?;

    let mut gpt = Gpt {
        disk_guid: Uuid::nil(),
        disk_sectors: disk_size_bytes / SECTOR_SIZE,
        entries,
    };
    gpt.validate()
        .context("planned partition table is invalid")?;
    gpt.disk_guid = derive_disk_guid(&gpt)?;
    Ok(DiskPlan {
        gpt,
        disk_size_bytes,
        partitions,
    })
}

fn check_specs(specs: &[PartitionSpec]) -> Result<()> {
    let mut numbers = HashSet::new();
    let mut labels = HashSet::new();
    for s in specs {
        let what = format!("partition {} ({:?})", s.number, s.label);
        ensure!(
            (1..=ENTRY_COUNT as u32).contains(&s.number),
            "{what}: number must be within 1..={ENTRY_COUNT}"
        );
        ensure!(s.size_bytes > 0, "{what}: size must not be 0");
        ensure!(!s.type_guid.is_nil(), "{what}: type GUID must not be nil");
        check_name(&s.label).with_context(|| what.clone())?;
        if !numbers.insert(s.number) {
            bail!("{what}: partition number {} is used twice", s.number);
        }
        if !labels.insert(s.label.as_str()) {
            bail!("{what}: label {:?} is used twice", s.label);
        }
    }
    Ok(())
}

fn round_up(v: u64, align: u64) -> Option<u64> {
    v.checked_next_multiple_of(align)
}

fn derive_disk_guid(gpt: &Gpt) -> Result<Uuid> {
    let mut name = gpt.encode_entries()?;
    name.extend_from_slice(&gpt.disk_sectors.to_le_bytes());
    Ok(Uuid::new_v5(&DISK_GUID_NAMESPACE, &name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EFI_SYSTEM, LINUX_DATA};

    const MIB: u64 = 1 << 20;

    fn spec(number: u32, label: &str, size_bytes: u64) -> PartitionSpec {
        PartitionSpec {
            number,
            label: label.to_string(),
            type_guid: if number == 1 { EFI_SYSTEM } else { LINUX_DATA },
            part_guid: Uuid::from_u128(u128::from(number)),
            size_bytes,
            attributes: Attributes::default(),
        }
    }

    #[test]
    fn aligned_sorted_and_sized() {
        // Given out of order, with an unaligned size and a gap in numbering.
        let specs = [
            spec(4, "D", 3 * MIB),
            spec(1, "A", 100),
            spec(2, "B", MIB + 1),
        ];
        let p = plan(&specs, MIB).unwrap();
        let got: Vec<_> = p
            .partitions
            .iter()
            .map(|x| (x.number, x.offset_bytes, x.size_bytes))
            .collect();
        assert_eq!(
            got,
            [
                (1, MIB, 512),
                (2, 2 * MIB, MIB + 512),
                (4, 4 * MIB, 3 * MIB)
            ]
        );
        // Last partition ends at 7 MiB; one more MiB for the backup GPT.
        assert_eq!(p.disk_size_bytes, 8 * MIB);
        assert_eq!(p.gpt.disk_sectors, 8 * MIB / 512);
        let e = p.gpt.partition(2).unwrap();
        assert_eq!(
            (e.first_lba, e.last_lba, e.name.as_str()),
            (4096, 4096 + 2048, "B")
        );
        assert!(p.gpt.partition(3).is_none());
        assert_eq!(p.by_label("D").unwrap().number, 4);
        assert_eq!(p.partition(1).unwrap().label, "A");
        // Deterministic disk GUID.
        assert_eq!(p.gpt.disk_guid, plan(&specs, MIB).unwrap().gpt.disk_guid);
        assert!(!p.gpt.disk_guid.is_nil());
    }

    #[test]
    fn unaligned_end_gets_rounded_then_one_more_unit() {
        let p = plan(&[spec(1, "A", MIB + 512)], MIB).unwrap();
        assert_eq!(p.disk_size_bytes, 4 * MIB);
    }

    #[test]
    fn small_alignment_still_leaves_room_for_gpt() {
        let p = plan(&[spec(1, "A", 4096), spec(2, "B", 512)], 512).unwrap();
        assert_eq!(p.partitions[0].offset_bytes, 34 * 512);
        assert_eq!(p.partitions[1].offset_bytes, 42 * 512);
        assert_eq!(p.gpt.disk_sectors, 43 + 33);
        p.gpt.validate().unwrap();
    }

    #[test]
    fn bad_specs_rejected() {
        let cases: Vec<(Vec<PartitionSpec>, u64, &str)> = vec![
            (vec![], MIB, "at least one"),
            (vec![spec(1, "A", 0)], MIB, "size must not be 0"),
            (vec![spec(1, "A", 1), spec(1, "B", 1)], MIB, "used twice"),
            (
                vec![spec(1, "A", 1), spec(2, "A", 1)],
                MIB,
                "label \"A\" is used twice",
            ),
            (vec![spec(0, "A", 1)], MIB, "1..=128"),
            (vec![spec(129, "A", 1)], MIB, "1..=128"),
            (vec![spec(1, &"x".repeat(40), 1)], MIB, "at most 36"),
            (vec![spec(1, "A", 1)], 1000, "multiple"),
            (vec![spec(1, "A", 1)], 0, "multiple"),
            (vec![spec(1, "A", u64::MAX)], MIB, "overflow"),
        ];
        for (specs, align, want) in cases {
            let err = format!("{:#}", plan(&specs, align).unwrap_err());
            assert!(err.contains(want), "wanted {want:?} in {err}");
        }
    }
}
