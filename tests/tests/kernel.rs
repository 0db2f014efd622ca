//! `kiln kernel check` against real configurations: Debian's prebuilt kernel (as the minimal
//! build extracted it) meets every platform's requirements; a config that lacks options is
//! refused, naming each; a fragment with a syntax error names its file and line.

use kiln_tests::*;

fn debian_config() -> std::path::PathBuf {
    minimal_out();
    std::fs::read_dir(cache_dir().join("stages"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("kernel-")
                && p.join("config").exists()
        })
        .expect("the kernel stage of the minimal build")
        .join("config")
}

#[test]
fn debian_kernel_meets_every_platform() {
    let c = debian_config();
    let o = kiln(&[
        "kernel",
        "check",
        "--config",
        c.to_str().unwrap(),
        "--platform",
        "all",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for p in [
        "metal",
        "qemu",
        "vmware",
        "ec2",
        "gce",
        "rackspace",
        "openstack",
    ] {
        assert!(t.contains(&format!("{p}: ok (")), "{p}: {t}");
    }
}

#[test]
fn misses_are_named_and_fail() {
    let text_cfg = std::fs::read_to_string(debian_config()).unwrap();
    let changed: String = text_cfg
        .lines()
        .map(|l| match l {
            "CONFIG_KVM_GUEST=y" => "# CONFIG_KVM_GUEST is not set",
            l => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(changed, text_cfg.trim_end());
    let f = test_dir().join("kernel-misses.config");
    std::fs::write(&f, changed).unwrap();
    // A requirement list of our own: a module Debian builds that no initramfs carries.
    let req = test_dir().join("kernel-requirements");
    std::fs::create_dir_all(&req).unwrap();
    std::fs::write(
        req.join("qemu.toml"),
        "builtin = [\"KVM_GUEST\"]\nbuiltin-or-module = [\"SND:snd\", \"VIRTIO_BLK:virtio_blk\"]\n",
    )
    .unwrap();
    let o = kiln(&[
        "kernel",
        "check",
        "--config",
        f.to_str().unwrap(),
        "--platform",
        "qemu",
        "--requirements",
        req.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("qemu: CONFIG_KVM_GUEST is not set, needs =y"),
        "{t}"
    );
    assert!(
        t.contains("qemu: CONFIG_SND is m, but snd is not in the initramfs"),
        "{t}"
    );
    assert!(!t.contains("VIRTIO_BLK"), "{t}");
}

#[test]
fn a_fragment_syntax_error_names_file_and_line() {
    let f = test_dir().join("broken.config");
    std::fs::write(&f, "CONFIG_A=y\nCONFIG_B=perhaps\n").unwrap();
    let o = kiln(&[
        "kernel",
        "check",
        "--config",
        f.to_str().unwrap(),
        "--platform",
        "qemu",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("{}:2:", f.display())), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
