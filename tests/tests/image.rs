//! The built image checked by tools kiln did not write: sgdisk, e2fsck, fsck.vfat, fsck.erofs,
//! debugfs, mtools; plus `kiln inspect` and a repeat build that must be byte-identical.

use std::fs::File;
use std::io::Read;
use std::process::Command;

use kiln_tests::{extract_partition, kiln, minimal_image, test_dir, text};

fn run(cmd: &str, args: &[&str]) -> String {
    kiln_tests::tool(cmd, args)
}

#[test]
fn gpt_matches_the_coreos_layout() {
    let img = minimal_image().to_str().unwrap();
    assert!(run("sgdisk", &["-v", img]).contains("No problems found"));
    let p = run("sgdisk", &["-p", img]);
    for (n, name) in [
        (1, "EFI-SYSTEM"),
        (2, "BIOS-BOOT"),
        (3, "USR-A"),
        (4, "USR-B"),
        (6, "OEM"),
        (7, "OEM-CONFIG"),
        (9, "ROOT"),
    ] {
        assert!(
            p.lines()
                .any(|l| l.split_whitespace().next() == Some(&n.to_string()) && l.ends_with(name)),
            "{n} {name}:\n{p}"
        );
    }
    assert!(
        !p.lines()
            .any(|l| matches!(l.split_whitespace().next(), Some("5") | Some("8"))),
        "5 and 8 must be unused:\n{p}"
    );
    let a = run("sgdisk", &["-i", "3", img]);
    assert!(a.contains("7130C94A-213A-4E5A-8E26-6CCE9662F132"), "{a}");
    assert!(a.contains("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"), "{a}");
    // The slot state is on the ESP (/kiln/slots.env), not in the attribute bits.
    assert!(a.contains("Attribute flags: 0000000000000000"), "{a}");
    let b = run("sgdisk", &["-i", "4", img]);
    assert!(
        b.contains("E03DD35C-7C2D-4A47-B3FE-27F15780A57C")
            && b.contains("Attribute flags: 0000000000000000"),
        "{b}"
    );
    let r = run("sgdisk", &["-i", "9", img]);
    assert!(r.contains("3884DD41-8582-4404-B9A8-E9B84F2DF50E"), "{r}");
    // 1 MiB alignment and sorted order.
    let mut last = 0;
    for l in p.lines().filter(|l| {
        l.trim_start()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    }) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let start: u64 = f[1].parse().unwrap();
        assert_eq!(start % 2048, 0, "not 1 MiB aligned: {l}");
        assert!(start > last, "not sorted: {l}");
        last = start;
    }
    // The MBR carries GRUB's boot code pointed at BIOS-BOOT (LBA of partition 2).
    let mbr = std::fs::read(minimal_image())
        .map(|d| d[..512].to_vec())
        .unwrap();
    let core_lba = u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap());
    let i2 = run("sgdisk", &["-i", "2", img]);
    assert!(
        i2.contains(&format!("First sector: {core_lba} ")),
        "boot.img points at {core_lba}:\n{i2}"
    );
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);
}

#[test]
fn filesystems_are_clean_and_hold_the_split() {
    let img = minimal_image();
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = |n: &str| d.path().join(n);
    extract_partition(img, 1, &p("esp"));
    extract_partition(img, 3, &p("usr"));
    extract_partition(img, 6, &p("oem"));
    extract_partition(img, 9, &p("root"));
    let s = |x: &str| p(x).to_str().unwrap().to_string();
    run("e2fsck", &["-fn", &s("root")]);
    run("e2fsck", &["-fn", &s("oem")]);
    run("fsck.vfat", &["-n", &s("esp")]);
    run("fsck.erofs", &[&s("usr")]);
    // ROOT: state and merged-/usr links, an empty /usr mount point.
    let ls = run("debugfs", &["-R", "ls -l /", &s("root")]);
    for want in ["etc", "var", "home", "usr", "bin", "sbin", "lib", "lib64"] {
        assert!(
            ls.split_whitespace().any(|w| w == want),
            "ROOT lacks /{want}:\n{ls}"
        );
    }
    let bin = run("debugfs", &["-R", "stat /bin", &s("root")]);
    assert!(
        bin.contains("Type: symlink") && bin.contains("Fast link dest: \"usr/bin\""),
        "{bin}"
    );
    let usr = run("debugfs", &["-R", "ls -p /usr", &s("root")]);
    let names: Vec<&str> = usr
        .lines()
        .filter_map(|l| l.strip_prefix('/')?.split('/').nth(4))
        .filter(|n| *n != "." && *n != "..")
        .collect();
    assert!(
        names.is_empty(),
        "ROOT's /usr must be an empty mount point, holds {names:?}"
    );
    // OEM holds the OEM id.
    let rel = run("debugfs", &["-R", "cat /oem-release", &s("oem")]);
    assert!(rel.contains("ID=qemu"), "{rel}");
    // ESP: GRUB for UEFI, its config, slot A's kernel and initramfs.
    let esp = s("esp");
    let dir = run("mdir", &["-i", &esp, "-/", "-b", "::/"]);
    for want in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/grub/grub.cfg",
        "::/kiln/vmlinuz-a",
        "::/kiln/initrd-a",
        "::/kiln/vmlinuz-b",
        "::/kiln/initrd-b",
        "::/kiln/slots.env",
        "::/kiln/slots-b.env",
    ] {
        assert!(
            dir.lines().any(|l| l.eq_ignore_ascii_case(want)),
            "ESP lacks {want}:\n{dir}"
        );
    }
    let cfg = run("mtype", &["-i", &esp, "::/grub/grub.cfg"]);
    // GRUB's own parser accepts the whole script (it would drop to a prompt on a syntax
    // error that no boot test reaches).
    let cfg_file = tempfile::NamedTempFile::new_in(test_dir()).unwrap();
    std::fs::write(cfg_file.path(), &cfg).unwrap();
    run("grub-script-check", &[cfg_file.path().to_str().unwrap()]);
    assert!(
        cfg.contains("mount.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132")
            && cfg.contains("mount.usr=PARTUUID=e03dd35c-7c2d-4a47-b3fe-27f15780a57c")
            && cfg.contains("load_env -f /kiln/slots.env")
            && cfg.contains("serial --unit=0"),
        "{cfg}"
    );
    // The slot state, read by GRUB's own tool: A good at priority 1, B empty.
    let env = test_dir().join("slots.env");
    run(
        "mcopy",
        &["-i", &esp, "-o", "::/kiln/slots.env", env.to_str().unwrap()],
    );
    let list = run("grub-editenv", &[env.to_str().unwrap(), "list"]);
    for want in [
        "kiln_board=amd64-usr",
        "kiln_a_priority=1",
        "kiln_a_tries=0",
        "kiln_a_successful=1",
        "kiln_a_version=0.1.0",
        "kiln_b_priority=0",
        "kiln_b_successful=0",
    ] {
        assert!(list.lines().any(|l| l == want), "no {want} in:\n{list}");
    }
}

#[test]
fn inspect_reports_table_and_next_slot() {
    let img = minimal_image().to_str().unwrap().to_string();
    let o = kiln(&["inspect", &img]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("next boot: USR-A\n"), "{t}");
    assert!(
        t.lines()
            .any(|l| l == "USR-A: priority=1 tries=0 successful=1 version=0.1.0"),
        "{t}"
    );
    let o = kiln(&["inspect", "--json", &img]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["next_boot"]["slot"], "A");
    let parts = v["partitions"].as_array().unwrap();
    let numbers: Vec<u64> = parts
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 6, 7, 9]);
    assert_eq!(parts[2]["type_name"], "coreos-usr");
    assert_eq!(parts[2]["attributes"], "0x0000000000000000");
    assert_eq!(v["slots"]["a"]["priority"], 1);
    assert_eq!(v["slots"]["a"]["successful"], true);
    assert_eq!(v["slots"]["b"]["priority"], 0);
}

/// apt's fetch lines in a stage log that are package downloads (not index files).
fn deb_downloads(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .lines()
        .filter(|l| l.starts_with("Get:"))
        .filter(|l| {
            ![
                "InRelease",
                "Release",
                "Release.gpg",
                "Packages",
                "Translation-en",
            ]
            .iter()
            .any(|i| l.contains(&format!(" {i} [")))
        })
        .map(String::from)
        .collect()
}

/// The cache directory of each stage a build reports (`kiln build --json`), by its key.
fn stage_dirs(report: &serde_json::Value) -> Vec<(String, std::path::PathBuf, &serde_json::Value)> {
    let dir = kiln_tests::cache_dir().join("stages");
    report["stages"]
        .as_array()
        .expect("stages in the build's JSON")
        .iter()
        .filter_map(|st| {
            let name = st["stage"].as_str()?.to_string();
            let key = st["key"].as_str()?;
            Some((name.clone(), dir.join(format!("{name}-{}", &key[..32])), st))
        })
        .collect()
}

/// The second build runs without CAP_SYS_ADMIN, so nothing can be mounted: kiln must not
/// need to, and must still produce the same bytes.
#[test]
fn a_second_build_without_mount_rights_downloads_nothing_and_is_byte_identical() {
    let first = minimal_image();
    let scratch = tempfile::tempdir_in(test_dir()).unwrap();
    let out = scratch.path();
    let (kiln_bin, _) = kiln_tests::binaries();
    let mut c = Command::new("capsh");
    c.args(["--drop=cap_sys_admin", "--", "-c", "exec \"$0\" \"$@\""])
        .arg(kiln_bin)
        .args([
            "build",
            "recipes/minimal.toml",
            "--platform",
            "none",
            "--rebuild",
            "--json",
            // The same inputs as the first build, whose image trusts the development key.
            "--dev-key",
            "--output",
            out.to_str().unwrap(),
        ]);
    let started = std::time::SystemTime::now();
    let o = kiln_tests::run_kiln(c);
    assert!(o.status.success(), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "kiln build --json: {e}:\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    });
    // Every cached stage was really made again: kiln says so, and each output directory was
    // created during this build (its birth time; kiln dates the files inside to 1980).
    let stages = stage_dirs(&report);
    assert!(stages.len() >= 6, "{report}");
    for (name, dir, st) in &stages {
        assert_eq!(st["cached"], false, "{name}: {st}");
        assert_eq!(st["explain"], "rebuilt: --rebuild", "{name}: {st}");
        let born = std::fs::metadata(dir)
            .and_then(|m| m.created())
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", dir.display()));
        assert!(
            born >= started,
            "{name}: {} is older than this build",
            dir.display()
        );
    }
    // The environment really forbids mounting.
    let target = tempfile::tempdir_in(test_dir()).unwrap();
    let m = Command::new("capsh")
        .args(["--drop=cap_sys_admin", "--", "-c"])
        .arg(format!("mount -t tmpfs none {}", target.path().display()))
        .output()
        .unwrap();
    assert!(!m.status.success(), "mount succeeded without CAP_SYS_ADMIN");
    let second = out.join("minimal_image.bin");
    // Every stage was rebuilt, from the .deb files cached by the first build.
    for stage in ["packages", "kernel"] {
        let log = stages
            .iter()
            .find(|(n, _, _)| n == stage)
            .map(|(_, d, _)| d.join("mmdebstrap.log"))
            .unwrap_or_else(|| panic!("no {stage} stage in {report}"));
        let got = deb_downloads(&log);
        assert!(
            got.is_empty(),
            "{stage} downloaded packages again ({}):\n{}",
            log.display(),
            got.join("\n")
        );
        assert!(
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("I: success"),
            "{}",
            log.display()
        );
    }
    let (mut a, mut b) = (File::open(first).unwrap(), File::open(&second).unwrap());
    assert_eq!(a.metadata().unwrap().len(), b.metadata().unwrap().len());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = a.read(&mut x).unwrap();
        b.read_exact(&mut y[..n]).unwrap();
        if n == 0 {
            break;
        }
        // Slice equality is a memcmp even in a debug build; find the byte only on a mismatch.
        if x[..n] != y[..n] {
            let i = x[..n]
                .iter()
                .zip(&y[..n])
                .position(|(p, q)| p != q)
                .unwrap();
            let at = offset + i as u64;
            panic!("images differ first at byte {at} (sector {})", at / 512);
        }
        offset += n as u64;
    }
}
