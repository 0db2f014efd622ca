//! Bad input gets a clear error naming what is wrong and where, a non-zero exit, no panic,
//! and nothing half-written in the output directory.

use std::path::{Path, PathBuf};

use kiln_tests::{kiln, kiln_env, root, test_dir, text};

const GOOD: &str = r#"board = "amd64-usr"
source-date-epoch = 1735689600

[os]
name = "kiln"
id = "kiln"
version = "0.1.0"

[packages]
suite = "bookworm"
mirrors = ["http://deb.debian.org/debian"]
variant = "essential"
include = ["busybox-static"]
"#;

fn recipe(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).unwrap();
    p
}

fn validate_fails(path: &Path) -> String {
    let board_dir = root().join("board-profiles");
    let o = kiln(&[
        "validate",
        path.to_str().unwrap(),
        "--board-dir",
        board_dir.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1:\n{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(t.starts_with("error: ") || t.contains("\nerror: "), "{t}");
    t
}

#[test]
fn good_recipe_validates() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = recipe(d.path(), "good", GOOD);
    let board_dir = root().join("board-profiles");
    let o = kiln(&[
        "validate",
        p.to_str().unwrap(),
        "--board-dir",
        board_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = kiln(&["validate", "recipes/minimal.toml"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn malformed_toml_points_at_line_and_column() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = recipe(d.path(), "broken", &GOOD.replace("[os]", "[os"));
    let t = validate_fails(&p);
    assert!(t.contains(&format!("{}:4:4:", p.display())), "{t}");
}

#[test]
fn unknown_key_is_named_with_position() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = recipe(
        d.path(),
        "unknown",
        &GOOD.replace("[packages]\n", "[packages]\ncolour = \"blue\"\n"),
    );
    let t = validate_fails(&p);
    assert!(
        t.contains(&format!("{}:10:1: unknown field `colour`", p.display())),
        "{t}"
    );
}

#[test]
fn wrong_type_is_named_with_position() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = recipe(
        d.path(),
        "wrongtype",
        &GOOD.replace(
            "source-date-epoch = 1735689600",
            "source-date-epoch = \"yesterday\"",
        ),
    );
    let t = validate_fails(&p);
    assert!(
        t.contains(&format!(
            "{}:2:21: invalid type: string \"yesterday\", expected i64",
            p.display()
        )),
        "{t}"
    );
}

#[test]
fn unknown_board_lists_known_ones() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = recipe(
        d.path(),
        "board",
        &GOOD.replace("\"amd64-usr\"", "\"pdp11\""),
    );
    let t = validate_fails(&p);
    assert!(
        t.contains(&format!("{}:1:9: unknown board `pdp11`", p.display())),
        "{t}"
    );
    assert!(t.contains("amd64-usr"), "{t}");
}

#[test]
fn missing_overlay_is_named() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = recipe(
        d.path(),
        "overlay",
        &format!("{GOOD}\n[rootfs]\noverlays = [\"nope\"]\n"),
    );
    let t = validate_fails(&p);
    assert!(
        t.contains(&format!("{}:16:13: overlay directory", p.display()))
            && t.contains("nope does not exist"),
        "{t}"
    );
}

#[test]
fn overlay_symlink_out_of_the_overlay_is_refused() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    std::fs::create_dir_all(d.path().join("ov/etc")).unwrap();
    std::os::unix::fs::symlink("../../../../etc/shadow", d.path().join("ov/etc/shadow")).unwrap();
    let p = recipe(
        d.path(),
        "escape",
        &format!("{GOOD}\n[rootfs]\noverlays = [\"ov\"]\n"),
    );
    let t = validate_fails(&p);
    assert!(
        t.contains("outside the overlay") && t.contains("etc/shadow"),
        "{t}"
    );
    assert!(t.contains(&format!("{}:16:13:", p.display())), "{t}");
}

#[test]
fn missing_host_tool_names_the_package_and_writes_nothing() {
    let out = tempfile::tempdir_in(test_dir()).unwrap();
    let outp = out.path().join("out");
    let o = kiln_env(
        &[
            "build",
            "recipes/minimal.toml",
            "--output",
            outp.to_str().unwrap(),
        ],
        &[("PATH", "/nonexistent")],
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("mmdebstrap (Debian package mmdebstrap)"), "{t}");
    assert!(t.contains("mke2fs (Debian package e2fsprogs)"), "{t}");
    assert!(t.contains("apt-get install"), "{t}");
    assert!(!outp.exists(), "output directory was created");
}

#[test]
fn oem_tree_too_large_says_both_sizes_and_writes_nothing() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    // A copy of the board profiles whose OEM tree holds 200 MiB.
    let boards = kiln_tests::board_profiles_copy(d.path());
    let big = std::fs::File::create(boards.join("oem/qemu/big.bin")).unwrap();
    big.set_len(200 * 1024 * 1024).unwrap();
    let outp = d.path().join("out");
    let o = kiln(&[
        "build",
        "recipes/minimal.toml",
        "--board-dir",
        boards.to_str().unwrap(),
        "--output",
        outp.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("OEM") && t.contains("200.0 MiB") && t.contains("128.0 MiB"),
        "{t}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&outp)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "output directory holds {leftovers:?}");
}

#[test]
fn inspect_of_a_file_without_gpt_is_an_error_not_a_panic() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = d.path().join("garbage.img");
    std::fs::write(&p, vec![0x5au8; 64 * 1024]).unwrap();
    let o = kiln(&["inspect", p.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("has no readable GPT") && !t.contains("panicked"),
        "{t}"
    );
    let o = kiln(&["inspect", d.path().join("missing.img").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn missing_recipe_is_named() {
    let o = kiln(&["validate", "recipes/no-such-recipe.toml"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("recipes/no-such-recipe.toml does not exist"),
        "{t}"
    );
}

/// A copy of the board profiles to break one platform file in.
fn boards_copy(dir: &Path) -> PathBuf {
    kiln_tests::board_profiles_copy(dir)
}

#[test]
fn unknown_platform_lists_the_known_ones() {
    let o = kiln(&[
        "build",
        "recipes/minimal.toml",
        "--platform",
        "gce,azure",
        "--output",
        "/nonexistent/out",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("unknown platform `azure`"), "{t}");
    assert!(
        t.contains("ec2, gce, metal, openstack, qemu, rackspace, vmware"),
        "{t}"
    );
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let p = recipe(
        d.path(),
        "plat",
        &GOOD.replace(
            "board = \"amd64-usr\"\n",
            "board = \"amd64-usr\"\nplatforms = [\"qemu\", \"vax\"]\n",
        ),
    );
    let t = validate_fails(&p);
    assert!(
        t.contains(&format!("{}:2:22: unknown platform `vax`", p.display())),
        "{t}"
    );
}

#[test]
fn platform_file_with_unknown_or_missing_key_points_at_it() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let boards = boards_copy(d.path());
    let gce = boards.join("platforms/gce.toml");
    let text0 = std::fs::read_to_string(&gce).unwrap();
    std::fs::write(&gce, text0.replace("[boot]\n", "[boot]\nturbo = true\n")).unwrap();
    let o = kiln(&[
        "validate",
        "recipes/minimal.toml",
        "--board-dir",
        boards.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("{}:", gce.display())) && t.contains("unknown field `turbo`"),
        "{t}"
    );
    std::fs::write(&gce, text0.replace("oem-id = \"gce\"\n", "")).unwrap();
    let o = kiln(&[
        "validate",
        "recipes/minimal.toml",
        "--board-dir",
        boards.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("missing field `oem-id`"), "{t}");
}

#[test]
fn disk_sizes_a_format_cannot_take_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let boards = boards_copy(d.path());
    // GCE: a fixed size that is not whole GiB.
    let gce = boards.join("platforms/gce.toml");
    let t = std::fs::read_to_string(&gce).unwrap();
    std::fs::write(
        &gce,
        t.replace(
            "size-multiple = \"1GiB\"\n",
            "size-multiple = \"1GiB\"\ndisk-size = \"9500MiB\"\n",
        ),
    )
    .unwrap();
    let o = kiln(&[
        "validate",
        "recipes/minimal.toml",
        "--board-dir",
        boards.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!("{}:", gce.display()))
            && t.contains("disk-size 9500MiB is not a multiple of size-multiple 1GiB"),
        "{t}"
    );
    std::fs::write(
        &gce,
        std::fs::read_to_string(root().join("board-profiles/platforms/gce.toml"))
            .unwrap()
            .replace("size-multiple = \"1GiB\"\n", ""),
    )
    .unwrap();
    let out = d.path().join("out");
    let o = kiln(&[
        "build",
        "recipes/minimal.toml",
        "--platform",
        "gce",
        "--board-dir",
        boards.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("whole number of GiB"), "{t}");
    assert!(!out.exists(), "output directory was created");
    // Every platform file is read for every build (the board's initramfs carries all their
    // modules), so the broken GCE file goes before the next case.
    std::fs::copy(root().join("board-profiles/platforms/gce.toml"), &gce).unwrap();
    // VHD: a size that is not whole MiB.
    let rs = boards.join("platforms/rackspace.toml");
    let t = std::fs::read_to_string(&rs).unwrap();
    std::fs::write(
        &rs,
        t.replace("size-multiple = \"1MiB\"\n", "disk-size = 4634706432\n"),
    )
    .unwrap();
    let o = kiln(&[
        "build",
        "recipes/minimal.toml",
        "--platform",
        "rackspace",
        "--board-dir",
        boards.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("MiB"), "{t}");
    assert!(!out.exists(), "output directory was created");
}

/// The platform-option mistakes that once passed `kiln validate` and failed only when
/// qemu-img ran, after every stage was built: each is refused by `kiln validate` and by
/// `kiln build` at its file, line and column with the allowed values, before any stage runs
/// (the build creates neither its cache nor its output directory).
#[test]
fn platform_option_mistakes_are_refused_before_any_stage_runs() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "qemu",
            "compat = \"1.1\"",
            "compat = \"1.2\"",
            &["unknown variant `1.2`", "`1.1`", "`0.10`"],
        ),
        (
            "vmware",
            "controller = \"pvscsi\"",
            "controller = \"lsilogc\"",
            &["unknown variant `lsilogc`", "`pvscsi`", "`lsilogic`"],
        ),
        (
            "qemu",
            "sidecars = [\"launch-script\"]",
            "sidecars = [\"launch-script\", \"vmx\"]",
            &[
                "sidecar `vmx` needs format = \"vmdk\"",
                "format = \"qcow2\"",
            ],
        ),
        (
            "metal",
            "xz-level = 2",
            "xz-level = 2\ncompat = \"1.1\"",
            &["`compat` is a qcow2 option", "format = \"raw\""],
        ),
    ];
    for (platform, from, to, want) in cases {
        let d = tempfile::tempdir_in(test_dir()).unwrap();
        let boards = boards_copy(d.path());
        let file = boards.join(format!("platforms/{platform}.toml"));
        let before = std::fs::read_to_string(&file).unwrap();
        assert!(before.contains(from), "{platform}.toml has no {from:?}");
        let after = before.replacen(from, to, 1);
        std::fs::write(&file, &after).unwrap();
        let last = to.lines().last().unwrap();
        let line = after.lines().position(|l| l == last).unwrap() + 1;
        let at = format!("{}:{line}:", file.display());
        let out = d.path().join("out");
        // A cache of its own: any stage a build ran would be in it.
        let cache = d.path().join("cache");
        for args in [
            vec!["validate", "recipes/minimal.toml"],
            vec![
                "build",
                "recipes/minimal.toml",
                "--platform",
                "qemu",
                "--output",
                out.to_str().unwrap(),
                "--cache-dir",
                cache.to_str().unwrap(),
            ],
        ] {
            let mut args = args.clone();
            args.extend(["--board-dir", boards.to_str().unwrap()]);
            let o = kiln(&args);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
            assert!(t.contains(&at), "{args:?}: no {at} in:\n{t}");
            for w in *want {
                assert!(t.contains(w), "{args:?}: no {w:?} in:\n{t}");
            }
            assert!(!t.contains("panicked"), "{t}");
        }
        assert!(
            !out.exists(),
            "{platform}: the build wrote its output directory"
        );
        assert!(!cache.exists(), "{platform}: the build used its cache");
    }
}

/// An image file that names other host files (a qcow2 backing file here) is refused by
/// every command that reads images, before the named file is read, and the image is left as
/// it was.
#[test]
fn images_naming_other_files_are_refused_by_every_command() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let secret = d.path().join("secret.raw");
    // A GPT-less "disk" full of a marker that must never be shown.
    std::fs::write(&secret, b"KILN-SECRET-MARKER ".repeat(60_000)).unwrap();
    let img = d.path().join("backed.qcow2");
    kiln_tests::tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            secret.to_str().unwrap(),
            "-F",
            "raw",
            img.to_str().unwrap(),
        ],
    );
    let before = std::fs::read(&img).unwrap();
    let p = img.to_str().unwrap();
    for args in [
        vec!["inspect", p],
        vec!["inspect", "--json", p],
        vec!["slot", "status", p],
        vec!["slot", "mark-good", p, "a"],
        vec![
            "run",
            p,
            "--accel",
            "tcg",
            "--until-ready",
            "--timeout",
            "5",
        ],
    ] {
        let o = kiln(&args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains("a backing file"), "{args:?}: {t}");
        assert!(!t.contains("KILN-SECRET-MARKER"), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{t}");
    }
    assert!(std::fs::read(&img).unwrap() == before, "the image changed");
}
