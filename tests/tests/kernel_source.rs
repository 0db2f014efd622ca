//! The slow kernel test: recipes/source-kernel.toml builds Linux 6.1 from Debian's
//! linux-source-6.1 with the kernel-config/ fragments under allnoconfig, and the image boots
//! with it. Ignored by default (a kernel build takes a quarter of an hour on two cores);
//! `KILN_KERNEL_TESTS=1 scripts/test.sh` installs the source and runs it.

use kiln_tests::*;

fn build(out: &std::path::Path) -> String {
    let o = kiln(&[
        "build",
        "recipes/source-kernel.toml",
        "--dev-key",
        "--output",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "kiln build failed:\n{t}");
    t
}

/// The console line from `marker` on (the shell's prompt may come first).
fn after(line: &str, marker: &str) -> String {
    line[line.find(marker).unwrap()..].trim().to_string()
}

#[test]
#[ignore = "slow: builds Linux 6.1 from source; KILN_KERNEL_TESTS=1 scripts/test.sh runs it"]
fn a_kernel_built_from_kernel_config_boots() {
    assert!(
        std::path::Path::new("/usr/src/linux-source-6.1.tar.xz").is_file(),
        "install linux-source-6.1 (KILN_KERNEL_TESTS=1 scripts/install-deps.sh)"
    );
    let d = tempfile::tempdir_in(test_dir()).unwrap();
    let out = d.path().join("out");
    let first = build(&out);
    // "built <image> (<n> MiB, kernel <release>) in ..."
    let release = first
        .split(", kernel ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no kernel release in:\n{first}"))
        .to_string();
    assert!(
        release.starts_with("6.1.") && release.ends_with("-kiln"),
        "{release}"
    );

    // The migration report: 3.15-era options that 6.1 no longer has are named.
    let report = first
        .split("migration report: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap_or_else(|| panic!("no migration report in:\n{first}"));
    let report = std::fs::read_to_string(report.trim()).unwrap();
    let gone = report
        .split("options that no longer exist")
        .nth(1)
        .and_then(|s| s.split("options whose value").next())
        .unwrap();
    for old in [
        "CONFIG_EXT4_USE_FOR_EXT23",
        "CONFIG_IOSCHED_CFQ",
        "CONFIG_RESOURCE_COUNTERS",
    ] {
        assert!(gone.contains(old), "{old} not reported gone:\n{report}");
    }
    assert!(report.contains("requirements violated (0):"), "{report}");

    // Nothing changed: straight from the cache.
    let second = build(&out);
    assert!(second.contains("kernel: cached"), "{second}");
    assert!(!second.contains("kernel: building"), "{second}");

    let img = copy_image(&out.join("source-kernel_image.bin"), "source-kernel.raw");
    let mut c = Console::start("source-kernel", &img, &[]);
    c.ready();
    // $((1+1)) keeps the typed (echoed) line from matching what the command prints.
    c.send("echo K$((1+1))R $(uname -r)");
    let l = after(&c.expect("K2R ", 60), "K2R ");
    assert_eq!(l, format!("K2R {release}"));
    // Only this config sets NR_CPUS to 128 (Debian's is 8192) and has /proc/config.gz at all.
    c.send("echo C$((1+1))C $(zcat /proc/config.gz | sed -n 's/^CONFIG_NR_CPUS=//p')");
    let l = after(&c.expect("C2C ", 60), "C2C ");
    assert_eq!(l, "C2C 128");
    // The modules were installed into the image for this kernel.
    c.send("echo M$((1+1))M $(ls /usr/lib/modules) $(test -s /usr/lib/modules/$(uname -r)/modules.dep && echo dep)");
    let l = after(&c.expect("M2M ", 60), "M2M ");
    assert_eq!(l, format!("M2M {release} dep"));
    c.kill();
    std::fs::remove_file(&img).unwrap();
}
