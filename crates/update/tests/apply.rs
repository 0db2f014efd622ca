//! `apply` on a small kiln-shaped disk made in a temporary file: a GPT written by kiln-disk,
//! a FAT ESP formatted by fatfs holding /kiln/slots.env, and two 8 MiB USR slots.

use std::io::{Read, Write};

use std::path::{Path, PathBuf};

use kiln_disk::{plan, Attributes, PartitionSpec, Slot};
use kiln_update::apply::{apply, Disk, Options, Running};
use kiln_update::payload::{self, Meta, SectionName};
use kiln_update::state::{SlotFields, SlotState, ENV_PATH};
use kiln_update::SigningKey;
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const ESP: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
const USR: Uuid = Uuid::from_u128(0x5dfbf5f4_2848_4bac_aa5e_0d9a20b745a6);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn make_disk(dir: &Path) -> PathBuf {
    let spec = |number, label: &str, type_guid, part_guid, size| PartitionSpec {
        number,
        label: label.into(),
        type_guid,
        part_guid,
        size_bytes: size,
        attributes: Attributes::default(),
    };
    let p = plan(
        &[
            spec(1, "EFI-SYSTEM", ESP, Uuid::from_u128(1), 40 * MIB),
            spec(3, "USR-A", USR, Slot::A.part_guid(), 8 * MIB),
            spec(4, "USR-B", USR, Slot::B.part_guid(), 8 * MIB),
        ],
        MIB,
    )
    .unwrap();
    let path = dir.join("disk.raw");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(p.disk_size_bytes).unwrap();
    p.gpt.write(&mut f, None).unwrap();
    let esp = p.partition(1).unwrap();
    let a = p.partition(3).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xaa; 4096], a.offset_bytes).unwrap();
    // The ESP as the build makes it: mkfs.vfat, then mtools.
    let st = SlotState::new(
        "test-board",
        SlotFields {
            priority: 1,
            tries: 0,
            successful: true,
            version: "1.0.0".into(),
        },
    )
    .unwrap();
    let env = dir.join("slots.env");
    std::fs::write(&env, st.to_env().unwrap()).unwrap();
    let esp_img = dir.join("esp-build.img");
    let run = |cmd: &str, args: &[&str]| {
        let o = std::process::Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} (dosfstools/mtools) must be installed: {e}"));
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let e = esp_img.to_str().unwrap();
    run(
        "mkfs.vfat",
        &["-C", e, &(esp.size_bytes / 1024).to_string()],
    );
    run("mmd", &["-i", e, "::/kiln"]);
    run(
        "mcopy",
        &["-i", e, env.to_str().unwrap(), &format!("::/{ENV_PATH}")],
    );
    f.write_all_at(&std::fs::read(&esp_img).unwrap(), esp.offset_bytes)
        .unwrap();
    path
}

fn make_payload(dir: &Path, name: &str, board: &str, usr: &[u8], k: &SigningKey) -> PathBuf {
    let files: Vec<PathBuf> = [
        ("usr", usr),
        ("kernel", b"kernel-v2"),
        ("initrd", b"initrd-v2"),
    ]
    .iter()
    .map(|(n, b)| {
        let p = dir.join(n);
        std::fs::write(&p, b).unwrap();
        p
    })
    .collect();
    let out = dir.join(format!("{name}.payload"));
    payload::create(
        &out,
        &Meta {
            os_id: "kiln".into(),
            os_name: "Kiln".into(),
            version: "2.0.0".into(),
            board: board.into(),
            arch: "amd64".into(),
            created: 0,
        },
        &[
            (SectionName::Usr, &files[0], String::new()),
            (SectionName::Kernel, &files[1], String::new()),
            (SectionName::Initramfs, &files[2], String::new()),
        ],
        k,
        &|raw: &std::path::Path, out: &std::path::Path| {
            kiln_formats::xz_compress(raw, out, 1, 0, None)
        },
    )
    .unwrap();
    out
}

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
