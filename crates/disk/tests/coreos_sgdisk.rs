//! Writes the CoreOS disk layout and has sgdisk (Debian package `gdisk`)
//! check it independently: an external reader is the real test that the
//! on-disk format is right, not just self-consistent.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_disk::types::{BIOS_BOOT, COREOS_RESERVED, COREOS_USR, EFI_SYSTEM, LINUX_DATA};
use kiln_disk::{
    plan, Attributes, Gpt, HeaderCopy, PartitionSpec, ROOT_C_GUID, USR_A_GUID, USR_B_GUID,
};
use uuid::Uuid;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Fails (never skips) when sgdisk is missing, naming the package.
fn sgdisk() -> PathBuf {
    let fixed = Path::new("/usr/sbin/sgdisk");
    if fixed.exists() {
        return fixed.to_path_buf();
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("sgdisk"))
                .find(|p| p.exists())
        })
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        panic!("sgdisk not found (/usr/sbin/sgdisk or PATH): install the Debian package `gdisk` (apt-get install gdisk)")
    })
}

fn run_sgdisk(args: &[&str], image: &Path) -> String {
    let out = Command::new(sgdisk())
        .args(args)
        .arg(image)
        .output()
        .expect("running sgdisk");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sgdisk {args:?} failed: {text}");
    text
}

fn spec(number: u32, label: &str, type_guid: Uuid, part_guid: Uuid, size: u64) -> PartitionSpec {
    PartitionSpec {
        number,
        label: label.to_string(),
        type_guid,
        part_guid,
        size_bytes: size,
        attributes: Attributes::default(),
    }
}

fn coreos_specs() -> Vec<PartitionSpec> {
    let guid = |n: u128| Uuid::from_u128(0x1111_0000_0000_0000_0000_0000_0000_0000 | n);
    let mut usr_a = spec(3, "USR-A", COREOS_USR, USR_A_GUID, GIB);
    usr_a.attributes = Attributes::slot(1, 0, true).unwrap();
    vec![
        spec(1, "EFI-SYSTEM", EFI_SYSTEM, guid(1), 128 * MIB),
        spec(2, "BIOS-BOOT", BIOS_BOOT, guid(2), 2 * MIB),
        usr_a,
        spec(4, "USR-B", COREOS_USR, USR_B_GUID, GIB),
        spec(6, "OEM", LINUX_DATA, guid(6), 128 * MIB),
        spec(7, "OEM-CONFIG", COREOS_RESERVED, guid(7), 64 * MIB),
        spec(9, "ROOT", LINUX_DATA, ROOT_C_GUID, 2 * GIB),
    ]
}

#[test]
fn coreos_layout_passes_sgdisk() {
    let plan = plan(&coreos_specs(), MIB).expect("plan");
    assert_eq!(plan.partition(1).unwrap().offset_bytes, MIB);
    // 1 + 128 + 2 + 1024 + 1024 + 128 + 64 + 2048 MiB, plus 1 MiB for the backup.
    assert_eq!(plan.disk_size_bytes, 4420 * MIB);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let mut file = File::create(&path).unwrap();
    file.set_len(plan.disk_size_bytes).unwrap();
    plan.gpt
        .write(&mut file, Some(&[0xEB, 0x63, 0x90]))
        .unwrap();
    drop(file);

    let verify = run_sgdisk(&["-v"], &path);
    assert!(verify.contains("No problems found"), "sgdisk -v: {verify}");

    let info = run_sgdisk(&["-i", "3"], &path);
    assert!(
        info.contains(&format!(
            "Partition unique GUID: {}",
            USR_A_GUID.to_string().to_uppercase()
        )),
        "sgdisk -i 3: {info}"
    );
    assert!(
        info.contains("Attribute flags: 0101000000000000"),
        "sgdisk -i 3: {info}"
    );
    assert!(
        info.contains("Partition name: 'USR-A'"),
        "sgdisk -i 3: {info}"
    );
    assert!(
        info.contains("First sector: 268288 (at 131.0 MiB)"),
        "sgdisk -i 3: {info}"
    );

    let print = run_sgdisk(&["-p"], &path);
    for name in [
        "EFI-SYSTEM",
        "BIOS-BOOT",
        "USR-A",
        "USR-B",
        "OEM",
        "OEM-CONFIG",
        "ROOT",
    ] {
        assert!(print.contains(name), "sgdisk -p lacks {name}: {print}");
    }
    // Entries 5 and 8 stay unused.
    let numbers: Vec<&str> = print
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(numbers, ["1", "2", "3", "4", "6", "7", "9"], "{print}");

    // Our own reader agrees.
    let mut file = File::open(&path).unwrap();
    let read = Gpt::read(&mut file, plan.disk_size_bytes).unwrap();
    assert!(read.is_intact(), "{read:?}");
    assert_eq!(read.source, HeaderCopy::Primary);
    assert_eq!(read.gpt, plan.gpt);
}

#[test]
fn attribute_update_keeps_boot_code_and_passes_sgdisk() {
    let plan = plan(&coreos_specs(), MIB).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let boot: Vec<u8> = (0..440u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(plan.disk_size_bytes).unwrap();
    plan.gpt.write(&mut file, Some(&boot)).unwrap();

    // Simulate an update to B: priority 2, one try.
    let mut gpt = Gpt::read(&mut file, plan.disk_size_bytes).unwrap().gpt;
    let b = gpt.partition_mut(4).unwrap();
    b.attributes = Attributes::slot(2, 1, false).unwrap();
    gpt.update_entries(&mut file).unwrap();
    drop(file);

    let mut head = vec![0u8; 440];
    File::open(&path)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(head, boot);
    let verify = run_sgdisk(&["-v"], &path);
    assert!(verify.contains("No problems found"), "sgdisk -v: {verify}");
    let info = run_sgdisk(&["-i", "4"], &path);
    assert!(
        info.contains("Attribute flags: 0012000000000000"),
        "sgdisk -i 4: {info}"
    );
}
