//! What the crate-level tests share: a small kiln-shaped disk in a temporary file (a GPT
//! written by kiln-disk, an ESP made by mkfs.vfat and mtools holding both copies of the slot
//! state, two 8 MiB USR slots) and payloads for it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_disk::{plan, Attributes, PartitionSpec, Slot};
use kiln_update::payload::{self, Meta, SectionName};
use kiln_update::state::{SlotFields, SlotState, ENV_PATHS};
use kiln_update::SigningKey;
use uuid::Uuid;

pub const MIB: u64 = 1 << 20;
pub const ESP: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
pub const USR: Uuid = Uuid::from_u128(0x5dfbf5f4_2848_4bac_aa5e_0d9a20b745a6);

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A GPT partition of the test disks, with no attributes.
pub fn spec(
    number: u32,
    label: &str,
    type_guid: Uuid,
    part_guid: Uuid,
    size: u64,
) -> PartitionSpec {
    PartitionSpec {
        number,
        label: label.into(),
        type_guid,
        part_guid,
        size_bytes: size,
        attributes: Attributes::default(),
    }
}

pub fn make_disk(dir: &Path) -> PathBuf {
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
    // As the build writes them: generation 1 (the state) and 0.
    for (i, path) in ENV_PATHS.iter().enumerate() {
        let env = dir.join(format!("slots-{i}.env"));
        std::fs::write(&env, st.to_env(1 - i as u32).unwrap()).unwrap();
        run(
            "mcopy",
            &["-i", e, env.to_str().unwrap(), &format!("::/{path}")],
        );
    }
    // Slot A's kernel and initramfs, so set-next can switch back to A.
    for (name, to) in [
        ("vmlinuz-a", "kiln/vmlinuz-a"),
        ("initrd-a", "kiln/initrd-a"),
    ] {
        let f = dir.join(name);
        std::fs::write(&f, format!("{name} v1")).unwrap();
        run(
            "mcopy",
            &["-i", e, f.to_str().unwrap(), &format!("::/{to}")],
        );
    }
    f.write_all_at(&std::fs::read(&esp_img).unwrap(), esp.offset_bytes)
        .unwrap();
    path
}

pub fn make_payload(dir: &Path, name: &str, board: &str, usr: &[u8], k: &SigningKey) -> PathBuf {
    let meta = Meta {
        board: board.into(),
        ..meta("2.0.0")
    };
    make_payload_with(dir, name, &meta, usr, k, &|raw, out| {
        kiln_formats::xz_compress(raw, out, 1, 0, None)
    })
}

/// The header fields of a payload for the test disk's system, at `version`.
pub fn meta(version: &str) -> Meta {
    Meta {
        os_id: "kiln".into(),
        os_name: "Kiln".into(),
        version: version.into(),
        board: "test-board".into(),
        arch: "amd64".into(),
        created: 0,
    }
}

pub fn make_payload_with(
    dir: &Path,
    name: &str,
    meta: &Meta,
    usr: &[u8],
    k: &SigningKey,
    compress: &dyn Fn(&Path, &Path) -> anyhow::Result<()>,
) -> PathBuf {
    let files: Vec<PathBuf> = [
        ("usr", usr),
        ("kernel", b"kernel-v2"),
        ("initrd", b"initrd-v2"),
    ]
    .iter()
    .map(|(n, b)| {
        let p = dir.join(format!("{name}-{n}"));
        std::fs::write(&p, b).unwrap();
        p
    })
    .collect();
    let out = dir.join(format!("{name}.payload"));
    payload::create(
        &out,
        meta,
        &[
            (SectionName::Usr, &files[0], String::new()),
            (SectionName::Kernel, &files[1], String::new()),
            (SectionName::Initramfs, &files[2], String::new()),
        ],
        k,
        compress,
    )
    .unwrap();
    out
}
