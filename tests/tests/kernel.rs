//! `kiln kernel check` against real configurations: Debian's prebuilt kernel (as the minimal
//! build extracted it) meets every platform's requirements; a config that lacks options is
//! refused, naming each; a fragment with a syntax error names its file and line.

use kiln_tests::*;

fn debian_config() -> std::path::PathBuf {
    minimal_stage_dir("kernel").join("config")
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

/// A copy of board-profiles/ and kernel-config/ side by side (the platform profiles name their
/// requirement lists relative to the board directory), with `edit` applied.
fn board_copy(d: &std::path::Path, edit: impl FnOnce(&std::path::Path)) -> std::path::PathBuf {
    for dir in ["board-profiles", "kernel-config"] {
        tool(
            "cp",
            &[
                "-a",
                root().join(dir).to_str().unwrap(),
                d.join(dir).to_str().unwrap(),
            ],
        );
    }
    edit(d);
    d.join("board-profiles")
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn build_checks_every_platform_before_writing_any_image() {
    minimal_out();
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    // qemu now also requires /proc/config.gz, which Debian's kernel does not have.
    let boards = board_copy(d.path(), |d| {
        let f = d.join("kernel-config/requirements/qemu.toml");
        let t = std::fs::read_to_string(&f).unwrap();
        let t = t.replacen("builtin = [", "builtin = [\"IKCONFIG_PROC\", ", 1);
        std::fs::write(&f, t).unwrap();
    });
    let out = d.path().join("out");
    let o = kiln(&[
        "build",
        "recipes/minimal.toml",
        "--board-dir",
        boards.to_str().unwrap(),
        "--platform",
        "metal,qemu",
        "--dev-key",
        "--output",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("qemu: CONFIG_IKCONFIG_PROC is unset, needs =y"),
        "{t}"
    );
    assert!(t.contains("no image was written"), "{t}");
    assert!(!t.contains("metal: CONFIG"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    let left: Vec<String> = files_in(&out)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "files written: {left:?}");
    // The unchanged lists pass: the same build with the original board directory.
    let o = kiln(&[
        "kernel",
        "check",
        "--config",
        debian_config().to_str().unwrap(),
        "--board-dir",
        boards.to_str().unwrap(),
        "--platform",
        "metal",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

const SOURCE_RECIPE: &str = r#"board = "amd64-usr"
source-date-epoch = 1735689600
platforms = []

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

fn source_recipe(d: &std::path::Path, kernel: &str) -> std::path::PathBuf {
    let p = d.join("recipe.toml");
    std::fs::write(&p, format!("{SOURCE_RECIPE}\n[kernel]\n{kernel}")).unwrap();
    p
}

fn validate(recipe: &std::path::Path) -> (Option<i32>, String) {
    let o = kiln(&[
        "validate",
        recipe.to_str().unwrap(),
        "--board-dir",
        root().join("board-profiles").to_str().unwrap(),
    ]);
    (o.status.code(), text(&o))
}

#[test]
fn kernel_source_bad_input_is_named_with_its_place() {
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    std::fs::write(d.path().join("good.config"), "CONFIG_IKCONFIG=y\n").unwrap();
    std::fs::write(
        d.path().join("bad.config"),
        "CONFIG_IKCONFIG=y\n# a comment\nCONFIG_NR-CPUS=4\n",
    )
    .unwrap();
    std::fs::create_dir_all(d.path().join("tree/arch")).unwrap();
    std::fs::write(
        d.path().join("tree/Makefile"),
        "VERSION = 6\nPATCHLEVEL = 1\n",
    )
    .unwrap();
    std::fs::write(d.path().join("tree/Kconfig"), "").unwrap();
    std::fs::create_dir_all(d.path().join("not-a-kernel")).unwrap();
    std::fs::write(d.path().join("not-a-kernel/Makefile"), "all:\n").unwrap();
    let cases = [
        (
            // line 17 of the recipe: the config array (SOURCE_RECIPE is 15 lines, then [kernel])
            "config = [\"good.config\"]\n",
            "recipe.toml:17:11",
            "need a kernel source",
        ),
        (
            "source = \"no-such.tar.xz\"\nconfig = [\"good.config\"]\n",
            "recipe.toml:17:10",
            "does not exist",
        ),
        (
            "source = \"not-a-kernel\"\nconfig = [\"good.config\"]\n",
            "recipe.toml:17:10",
            "is not a kernel source tree",
        ),
        (
            "source = \"not-a-kernel\"\nconfig-base = \"tinyconfig\"\n",
            "recipe.toml:18:15",
            "unknown variant `tinyconfig`",
        ),
        (
            "source = \"tree\"\nconfig = [\"missing.config\"]\n",
            "recipe.toml:18:11",
            "cannot read kernel config fragment",
        ),
    ];
    for (kernel, place, words) in cases {
        let r = source_recipe(d.path(), kernel);
        let (code, t) = validate(&r);
        assert_eq!(code, Some(1), "{kernel}: {t}");
        assert!(t.contains(place), "{kernel}: expected {place} in:\n{t}");
        assert!(t.contains(words), "{kernel}: expected {words:?} in:\n{t}");
        assert!(!t.contains("panicked"), "{t}");
    }
    // A fragment with an invalid option name: its file and line.
    let r = source_recipe(
        d.path(),
        "source = \"tree\"\nconfig = [\"good.config\", \"bad.config\"]\n",
    );
    let (code, t) = validate(&r);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("bad.config:3:"), "{t}");
    assert!(
        t.contains("`CONFIG_NR-CPUS` is not a valid option name"),
        "{t}"
    );
}

/// A tree whose make fails: the build stops with the end of the log and the log's path, and
/// publishes no kernel stage and no image.
#[test]
fn a_failing_kernel_build_shows_its_log_and_installs_nothing() {
    minimal_out();
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("arch/x86")).unwrap();
    std::fs::write(
        tree.join("Makefile"),
        "VERSION = 6\nPATCHLEVEL = 1\n%:\n\t@echo 'configuring a broken tree'\n\t@echo 'error: kiln-test-broken-tree cannot configure' >&2; exit 2\n",
    )
    .unwrap();
    std::fs::write(tree.join("Kconfig"), "config IKCONFIG\n\tbool\n").unwrap();
    std::fs::write(d.path().join("k.config"), "CONFIG_IKCONFIG=y\n").unwrap();
    let r = source_recipe(d.path(), "source = \"tree\"\nconfig = [\"k.config\"]\n");
    let stages = || -> Vec<String> {
        let mut v: Vec<String> = files_in(&cache_dir().join("stages"))
            .into_iter()
            .filter(|n| n.starts_with("kernel-"))
            .collect();
        v.sort();
        v
    };
    let before = stages();
    let out = d.path().join("out");
    let o = kiln(&[
        "build",
        r.to_str().unwrap(),
        "--board-dir",
        root().join("board-profiles").to_str().unwrap(),
        "--dev-key",
        "--output",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("make olddefconfig failed"), "{t}");
    assert!(
        t.contains("error: kiln-test-broken-tree cannot configure"),
        "{t}"
    );
    let log = t
        .split("(whole log: ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no log path in:\n{t}"));
    let whole = std::fs::read_to_string(log).unwrap();
    assert!(whole.contains("configuring a broken tree"), "{whole}");
    assert_eq!(stages(), before, "a kernel stage was published");
    let left: Vec<String> = files_in(&out)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "files written: {left:?}");
}
