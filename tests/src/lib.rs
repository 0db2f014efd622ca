//! Shared pieces of kiln's integration tests. The image every boot test uses is built once
//! per test run: the first test to ask builds it, under a file lock that other test processes
//! wait on, and kiln's own stage cache makes later requests a no-op.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Scratch space for the tests, inside the target directory.
pub fn test_dir() -> PathBuf {
    let d = root().join("target/kiln-test");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The stage and package cache the tests share.
pub fn cache_dir() -> PathBuf {
    test_dir().join("cache")
}

struct FileLock(#[allow(dead_code)] File);

fn lock(name: &str) -> FileLock {
    let f = File::create(test_dir().join(name)).unwrap();
    // SAFETY: flock on a descriptor we own; released when the file closes.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    FileLock(f)
}

/// kiln and the static kiln-agent, built with the commands of scripts/build.sh.
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let _l = lock("build.lock");
        let st = Command::new("sh")
            .arg(root().join("scripts/build.sh"))
            .status()
            .expect("run scripts/build.sh");
        assert!(st.success(), "scripts/build.sh failed");
        (
            root().join("target/release/kiln"),
            root().join("target/x86_64-unknown-linux-gnu/release/kiln-agent"),
        )
    })
}

/// Runs kiln with the test cache; returns its output (not asserting success).
pub fn kiln(args: &[&str]) -> Output {
    kiln_env(args, &[])
}

pub fn kiln_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let (kiln, _) = binaries();
    let mut c = Command::new(kiln);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_kiln(c)
}

/// Runs a command (kiln itself, or a wrapper that execs it) with the test cache and agent.
pub fn run_kiln(mut c: Command) -> Output {
    let (_, agent) = binaries();
    c.current_dir(root())
        .env("KILN_CACHE_DIR", cache_dir())
        .env("KILN_AGENT", agent)
        .env_remove("SOURCE_DATE_EPOCH");
    c.output().expect("run kiln")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// recipes/minimal.toml built once per test run.
pub fn minimal_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let _l = lock("minimal.lock");
        let out = test_dir().join("out-minimal");
        let o = kiln(&[
            "build",
            "recipes/minimal.toml",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "kiln build failed:\n{}", text(&o));
        out.join("minimal_image.bin")
    })
}

/// Copies one partition of a raw image into a file of its own (for fsck and debugfs).
pub fn extract_partition(image: &Path, number: u32, dest: &Path) {
    let mut f = File::open(image).unwrap();
    let len = f.metadata().unwrap().len();
    let gpt = kiln_disk::Gpt::read(&mut f, len).unwrap().gpt;
    let e = gpt
        .partition(number)
        .unwrap_or_else(|| panic!("no partition {number}"));
    let mut out = File::create(dest).unwrap();
    out.set_len(e.sectors() * 512).unwrap();
    use std::io::{Read, Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(e.first_lba * 512)).unwrap();
    let mut left = e.sectors() * 512;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all(&buf[..n]).unwrap();
        } else {
            out.seek(SeekFrom::Current(n as i64)).unwrap();
        }
        left -= n as u64;
    }
}

/// Boots `image` headless with TCG until its ready line.
pub fn boot(image: &Path, firmware: &str) -> kiln_qemu::Boot {
    let (kiln, _) = binaries();
    let o = Command::new(kiln)
        .current_dir(root())
        .args([
            "run",
            image.to_str().unwrap(),
            "--firmware",
            firmware,
            "--accel",
            "tcg",
            "--snapshot",
            "--until-ready",
            "--timeout",
            "300",
        ])
        .output()
        .expect("run kiln run");
    let console: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(
        o.status.success(),
        "kiln run failed:\n{}\n{}",
        console[console.len().saturating_sub(40)..].join("\n"),
        String::from_utf8_lossy(&o.stderr)
    );
    let ready = console
        .iter()
        .find(|l| l.starts_with(kiln_qemu::READY_PREFIX))
        .cloned();
    kiln_qemu::Boot { console, ready }
}
