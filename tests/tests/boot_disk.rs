//! The boot takes every partition from the disk it booted from (issue 11, defect 1). GRUB
//! passes the partition GUID of the ESP it read grub.cfg from (`kiln.disk=PARTUUID=…`, from
//! `probe --part-uuid`); the initramfs resolves ROOT, USR and OEM on the one disk holding it
//! and refuses to boot when that disk is there twice. The other disks sit on the AHCI
//! controller (/dev/sda), whose names sort before the boot disk's (/dev/vda): the first
//! match over all disks, what the initramfs took before, is theirs.

use std::path::Path;

use kiln_tests::*;

fn ready_line(console: &[String]) -> &str {
    console
        .iter()
        .find(|l| l.starts_with(kiln_qemu::READY_PREFIX))
        .map(String::as_str)
        .unwrap_or_else(|| {
            panic!(
                "no ready line; last console lines:\n{}",
                console[console.len().saturating_sub(40)..].join("\n")
            )
        })
}

/// The initramfs's error line (the boot was refused).
fn initramfs_error(console: &[String]) -> &str {
    console
        .iter()
        .find(|l| l.starts_with("kiln-initramfs: error:"))
        .map(String::as_str)
        .unwrap_or_else(|| {
            panic!(
                "no initramfs error; last console lines:\n{}",
                console[console.len().saturating_sub(40)..].join("\n")
            )
        })
}

/// Boots `img` under UEFI with `other` attached writable on the AHCI controller (/dev/sda,
/// whose name sorts before the boot disk's).
fn run_beside(img: &Path, other: &Path) -> (bool, Vec<String>) {
    run_until_ready(
        img,
        &[
            "--firmware",
            "uefi",
            "--attach-rw",
            other.to_str().unwrap(),
            "--attach-disk",
            "ide-hd",
        ],
    )
}

/// (a) Beside a writable copy of another kiln image (the v2 build: other identity, its own
/// USR-A, ROOT and OEM with the same names and the same USR GUIDs), the minimal image boots
/// its own system from its own disk, writes nothing to the other one, and the agent acts on
/// the boot disk.
#[test]
fn boots_from_its_own_disk_beside_another_kiln_image() {
    update_payloads();
    let other_src = test_dir().join("updates/v2_image.bin");
    assert!(other_src.exists(), "{} was not built", other_src.display());
    let img = copy_image(minimal_image(), "bootdisk-own.raw");
    let other = copy_image(&other_src, "bootdisk-other.raw");
    let before = kiln_tests::exact::sha256sum(&other);
    let (ok, console) = run_beside(&img, &other);
    let line = ready_line(&console);
    assert!(ok, "{line}");
    for (k, v) in [
        ("version", "0.1.0"),
        ("slot", "A"),
        ("disk", "/dev/vda"),
        ("usr-dev", "/dev/vda3"),
        ("root-dev", "/dev/vda9"),
        ("oem-dev", "/dev/vda6"),
    ] {
        assert_eq!(field(line, k), v, "{k}: {line}");
    }
    // The other disk is there (and would have won the first match over all disks).
    assert!(
        console
            .iter()
            .any(|l| l.contains("[sda] ") && l.contains("Attached SCSI disk")),
        "the other disk was not attached as sda"
    );
    let esp_guid = {
        let mut f = std::fs::File::open(&img).unwrap();
        let len = f.metadata().unwrap().len();
        kiln_disk::Gpt::read(&mut f, len)
            .unwrap()
            .gpt
            .partition(1)
            .unwrap()
            .part_guid
    };
    assert!(
        console
            .iter()
            .any(|l| l.contains(&format!("all on /dev/vda (PARTUUID={esp_guid})"))),
        "the initramfs did not name the boot disk by the ESP's GUID {esp_guid}"
    );
    assert_eq!(
        kiln_tests::exact::sha256sum(&other),
        before,
        "the boot wrote to the other disk"
    );
    // The ready point marked the boot disk's slot (its state changed, the other's did not).
    let st = slot_status(&img);
    assert_eq!(st["next_boot"]["slot"], "A");
    for p in [img, other] {
        std::fs::remove_file(p).unwrap();
    }
}

/// (b) Beside a second copy of itself (same identity), the initramfs cannot tell which disk
/// the firmware booted and refuses, saying why.
#[test]
fn refuses_to_boot_beside_a_copy_of_itself() {
    let img = copy_image(minimal_image(), "bootdisk-twin-a.raw");
    let twin = copy_image(minimal_image(), "bootdisk-twin-b.raw");
    let (ok, console) = run_until_ready(
        &img,
        &["--firmware", "bios", "--attach", twin.to_str().unwrap()],
    );
    assert!(!ok, "booted beside a copy of itself");
    let err = initramfs_error(&console);
    assert!(
        err.contains("is on 2 disks (/dev/vda, /dev/vdb)")
            && err.contains("copies of one image")
            && err.contains("detach"),
        "{err}"
    );
    assert!(!console
        .iter()
        .any(|l| l.starts_with(kiln_qemu::READY_PREFIX)));
    for p in [img, twin] {
        std::fs::remove_file(p).unwrap();
    }
}

/// (c) A disk with nothing but a partition labelled ROOT (GPT name and ext4 label) holding
/// its own /sbin/init is never used: the boot's ROOT is its own disk's.
#[test]
fn a_foreign_root_with_its_own_init_is_never_used() {
    let dir = tempfile::tempdir_in(test_dir()).unwrap();
    let tree = dir.path().join("tree");
    for d in ["sbin", "usr", "dev", "proc", "sys"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let init = tree.join("sbin/init");
    std::fs::write(
        &init,
        "#!/usr/bin/busybox sh\necho 'FOREIGN INIT RAN'\n/usr/bin/busybox poweroff -f\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let evil = dir.path().join("foreign-root.raw");
    std::fs::File::create(&evil)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let e = evil.to_str().unwrap();
    tool(
        "sgdisk",
        &["-n", "1:2048:0", "-c", "1:ROOT", "-t", "1:8300", e],
    );
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "ROOT",
            "-d",
            tree.to_str().unwrap(),
            "-E",
            "offset=1048576",
            e,
            // 60 MiB: inside the partition, which ends before the backup GPT.
            &((60u64 << 20) / 1024).to_string(),
        ],
    );
    let img = copy_image(minimal_image(), "bootdisk-foreign-root.raw");
    let (ok, console) = run_until_ready(
        &img,
        &[
            "--firmware",
            "bios",
            // Writable: QEMU's IDE/AHCI disks cannot be read-only.
            "--attach-rw",
            e,
            "--attach-disk",
            "ide-hd",
        ],
    );
    assert!(
        !console.iter().any(|l| l.contains("FOREIGN INIT RAN")),
        "the foreign ROOT's init ran"
    );
    let line = ready_line(&console);
    assert!(ok, "{line}");
    assert_eq!(field(line, "root-dev"), "/dev/vda9", "{line}");
    assert_eq!(field(line, "root-partlabel"), "ROOT", "{line}");
    assert!(
        console
            .iter()
            .any(|l| l.contains("[sda] ") && l.contains("Attached SCSI disk")),
        "the foreign disk was not attached as sda"
    );
    std::fs::remove_file(img).unwrap();
}

/// An image whose grub.cfg passes no `kiln.disk=`, as one built before it runs after an
/// update to this initramfs (an update never rewrites grub.cfg).
fn without_boot_disk_arg(src: &Path, name: &str) -> std::path::PathBuf {
    let img = copy_image(src, name);
    let esp_at = {
        let mut f = std::fs::File::open(&img).unwrap();
        let len = f.metadata().unwrap().len();
        kiln_disk::Gpt::read(&mut f, len)
            .unwrap()
            .gpt
            .partition(1)
            .unwrap()
            .first_lba
            * 512
    };
    let i = format!("{}@@{esp_at}", img.display());
    let cfg = img.with_extension("grub.cfg");
    tool(
        "mcopy",
        &["-n", "-i", &i, "::/grub/grub.cfg", cfg.to_str().unwrap()],
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let old = text.replace(" kiln.disk=PARTUUID=$kiln_disk", "");
    assert_ne!(old, text, "grub.cfg passes no kiln.disk=:\n{text}");
    std::fs::write(&cfg, old).unwrap();
    tool(
        "mcopy",
        &["-o", "-i", &i, cfg.to_str().unwrap(), "::/grub/grub.cfg"],
    );
    std::fs::remove_file(&cfg).unwrap();
    img
}

/// (d) Without `kiln.disk=` there is no boot disk to hold to: a name on two disks is refused
/// (another kiln image has the same USR GUIDs, labels and partition names), and alone the
/// image boots, warning that its grub.cfg is older than its initramfs.
#[test]
fn without_kiln_disk_a_name_on_two_disks_is_refused() {
    update_payloads();
    let other_src = test_dir().join("updates/v2_image.bin");
    let img = without_boot_disk_arg(minimal_image(), "bootdisk-legacy.raw");
    let other = copy_image(&other_src, "bootdisk-legacy-other.raw");
    let before = kiln_tests::exact::sha256sum(&other);
    let (ok, console) = run_beside(&img, &other);
    assert!(!ok, "booted with a second kiln disk and no kiln.disk=");
    assert!(
        console
            .iter()
            .any(|l| l.contains("warning: no kiln.disk= on the kernel command line")),
        "no warning about the missing kiln.disk="
    );
    let err = initramfs_error(&console);
    assert!(
        err.contains("2 partitions match")
            && err.contains("/dev/sda")
            && err.contains("/dev/vda")
            && err.contains("no kiln.disk="),
        "{err}"
    );
    assert_eq!(
        kiln_tests::exact::sha256sum(&other),
        before,
        "the boot wrote to the other disk"
    );
    // Alone, it boots its own system.
    let (ok, console) = run_until_ready(&img, &["--firmware", "bios"]);
    let line = ready_line(&console);
    assert!(ok, "{line}");
    assert_eq!(field(line, "usr-dev"), "/dev/vda3", "{line}");
    assert!(console
        .iter()
        .any(|l| l.contains("warning: no kiln.disk= on the kernel command line")));
    for p in [img, other] {
        std::fs::remove_file(p).unwrap();
    }
}
