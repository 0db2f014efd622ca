//! A secret kiln is given reaches no program kiln runs. kiln is run under strace, which
//! records the environment of every program started (kiln's own, mmdebstrap's, the package
//! maintainer scripts', mkfs's, qemu-img's, make's): the signing key given in
//! KILN_SIGNING_KEY_PEM must be in kiln's own environment and in no other.

use std::path::Path;
use std::process::Command;

use kiln_tests::{binaries, cache_dir, root, test_dir, text};

const KEY: &str = "tests/data/golden/INSECURE-golden-signing-key.pem";

/// Runs kiln under `strace -f`; returns its output and the execve lines strace recorded.
fn traced(args: &[&str], cache: &Path, log: &Path) -> (std::process::Output, Vec<String>) {
    let (kiln, agent) = binaries();
    let key = std::fs::read_to_string(root().join(KEY)).unwrap();
    let o = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "--seccomp-bpf",
            "-e",
            "trace=execve",
            "-v",
            "-s",
            "65536",
            "-o",
        ])
        .arg(log)
        .arg(kiln)
        .args(args)
        .current_dir(root())
        .env("KILN_CACHE_DIR", cache)
        .env("KILN_AGENT", agent)
        .env("KILN_SIGNING_KEY_PEM", key)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run strace (Debian package strace)");
    let lines = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("execve("))
        .map(String::from)
        .collect();
    (o, lines)
}

/// The programs started and how many of them saw the key.
fn check(execs: &[String], must_run: &[&str]) {
    // strace prints each environment entry quoted, newlines as \n.
    let marker = "KILN_SIGNING_KEY_PEM=";
    let program = |l: &str| -> String {
        l.split_once("execve(\"")
            .and_then(|(_, r)| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let with_key: Vec<String> = execs
        .iter()
        .filter(|l| l.contains(marker) || l.contains("BEGIN PRIVATE KEY"))
        .map(|l| program(l))
        .collect();
    assert_eq!(
        with_key.len(),
        1,
        "the key reached other programs than kiln: {with_key:?}"
    );
    assert!(with_key[0].ends_with("/kiln"), "{with_key:?}");
    for m in must_run {
        assert!(
            execs.iter().any(|l| program(l).ends_with(m)),
            "{m} never ran, so the test proves nothing about it ({} programs ran)",
            execs.len()
        );
    }
}

#[test]
fn the_signing_key_reaches_no_program_kiln_runs() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    // A fresh cache holding only the downloaded packages (hard links), so every stage runs.
    let cache = d.path().join("cache");
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(cache.join("debs")).unwrap();
    if debs.is_dir() {
        let st = Command::new("cp")
            .arg("-al")
            .arg(&debs)
            .arg(&cache)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let out = d.path().join("out");
    let (o, execs) = traced(
        &[
            "build",
            "recipes/minimal.toml",
            "--platform",
            "qemu",
            "--output",
            out.to_str().unwrap(),
        ],
        &cache,
        &d.path().join("build.strace"),
    );
    assert!(o.status.success(), "kiln build failed:\n{}", text(&o));
    assert!(out.join("minimal_update.payload").exists(), "{}", text(&o));
    // mmdebstrap, the maintainer scripts it runs (through dpkg), the filesystem and GRUB
    // tools, qemu-img.
    check(
        &execs,
        &[
            "mmdebstrap",
            "/dpkg",
            "mke2fs",
            "mkfs.erofs",
            "mkfs.vfat",
            "grub-mkimage",
            "qemu-img",
        ],
    );
    assert!(
        execs.iter().any(|l| l.contains("/var/lib/dpkg/info/")),
        "no maintainer script ran"
    );

    // make, in a kernel build from a tree that fails to configure at once.
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("arch/x86")).unwrap();
    std::fs::write(
        tree.join("Makefile"),
        "VERSION = 6\nPATCHLEVEL = 1\n%:\n\t@env | grep -c . ; exit 2\n",
    )
    .unwrap();
    std::fs::write(tree.join("Kconfig"), "config IKCONFIG\n\tbool\n").unwrap();
    std::fs::write(d.path().join("k.config"), "CONFIG_IKCONFIG=y\n").unwrap();
    let minimal = std::fs::read_to_string(root().join("recipes/minimal.toml")).unwrap();
    let recipe = d.path().join("kernel.toml");
    std::fs::write(
        &recipe,
        minimal.replace(
            "[rootfs]\noverlays = [\"minimal/overlay\"]\n",
            "[kernel]\nsource = \"tree\"\nconfig = [\"k.config\"]\n\n[rootfs]\n",
        ),
    )
    .unwrap();
    let (o, execs) = traced(
        &[
            "build",
            recipe.to_str().unwrap(),
            "--board-dir",
            root().join("board-profiles").to_str().unwrap(),
            "--platform",
            "none",
            "--output",
            d.path().join("out2").to_str().unwrap(),
        ],
        &cache,
        &d.path().join("make.strace"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("make olddefconfig failed"),
        "{}",
        text(&o)
    );
    check(&execs, &["make"]);
}
