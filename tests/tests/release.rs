//! Release engineering, end to end: versions from the recipe's scheme, the signed release
//! directory (checked by kiln and by minisign itself), verification that names each bad
//! file, promotion through alpha → beta → stable with its refusals, and reproducibility.
//!
//! Two releases are built once per test run: 366.1.0 (qemu, metal, gce and the payload) and
//! 366.1.1 (the payload only), with a key generated for the run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_tests::*;

const V1: &str = "366.1.0";
const V2: &str = "366.1.1";

struct Releases {
    /// `<root>/amd64-usr/<version>/`
    root: PathBuf,
    key: PathBuf,
    public: PathBuf,
    build_log: String,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The minimal recipe with a [version] scheme instead of a fixed version: epoch 2024-01-01,
/// so the recipe's SOURCE_DATE_EPOCH (2025-01-01) is day 366.
fn scheme_recipe(dir: &Path, patch: u32) -> PathBuf {
    let minimal = std::fs::read_to_string(root().join("recipes/minimal.toml")).unwrap();
    let overlay = root().join("recipes/minimal/overlay");
    let r = minimal.replace("version = \"0.1.0\"\n", "").replace(
        "overlays = [\"minimal/overlay\"]",
        &format!("overlays = [{overlay:?}]"),
    );
    assert_ne!(r, minimal);
    let r = format!(
        "name = \"kiln\"\n{r}\n[version]\nepoch = \"2024-01-01\"\nbranch = 1\npatch = {patch}\n"
    );
    let p = dir.join(format!("release-{patch}.toml"));
    std::fs::write(&p, r).unwrap();
    p
}

fn releases() -> &'static Releases {
    static R: OnceLock<Releases> = OnceLock::new();
    R.get_or_init(|| {
        minimal_out();
        let dir = test_dir().join("releases");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("release-key.pem");
        let o = kiln(&["key", "generate", s(&key)]);
        assert!(o.status.success(), "{}", text(&o));
        let root = dir.join("out");
        let mut build_log = String::new();
        for (patch, platforms) in [(0, "qemu,metal,gce"), (1, "none")] {
            let recipe = scheme_recipe(&dir, patch);
            let o = kiln(&[
                "build",
                s(&recipe),
                "--board-dir",
                s(&root_board_profiles()),
                "--release",
                "--platform",
                platforms,
                "--signing-key",
                s(&key),
                "--output",
                s(&root),
            ]);
            let t = text(&o);
            assert!(o.status.success(), "release build failed:\n{t}");
            build_log.push_str(&t);
        }
        Releases {
            root,
            public: PathBuf::from(format!("{}.pub", key.display())),
            key,
            build_log,
        }
    })
}

fn root_board_profiles() -> PathBuf {
    root().join("board-profiles")
}

fn release_dir(v: &str) -> PathBuf {
    releases().root.join("amd64-usr").join(v)
}

fn verify(dir: &Path, key: &Path) -> (Option<i32>, String) {
    let o = kiln(&["verify", s(dir), "--key", s(key)]);
    (o.status.code(), text(&o))
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_release_is_complete_versioned_and_signed() {
    let r = releases();
    let d = release_dir(V1);
    assert_eq!(
        files(&d),
        [
            "DIGESTS",
            "DIGESTS.minisig",
            "kiln_gce.DIGESTS",
            "kiln_gce_image.tar.gz",
            "kiln_metal.DIGESTS",
            "kiln_metal_image.bin.xz",
            "kiln_qemu.DIGESTS",
            "kiln_qemu.sh",
            "kiln_qemu_image.qcow2",
            "kiln_update.payload",
            "manifest.json",
            "packages.txt",
            "version.txt",
        ]
    );
    let vt = std::fs::read_to_string(d.join("version.txt")).unwrap();
    for line in [
        "KILN_BUILD=366",
        "KILN_BRANCH=1",
        "KILN_PATCH=0",
        "KILN_VERSION=366.1.0",
        "KILN_VERSION_ID=366.1.0",
        "KILN_BOARD=amd64-usr",
        "KILN_CHANNEL=alpha",
    ] {
        assert!(vt.lines().any(|l| l == line), "{line} not in:\n{vt}");
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["version"], V1);
    assert_eq!(m["board"], "amd64-usr");
    assert_eq!(m["payload"], "kiln_update.payload");
    let hash = vt
        .lines()
        .find_map(|l| l.strip_prefix("KILN_RECIPE_HASH="))
        .unwrap();
    assert_eq!(m["recipe_hash"], hash);
    // The kernel's version and its config's digest, as Debian's package and sha256sum say.
    let kver = m["kernel"]["version"].as_str().unwrap();
    assert!(kver.starts_with("6.1."), "{kver}");
    let kdeb = std::fs::read_dir(cache_dir().join("debs/bookworm-amd64"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("linux-image-{kver}_"))
        })
        .unwrap_or_else(|| panic!("no linux-image-{kver} .deb in the cache"));
    let config = tempfile::NamedTempFile::new_in(test_dir()).unwrap();
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xOf - ./boot/config-{kver} > '{}'",
            s(&kdeb),
            s(config.path())
        ))
        .status()
        .unwrap();
    assert!(o.success(), "cannot read config-{kver} from {kdeb:?}");
    kiln_tests::exact::assert_sha256(
        config.path(),
        m["kernel"]["config_sha256"].as_str().unwrap(),
    );
    // Each host tool's version is what dpkg says is installed; kiln's is what it says itself.
    let tools = m["tools"].as_object().unwrap();
    // Recorded as `package=version`, as apt names an installed version.
    let dpkg = |pkg: &str| {
        format!(
            "{pkg}={}",
            tool("dpkg-query", &["-W", "-f=${Version}", pkg])
        )
    };
    let expect = [
        ("mmdebstrap", dpkg("mmdebstrap")),
        ("e2fsprogs", dpkg("e2fsprogs")),
        ("erofs-utils", dpkg("erofs-utils")),
        (
            "dosfstools mtools",
            format!("{} {}", dpkg("dosfstools"), dpkg("mtools")),
        ),
        (
            "grub",
            format!(
                "{} {} {}",
                dpkg("grub-common"),
                dpkg("grub-pc-bin"),
                dpkg("grub-efi-amd64-bin")
            ),
        ),
        ("kmod", dpkg("kmod")),
        ("qemu-utils", dpkg("qemu-utils")),
        ("xz-utils", dpkg("xz-utils")),
        ("pigz", dpkg("pigz")),
    ];
    for (k, v) in &expect {
        assert!(
            !v.contains("= ") && !v.ends_with('='),
            "dpkg knows no version in {v}"
        );
        assert_eq!(
            tools.get(*k).and_then(|t| t.as_str()),
            Some(v.as_str()),
            "{k}"
        );
    }
    let kiln_says = text(&kiln(&["--version"]));
    assert_eq!(
        kiln_says.trim(),
        format!("kiln {}", tools["kiln"].as_str().unwrap()),
        "kiln --version"
    );
    assert_eq!(tools.len(), expect.len() + 1, "{tools:?}");
    // Every artifact of the manifest, with the size on disk and the digests of DIGESTS.
    let digests = std::fs::read_to_string(d.join("DIGESTS")).unwrap();
    let arts = m["artifacts"].as_array().unwrap();
    // All but DIGESTS, its signature and the manifest itself.
    let mut named: Vec<&str> = arts.iter().map(|a| a["file"].as_str().unwrap()).collect();
    named.sort();
    let mut want = files(&d);
    want.retain(|f| !["DIGESTS", "DIGESTS.minisig", "manifest.json"].contains(&f.as_str()));
    assert_eq!(named, want);
    for a in arts {
        let f = a["file"].as_str().unwrap();
        assert_eq!(
            a["size"].as_u64().unwrap(),
            std::fs::metadata(d.join(f)).unwrap().len(),
            "{f}"
        );
        for k in ["sha256", "sha512"] {
            let line = format!("{}  {f}", a[k].as_str().unwrap());
            assert!(digests.lines().any(|l| l == line), "{k} of {f}");
        }
        kiln_tests::exact::assert_sha256(&d.join(f), a["sha256"].as_str().unwrap());
    }
    // Packages, with versions, in the manifest and packages.txt alike.
    let pk = std::fs::read_to_string(d.join("packages.txt")).unwrap();
    let busybox = pk
        .lines()
        .find(|l| l.starts_with("busybox-static "))
        .expect("busybox-static in packages.txt");
    assert!(m["packages"].as_array().unwrap().iter().any(|p| format!(
        "{} {} {}",
        p["name"], p["version"], p["arch"]
    )
    .replace('"', "")
        == busybox));
    assert_eq!(m["packages"].as_array().unwrap().len(), pk.lines().count());

    // kiln verify, and minisign itself with the key in minisign's format.
    let (code, t) = verify(&d, &r.public);
    assert_eq!(code, Some(0), "{t}");
    assert!(
        t.contains("ok: kiln 366.1.0 for amd64-usr (11 files"),
        "{t}"
    );
    let o = kiln(&["key", "public", "--minisign", s(&r.key)]);
    assert!(o.status.success());
    let mpub = d
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("key.minisign.pub");
    std::fs::write(&mpub, &o.stdout).unwrap();
    let t = tool("minisign", &["-Vm", s(&d.join("DIGESTS")), "-p", s(&mpub)]);
    assert!(
        t.contains("Signature and comment signature verified"),
        "{t}"
    );
    assert!(t.contains("release:amd64-usr/366.1.0"), "{t}");

    // The private key never shows up in what the build printed.
    let pem = std::fs::read_to_string(&r.key).unwrap();
    let secret_line = pem.lines().nth(1).unwrap();
    assert!(!r.build_log.contains(secret_line));
    for f in files(&d) {
        let bytes = std::fs::read(d.join(&f)).unwrap();
        assert!(
            !bytes
                .windows(secret_line.len())
                .any(|w| w == secret_line.as_bytes()),
            "{f} holds the private key"
        );
    }
}

/// The version, board, channel and recipe hash inside the image, as the booted system reads
/// them; and the agent's channel check run in that system, against the channels of a release
/// tree on a second disk: alpha offers 366.1.1 over the running 366.1.0 and its seq is kept
/// on ROOT, beta is up to date. (This once extracted USR with fsck.erofs 1.5 --extract, which
/// failed with "I/O error occurred when verifying data chunk": that is how erofs-utils 1.5
/// reports a full disk while extracting, reproduced by extracting this USR into a 50 MiB
/// tmpfs; with room, the extraction succeeds. The booted system is the better witness.)
#[test]
fn the_booted_release_image_carries_its_version_and_reads_its_channel() {
    let d = release_dir(V1);
    // The channels of a release tree (alpha at 366.1.1, beta at 366.1.0) and the payload
    // they offer, as a static server would hold them, on a second disk.
    let (_scratch, board) = promotion_root();
    assert_eq!(promote(&board, V1, "alpha", &[]).0, Some(0));
    assert_eq!(promote(&board, V1, "beta", &[]).0, Some(0));
    assert_eq!(promote(&board, V2, "alpha", &[]).0, Some(0));
    let tree = board.parent().unwrap().join("mirror");
    let mirror_board = tree.join("amd64-usr");
    std::fs::create_dir_all(mirror_board.join(V2)).unwrap();
    tool("cp", &["-a", s(&board.join("channels")), s(&mirror_board)]);
    std::fs::copy(
        board.join(V2).join("kiln_update.payload"),
        mirror_board.join(V2).join("kiln_update.payload"),
    )
    .unwrap();
    let disk = board.parent().unwrap().join("mirror.ext4");
    tool(
        "mke2fs",
        &["-q", "-t", "ext4", "-d", s(&tree), s(&disk), "512M"],
    );

    let img = copy_image(&d.join("kiln_qemu_image.qcow2"), "release-qemu.qcow2");
    let mut c = Console::start("release-qemu", &img, &[&disk]);
    let ready = c.ready();
    assert_eq!(field(&ready, "version"), V1, "{ready}");
    // $((1+1)) keeps the echoed command line from matching what the command prints.
    c.send("echo V$((1+1))V $(tr '\\n' ' ' < /usr/lib/kiln/version.txt)");
    let l = c.expect("V2V ", 60);
    let inside: Vec<&str> = l[l.find("V2V ").unwrap() + 4..]
        .split_whitespace()
        .collect();
    let outside = std::fs::read_to_string(d.join("version.txt")).unwrap();
    assert_eq!(inside, outside.lines().collect::<Vec<_>>());
    c.send("echo O$((1+1))O $(grep -E '^(VERSION_ID|KILN_CHANNEL|KILN_BOARD)=' /usr/lib/os-release | tr '\\n' ' ')");
    let l = c.expect("O2O ", 60);
    assert_eq!(
        l[l.find("O2O ").unwrap()..].trim(),
        "O2O VERSION_ID=366.1.0 KILN_CHANNEL=alpha KILN_BOARD=amd64-usr"
    );
    // The agent's channel check in the running image, with the keys it trusts and the
    // os-release it runs.
    c.send("busybox mkdir -p /mnt && busybox mount -o ro /dev/vdb /mnt && echo M$((1+1))M");
    c.expect("M2M", 120);
    c.send("kiln-agent update check /mnt/amd64-usr/channels/alpha; echo C$((1+1))C=$?");
    let offer = c.expect("channel alpha offers", 300);
    assert!(
        offer.contains("kiln-agent: channel alpha offers 366.1.1 (running 366.1.0)"),
        "{offer}"
    );
    c.expect("C2C=0", 120);
    c.send("echo S$((1+1))S $(cat /var/lib/kiln/channels/alpha.seq)");
    let l = c.expect("S2S ", 60);
    // alpha's index is at seq 2 (366.1.0, then 366.1.1).
    assert_eq!(l[l.find("S2S ").unwrap()..].trim(), "S2S 2");
    c.send("kiln-agent update check /mnt/amd64-usr/channels/beta; echo C$((1+1))C=$?");
    let t = c.expect("channel beta is at", 300);
    assert!(t.contains("channel beta is at 366.1.0: up to date"), "{t}");
    c.expect("C2C=0", 120);
    c.kill();
    std::fs::remove_file(&img).unwrap();
}

/// A copy of a release directory (hard links: changes below replace files, never write
/// through them).
fn copy_release(v: &str, into: &Path) -> PathBuf {
    let dest = into.join(v);
    tool("cp", &["-al", s(&release_dir(v)), s(&dest)]);
    dest
}

fn replace(p: &Path, bytes: &[u8]) {
    std::fs::remove_file(p).unwrap();
    std::fs::write(p, bytes).unwrap();
}

#[test]
fn verify_names_each_missing_extra_or_altered_file() {
    let r = releases();
    let scratch = tempfile::tempdir_in(test_dir()).unwrap();
    let d = copy_release(V1, scratch.path());
    let script = std::fs::read(d.join("kiln_qemu.sh")).unwrap();
    let mut changed = script.clone();
    changed[10] ^= 0x20;
    replace(&d.join("kiln_qemu.sh"), &changed);
    std::fs::remove_file(d.join("kiln_gce.DIGESTS")).unwrap();
    std::fs::write(d.join("notes.txt"), "not part of the release\n").unwrap();
    let (code, t) = verify(&d, &r.public);
    assert_eq!(code, Some(1), "{t}");
    let lines: Vec<&str> = t.lines().collect();
    assert!(
        lines.contains(&"altered: kiln_qemu.sh (SHA-256 and SHA-512 differ)"),
        "{t}"
    );
    assert!(lines.contains(&"missing: kiln_gce.DIGESTS"), "{t}");
    assert!(lines.contains(&"extra: notes.txt (not in DIGESTS)"), "{t}");
    assert!(t.contains("3 problem(s)"), "{t}");

    // A DIGESTS changed to match the altered file breaks the signature.
    let d2 = copy_release(V2, scratch.path());
    let digests = std::fs::read_to_string(d2.join("DIGESTS")).unwrap();
    replace(
        &d2.join("DIGESTS"),
        digests
            .replacen("  version.txt", "  version.txt ", 1)
            .as_bytes(),
    );
    let (code, t) = verify(&d2, &r.public);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("signature: DIGESTS.minisig: signature does not verify"),
        "{t}"
    );
    // Another key: refused.
    let other = scratch.path().join("other.pem");
    assert!(kiln(&["key", "generate", s(&other)]).status.success());
    let (code, t) = verify(
        &release_dir(V2),
        &PathBuf::from(format!("{}.pub", other.display())),
    );
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("signature does not verify with key"), "{t}");
    // Unsigned.
    let d3 = scratch.path().join("unsigned");
    tool("cp", &["-al", s(&release_dir(V2)), s(&d3)]);
    std::fs::remove_file(d3.join("DIGESTS.minisig")).unwrap();
    let (code, t) = verify(&d3, &r.public);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("missing: DIGESTS.minisig (the release is not signed)"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

/// A board directory of its own for promotions: hard-linked copies of both releases.
fn promotion_root() -> (tempfile::TempDir, PathBuf) {
    let scratch = tempfile::tempdir_in(test_dir()).unwrap();
    let board = scratch.path().join("out/amd64-usr");
    std::fs::create_dir_all(&board).unwrap();
    copy_release(V1, &board);
    copy_release(V2, &board);
    (scratch, board)
}

fn promote(board: &Path, v: &str, to: &str, extra: &[&str]) -> (Option<i32>, String) {
    promote_env(board, v, to, extra, &[])
}

fn promote_env(
    board: &Path,
    v: &str,
    to: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut args = vec![
        "release",
        "promote",
        v,
        "--to",
        to,
        "--output",
        s(board.parent().unwrap()),
        "--board",
        board.file_name().unwrap().to_str().unwrap(),
    ];
    let key = releases().key.clone();
    let key = key.to_str().unwrap().to_string();
    if !env.iter().any(|(k, _)| k.starts_with("KILN_SIGNING_KEY"))
        && !extra.contains(&"--signing-key")
    {
        args.push("--signing-key");
        args.push(&key);
    }
    args.extend_from_slice(extra);
    let o = kiln_env(&args, env);
    (o.status.code(), text(&o))
}

/// The channel as a reader sees it: its index bytes and where `current` points.
fn channel(board: &Path, c: &str) -> Option<(Vec<u8>, PathBuf)> {
    let d = board.join("channels").join(c);
    let index = std::fs::read(d.join("index.json")).ok()?;
    Some((index, std::fs::canonicalize(d.join("current")).unwrap()))
}

fn index(board: &Path, c: &str) -> serde_json::Value {
    serde_json::from_slice(&channel(board, c).unwrap().0).unwrap()
}

#[test]
fn promotion_goes_alpha_beta_stable_and_refuses_skips_and_downgrades() {
    let (_scratch, board) = promotion_root();
    // Skipping alpha: refused without --force, and no channel appears.
    let (code, t) = promote(&board, V1, "beta", &[]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("366.1.0 has never been in alpha"), "{t}");
    assert!(channel(&board, "beta").is_none());

    let (code, t) = promote(&board, V1, "alpha", &[]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("alpha: (new channel) → 366.1.0"), "{t}");
    let (_, current) = channel(&board, "alpha").unwrap();
    assert_eq!(current, std::fs::canonicalize(board.join(V1)).unwrap());
    let i = index(&board, "alpha");
    assert_eq!(i["version"], V1);
    assert_eq!(i["payload"]["path"], "../../366.1.0/kiln_update.payload");
    let payload = board.join(V1).join("kiln_update.payload");
    assert_eq!(
        i["payload"]["size"],
        std::fs::metadata(&payload).unwrap().len()
    );
    kiln_tests::exact::assert_sha256(&payload, i["payload"]["sha256"].as_str().unwrap());
    // The index is signed: minisign verifies it with the release key.
    let o = kiln(&["key", "public", "--minisign", s(&releases().key)]);
    let mpub = board.join("../key.minisign.pub");
    std::fs::write(&mpub, &o.stdout).unwrap();
    let idx = board.join("channels/alpha/index.json");
    let t = tool("minisign", &["-Vm", s(&idx), "-p", s(&mpub)]);
    assert!(t.contains("channel:alpha"), "{t}");

    // Again: nothing to do.
    let (code, t) = promote(&board, V1, "alpha", &[]);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("already at 366.1.0"), "{t}");

    assert_eq!(promote(&board, V1, "beta", &[]).0, Some(0));
    assert_eq!(promote(&board, V2, "alpha", &[]).0, Some(0));
    // Stable without beta: refused; V1 went through beta, so it may.
    let (code, t) = promote(&board, V2, "stable", &[]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("never been in beta"), "{t}");
    let (code, t) = promote(&board, V1, "stable", &[]);
    assert_eq!(code, Some(0), "{t}");

    // A downgrade of alpha: refused, then allowed with --force.
    let before = channel(&board, "alpha").unwrap();
    let (code, t) = promote(&board, V1, "alpha", &[]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("alpha is at 366.1.1, newer than 366.1.0: a downgrade needs --force"),
        "{t}"
    );
    assert_eq!(channel(&board, "alpha").unwrap(), before);
    let (code, t) = promote(&board, V1, "alpha", &["--force"]);
    assert_eq!(code, Some(0), "{t}");
    let i = index(&board, "alpha");
    assert_eq!(i["version"], V1);
    assert_eq!(i["history"], serde_json::json!([V2, V1]));

    // Status reads every channel.
    let o = kiln(&[
        "release",
        "status",
        "--output",
        s(board.parent().unwrap()),
        "--key",
        s(&releases().public),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("alpha: 366.1.0 (seq 3)")
            && t.contains("beta: 366.1.0 (seq 1)")
            && t.contains("stable: 366.1.0 (seq 1)"),
        "{t}"
    );

    // The agent of an image reads the channel to find its update: a root with the release
    // key trusted and os-release saying what runs.
    let agent = &kiln_tests::binaries().1;
    let fake = board.parent().unwrap().join("image-root");
    let keys = fake.join("usr/share/kiln/update-keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(&releases().public, keys.join("release.pub")).unwrap();
    let check_with = |running: &str, board_name: &str, extra: &[&str]| {
        std::fs::write(
            fake.join("usr/lib/os-release"),
            format!("VERSION=\"{running}\"\nKILN_BOARD={board_name}\n"),
        )
        .unwrap();
        let o = std::process::Command::new(agent)
            .args(["update", "check"])
            .arg(board.join("channels/alpha"))
            .arg("--root")
            .arg(&fake)
            .args(extra)
            .output()
            .unwrap();
        (o.status.code(), text(&o))
    };
    let check = |running: &str, board_name: &str| check_with(running, board_name, &[]);
    std::fs::create_dir_all(fake.join("usr/lib")).unwrap();
    // The channel (366.1.0) is older than what runs (366.1.1): a downgrade offer, refused
    // unless allowed.
    let (code, t) = check(V2, "amd64-usr");
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("channel alpha offers 366.1.0")
            && t.contains("version 366.1.0 is older than the running 366.1.1"),
        "{t}"
    );
    let (code, t) = check_with(V2, "amd64-usr", &["--allow-downgrade"]);
    assert_eq!(code, Some(0), "{t}");
    // The seq it saw is kept on the image's ROOT.
    assert_eq!(
        std::fs::read_to_string(fake.join("var/lib/kiln/channels/alpha.seq")).unwrap(),
        "3\n"
    );
    let path = t
        .split_once("): payload ")
        .and_then(|(_, r)| r.rsplit_once(" ("))
        .map(|(p, _)| p)
        .unwrap_or_else(|| panic!("no payload in {t}"));
    assert!(
        t.contains("kiln-agent: channel alpha offers 366.1.0 (running 366.1.1)"),
        "{t}"
    );
    assert_eq!(
        std::fs::canonicalize(path).unwrap_or_else(|e| panic!("{path}: {e}; {t}")),
        std::fs::canonicalize(board.join(V1).join("kiln_update.payload")).unwrap()
    );
    let (code, t) = check(V1, "amd64-usr");
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("channel alpha is at 366.1.0: up to date"), "{t}");
    let (code, t) = check(V2, "arm64-usr");
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("the channel is for board amd64-usr, this system is arm64-usr"),
        "{t}"
    );
    let other = board.parent().unwrap().join("other.pem");
    assert!(kiln(&["key", "generate", s(&other)]).status.success());
    std::fs::remove_file(keys.join("release.pub")).unwrap();
    std::fs::copy(format!("{}.pub", other.display()), keys.join("other.pub")).unwrap();
    let (code, t) = check(V2, "amd64-usr");
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("not signed by a key this system trusts"), "{t}");
}

#[test]
fn bad_promotions_change_nothing() {
    let (scratch, board) = promotion_root();
    assert_eq!(promote(&board, V1, "alpha", &[]).0, Some(0));
    let alpha = channel(&board, "alpha").unwrap();
    let listing = || files(&board.join("channels"));
    let before = listing();

    // A version that does not exist.
    let (code, t) = promote(&board, "366.9.9", "alpha", &[]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("no release 366.9.9") && t.contains("366.1.0, 366.1.1"),
        "{t}"
    );

    // A tampered release.
    let payload = board.join(V2).join("kiln_update.payload");
    let mut b = std::fs::read(&payload).unwrap();
    let n = b.len() / 2;
    b[n] ^= 1;
    replace(&payload, &b);
    let (code, t) = promote(&board, V2, "alpha", &[]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("does not verify") && t.contains("altered: kiln_update.payload"),
        "{t}"
    );

    // A key that is not the channel's.
    let other = scratch.path().join("other.pem");
    assert!(kiln(&["key", "generate", s(&other)]).status.success());
    let (code, t) = promote(&board, V1, "alpha", &["--signing-key", s(&other)]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("does not match channel alpha's public key"),
        "{t}"
    );
    // And a release it did not sign, for a channel not yet made.
    let (code, t) = promote(&board, V1, "beta", &["--signing-key", s(&other)]);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("signature does not verify with key"), "{t}");

    // No key at all.
    let o = kiln(&[
        "release",
        "promote",
        V1,
        "--to",
        "beta",
        "--output",
        s(board.parent().unwrap()),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("give --signing-key"), "{}", text(&o));

    // A key readable by others.
    let open = scratch.path().join("open.pem");
    std::fs::copy(&releases().key, &open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, t) = promote(&board, V1, "beta", &["--signing-key", s(&open)]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("has mode 0644") && t.contains("chmod 600"),
        "{t}"
    );

    // A release directory of another board.
    let arm = scratch.path().join("out/arm64-usr");
    std::fs::create_dir_all(&arm).unwrap();
    tool("cp", &["-al", s(&board.join(V1)), s(&arm.join(V1))]);
    let (code, t) = promote(&arm, V1, "alpha", &[]);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("holds a release for board amd64-usr, not arm64-usr"),
        "{t}"
    );
    assert!(!arm.join("channels/alpha").exists());

    // An interrupted promotion: killed after writing the new state, before the switch.
    let (code, t) = promote_env(
        &board,
        V1,
        "beta",
        &[],
        &[("KILN_FAILPOINT", "promote-before-switch")],
    );
    assert_ne!(code, Some(0), "{t}");
    assert!(channel(&board, "beta").is_none(), "beta appeared: {t}");

    assert_eq!(channel(&board, "alpha").unwrap(), alpha);
    assert!(!t.contains("panicked"), "{t}");
    // The next promotion cleans up after the interrupted one and succeeds.
    let pem = std::fs::read_to_string(&releases().key).unwrap();
    let (code, t) = promote_env(
        &board,
        V1,
        "beta",
        &[],
        &[("KILN_SIGNING_KEY_PEM", pem.as_str())],
    );
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("KILN_SIGNING_KEY_PEM"), "{t}");
    let mut after = listing();
    after.retain(|n| !n.starts_with("beta"));
    assert_eq!(after, before, "leftovers of the interrupted promotion");
}

/// Every file of a build of all seven platforms (the board image, each platform's artifacts,
/// raw disks, sidecars and DIGESTS, the payload), compared byte for byte by this test with a
/// second build from a cache of its own that shares only the downloaded packages (and the
/// development key, an input): nothing of the first build's stages or xz chunks is reused.
#[test]
fn two_builds_from_separate_caches_are_bit_identical() {
    let first = minimal_out();
    let scratch = tempfile::tempdir_in(test_dir()).unwrap();
    let cache = scratch.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    tool("cp", &["-al", s(&cache_dir().join("debs")), s(&cache)]);
    tool("cp", &["-a", s(&cache_dir().join("keys")), s(&cache)]);
    let second = scratch.path().join("out");
    let o = kiln_env(
        &[
            "build",
            "recipes/minimal.toml",
            "--keep-raw",
            "--dev-key",
            "--output",
            s(&second),
        ],
        &[("KILN_CACHE_DIR", s(&cache))],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !text(&o).contains(": cached"),
        "the second build reused a stage:\n{}",
        text(&o)
    );
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = files(d)
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let names = listing(first);
    assert_eq!(names, listing(&second));
    // 7 platforms' artifacts, sidecars, raw disks and DIGESTS (26), the board image and the
    // payload.
    assert_eq!(names.len(), 28, "{names:?}");
    // Every file compared, and every difference named.
    let differ: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let o = std::process::Command::new("cmp")
                .arg(first.join(n))
                .arg(second.join(n))
                .output()
                .unwrap();
            (!o.status.success()).then(|| format!("{n}: {}", text(&o).trim()))
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} files differ:\n{}",
        differ.len(),
        names.len(),
        differ.join("\n")
    );
    drop(scratch);
}

/// `--check-reproducible`, the user's check: the second build has a cache of its own
/// sharing only the packages, and every output file is compared.
#[test]
fn check_reproducible_rebuilds_from_a_cache_of_its_own() {
    minimal_out();
    let scratch = tempfile::tempdir_in(test_dir()).unwrap();
    let out = scratch.path().join("out");
    let o = kiln(&[
        "build",
        "recipes/minimal.toml",
        "--platform",
        "qemu",
        "--dev-key",
        "--check-reproducible",
        "--output",
        s(&out),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("with a cache sharing only the downloaded packages"),
        "{t}"
    );
    // The board image, qemu's qcow2, launch script and DIGESTS, and the payload.
    assert!(t.contains("reproducible: 5 files"), "{t}");
    for f in [
        "minimal_image.bin",
        "minimal_qemu_image.qcow2",
        "minimal_qemu.sh",
        "minimal_qemu.DIGESTS",
        "minimal_update.payload",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    // Nothing of the second build is left beside the output.
    let left: Vec<String> = files(scratch.path());
    assert_eq!(left, ["out"], "{left:?}");
}
