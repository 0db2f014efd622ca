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

/// `kiln run` for a person: console on stdin/stdout, and it ends when the guest powers off.
/// On that console, as a person would check it: /proc/mounts has USR-A read-only (erofs) at
/// /usr and ROOT writable (ext4) at /, a write to /usr fails and one to / succeeds.
#[test]
fn kiln_run_exits_when_the_guest_powers_off() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let (kiln, _) = kiln_tests::binaries();
    let mut child = Command::new(kiln)
        .current_dir(kiln_tests::root())
        .args([
            "run",
            minimal_image().to_str().unwrap(),
            "--accel",
            "tcg",
            "--snapshot",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("kiln: ready ") => break,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no ready line; console:\n{}",
                    seen[seen.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
    // The shell on ttyS0 is respawned by init right after the ready line.
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Not only the agent's word (usr=ro root=rw on the ready line): what the kernel says it
    // mounted, and what a write to each does. The echo of the typed command shows `@@""end`,
    // only the output `@@end`.
    stdin
        .write_all(
            b"busybox grep -E '^[^ ]+ /(usr)? ' /proc/mounts; \
              echo probe > /usr/kiln-write-probe; echo \"usr-write=$?\"; \
              echo probe > /kiln-write-probe && busybox cat /kiln-write-probe; \
              echo \"root-write=$?\"; echo '@@''end'\n",
        )
        .unwrap();
    stdin.flush().unwrap();
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.trim_end() == "@@end" => break,
            Ok(l) => said.push(l.trim_end().to_string()),
            Err(_) => {
                let _ = child.kill();
                panic!("no answer from the shell; console:\n{}", said.join("\n"));
            }
        }
    }
    let text = said.join("\n");
    let mount = |point: &str| -> Vec<String> {
        said.iter()
            .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.len() == 6 && f[1] == point)
            .unwrap_or_else(|| panic!("{point} not in /proc/mounts:\n{text}"))
    };
    let usr = mount("/usr");
    assert_eq!(
        (usr[0].as_str(), usr[2].as_str()),
        ("/dev/vda3", "erofs"),
        "{text}"
    );
    assert_eq!(usr[3].split(',').next(), Some("ro"), "{text}");
    let root = mount("/");
    assert_eq!(
        (root[0].as_str(), root[2].as_str()),
        ("/dev/vda9", "ext4"),
        "{text}"
    );
    assert_eq!(root[3].split(',').next(), Some("rw"), "{text}");
    assert!(
        said.iter().any(|l| l.contains("Read-only file system")),
        "{text}"
    );
    // The shell's status for a failed redirection (2 for dash): anything but success.
    let usr_write = said
        .iter()
        .find_map(|l| l.strip_prefix("usr-write="))
        .unwrap_or_else(|| panic!("no usr-write status:\n{text}"));
    assert_ne!(usr_write, "0", "a write to /usr succeeded:\n{text}");
    assert!(said.iter().any(|l| l == "probe"), "{text}");
    assert!(said.iter().any(|l| l == "root-write=0"), "{text}");
    stdin.write_all(b"poweroff\n").unwrap();
    stdin.flush().unwrap();
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "kiln run exited with {st}");
            break;
        }
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        if start.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!(
                "guest did not power off; console:\n{}",
                seen[seen.len().saturating_sub(30)..].join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
