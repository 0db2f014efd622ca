//! `apply` on a small kiln-shaped disk made in a temporary file: a GPT written by kiln-disk,
//! a FAT ESP made by mkfs.vfat and mtools holding both copies of the slot state
//! (/kiln/slots.env and /kiln/slots-b.env), and two 8 MiB USR slots.

use std::io::{Read, Write};
use std::path::Path;

use kiln_disk::{plan, Slot};
use kiln_update::apply::{apply, Disk, Options, Running};
use kiln_update::payload::{self, Meta, SectionName};
use kiln_update::state::{SlotFields, SlotState};
use uuid::Uuid;

mod common;
use common::*;

/// The system of the test disk, running from A.
fn running_a() -> Running {
    Running {
        slot: Slot::A,
        os_id: "kiln".into(),
        arch: "amd64".into(),
        version: "1.0.0".into(),
    }
}

fn slot_bytes(disk: &Disk, path: &Path, s: Slot, n: usize) -> Vec<u8> {
    let e = disk.usr(s);
    let mut f = std::fs::File::open(path).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(e.offset)).unwrap();
    let mut v = vec![0; n];
    f.read_exact(&mut v).unwrap();
    v
}

#[test]
fn apply_writes_the_passive_slot_and_commits_last() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let usr: Vec<u8> = (0..3 * MIB as usize)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let p = make_payload(dir.path(), "good", "test-board", &usr, &key(7));
    let disk = Disk::open(&img, true).unwrap();
    let mut lines = Vec::new();
    let done = apply(
        &disk,
        &mut std::fs::File::open(&p).unwrap(),
        &[key(7).verifying_key()],
        &running_a(),
        &Options::default(),
        &mut |m| lines.push(m.to_string()),
    )
    .unwrap();
    assert_eq!(done.slot, Slot::B);
    let st = disk.state().unwrap();
    assert_eq!((st.b.priority, st.b.tries, st.b.successful), (2, 1, false));
    assert_eq!(st.b.version, "2.0.0");
    assert_eq!((st.a.priority, st.a.successful), (1, true));
    assert_eq!(slot_bytes(&disk, &img, Slot::B, usr.len()), usr);
    assert_eq!(slot_bytes(&disk, &img, Slot::A, 4096), vec![0xaa; 4096]);
    let esp = disk.open_esp().unwrap();
    assert_eq!(esp.read("kiln/vmlinuz-b").unwrap(), b"kernel-v2");
    assert_eq!(esp.read("kiln/initrd-b").unwrap(), b"initrd-v2");
    esp.close().unwrap();
    assert!(
        lines.last().unwrap().contains("tried at the next boot"),
        "{lines:?}"
    );

    // Applying again (to B, still passive: A is the fallback) replaces the files in place.
    apply(
        &disk,
        &mut std::fs::File::open(&p).unwrap(),
        &[key(7).verifying_key()],
        &running_a(),
        &Options {
            tries: 3,
            ..Options::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(disk.state().unwrap().b.tries, 3);
    // fsck.vfat, a checker kiln did not write, finds the ESP clean.
    let esp_copy = dir.path().join("esp.img");
    let mut v = vec![0; disk.esp.len as usize];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut v, disk.esp.offset)
        .unwrap();
    std::fs::write(&esp_copy, v).unwrap();
    let o = std::process::Command::new("fsck.vfat")
        .arg("-n")
        .arg(&esp_copy)
        .output()
        .expect("fsck.vfat (dosfstools) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let before = std::fs::read(&img).unwrap();
    let disk = Disk::open(&img, true).unwrap();
    let small = vec![1u8; 4096];
    let cases = [
        (
            make_payload(dir.path(), "board", "other-board", &small, &key(7)),
            key(7),
            "for board other-board",
        ),
        (
            make_payload(dir.path(), "key", "test-board", &small, &key(8)),
            key(7),
            "wrong key or tampered",
        ),
        (
            make_payload(
                dir.path(),
                "huge",
                "test-board",
                &vec![2u8; 9 * MIB as usize],
                &key(7),
            ),
            key(7),
            "USR-B holds",
        ),
    ];
    for (p, k, words) in cases {
        let e = apply(
            &disk,
            &mut std::fs::File::open(&p).unwrap(),
            &[k.verifying_key()],
            &running_a(),
            &Options::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains(words), "{e:#}");
        assert!(
            std::fs::read(&img).unwrap() == before,
            "{words}: the disk changed"
        );
    }
}

/// A payload whose USR section fails its checksum only after part of it was written (the
/// body is signed and whole, but decompresses to other bytes than the header describes): the
/// target slot was made unbootable first, so the failure leaves A booting and B never tried.
#[test]
fn a_failure_while_writing_leaves_the_target_unbootable() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let usr = vec![5u8; 2 * MIB as usize];
    for n in ["usr", "kernel", "initrd"] {
        std::fs::write(dir.path().join(n), if n == "usr" { &usr[..] } else { b"x" }).unwrap();
    }
    // The compressor lies: it compresses other bytes of the same length.
    let liar = |raw: &Path, xz: &Path| -> anyhow::Result<()> {
        let len = std::fs::metadata(raw)?.len() as usize;
        let mut data = std::fs::read(raw)?;
        data[len / 2] ^= 0xff;
        let mut enc = xz2::write::XzEncoder::new(std::fs::File::create(xz)?, 0);
        enc.write_all(&data)?;
        enc.finish()?;
        Ok(())
    };
    let p = dir.path().join("liar.payload");
    let d = dir.path();
    payload::create(
        &p,
        &Meta {
            os_id: "kiln".into(),
            os_name: "Kiln".into(),
            version: "2.0.0".into(),
            board: "test-board".into(),
            arch: "amd64".into(),
            created: 0,
        },
        &[
            (SectionName::Usr, &d.join("usr"), String::new()),
            (SectionName::Kernel, &d.join("kernel"), String::new()),
            (SectionName::Initramfs, &d.join("initrd"), String::new()),
        ],
        &key(7),
        &liar,
    )
    .unwrap();
    let disk = Disk::open(&img, true).unwrap();
    // Pretend B was bootable before (an older update), to see it made unbootable.
    let mut st = disk.state().unwrap();
    st.b = SlotFields {
        priority: 1,
        tries: 0,
        successful: true,
        version: "0.9.0".into(),
    };
    disk.write_state(&st).unwrap();
    let e = apply(
        &disk,
        &mut std::fs::File::open(&p).unwrap(),
        &[key(7).verifying_key()],
        &running_a(),
        &Options::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("sha256"), "{e:#}");
    let st = disk.state().unwrap();
    assert_eq!(
        st.b.priority, 0,
        "B must be unbootable after a failed write"
    );
    assert_eq!(st.next_boot().unwrap().slot, Slot::A);
    assert_eq!(slot_bytes(&disk, &img, Slot::A, 4096), vec![0xaa; 4096]);
}

/// Applies `p` to the disk as the system running from A, with `opts`.
fn try_apply(disk: &Disk, p: &Path, opts: &Options) -> anyhow::Result<kiln_update::apply::Applied> {
    apply_logged(disk, p, opts, &mut Vec::new())
}

/// [`try_apply`], keeping apply's progress lines in `lines`.
fn apply_logged(
    disk: &Disk,
    p: &Path,
    opts: &Options,
    lines: &mut Vec<String>,
) -> anyhow::Result<kiln_update::apply::Applied> {
    apply(
        disk,
        &mut std::fs::File::open(p).unwrap(),
        &[key(7).verifying_key()],
        &running_a(),
        opts,
        &mut |m| lines.push(m.to_string()),
    )
}

/// Puts `/kiln/<name>` of `len` zero bytes on the test disk's ESP (at `esp_offset`), as a
/// build leaves slot B's fixed-size files.
fn put_zero_file(dir: &Path, img: &Path, esp_offset: u64, name: &str, len: usize) {
    let f = dir.join(name);
    std::fs::write(&f, vec![0u8; len]).unwrap();
    let o = std::process::Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", img.display()))
        .arg(&f)
        .arg(format!("::/kiln/{name}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `f` must fail with all of `words`, and leave every byte of the image as it was.
fn refused(img: &Path, words: &[&str], f: impl FnOnce() -> anyhow::Result<()>) {
    let before = std::fs::read(img).unwrap();
    let e = format!("{:#}", f().unwrap_err());
    for w in words {
        assert!(e.contains(w), "expected {w:?} in: {e}");
    }
    assert!(
        std::fs::read(img).unwrap() == before,
        "{e}: the disk changed"
    );
}

fn small_usr() -> Vec<u8> {
    (0..64 * 1024).map(|i| (i % 253) as u8).collect()
}

/// Defect 2: the running slot A booted on a try and is not marked good yet; B is the last
/// good system. Overwriting B now could leave no bootable slot, so apply refuses until A is
/// marked good. (Before the fix, apply wrote B.)
#[test]
fn apply_refuses_while_the_running_slot_is_not_marked_good() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let p = make_payload(dir.path(), "v2", "test-board", &small_usr(), &key(7));
    let disk = Disk::open(&img, true).unwrap();
    let mut st = disk.state().unwrap();
    st.a = SlotFields {
        priority: 2,
        tries: 0,
        successful: false,
        version: "1.0.0".into(),
    };
    st.b = SlotFields {
        priority: 1,
        tries: 0,
        successful: true,
        version: "0.9.0".into(),
    };
    disk.write_state(&st).unwrap();
    refused(
        &img,
        &[
            "USR-A is not marked good",
            "USR-B may be the last good system",
            "kiln-agent mark-good",
        ],
        || try_apply(&disk, &p, &Options::default()).map(|_| ()),
    );
    // Once A has reached its ready point, B may be replaced.
    assert!(disk.mark_good(Slot::A).unwrap().1);
    let done = try_apply(&disk, &p, &Options::default()).unwrap();
    assert_eq!(done.slot, Slot::B);
    let st = disk.state().unwrap();
    assert_eq!((st.a.priority, st.a.successful), (1, true));
    assert_eq!(
        (st.b.priority, st.b.tries, st.b.version.as_str()),
        (2, 1, "2.0.0")
    );
}

/// Defect 3: a payload older than the running system is refused unless allowed; the same
/// version is not a downgrade; a version kiln cannot order is refused unless allowed.
#[test]
fn downgrades_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let disk = Disk::open(&img, true).unwrap();
    let xz = |raw: &Path, out: &Path| kiln_formats::xz_compress(raw, out, 1, 0, None);
    let older = make_payload_with(
        dir.path(),
        "old",
        &meta("0.9.0"),
        &small_usr(),
        &key(7),
        &xz,
    );
    refused(
        &img,
        &[
            "version 0.9.0 is older than the running 1.0.0",
            "--allow-downgrade",
        ],
        || try_apply(&disk, &older, &Options::default()).map(|_| ()),
    );
    let dev = make_payload_with(
        dir.path(),
        "dev",
        &meta("1.0.0+2025-01-01-0000"),
        &small_usr(),
        &key(7),
        &xz,
    );
    refused(
        &img,
        &["1.0.0+2025-01-01-0000 is older than the running 1.0.0"],
        || try_apply(&disk, &dev, &Options::default()).map(|_| ()),
    );
    let odd = make_payload_with(dir.path(), "odd", &meta("2"), &small_usr(), &key(7), &xz);
    refused(
        &img,
        &["`2` is not BUILD.BRANCH.PATCH", "--allow-downgrade"],
        || try_apply(&disk, &odd, &Options::default()).map(|_| ()),
    );
    // The same version again is a reinstall, not a downgrade.
    let same = make_payload_with(
        dir.path(),
        "same",
        &meta("1.0.0"),
        &small_usr(),
        &key(7),
        &xz,
    );
    try_apply(&disk, &same, &Options::default()).unwrap();
    // --allow-downgrade installs the older one, and says so.
    let mut lines = Vec::new();
    let done = apply(
        &disk,
        &mut std::fs::File::open(&older).unwrap(),
        &[key(7).verifying_key()],
        &running_a(),
        &Options {
            allow_downgrade: true,
            ..Options::default()
        },
        &mut |m| lines.push(m.to_string()),
    )
    .unwrap();
    assert_eq!(done.state.b.version, "0.9.0");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a downgrade, allowed by --allow-downgrade")),
        "{lines:?}"
    );
}

/// Defect 3: a payload is bound to the OS id and the architecture, not only the board: two
/// products on one board never take each other's payloads.
#[test]
fn payloads_for_another_os_or_arch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let disk = Disk::open(&img, true).unwrap();
    let xz = |raw: &Path, out: &Path| kiln_formats::xz_compress(raw, out, 1, 0, None);
    let os = Meta {
        os_id: "other-product".into(),
        ..meta("2.0.0")
    };
    let os = make_payload_with(dir.path(), "os", &os, &small_usr(), &key(7), &xz);
    refused(
        &img,
        &["the payload is for OS \"other-product\", this system is \"kiln\""],
        || try_apply(&disk, &os, &Options::default()).map(|_| ()),
    );
    let arch = Meta {
        arch: "arm64".into(),
        ..meta("2.0.0")
    };
    let arch = make_payload_with(dir.path(), "arch", &arch, &small_usr(), &key(7), &xz);
    refused(
        &img,
        &["the payload is for architecture arm64, this system is amd64"],
        || try_apply(&disk, &arch, &Options::default()).map(|_| ()),
    );
}

/// Defect 3: the payload applied from a channel must be the one its signed index names.
#[test]
fn a_payload_unlike_its_channel_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let disk = Disk::open(&img, true).unwrap();
    let p = make_payload(dir.path(), "v2", "test-board", &small_usr(), &key(7));
    let other = make_payload(dir.path(), "other", "test-board", &[9u8; 5000], &key(7));
    use sha2::Digest;
    let sha = |f: &Path| hex::encode(sha2::Sha256::digest(std::fs::read(f).unwrap()));
    let size = std::fs::metadata(&p).unwrap().len();
    let expect = |sha256: String, size: Option<u64>| Options {
        expect: Some(kiln_update::apply::Expected { sha256, size }),
        ..Options::default()
    };
    refused(
        &img,
        &[
            &format!("expected {}", sha(&other)),
            "not the payload the index names",
        ],
        || try_apply(&disk, &p, &expect(sha(&other), Some(size))).map(|_| ()),
    );
    refused(
        &img,
        &[&format!(
            "it is {size} bytes, the channel index says {}",
            size + 1
        )],
        || try_apply(&disk, &p, &expect(sha(&p), Some(size + 1))).map(|_| ()),
    );
    refused(&img, &["is not 64 hex digits"], || {
        try_apply(&disk, &p, &expect("xyz".into(), None)).map(|_| ())
    });
    try_apply(&disk, &p, &expect(sha(&p).to_uppercase(), Some(size))).unwrap();
}

/// Defect 12: `--tries 0` (or more than 15) is refused before anything is written. (Before
/// the fix, apply had made the passive slot unbootable and written USR by then.)
#[test]
fn tries_out_of_range_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let disk = Disk::open(&img, true).unwrap();
    let p = make_payload(dir.path(), "v2", "test-board", &small_usr(), &key(7));
    // B bootable before, so a premature invalidation would show.
    let mut st = disk.state().unwrap();
    st.b = SlotFields {
        priority: 1,
        tries: 0,
        successful: true,
        version: "0.9.0".into(),
    };
    disk.write_state(&st).unwrap();
    for tries in [0, 16] {
        refused(&img, &[&format!("--tries {tries}"), "1 to 15"], || {
            try_apply(
                &disk,
                &p,
                &Options {
                    tries,
                    ..Options::default()
                },
            )
            .map(|_| ())
        });
    }
    refused(&img, &["--tries 0"], || {
        disk.set_next(Slot::B, 0).map(|_| ())
    });
}

/// Defect 12: a signed body whose xz dictionary needs more memory than the agent allows is
/// refused before the first write. (Before the fix it was decompressed with no limit.)
#[test]
fn an_xz_body_beyond_the_memory_limit_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let disk = Disk::open(&img, true).unwrap();
    let big_dict = |raw: &Path, out: &Path| -> anyhow::Result<()> {
        let mut opts = xz2::stream::LzmaOptions::new_preset(0)?;
        opts.dict_size(64 << 20);
        let mut filters = xz2::stream::Filters::new();
        filters.lzma2(&opts);
        let stream = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc64)?;
        let mut enc = xz2::write::XzEncoder::new_stream(std::fs::File::create(out)?, stream);
        enc.write_all(&std::fs::read(raw)?)?;
        enc.finish()?;
        Ok(())
    };
    let p = make_payload_with(
        dir.path(),
        "dict",
        &meta("2.0.0"),
        &small_usr(),
        &key(7),
        &big_dict,
    );
    refused(
        &img,
        &[
            "needs 65 MiB of memory to decompress",
            "more than the 16 MiB",
        ],
        || try_apply(&disk, &p, &Options::default()).map(|_| ()),
    );
}

/// Defect 7: a GPT that claims an ESP of 2 GiB (in a sparse file that holds almost nothing)
/// is refused before any of it is read.
#[test]
fn a_huge_esp_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(
        &[
            spec(1, "EFI-SYSTEM", ESP, Uuid::from_u128(1), 2 << 30),
            spec(3, "USR-A", USR, Slot::A.part_guid(), MIB),
            spec(4, "USR-B", USR, Slot::B.part_guid(), MIB),
        ],
        MIB,
    )
    .unwrap();
    let path = dir.path().join("huge-esp.raw");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(p.disk_size_bytes).unwrap();
    p.gpt.write(&mut f, None).unwrap();
    let t = std::time::Instant::now();
    for writable in [false, true] {
        let e = format!("{:#}", Disk::open(&path, writable).err().unwrap());
        assert!(
            e.contains("EFI system partition is 2147483648 bytes (2048 MiB), more than the 1024 MiB kiln reads"),
            "{e}"
        );
    }
    assert!(t.elapsed().as_secs() < 5);
}

/// The state a serial run of `ops` (in that order) ends with, and each operation's outcome,
/// by the rules of docs/updates.md written out here independently of kiln-update's code.
fn serial(start: &SlotState, ops: &[Op]) -> (SlotState, Vec<Outcome>) {
    let mut st = start.clone();
    let mut out = vec![Outcome::Refused; ops.len()];
    for (i, op) in ops.iter().enumerate() {
        out[i] = match op {
            Op::MarkGoodA => {
                if st.a.priority == 0 {
                    Outcome::Refused
                } else {
                    let changed = !st.a.successful || st.a.tries != 0;
                    st.a.successful = true;
                    st.a.tries = 0;
                    Outcome::Done(changed)
                }
            }
            Op::SetNextA => {
                if st.b.priority > 0 {
                    st.b.priority = 1;
                }
                st.a = SlotFields {
                    priority: 2,
                    tries: 3,
                    successful: false,
                    version: st.a.version.clone(),
                };
                Outcome::Done(true)
            }
            Op::ApplyToB => {
                if st.a.priority == 0 || !st.a.successful {
                    Outcome::Refused
                } else {
                    if st.a.priority > 0 {
                        st.a.priority = 1;
                    }
                    st.b = SlotFields {
                        priority: 2,
                        tries: 1,
                        successful: false,
                        version: "2.0.0".into(),
                    };
                    Outcome::Done(true)
                }
            }
        };
    }
    (st, out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `kiln-agent mark-good` in a system running from A.
    MarkGoodA,
    /// `kiln slot set-next a --tries 3`.
    SetNextA,
    /// `kiln-agent update apply` in a system running from A.
    ApplyToB,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused,
    /// Done; for mark-good, whether it changed the state.
    Done(bool),
}

fn permutations(ops: &[Op]) -> Vec<Vec<Op>> {
    if ops.len() <= 1 {
        return vec![ops.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..ops.len() {
        let mut rest = ops.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first);
            all.push(p);
        }
    }
    all
}

/// Apply, mark-good and set-next run at once on one image, a thousand times, each in its own
/// thread with its own open of the disk (as separate agent and kiln processes would), through
/// the functions the agent and the offline tools call. Each time the state on the disk, and
/// what each operation reported, must be what running them one after the other in some order
/// gives. (Without the lock, or with the state read only once per operation, a mark-good
/// written during an apply was lost.)
#[test]
fn concurrent_apply_mark_good_and_set_next_equal_a_serial_order() {
    use rand_core::RngCore;
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let usr = small_usr();
    let p = make_payload(dir.path(), "v2", "test-board", &usr, &key(7));
    // A booted on a try and is not marked good yet; B is the good system it came from.
    let start = {
        let disk = Disk::open(&img, false).unwrap();
        let mut st = disk.state().unwrap();
        st.a = SlotFields {
            priority: 2,
            tries: 0,
            successful: false,
            version: "1.0.0".into(),
        };
        st.b = SlotFields {
            priority: 1,
            tries: 0,
            successful: true,
            version: "0.9.0".into(),
        };
        st
    };
    let combos: [&[Op]; 3] = [
        &[Op::ApplyToB, Op::MarkGoodA],
        &[Op::ApplyToB, Op::MarkGoodA, Op::SetNextA],
        &[Op::ApplyToB, Op::MarkGoodA, Op::MarkGoodA],
    ];
    let iterations = 1000;
    let t0 = std::time::Instant::now();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..iterations {
        let ops = combos[i % combos.len()];
        Disk::open(&img, true).unwrap().write_state(&start).unwrap();
        let barrier = std::sync::Barrier::new(ops.len());
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = ops
                .iter()
                .map(|&op| {
                    let (img, p, barrier) = (&img, &p, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let delay = rand_core::OsRng.next_u32() % 3000;
                        std::thread::sleep(std::time::Duration::from_micros(delay.into()));
                        let disk = Disk::open(img, true).unwrap();
                        let r = match op {
                            Op::MarkGoodA => disk.mark_good(Slot::A).map(|(_, c)| c),
                            Op::SetNextA => disk.set_next(Slot::A, 3).map(|_| true),
                            Op::ApplyToB => try_apply(&disk, p, &Options::default()).map(|_| true),
                        };
                        match r {
                            Ok(c) => Outcome::Done(c),
                            Err(e) => {
                                let e = format!("{e:#}");
                                assert!(e.contains("is not marked good"), "{op:?}: {e}");
                                Outcome::Refused
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let got = Disk::open(&img, false).unwrap().state().unwrap();
        let order = permutations(ops)
            .into_iter()
            .find(|order| {
                let (st, out) = serial(&start, order);
                // Outcomes in `ops` order, from the serial run's order.
                let mut used = vec![false; order.len()];
                let mapped: Vec<Outcome> = ops
                    .iter()
                    .enumerate()
                    .map(|(k, op)| {
                        // The matching op in `order` with the same outcome as observed.
                        let j = (0..order.len())
                            .find(|&j| !used[j] && order[j] == *op && out[j] == outcomes[k])
                            .or_else(|| (0..order.len()).find(|&j| !used[j] && order[j] == *op))
                            .unwrap();
                        used[j] = true;
                        out[j]
                    })
                    .collect();
                st == got && mapped == outcomes
            })
            .unwrap_or_else(|| {
                panic!(
                    "iteration {i}: {ops:?} gave {outcomes:?} and the state\n{got}\nwhich no serial order of them gives"
                )
            });
        if outcomes[0] == Outcome::Done(true) {
            // The apply that succeeded wrote all of USR-B and B's kernel.
            let disk = Disk::open(&img, false).unwrap();
            assert_eq!(slot_bytes(&disk, &img, Slot::B, usr.len()), usr);
        }
        *seen.entry(format!("{order:?}")).or_default() += 1;
    }
    let took = t0.elapsed();
    eprintln!(
        "{iterations} concurrent runs in {:.1} s; serial orders seen: {seen:?}",
        took.as_secs_f64()
    );
    // The races really happened both ways.
    assert!(seen.keys().any(|o| o.starts_with("[ApplyToB")), "{seen:?}");
    assert!(seen.keys().any(|o| o.starts_with("[MarkGoodA")), "{seen:?}");
}

/// With fixed-size slot files on the ESP (what a build makes), the kernel and initramfs are
/// written in place, padded with zeros: no byte of the ESP changes outside those two files'
/// data and the state copy written, so no FAT sector or directory entry does, and fsck.vfat
/// finds nothing. A file too small for its content is replaced through the FAT instead.
#[test]
fn apply_overwrites_fixed_size_slot_files_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let esp_at = {
        let d = Disk::open(&img, false).unwrap();
        (d.esp.offset, d.esp.len)
    };
    // Slot B's files as the build leaves them: all zeros, the kernel's 64 KiB, the
    // initramfs's 5 bytes (too small for "initrd-v2").
    for (name, len) in [("vmlinuz-b", 65536usize), ("initrd-b", 5)] {
        put_zero_file(dir.path(), &img, esp_at.0, name, len);
    }
    let read_esp = || {
        let b = std::fs::read(&img).unwrap();
        b[esp_at.0 as usize..(esp_at.0 + esp_at.1) as usize].to_vec()
    };
    let before = read_esp();
    let disk = Disk::open(&img, true).unwrap();
    let dev = kiln_update::dev::FileDev::new(std::fs::File::open(&img).unwrap()).unwrap();
    let kernel = kiln_update::fat::locate(&dev, esp_at.0, esp_at.1, "kiln/vmlinuz-b")
        .unwrap()
        .unwrap();
    let p = make_payload(dir.path(), "good", "test-board", &[7u8; 4096], &key(7));
    let mut lines = Vec::new();
    apply_logged(&disk, &p, &Options::default(), &mut lines).unwrap();
    drop(disk);
    let esp = Disk::open(&img, false).unwrap().open_esp().unwrap();
    let mut want = b"kernel-v2".to_vec();
    want.resize(65536, 0);
    assert_eq!(esp.read("kiln/vmlinuz-b").unwrap(), want);
    assert_eq!(esp.read("kiln/initrd-b").unwrap(), b"initrd-v2");
    esp.close().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/kiln/initrd-b: its 9 bytes do not fit the 5 of its fixed-size file: replacing it through the FAT")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("/kiln/vmlinuz-b:")),
        "{lines:?}"
    );

    // The kernel's install changed nothing but its data: compared with a second apply that
    // only writes the kernel in place (the initramfs now fits its file), every differing
    // byte of the ESP lies in the kernel's extents or a state copy.
    let mid = read_esp();
    assert_ne!(mid, before);
    let disk = Disk::open(&img, true).unwrap();
    let copies: Vec<u64> = disk
        .store()
        .unwrap()
        .copies()
        .iter()
        .map(|c| c.offset)
        .collect();
    let p3 = make_payload_with(
        dir.path(),
        "again",
        &kiln_update::payload::Meta {
            board: "test-board".into(),
            ..meta("2.0.1")
        },
        &[8u8; 4096],
        &key(7),
        &|raw, out| kiln_formats::xz_compress(raw, out, 1, 0, None),
    );
    let mut lines = Vec::new();
    apply_logged(&disk, &p3, &Options::default(), &mut lines).unwrap();
    drop(disk);
    assert!(
        !lines.iter().any(|l| l.contains("through the FAT")),
        "{lines:?}"
    );
    let after = read_esp();
    let initrd = kiln_update::fat::locate(&dev, esp_at.0, esp_at.1, "kiln/initrd-b")
        .unwrap()
        .unwrap();
    let inside =
        |o: u64, f: &kiln_update::fat::Located| f.extents.iter().any(|&(s, l)| o >= s && o < s + l);
    for (k, (x, y)) in mid.iter().zip(&after).enumerate() {
        if x == y {
            continue;
        }
        let o = esp_at.0 + k as u64;
        assert!(
            inside(o, &kernel)
                || inside(o, &initrd)
                || copies.iter().any(|&c| o >= c && o < c + 1024),
            "byte {k} of the ESP changed outside the slot files and the state"
        );
    }
    let esp_img = dir.path().join("esp-after.img");
    std::fs::write(&esp_img, &after).unwrap();
    let o = std::process::Command::new("fsck.vfat")
        .args(["-n", esp_img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// set-next refuses a slot whose kernel file is all zeros (what a build leaves in slot B's
/// fixed-size file), even if the state names a version for it.
#[test]
fn set_next_refuses_a_slot_whose_kernel_file_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let esp_at = Disk::open(&img, false).unwrap().esp.offset;
    for name in ["vmlinuz-b", "initrd-b"] {
        put_zero_file(dir.path(), &img, esp_at, name, 8192);
    }
    let disk = Disk::open(&img, true).unwrap();
    let mut st = disk.state().unwrap();
    st.b.version = "2.0.0".into();
    disk.write_state(&st).unwrap();
    let e = format!("{:#}", disk.set_next(Slot::B, 1).unwrap_err());
    assert!(
        e.contains("USR-B holds no installed system") && e.contains("no kernel in /kiln/vmlinuz-b"),
        "{e}"
    );
    assert_eq!(disk.state().unwrap(), st, "nothing written");
    // A has its kernel: set-next A is fine.
    disk.set_next(Slot::A, 1).unwrap();
}
