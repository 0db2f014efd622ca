//! The minimal image boots in QEMU (TCG) with SeaBIOS and with OVMF, from USR-A, with /usr
//! read-only, / the writable ROOT, and the OEM id read from the OEM partition.

use kiln_tests::{boot, minimal_image};

const USR_A: &str = "7130c94a-213a-4e5a-8e26-6cce9662f132";

fn check(b: &kiln_qemu::Boot) {
    let line = b.ready.as_deref().expect("ready line");
    assert_eq!(b.field("version"), Some("0.1.0"), "{line}");
    assert_eq!(b.field("slot"), Some("A"), "{line}");
    assert_eq!(b.field("usr"), Some("ro"), "{line}");
    assert_eq!(b.field("usr-partuuid"), Some(USR_A), "{line}");
    assert_eq!(b.field("usr-fs"), Some("erofs"), "{line}");
    assert_eq!(b.field("root"), Some("rw"), "{line}");
    assert_eq!(b.field("root-partlabel"), Some("ROOT"), "{line}");
    assert_eq!(b.field("root-fs"), Some("ext4"), "{line}");
    assert_eq!(b.field("oem"), Some("qemu"), "{line}");
    assert_eq!(b.field("oem-partlabel"), Some("OEM"), "{line}");
    // GRUB (not a direct kernel boot) loaded slot A's kernel from the ESP.
    assert!(
        b.console
            .iter()
            .any(|l| l.contains("kiln: loading /kiln/vmlinuz-a")),
        "no GRUB line"
    );
    assert!(
        b.console
            .iter()
            .any(|l| l.contains(&format!("mount.usr=PARTUUID={USR_A}"))),
        "kernel command line does not name USR-A"
    );
}

#[test]
fn minimal_boots_with_seabios() {
    let b = boot(minimal_image(), "bios");
    check(&b);
    assert!(
        !b.console.iter().any(|l| l.contains("efi: EFI v")),
        "booted through EFI?"
    );
}

#[test]
fn minimal_boots_with_ovmf() {
    let b = boot(minimal_image(), "uefi");
    check(&b);
    assert!(
        b.console.iter().any(|l| l.contains("efi: EFI v")),
        "kernel did not see EFI firmware"
    );
}
