//! Round-trip, corruption and robustness tests for the GPT codec.

use std::io::Cursor;

use uuid::Uuid;

use super::*;
use crate::attrs::Attributes;

const DISK_SECTORS: u64 = 8192; // 4 MiB
const LINUX: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);

fn entry(first: u64, last: u64, name: &str, guid: u128) -> PartitionEntry {
    PartitionEntry {
        type_guid: LINUX,
        part_guid: Uuid::from_u128(guid),
        first_lba: first,
        last_lba: last,
        attributes: Attributes::slot(1, 0, true).unwrap(),
        name: name.to_string(),
    }
}

fn sample() -> Gpt {
    let mut g = Gpt::new(Uuid::from_u128(0xabcdef), DISK_SECTORS);
    g.set_partition(1, Some(entry(2048, 4095, "ONE", 1)))
        .unwrap();
    g.set_partition(3, Some(entry(4096, 8158, "THREE", 3)))
        .unwrap();
    g
}

fn image(g: &Gpt) -> Vec<u8> {
    let mut dev = Cursor::new(Vec::new());
    g.write(&mut dev, Some(b"BOOT")).unwrap();
    let v = dev.into_inner();
    assert_eq!(v.len() as u64, g.disk_size_bytes());
    v
}

fn read(img: &[u8]) -> anyhow::Result<ReadGpt> {
    Gpt::read(&mut Cursor::new(img), img.len() as u64)
}

fn sector(img: &mut [u8], lba: u64) -> &mut [u8] {
    let off = (lba * SECTOR_SIZE) as usize;
    &mut img[off..off + SECTOR_SIZE as usize]
}

/// Recomputes a header CRC after a test tampered with its fields.
fn fix_header_crc(img: &mut [u8], lba: u64) {
    let s = sector(img, lba);
    s[16..20].fill(0);
    let crc = crc32fast::hash(&s[..92]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip() {
    let g = sample();
    let img = image(&g);
    let r = read(&img).unwrap();
    assert_eq!(r.gpt, g);
    assert_eq!(r.source, HeaderCopy::Primary);
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(
        (r.first_usable_lba, r.last_usable_lba),
        (34, DISK_SECTORS - 34)
    );
    assert_eq!(&img[..4], b"BOOT");
    assert_eq!(&img[510..512], &[0x55, 0xAA]);
    // Both arrays are identical and the headers point at each other.
    let array = &img[1024..1024 + 16384];
    let backup_off = ((DISK_SECTORS - 33) * 512) as usize;
    assert_eq!(array, &img[backup_off..backup_off + 16384]);
    let backup = &img[((DISK_SECTORS - 1) * 512) as usize..];
    assert_eq!(&backup[..8], b"EFI PART");
    assert_eq!(&backup[24..32], &(DISK_SECTORS - 1).to_le_bytes());
    assert_eq!(&backup[32..40], &1u64.to_le_bytes());
    assert_eq!(&backup[72..80], &(DISK_SECTORS - 33).to_le_bytes());
    assert_eq!(g.partitions().map(|(n, _)| n).collect::<Vec<_>>(), [1, 3]);
}

#[test]
fn primary_header_crc_corruption_falls_back_to_backup() {
    let g = sample();
    let mut img = image(&g);
    sector(&mut img, 1)[60] ^= 0xFF; // inside the disk GUID
    let r = read(&img).unwrap();
    assert_eq!(r.source, HeaderCopy::Backup);
    assert_eq!(r.gpt, g);
    let why = r.primary_error.unwrap();
    assert!(
        why.starts_with("primary GPT header CRC mismatch (stored 0x"),
        "{why}"
    );
    assert!(r.backup_error.is_none());
}

#[test]
fn primary_entry_array_corruption_falls_back_to_backup() {
    let g = sample();
    let mut img = image(&g);
    sector(&mut img, 2)[100] ^= 1;
    let r = read(&img).unwrap();
    assert_eq!(r.source, HeaderCopy::Backup);
    assert_eq!(r.gpt, g);
    let why = r.primary_error.unwrap();
    assert!(
        why.contains("primary GPT partition entry array CRC mismatch"),
        "{why}"
    );
}

#[test]
fn backup_corruption_is_reported_but_primary_used() {
    let g = sample();
    let mut img = image(&g);
    sector(&mut img, DISK_SECTORS - 1)[40] ^= 1;
    let r = read(&img).unwrap();
    assert_eq!(r.source, HeaderCopy::Primary);
    assert!(r
        .backup_error
        .unwrap()
        .contains("backup GPT header CRC mismatch"));
}

#[test]
fn both_copies_corrupt_is_an_error_naming_both() {
    let mut img = image(&sample());
    sector(&mut img, 1)[40] ^= 1;
    sector(&mut img, DISK_SECTORS - 1)[0] = b'X';
    let err = format!("{:#}", read(&img).unwrap_err());
    assert!(err.contains("primary GPT header CRC mismatch"), "{err}");
    assert!(
        err.contains("backup GPT header has no \"EFI PART\""),
        "{err}"
    );
}

#[test]
fn unsupported_entry_geometry_rejected_clearly() {
    let mut img = image(&sample());
    sector(&mut img, 1)[84..88].copy_from_slice(&256u32.to_le_bytes());
    fix_header_crc(&mut img, 1);
    let err = read(&img).unwrap().primary_error.unwrap();
    assert!(err.contains("partition entry size 256; only 128"), "{err}");

    let mut img = image(&sample());
    sector(&mut img, 1)[80..84].copy_from_slice(&200u32.to_le_bytes());
    fix_header_crc(&mut img, 1);
    let err = read(&img).unwrap().primary_error.unwrap();
    assert!(err.contains("200 partition entries; at most 128"), "{err}");
}

#[test]
fn truncated_image_rejected() {
    // Losing the last sector loses the backup header, and the primary's
    // pointer to it now lies beyond the end of the disk.
    let img = image(&sample());
    let mut shorter = img.clone();
    shorter.truncate(img.len() - 512);
    assert!(read(&shorter).is_err());
}

#[test]
fn overlapping_partitions_rejected() {
    let mut g = sample();
    g.set_partition(2, Some(entry(4000, 4100, "TWO", 2)))
        .unwrap();
    let err = format!(
        "{:#}",
        g.write(&mut Cursor::new(Vec::new()), None).unwrap_err()
    );
    assert!(err.contains("overlap"), "{err}");
    assert!(err.contains("partition 2 (\"TWO\")"), "{err}");
}

#[test]
fn nothing_written_on_invalid_table() {
    let mut g = sample();
    g.set_partition(2, Some(entry(4000, 4100, "TWO", 2)))
        .unwrap();
    let mut dev = Cursor::new(Vec::new());
    assert!(g.write(&mut dev, None).is_err());
    assert!(dev.into_inner().is_empty());
    assert!(sample()
        .write(&mut Cursor::new(Vec::new()), Some(&[0u8; 441]))
        .is_err());
}

#[test]
fn ranges_checked_before_writing() {
    let cases = [
        (entry(10, 100, "GPT", 9), "outside the usable area"),
        (entry(5000, 8159, "TAIL", 9), "outside the usable area"),
        (entry(3000, 2999, "BACKWARDS", 9), "before it starts"),
    ];
    for (e, want) in cases {
        let mut g = Gpt::new(Uuid::nil(), DISK_SECTORS);
        g.set_partition(1, Some(e)).unwrap();
        let err = format!("{:#}", g.validate().unwrap_err());
        assert!(err.contains(want), "{err}");
    }
    let mut g = Gpt::new(Uuid::nil(), DISK_SECTORS);
    g.set_partition(1, Some(entry(34, 8158, &"n".repeat(37), 1)))
        .unwrap();
    assert!(g.validate().is_err());
    let mut nil_type = entry(34, 8158, "X", 1);
    nil_type.type_guid = Uuid::nil();
    g.set_partition(1, Some(nil_type)).unwrap();
    assert!(g.validate().is_err());
    // Exactly the usable area is fine; one entry short of 128 is not.
    g.set_partition(1, Some(entry(34, 8158, "ALL", 1))).unwrap();
    g.validate().unwrap();
    g.entries.pop();
    assert!(g.validate().is_err());
    assert!(Gpt::new(Uuid::nil(), 67).validate().is_err());
    assert!(g.set_partition(0, None).is_err());
    assert!(g.set_partition(129, None).is_err());
}

#[test]
fn update_entries_keeps_boot_code_and_changes_attributes() {
    let g = sample();
    let mut dev = Cursor::new(Vec::new());
    let boot: Vec<u8> = (0..440u32).map(|i| (i % 251) as u8 + 1).collect();
    g.write(&mut dev, Some(&boot)).unwrap();

    let mut r = Gpt::read(&mut dev, DISK_SECTORS * 512).unwrap().gpt;
    let p = r.partition_mut(3).unwrap();
    p.attributes.set_priority(2).unwrap();
    p.attributes.set_tries(1).unwrap();
    p.attributes.set_successful(false);
    r.update_entries(&mut dev).unwrap();

    let img = dev.into_inner();
    assert_eq!(&img[..440], &boot[..]);
    let back = read(&img).unwrap();
    assert!(back.is_intact());
    assert_eq!(back.gpt, r);
    assert_eq!(
        back.gpt.partition(3).unwrap().attributes.to_string(),
        "priority=2 tries=1 successful=0"
    );
}

/// xorshift64*: deterministic, dependency-free pseudo-randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let valid = image(&sample());
    for round in 0..4000 {
        let mut img = match round % 5 {
            // Pure noise of random length.
            0 => (0..rng.below(70_000)).map(|_| rng.next() as u8).collect(),
            // A valid image, truncated.
            1 => valid[..rng.below(valid.len() as u64) as usize].to_vec(),
            // A valid image with random bytes flipped in the GPT areas.
            2 => {
                let mut v = valid.clone();
                for _ in 0..=rng.below(8) {
                    let at = if rng.next().is_multiple_of(2) {
                        rng.below(34 * 512)
                    } else {
                        (DISK_SECTORS - 33) * 512 + rng.below(33 * 512)
                    };
                    v[at as usize] ^= rng.next() as u8 | 1;
                }
                v
            }
            // Random bytes in the primary entry array with both CRCs fixed,
            // to reach entry decoding and range/overlap checks.
            3 => {
                let mut v = valid.clone();
                for _ in 0..=rng.below(16) {
                    let at = 1024 + rng.below(16384) as usize;
                    v[at] = rng.next() as u8;
                }
                let crc = crc32fast::hash(&v[1024..1024 + 16384]);
                sector(&mut v, 1)[88..92].copy_from_slice(&crc.to_le_bytes());
                fix_header_crc(&mut v, 1);
                v
            }
            // Random header fields with a correct CRC, to get past the CRC
            // check and into the LBA sanity checks.
            _ => {
                let mut v = valid.clone();
                let s = sector(&mut v, 1);
                let field = [24usize, 32, 40, 48, 72, 80, 84][rng.below(7) as usize];
                let width = if field >= 80 { 4 } else { 8 };
                for b in &mut s[field..field + width] {
                    *b = rng.next() as u8;
                }
                fix_header_crc(&mut v, 1);
                v
            }
        };
        if round % 7 == 0 {
            img.truncate(rng.below(img.len() as u64 + 1) as usize);
        }
        let claimed = match rng.below(4) {
            0 => img.len() as u64,
            1 => rng.next(),
            2 => u64::MAX,
            _ => DISK_SECTORS * 512,
        };
        let _ = Gpt::read(&mut Cursor::new(&img), claimed);
    }
}

/// A device that records every write and sync, for crash states.
struct Recorder {
    dev: Cursor<Vec<u8>>,
    log: Vec<Option<(u64, Vec<u8>)>>,
}

impl std::io::Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.dev.read(buf)
    }
}
impl std::io::Seek for Recorder {
    fn seek(&mut self, p: std::io::SeekFrom) -> std::io::Result<u64> {
        self.dev.seek(p)
    }
}
impl std::io::Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let at = self.dev.position();
        let n = self.dev.write(buf)?;
        self.log.push(Some((at, buf[..n].to_vec())));
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every disk a power cut can leave after `log` ran on `base`: for each flush epoch (writes
/// between two syncs), the earlier epochs complete and any subset of the sectors the epoch
/// changes, each as it was before or after (a disk writes a sector whole or not at all, in
/// any order until a sync).
fn crash_states(base: &[u8], log: &[Option<(u64, Vec<u8>)>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut before = base.to_vec();
    for epoch in log.split(|op| op.is_none()) {
        let mut after = before.clone();
        for (at, data) in epoch.iter().flatten() {
            let at = *at as usize;
            if after.len() < at + data.len() {
                after.resize(at + data.len(), 0);
            }
            after[at..at + data.len()].copy_from_slice(data);
        }
        before.resize(after.len(), 0);
        let changed: Vec<usize> = (0..after.len() / 512)
            .filter(|s| before[s * 512..(s + 1) * 512] != after[s * 512..(s + 1) * 512])
            .collect();
        assert!(
            changed.len() < 16,
            "{} sectors change in one epoch",
            changed.len()
        );
        for mask in 0u32..1 << changed.len() {
            let mut img = before.clone();
            for (i, s) in changed.iter().enumerate() {
                if mask & 1 << i != 0 {
                    img[s * 512..(s + 1) * 512].copy_from_slice(&after[s * 512..(s + 1) * 512]);
                }
            }
            out.push(img);
        }
        before = after;
    }
    out
}

/// Growing ROOT on a disk twice the image's size: the new backup is written and synced
/// before the primary changes, so every power cut leaves a GPT that reads. The order used
/// before (update_entries: primary first, one sync at the end) is shown to leave none.
#[test]
fn grow_keeps_a_valid_gpt_at_every_cut() {
    let g = sample();
    let mut base = image(&g);
    base.resize(base.len() * 2, 0);
    let disk_bytes = base.len() as u64;
    let mut rec = Recorder {
        dev: Cursor::new(base.clone()),
        log: Vec::new(),
    };
    let grown = grow::grow(
        &mut rec,
        disk_bytes,
        Uuid::from_u128(3),
        &mut |r: &mut Recorder| {
            r.log.push(None);
            Ok(())
        },
    )
    .unwrap();
    assert!(grown.extended && grown.rewritten, "{grown:?}");
    assert_eq!(grown.last_lba, disk_bytes / 512 - 34);
    // Before the first sync only the backup's sectors (at the new end) are written.
    let first_sync = rec.log.iter().position(|o| o.is_none()).unwrap();
    assert!(first_sync > 0 && rec.log.last().unwrap().is_none());
    for (at, _) in rec.log[..first_sync].iter().flatten() {
        assert!(
            *at >= disk_bytes - 33 * 512,
            "write at {at} before the backup is durable"
        );
    }
    let states = crash_states(&base, &rec.log);
    assert!(states.len() > 8, "{} crash states", states.len());
    for (i, img) in states.iter().enumerate() {
        read(img).unwrap_or_else(|e| panic!("crash state {i}: no valid GPT: {e:#}"));
        // The next boot's grow-root finishes the job: both copies valid, ROOT extended.
        let mut d = Cursor::new(img.clone());
        grow::grow(&mut d, disk_bytes, Uuid::from_u128(3), &mut |_| Ok(())).unwrap();
        let again = read(d.get_ref()).unwrap();
        assert!(again.is_intact(), "crash state {i}: {again:?}");
        assert_eq!(again.gpt.partition(3).unwrap().last_lba, grown.last_lba);
    }
    let done = read(rec.dev.get_ref()).unwrap();
    assert!(done.is_intact());
    assert_eq!(done.gpt.partition(3).unwrap().last_lba, grown.last_lba);
    // Again: nothing to do, nothing written.
    let before = rec.log.len();
    let again = grow::grow(&mut rec, disk_bytes, Uuid::from_u128(3), &mut |_| Ok(())).unwrap();
    assert!(!again.rewritten && rec.log.len() == before);

    // The old order: some cut leaves no valid copy.
    let mut old = Recorder {
        dev: Cursor::new(base.clone()),
        log: Vec::new(),
    };
    let mut t = read(&base).unwrap().gpt;
    t.partition_mut(3).unwrap().last_lba = grown.last_lba;
    t.update_entries(&mut old).unwrap();
    old.log.push(None);
    let bad = crash_states(&base, &old.log)
        .iter()
        .filter(|img| read(img).is_err())
        .count();
    assert!(bad > 0, "the old order should have a cut with no valid GPT");
}
