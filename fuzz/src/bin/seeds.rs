//! Writes the seed corpus of every target into fuzz/corpus/<target>/: real inputs as kiln
//! makes them (a signed payload, a GPT, the slot state, a signed channel index, the heads of
//! qcow2/vmdk/vhd/xz/gzip files, static and dynamic ELF headers), for AFL++ to start from.
//! Run by scripts/fuzz.sh when a corpus directory is missing.

use std::path::Path;

use ed25519_dalek::SigningKey;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // payload: <u16 header length><header><body>, as the target reads it.
    let files: Vec<_> = ["usr", "kernel", "initrd"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = t.join(n);
            std::fs::write(&p, vec![i as u8 + 1; 3000 + i * 1000]).unwrap();
            p
        })
        .collect();
    let meta = kiln_update::payload::Meta {
        os_id: "kiln".into(),
        os_name: "kiln".into(),
        version: "0.2.0".into(),
        board: "amd64-usr".into(),
        arch: "amd64".into(),
        created: 1735689600,
    };
    use kiln_update::payload::SectionName;
    let sections = [
        (SectionName::Usr, files[0].as_path(), "erofs".to_string()),
        (SectionName::Kernel, files[1].as_path(), "6.1.0".to_string()),
        (SectionName::Initramfs, files[2].as_path(), String::new()),
    ];
    let out = t.join("p.payload");
    let compress = |raw: &Path, xz: &Path| kiln_formats::xz_compress(raw, xz, 1, 1, None);
    kiln_update::payload::create(&out, &meta, &sections, &key, &compress).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let hlen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let header = &bytes[16..16 + hlen];
    let body = &bytes[16 + hlen + 64..];
    let mut seed = (hlen as u16).to_le_bytes().to_vec();
    seed.extend_from_slice(header);
    seed.extend_from_slice(body);
    put("payload", "signed", &seed);
    put("payload", "whole-file", &bytes);

    // gpt: a 48 KiB disk with one partition, written by kiln's GPT code.
    let spec = kiln_disk::PartitionSpec {
        number: 1,
        label: "ROOT".into(),
        type_guid: kiln_disk::USR_A_GUID,
        part_guid: kiln_disk::USR_B_GUID,
        size_bytes: 4096,
        attributes: Default::default(),
    };
    let mut plan = kiln_disk::plan(&[spec], 512).unwrap();
    plan.disk_size_bytes = 48 * 1024;
    plan.gpt.disk_sectors = 96;
    let mut disk = std::io::Cursor::new(vec![0u8; 48 * 1024]);
    plan.gpt.write(&mut disk, None).unwrap();
    put("gpt", "one-partition", disk.get_ref());

    // env_block: the state of a fresh image, and one after an update.
    let fresh = kiln_update::state::SlotState::new(
        "amd64-usr",
        kiln_update::state::SlotFields {
            priority: 1,
            tries: 0,
            successful: true,
            version: "0.1.0".into(),
        },
    )
    .unwrap();
    // Generation 1, as the build writes the first copy; the update's write is generation 2.
    // (fuzz/corpus/env_block/legacy is a block from before generations existed.)
    put("env_block", "fresh", &fresh.to_env(1).unwrap());
    let mut next = fresh.clone();
    next.set_next(kiln_disk::Slot::B, 1, "0.2.0").unwrap();
    put("env_block", "updated", &next.to_env(2).unwrap());

    // channel_index: index.json, NUL, its minisign signature.
    let index = kiln_update::channel::Index {
        format: 1,
        channel: "stable".into(),
        board: "amd64-usr".into(),
        seq: 3,
        version: "366.1.0".into(),
        release: "../../366.1.0".into(),
        payload: Some(kiln_update::channel::PayloadRef {
            path: "../../366.1.0/minimal_update.payload".into(),
            size: 1234,
            sha256: "00".repeat(32),
            sha512: "00".repeat(64),
        }),
        digests_sha256: "11".repeat(32),
        key_id: kiln_update::keys::key_id(&key.verifying_key()),
        history: vec!["365.1.0".into()],
    };
    let json = serde_json::to_vec_pretty(&index).unwrap();
    let sig =
        kiln_release::sign::sign(&key, &json, "timestamp:1735689600\tfile:index.json").unwrap();
    let mut seed = json.clone();
    seed.push(0);
    seed.extend_from_slice(sig.as_bytes());
    put("channel_index", "signed", &seed);

    // image_format: the first 8 KiB and the last sector of each kind of file.
    let raw = t.join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    use kiln_formats::{DiskFormat, Qcow2Compat, Stamp, VhdSubformat, VmdkAdapter, VmdkSubformat};
    let kinds = [
        (
            "qcow2",
            DiskFormat::Qcow2 {
                compat: Qcow2Compat::V3,
            },
        ),
        (
            "vmdk",
            DiskFormat::Vmdk {
                subformat: VmdkSubformat::MonolithicSparse,
                adapter: VmdkAdapter::Lsilogic,
            },
        ),
        (
            "vhd-dynamic",
            DiskFormat::Vhd {
                subformat: VhdSubformat::Dynamic,
            },
        ),
        (
            "vhd-fixed",
            DiskFormat::Vhd {
                subformat: VhdSubformat::Fixed,
            },
        ),
    ];
    for (name, fmt) in kinds {
        let dest = t.join(name);
        kiln_formats::convert(&raw, &fmt, &dest, &Stamp::default()).unwrap();
        let b = std::fs::read(&dest).unwrap();
        let mut seed = b[..b.len().min(8192)].to_vec();
        if b.len() > 8192 {
            seed.extend_from_slice(&b[b.len() - 512..]);
        }
        put("image_format", name, &seed);
    }
    let xz = t.join("disk.xz");
    kiln_formats::xz_compress(&raw, &xz, 1, 0, None).unwrap();
    put("image_format", "xz", &std::fs::read(&xz).unwrap()[..64]);
    put(
        "image_format",
        "descriptor.vmdk",
        b"# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"x.raw\" 0\n",
    );

    // elf: a minimal static executable, and the head of a dynamic one.
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes());
    elf.extend_from_slice(&0x3eu16.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&0x400078u64.to_le_bytes());
    elf.extend_from_slice(&64u64.to_le_bytes());
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&0u32.to_le_bytes());
    for h in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&h.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    for v in [0u64, 0x400000, 0x400000, 129, 129, 0x1000] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&[0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]);
    put("elf", "static", &elf);
    let sh = std::fs::read("/bin/sh").unwrap();
    put("elf", "dynamic-head", &sh[..sh.len().min(4096)]);
    eprintln!("seeds written to {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
