//! A/B updates, proven by booting: payloads applied inside the running system (handed over
//! as a second virtual disk) and offline to image files, a release that never reaches its
//! ready point rolled back by the boot path alone, bad payloads refused before anything is
//! written, and an update of a bootable slot interrupted by pulling the plug.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_tests::*;

use kiln_tests::exact::range_sha256;

/// Byte ranges of a partition, by GPT partition number.
fn part(image: &Path, number: u32) -> (u64, u64) {
    let mut f = std::fs::File::open(image).unwrap();
    let len = f.metadata().unwrap().len();
    let gpt = kiln_disk::Gpt::read(&mut f, len).unwrap().gpt;
    let e = gpt.partition(number).unwrap();
    (e.first_lba * 512, e.sectors() * 512)
}

/// What apply may touch: the ESP (state, kernels) and both USR slots.
fn slots_and_esp(image: &Path) -> Vec<String> {
    [1, 3, 4]
        .iter()
        .map(|&n| {
            let (o, l) = part(image, n);
            range_sha256(image, o, l)
        })
        .collect()
}

fn slot(v: &serde_json::Value, s: &str) -> (u64, u64, bool, String) {
    let x = &v["state"][s];
    (
        x["priority"].as_u64().unwrap(),
        x["tries"].as_u64().unwrap(),
        x["successful"].as_bool().unwrap(),
        x["version"].as_str().unwrap().to_string(),
    )
}

#[test]
fn payload_is_built_signed_and_described() {
    let payload = minimal_out().join("minimal_update.payload");
    assert!(payload.exists());
    let o = kiln(&[
        "update",
        "show",
        payload.to_str().unwrap(),
        "--key",
        dev_public_key().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(h["format"], 1);
    assert_eq!(h["version"], "0.1.0");
    assert_eq!(h["board"], "amd64-usr");
    let names: Vec<&str> = h["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["usr", "kernel", "initramfs"]);
    // The USR section is the image's USR-A, byte for byte.
    let img = minimal_image();
    let usr = &h["sections"][0];
    let size = usr["size"].as_u64().unwrap();
    let (off, len) = part(img, 3);
    assert!(size <= len);
    assert_eq!(
        range_sha256(img, off, size),
        usr["sha256"].as_str().unwrap()
    );
    // The image trusts the key that signed it.
    assert!(text(&o).contains("verified"), "{}", text(&o));
}

/// `kiln update create` writes payloads as `kiln build` does: given the build's own sections
/// (USR-A's bytes, and the kernel and initramfs copied out of the ESP with mtools) and header
/// fields, it makes the build's payload byte for byte.
#[test]
fn update_create_makes_the_builds_payload_byte_for_byte() {
    let built = minimal_out().join("minimal_update.payload");
    let o = kiln(&["update", "show", built.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let h: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let img = minimal_image();
    let (usr_off, _) = part(img, 3);
    let usr = d.path().join("usr.img");
    let usr_size = h["sections"][0]["size"].as_u64().unwrap();
    let st = std::process::Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", usr.display()))
        .args(["bs=1M", "iflag=skip_bytes,count_bytes", "status=none"])
        .arg(format!("skip={usr_off}"))
        .arg(format!("count={usr_size}"))
        .status()
        .unwrap();
    assert!(st.success());
    let esp = d.path().join("esp.img");
    extract_partition(img, 1, &esp);
    // The slot's files have a fixed size: the section's bytes, then zeros.
    for (from, to, section) in [
        ("kiln/vmlinuz-a", "vmlinuz", 1),
        ("kiln/initrd-a", "initrd", 2),
    ] {
        tool(
            "mcopy",
            &[
                "-i",
                esp.to_str().unwrap(),
                &format!("::{from}"),
                d.path().join(to).to_str().unwrap(),
            ],
        );
        let size = h["sections"][section]["size"].as_u64().unwrap() as usize;
        let mut bytes = std::fs::read(d.path().join(to)).unwrap();
        assert_eq!(bytes.len(), 16 << 20, "{from}: the layout's slot file size");
        assert!(
            bytes[size..].iter().all(|&b| b == 0),
            "{from}: not zeros after {size} bytes"
        );
        bytes.truncate(size);
        std::fs::write(d.path().join(to), bytes).unwrap();
    }
    let out = d.path().join("again.payload");
    let field = |k: &str| h[k].as_str().unwrap().to_string();
    let key = cache_dir().join("keys/INSECURE-kiln-development-key.pem");
    let o = kiln(&[
        "update",
        "create",
        "-o",
        out.to_str().unwrap(),
        "--usr",
        usr.to_str().unwrap(),
        "--kernel",
        d.path().join("vmlinuz").to_str().unwrap(),
        "--initramfs",
        d.path().join("initrd").to_str().unwrap(),
        "--board",
        &field("board"),
        "--arch",
        &field("arch"),
        "--os-version",
        &field("version"),
        "--os-id",
        &field("os-id"),
        "--os-name",
        &field("os-name"),
        "--created",
        &h["created"].to_string(),
        "--usr-fs",
        h["sections"][0]["detail"].as_str().unwrap(),
        "--kernel-version",
        h["sections"][1]["detail"].as_str().unwrap(),
        "--signing-key",
        key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&built).unwrap(),
        "kiln update create wrote other bytes than kiln build for the same sections"
    );
}

#[test]
fn build_without_key_makes_no_payload_and_says_so() {
    let scratch = tempfile::tempdir_in(test_dir()).unwrap();
    let out = scratch.path();
    minimal_out();
    let o = kiln(&[
        "build",
        "recipes/minimal.toml",
        "--platform",
        "none",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("no update payload: no signing key"),
        "{}",
        text(&o)
    );
    assert!(out.join("minimal_image.bin").exists());
    assert!(!out.join("minimal_update.payload").exists());
}

#[test]
fn offline_tools_on_qcow2_then_boot_the_update() {
    let (v2, _) = update_payloads();
    let raw = copy_image(minimal_image(), "offline-v1.raw");
    let img = test_dir().join("offline-v1.qcow2");
    let _ = std::fs::remove_file(&img);
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            raw.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(&raw).unwrap();
    let st = slot_status(&img);
    assert_eq!(slot(&st, "a"), (1, 0, true, "0.1.0".into()));
    assert_eq!(slot(&st, "b"), (0, 0, false, String::new()));
    assert_eq!(st["next_boot"]["slot"], "A");

    // Nothing is installed in B yet: set-next refuses.
    let o = kiln(&["slot", "set-next", img.to_str().unwrap(), "b"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("holds no installed system"),
        "{}",
        text(&o)
    );

    let key = dev_public_key();
    let o = kiln(&[
        "update",
        "apply",
        img.to_str().unwrap(),
        v2.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let st = slot_status(&img);
    assert_eq!(slot(&st, "b"), (2, 1, false, "0.2.0".into()));
    assert_eq!(st["next_boot"]["slot"], "B");
    assert_eq!(st["next_boot"]["consumes_try"], true);
    // Still a qcow2 of the same compat level, and a sound one.
    let info = tool("qemu-img", &["info", img.to_str().unwrap()]);
    assert!(
        info.contains("file format: qcow2") && info.contains("compat: 0.10"),
        "{info}"
    );
    tool("qemu-img", &["check", img.to_str().unwrap()]);

    // The boot takes B's try, runs 0.2.0 from USR-B, and marks it good. UEFI here (OVMF):
    // the boots inside the guest in the other tests are BIOS (SeaBIOS), so GRUB's save_env
    // is proven on both.
    let b = boot_disk(&img, "uefi", false);
    let ready = b.ready.clone().unwrap();
    assert_eq!(field(&ready, "slot"), "B", "{ready}");
    assert_eq!(field(&ready, "version"), "0.2.0", "{ready}");
    assert_eq!(field(&ready, "next"), "B", "{ready}");
    assert!(b
        .console
        .iter()
        .any(|l| l.contains("kiln: trying USR-B (tries left: 0)")));
    assert!(b
        .console
        .iter()
        .any(|l| l.contains("kiln: loading /kiln/vmlinuz-b")));
    assert!(b.console.iter().any(|l| l.contains("marked USR-B good")));
    let st = slot_status(&img);
    assert_eq!(slot(&st, "b"), (2, 0, true, "0.2.0".into()));

    // The release engineer's switches: back to A for one try, then A marked good.
    let o = kiln(&[
        "slot",
        "set-next",
        img.to_str().unwrap(),
        "a",
        "--tries",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let st = slot_status(&img);
    assert_eq!(slot(&st, "a"), (2, 2, false, "0.1.0".into()));
    assert_eq!(slot(&st, "b").0, 1);
    assert_eq!(st["next_boot"]["slot"], "A");
    let o = kiln(&["slot", "mark-good", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let st = slot_status(&img);
    assert_eq!(slot(&st, "a"), (2, 0, true, "0.1.0".into()));
    assert_eq!(st["next_boot"]["consumes_try"], false);
    std::fs::remove_file(&img).unwrap();
}

/// A payload file with `f` applied to its bytes.
fn altered(src: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(src).unwrap();
    f(&mut b);
    let p = test_dir().join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn header_len(payload: &Path) -> usize {
    let mut f = std::fs::File::open(payload).unwrap();
    let mut pre = [0u8; 16];
    f.read_exact(&mut pre).unwrap();
    u32::from_le_bytes(pre[12..16].try_into().unwrap()) as usize
}

/// A small payload made by `kiln update create` with the given key and board.
fn made_payload(name: &str, key: &Path, board: &str, usr_bytes: u64) -> PathBuf {
    made_payload_with(name, key, board, usr_bytes, &[])
}

/// [`made_payload`] with more `kiln update create` arguments (another --os-id or --arch).
fn made_payload_with(
    name: &str,
    key: &Path,
    board: &str,
    usr_bytes: u64,
    extra: &[&str],
) -> PathBuf {
    let dir = test_dir().join(format!("made-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let usr = dir.join("usr.img");
    let f = std::fs::File::create(&usr).unwrap();
    f.set_len(usr_bytes).unwrap();
    for n in ["kernel", "initrd"] {
        std::fs::write(dir.join(n), format!("not really a {n}")).unwrap();
    }
    let out = dir.join("update.payload");
    let o = kiln(
        &[
            "update",
            "create",
            "-o",
            out.to_str().unwrap(),
            "--usr",
            usr.to_str().unwrap(),
            "--kernel",
            dir.join("kernel").to_str().unwrap(),
            "--initramfs",
            dir.join("initrd").to_str().unwrap(),
            "--board",
            board,
            "--os-version",
            "9.9.9",
            "--signing-key",
            key.to_str().unwrap(),
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<&str>>(),
    );
    assert!(o.status.success(), "{}", text(&o));
    out
}

/// The bad payloads of the issue, each with the words its refusal must contain. Made once:
/// the tests that use them run in parallel.
fn bad_payloads() -> &'static [(&'static str, PathBuf, &'static str)] {
    static BAD: std::sync::OnceLock<Vec<(&'static str, PathBuf, &'static str)>> =
        std::sync::OnceLock::new();
    BAD.get_or_init(make_bad_payloads)
}

fn make_bad_payloads() -> Vec<(&'static str, PathBuf, &'static str)> {
    let (v2, _) = update_payloads();
    let h = header_len(v2);
    let other_key = test_dir().join("other-signing-key.pem");
    if !other_key.exists() {
        let o = kiln(&["key", "generate", other_key.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let dev_key = cache_dir().join("keys/INSECURE-kiln-development-key.pem");
    vec![
        (
            "bad signature",
            altered(v2, "bad-signature.payload", |b| b[16 + h + 10] ^= 0x01),
            "wrong key or tampered payload",
        ),
        (
            "wrong key",
            made_payload("wrong-key", &other_key, "amd64-usr", 1 << 20),
            "wrong key or tampered payload",
        ),
        (
            "truncated",
            altered(v2, "truncated.payload", |b| b.truncate(b.len() / 2)),
            "truncated",
        ),
        (
            "corrupt body",
            altered(v2, "corrupt.payload", |b| {
                let i = 80 + h + (b.len() - 80 - h) / 2;
                b[i] ^= 0x40;
            }),
            "corrupt",
        ),
        (
            "another board",
            made_payload("arm64", &dev_key, "arm64-usr", 1 << 20),
            "for board arm64-usr",
        ),
        (
            "larger than the slot",
            made_payload("huge", &dev_key, "amd64-usr", 1100 << 20),
            "USR-B holds",
        ),
    ]
}

#[test]
fn bad_payloads_are_refused_offline_and_change_nothing() {
    let img = copy_image(minimal_image(), "bad-offline.raw");
    let before = slots_and_esp(&img);
    let key = dev_public_key();
    for (what, p, words) in bad_payloads() {
        let o = kiln(&[
            "update",
            "apply",
            img.to_str().unwrap(),
            p.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {t}");
        assert!(t.contains(words), "{what}: expected {words:?} in:\n{t}");
        assert!(!t.contains("panicked"), "{what}: {t}");
        assert_eq!(slots_and_esp(&img), before, "{what} changed the image");
    }
    // An image whose layout is not kiln's: a GPT without the USR slots.
    let foreign = test_dir().join("foreign.raw");
    let _ = std::fs::remove_file(&foreign);
    std::fs::File::create(&foreign)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    tool(
        "sgdisk",
        &[
            "-n",
            "1:2048:+32M",
            "-t",
            "1:8300",
            foreign.to_str().unwrap(),
        ],
    );
    let before = std::fs::read(&foreign).unwrap();
    let (v2, _) = update_payloads();
    let o = kiln(&[
        "update",
        "apply",
        foreign.to_str().unwrap(),
        v2.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("not a kiln A/B image"), "{}", text(&o));
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    std::fs::remove_file(&img).unwrap();
}

/// v1 → v2 inside the running system; then v3 over A, the slot v1 booted from and still
/// bootable, interrupted by pulling the plug in the middle of writing USR-A: A is no longer
/// bootable, B still boots untouched, and a second apply of v3 succeeds and boots. v3 never
/// reaches its ready point, so it is rolled back to v2 by the boot path alone, with nobody at
/// the console between typing the apply and seeing v2 again.
#[test]
fn interrupted_update_of_a_bootable_slot_then_rollback_of_a_broken_one() {
    let (v2, v3) = update_payloads();
    let img = copy_image(minimal_image(), "ab-guest.raw");

    let mut c = Console::start("ab-guest-1", &img, &[v2]);
    let r = c.ready();
    assert_eq!(
        (field(&r, "slot"), field(&r, "version")),
        ("A", "0.1.0"),
        "{r}"
    );
    c.send("kiln-agent update apply /dev/vdb && reboot");
    c.expect("kiln-agent: update applied: kiln 0.2.0 in USR-B", 900);
    c.expect("kiln: trying USR-B (tries left: 0)", 120);
    c.expect("kiln-agent: marked USR-B good", 300);
    let r = c.ready();
    assert_eq!(
        (field(&r, "slot"), field(&r, "version"), field(&r, "next")),
        ("B", "0.2.0", "B"),
        "{r}"
    );
    c.send("kiln-agent status");
    c.expect("USR-B: priority=2 tries=0 successful=1 version=0.2.0", 60);
    c.kill();
    // A is a complete, bootable system before the interrupted apply.
    let st = slot_status(&img);
    assert_eq!(slot(&st, "a"), (1, 0, true, "0.1.0".into()), "{st}");
    let (b_off, b_len) = part(&img, 4);
    let usr_b = range_sha256(&img, b_off, b_len);

    let mut c = Console::start("ab-guest-2", &img, &[v3]);
    c.ready();
    c.send("kiln-agent update apply /dev/vdb");
    c.expect("kiln-agent: wrote 64 MiB of USR-A", 900);
    c.kill();
    let st = slot_status(&img);
    assert_eq!(
        slot(&st, "a"),
        (0, 0, false, String::new()),
        "A, half written, must not be bootable: {st}"
    );
    assert_eq!(slot(&st, "b"), (2, 0, true, "0.2.0".into()), "{st}");
    assert_eq!(st["next_boot"]["slot"], "B", "{st}");
    assert_eq!(range_sha256(&img, b_off, b_len), usr_b, "USR-B changed");

    let mut c = Console::start("ab-guest-3", &img, &[v3]);
    let r = c.ready();
    assert_eq!(
        (field(&r, "slot"), field(&r, "version")),
        ("B", "0.2.0"),
        "{r}"
    );
    c.send("kiln-agent update apply /dev/vdb && reboot");
    c.expect("kiln-agent: update applied: kiln 0.3.0 in USR-A", 900);
    c.expect("kiln: trying USR-A (tries left: 0)", 120);
    c.expect("/usr is /dev/vda3", 300);
    c.expect("kiln-test: this system never reaches its ready point", 120);
    // The boot after that: A has no try left and never succeeded, so B boots, untouched.
    let r = c.ready();
    assert_eq!(
        (field(&r, "slot"), field(&r, "version"), field(&r, "next")),
        ("B", "0.2.0", "B"),
        "{r}"
    );
    c.kill();
    let st = slot_status(&img);
    assert_eq!(slot(&st, "a"), (2, 0, false, "0.3.0".into()));
    assert_eq!(slot(&st, "b"), (1, 0, true, "0.2.0".into()));
    std::fs::remove_file(&img).unwrap();
}

/// Every bad payload is refused by the agent in the running system, nothing on the disk
/// changes, and the system goes on running.
#[test]
fn bad_payloads_are_refused_in_the_guest() {
    let img = copy_image(minimal_image(), "bad-guest.raw");
    let bad = bad_payloads();
    let disks: Vec<&Path> = bad.iter().map(|(_, p, _)| p.as_path()).collect();
    // Partitions as they will be after the first boot's ROOT growth, which rewrites the GPT.
    let before = slots_and_esp(&img);
    let mut c = Console::start("bad-guest", &img, &disks);
    c.ready();
    for (i, (what, _, words)) in bad.iter().enumerate() {
        let dev = format!("/dev/vd{}", (b'b' + i as u8) as char);
        c.send(&format!(
            "kiln-agent update apply {dev}; echo \"apply-exit=$?\""
        ));
        let mut refusal = String::new();
        loop {
            let l = c.expect("", 900);
            // The shell's prompt may precede the agent's line.
            if l.contains("kiln-agent: ") && !l.contains("checking") && !l.contains("apply-exit") {
                refusal = l.clone();
            }
            if l.starts_with("apply-exit=") {
                assert_eq!(l, "apply-exit=1", "{what}");
                break;
            }
        }
        assert!(
            refusal.contains(words),
            "{what}: expected {words:?} in {refusal:?}"
        );
    }
    c.send("echo still-running $(cat /proc/uptime)");
    c.expect("still-running ", 60);
    c.kill();
    assert_eq!(
        slots_and_esp(&img),
        before,
        "a refused payload changed the disk"
    );
    std::fs::remove_file(&img).unwrap();
}

/// Runs `cmd` in the guest's shell and returns the agent's last message before the exit
/// status, which must be `code`.
fn agent_says(c: &mut Console, cmd: &str, code: i32) -> String {
    c.send(&format!("{cmd}; echo \"agent-exit=$?\""));
    let mut said = String::new();
    loop {
        let l = c.expect("", 900);
        if l.contains("kiln-agent: ") && !l.contains("agent-exit") {
            said = l.clone();
        }
        if l.starts_with("agent-exit=") {
            assert_eq!(l, format!("agent-exit={code}"), "{cmd}: {said}");
            return said;
        }
    }
}

/// Offline, `kiln update apply` refuses an older version (naming both) unless
/// --allow-downgrade, a payload of another product or architecture for the same board, and
/// an image none of whose slots has booted successfully; each refusal leaves the ESP and
/// both slots as they were. The kept slot's OS id is read from its own EROFS /usr, its
/// architecture from its kernel.
#[test]
fn offline_apply_refuses_downgrades_other_products_and_no_good_fallback() {
    let old = old_payload();
    let (v2, _) = update_payloads();
    let img = copy_image(minimal_image(), "offline-refusals.raw");
    let key = dev_public_key();
    let dev_key = cache_dir().join("keys/INSECURE-kiln-development-key.pem");
    let apply = |p: &Path, extra: &[&str]| {
        let mut args = vec![
            "update",
            "apply",
            img.to_str().unwrap(),
            p.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    let refused = |p: &Path, words: &[&str]| {
        let before = slots_and_esp(&img);
        let o = apply(p, &[]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        for w in words {
            assert!(t.contains(w), "expected {w:?} in:\n{t}");
        }
        assert!(!t.contains("panicked"), "{t}");
        assert_eq!(slots_and_esp(&img), before, "{t}: the image changed");
    };
    refused(
        old,
        &[
            "version 0.0.9 is older than the running 0.1.0",
            "--allow-downgrade",
        ],
    );
    let other_os = made_payload_with(
        "other-os",
        &dev_key,
        "amd64-usr",
        1 << 20,
        &["--os-id", "other-os"],
    );
    refused(
        &other_os,
        &["the payload is for OS \"other-os\", this system is \"kiln\""],
    );
    let other_arch = made_payload_with(
        "other-arch",
        &dev_key,
        "amd64-usr",
        1 << 20,
        &["--arch", "arm64"],
    );
    refused(
        &other_arch,
        &["the payload is for architecture arm64, this system is amd64"],
    );

    let o = apply(old, &["--allow-downgrade"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("a downgrade, allowed by --allow-downgrade"),
        "{}",
        text(&o)
    );
    let st = slot_status(&img);
    assert_eq!(slot(&st, "b"), (2, 1, false, "0.0.9".into()));
    assert_eq!(slot(&st, "a"), (1, 0, true, "0.1.0".into()));

    // A made untried too: no slot has booted successfully, so none may be replaced.
    let o = kiln(&["slot", "set-next", img.to_str().unwrap(), "a"]);
    assert!(o.status.success(), "{}", text(&o));
    refused(
        v2,
        &[
            "no slot of",
            "has booted successfully",
            "kiln slot mark-good",
        ],
    );
    std::fs::remove_file(&img).unwrap();
}

/// A tiny image whose GPT claims a 1 TiB ESP: kiln inspect, kiln slot and kiln update refuse
/// it before copying anything (before the fix, inspect copied the whole ESP out with
/// qemu-img dd and read it into memory, and slot and update converted the whole disk).
#[test]
fn a_huge_esp_in_a_tiny_image_is_refused_before_copying() {
    let dir = tempfile::tempdir_in(test_dir()).unwrap();
    let raw = dir.path().join("huge.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(2 << 40)
        .unwrap();
    tool(
        "sgdisk",
        &[
            "-n",
            "1:2048:+1T",
            "-t",
            "1:ef00",
            "-n",
            "3:0:+1G",
            "-u",
            "3:7130c94a-213a-4e5a-8e26-6cce9662f132",
            "-n",
            "4:0:+1G",
            "-u",
            "4:e03dd35c-7c2d-4a47-b3fe-27f15780a57c",
            raw.to_str().unwrap(),
        ],
    );
    let q = dir.path().join("huge.qcow2");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap(),
        ],
    );
    assert!(std::fs::metadata(&q).unwrap().len() < 4 << 20);
    let key = dir.path().join("k.pem");
    assert!(kiln(&["key", "generate", key.to_str().unwrap()])
        .status
        .success());
    let payload = dir.path().join("unused.payload");
    std::fs::write(&payload, b"not read").unwrap();
    let pub_key = format!("{}.pub", key.display());
    // The qcow2 whole; of the 2 TiB sparse raw, what holds data (its GPT at both ends) and
    // its mtime.
    let sum = |p: &Path| {
        if p == q.as_path() {
            return tool("sha256sum", &[p.to_str().unwrap()]);
        }
        let len = std::fs::metadata(p).unwrap().len();
        let m = std::fs::metadata(p).unwrap().modified().unwrap();
        format!(
            "{} {} {m:?}",
            range_sha256(p, 0, 1 << 20),
            range_sha256(p, len - (1 << 20), 1 << 20)
        )
    };
    let (raw_sum, q_sum) = (sum(&raw), sum(&q));
    for img in [&q, &raw] {
        let i = img.to_str().unwrap();
        let p = payload.to_str().unwrap();
        for args in [
            vec!["inspect", i],
            vec!["slot", "status", i],
            vec!["slot", "mark-good", i, "a"],
            vec!["update", "apply", i, p, "--key", &pub_key],
        ] {
            let t0 = std::time::Instant::now();
            let o = kiln(&args);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
            assert!(
                t.contains("EFI system partition")
                    && t.contains("more than the 1024 MiB kiln reads"),
                "{args:?}: {t}"
            );
            assert!(!t.contains("panicked"), "{t}");
            assert!(
                t0.elapsed().as_secs() < 60,
                "{args:?} took {:?}",
                t0.elapsed()
            );
        }
    }
    assert_eq!((sum(&raw), sum(&q)), (raw_sum, q_sum));
    // Nothing was left beside the images: no copy of the disk or of the ESP.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "huge.qcow2",
            "huge.raw",
            "k.pem",
            "k.pem.pub",
            "unused.payload"
        ]
    );
}

/// In the running system: an older payload is refused, naming both versions; with
/// --allow-downgrade it is applied and boots; while that slot runs on its try and is not
/// marked good, an update is refused (the other slot is the last good system), and once
/// `kiln-agent mark-good` has run it goes through. While the VM runs, the offline tools leave
/// its image alone.
#[test]
fn downgrades_and_updates_from_an_untried_slot_in_the_guest() {
    let old = old_payload();
    let (v2, _) = update_payloads();
    let img = copy_image(minimal_image(), "guest-refusals.raw");
    let key = dev_public_key();
    let before = slots_and_esp(&img);

    let mut c = Console::start("guest-refusals-1", &img, &[old, v2]);
    let r = c.ready();
    assert_eq!(
        (field(&r, "slot"), field(&r, "version")),
        ("A", "0.1.0"),
        "{r}"
    );
    for args in [
        vec!["slot", "mark-good", img.to_str().unwrap()],
        vec![
            "update",
            "apply",
            img.to_str().unwrap(),
            v2.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    ] {
        let o = kiln(&args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains("is in use: QEMU has it open"),
            "{}",
            text(&o)
        );
    }
    let said = agent_says(&mut c, "kiln-agent update apply /dev/vdb", 1);
    assert!(
        said.contains("version 0.0.9 is older than the running 0.1.0")
            && said.contains("--allow-downgrade"),
        "{said}"
    );
    c.kill();
    assert_eq!(
        slots_and_esp(&img),
        before,
        "a refused apply changed the disk"
    );

    let mut c = Console::start("guest-refusals-2", &img, &[old, v2]);
    c.ready();
    c.send("kiln-agent update apply --allow-downgrade /dev/vdb && reboot");
    c.expect("a downgrade, allowed by --allow-downgrade", 900);
    c.expect("kiln-agent: update applied: kiln 0.0.9 in USR-B", 900);
    c.expect("kiln: trying USR-B (tries left: 0)", 120);
    let r = c.ready();
    // 0.0.9 runs on its try and does not mark itself good: the next boot would be A's.
    assert_eq!(
        (field(&r, "slot"), field(&r, "version"), field(&r, "next")),
        ("B", "0.0.9", "A"),
        "{r}"
    );
    let during = slots_and_esp(&img);
    let said = agent_says(&mut c, "kiln-agent update apply /dev/vdc", 1);
    assert!(
        said.contains("USR-B is not marked good")
            && said.contains("USR-A may be the last good system")
            && said.contains("kiln-agent mark-good"),
        "{said}"
    );
    assert_eq!(
        slots_and_esp(&img),
        during,
        "a refused apply changed the disk"
    );
    c.send("kiln-agent mark-good && kiln-agent update apply /dev/vdc && reboot");
    c.expect("kiln-agent: marked USR-B good", 60);
    c.expect("kiln-agent: update applied: kiln 0.2.0 in USR-A", 900);
    c.expect("kiln: trying USR-A (tries left: 0)", 120);
    let r = c.ready();
    assert_eq!(
        (field(&r, "slot"), field(&r, "version"), field(&r, "next")),
        ("A", "0.2.0", "A"),
        "{r}"
    );
    c.kill();
    let st = slot_status(&img);
    assert_eq!(slot(&st, "a"), (2, 0, true, "0.2.0".into()));
    assert_eq!(slot(&st, "b"), (1, 0, true, "0.0.9".into()));
    std::fs::remove_file(&img).unwrap();
}

/// A channel index for `payload` at `seq`, signed with the development key the test images
/// trust, in `<mirror>/amd64-usr/channels/alpha.<seq>` with `channels/alpha` pointing at it.
/// The payload itself is at `<root>/payloads/`, three levels above the mirror's channels.
fn publish_channel(mirror: &Path, seq: u64, payload: &Path, sha256: &str) {
    use kiln_update::channel::{Index, PayloadRef, INDEX, INDEX_SIG};
    let key = kiln_update::keys::load_signing_key(
        &cache_dir().join("keys/INSECURE-kiln-development-key.pem"),
    )
    .unwrap();
    let name = payload.file_name().unwrap().to_str().unwrap();
    let index = Index {
        format: 1,
        channel: "alpha".into(),
        board: "amd64-usr".into(),
        seq,
        version: "0.2.0".into(),
        release: "../../0.2.0".into(),
        payload: Some(PayloadRef {
            path: format!("../../../../payloads/{name}"),
            size: std::fs::metadata(payload).unwrap().len(),
            sha256: sha256.into(),
            sha512: "0".repeat(128),
        }),
        digests_sha256: "0".repeat(64),
        key_id: kiln_update::keys::key_id(&key.verifying_key()),
        history: vec!["0.1.0".into()],
    };
    let channels = mirror.join("amd64-usr/channels");
    let state = channels.join(format!("alpha.{seq}"));
    std::fs::create_dir_all(&state).unwrap();
    let bytes = serde_json::to_vec_pretty(&index).unwrap();
    let comment = format!("channel:alpha\tboard:amd64-usr\tversion:0.2.0\tseq:{seq}");
    std::fs::write(state.join(INDEX), &bytes).unwrap();
    std::fs::write(
        state.join(INDEX_SIG),
        kiln_release::sign::sign(&key, &bytes, &comment).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("alpha.{seq}"), channels.join("alpha")).unwrap();
}

/// `kiln-agent update apply-from-channel` in the running system, from channels on a mounted
/// mirror disk: a signed index whose payload digest is not the payload's is refused and
/// changes nothing; the good one is applied and boots; the seq it saw is kept on ROOT, and an
/// older index (seq 3 after 5), correctly signed, is refused as a replay.
#[test]
fn apply_from_channel_in_the_guest_checks_the_index_digest_and_seq() {
    let (v2, _) = update_payloads();
    let tree = tempfile::tempdir_in(test_dir()).unwrap();
    let root = tree.path().join("mirror");
    std::fs::create_dir_all(root.join("payloads")).unwrap();
    std::fs::copy(v2, root.join("payloads").join(v2.file_name().unwrap())).unwrap();
    let sha = tool("sha256sum", &[v2.to_str().unwrap()])[..64].to_string();
    publish_channel(&root.join("tampered"), 4, v2, &"ab".repeat(32));
    publish_channel(&root.join("good"), 5, v2, &sha);
    publish_channel(&root.join("replayed"), 3, v2, &sha);
    let disk = tree.path().join("mirror.ext4");
    tool(
        "mke2fs",
        &[
            "-q",
            "-t",
            "ext4",
            "-d",
            root.to_str().unwrap(),
            disk.to_str().unwrap(),
            "256M",
        ],
    );
    let img = copy_image(minimal_image(), "guest-channel.raw");
    let mut c = Console::start("guest-channel", &img, &[&disk]);
    c.ready();
    agent_says(
        &mut c,
        "busybox mkdir -p /mnt && busybox mount -o ro /dev/vdb /mnt",
        0,
    );
    let before = slots_and_esp(&img);
    let said = agent_says(
        &mut c,
        "kiln-agent update apply-from-channel /mnt/tampered/amd64-usr/channels/alpha",
        1,
    );
    assert!(
        said.contains(&format!(
            "its sha256 is {sha}, expected {}",
            "ab".repeat(32)
        )) && said.contains("not the payload the index names"),
        "{said}"
    );
    assert_eq!(
        slots_and_esp(&img),
        before,
        "a refused apply changed the disk"
    );
    c.send("kiln-agent update apply-from-channel /mnt/good/amd64-usr/channels/alpha");
    c.expect(
        "kiln-agent: channel alpha offers 0.2.0 (running 0.1.0)",
        120,
    );
    c.expect("kiln-agent: update applied: kiln 0.2.0 in USR-B", 900);
    c.send("echo seq=$(cat /var/lib/kiln/channels/alpha.seq)");
    c.expect("seq=5", 60);
    let said = agent_says(
        &mut c,
        "kiln-agent update check /mnt/replayed/amd64-usr/channels/alpha",
        1,
    );
    assert!(
        said.contains("the index has seq 3, but this system has seen seq 5")
            && said.contains("replayed, refused"),
        "{said}"
    );
    c.send("busybox umount /mnt && reboot");
    c.expect("kiln: trying USR-B (tries left: 0)", 300);
    let r = c.ready();
    assert_eq!(
        (field(&r, "slot"), field(&r, "version"), field(&r, "next")),
        ("B", "0.2.0", "B"),
        "{r}"
    );
    c.kill();
    std::fs::remove_file(&img).unwrap();
}
