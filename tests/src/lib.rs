//! Shared pieces of kiln's integration tests. The image every boot test uses is built once
//! per test run: the first test to ask builds it, under a file lock that other test processes
//! wait on, and kiln's own stage cache makes later requests a no-op.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

pub mod exact;

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

/// The stage and package cache the tests share. Its downloaded packages and development key
/// are kept between runs; everything else kiln cached (stages, xz chunks, unpacked kernel
/// sources, scratch) is removed at its first use in a test run, so each run's fixtures are
/// built from a fresh stage cache and never from what an older kiln left.
pub fn cache_dir() -> PathBuf {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = test_dir().join("cache");
            let _l = lock("cache-run.lock");
            let mark = test_dir().join("cache-run");
            let run = run_id();
            if std::fs::read_to_string(&mark).ok().as_deref() != Some(run.as_str()) {
                for sub in ["stages", "xz-chunks", "kernel-src", "work", "logs"] {
                    let p = dir.join(sub);
                    if p.exists() {
                        std::fs::remove_dir_all(&p)
                            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    }
                }
                std::fs::write(&mark, &run).unwrap();
            }
            dir
        })
        .clone()
}

/// This test run: `KILN_TEST_RUN` when it is set (scripts/test.sh sets one per run), else
/// the `cargo test` process that started this test binary, named by the boot, its pid and
/// its start time: a pid alone is reused, and fresh containers hand out the same ones.
pub fn run_id() -> String {
    if let Some(r) = std::env::var("KILN_TEST_RUN")
        .ok()
        .filter(|r| !r.is_empty())
    {
        return r;
    }
    let ppid = std::os::unix::process::parent_id();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{ppid}/stat")).unwrap();
    // The fields after the command name (which may hold spaces): the start time is 22nd.
    let start = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .expect("start time in /proc/PID/stat");
    format!("{}-{ppid}-{start}", boot.trim())
}

/// Whether `dir` was built in this test run ([`mark_built`] records it).
fn built_this_run(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(".kiln-test-run")).ok() == Some(run_id())
}

fn mark_built(dir: &Path) {
    std::fs::write(dir.join(".kiln-test-run"), run_id()).unwrap();
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

/// kiln built with its failpoints (`--features failpoints`, see kiln-host's `failpoint`), in
/// target/failpoints so that the ordinary build stays as it is.
pub fn failpoint_kiln() -> &'static Path {
    static K: OnceLock<PathBuf> = OnceLock::new();
    K.get_or_init(|| {
        binaries();
        let _l = lock("build.lock");
        let target = root().join("target/failpoints");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(root())
            .args(["build", "--release", "--locked", "-p", "kiln-cli"])
            .args(["--features", "failpoints", "--target-dir"])
            .arg(&target)
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building kiln with failpoints failed");
        target.join("release/kiln")
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
    // The test cache unless the caller named another.
    if !c.get_envs().any(|(k, _)| k == "KILN_CACHE_DIR") {
        c.env("KILN_CACHE_DIR", cache_dir());
    }
    c.current_dir(root())
        .env("KILN_AGENT", agent)
        .env_remove("SOURCE_DATE_EPOCH");
    c.output().expect("run kiln")
}

/// Runs a host tool that must succeed; returns its stdout and stderr.
pub fn tool(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let t = text(&o);
    assert!(o.status.success(), "{cmd} {args:?} failed:\n{t}");
    t
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// recipes/minimal.toml built once per test run, for the board and all seven platforms
/// (with each platform's raw disk kept, for comparisons). Returns the output directory.
pub fn minimal_out() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let cache = cache_dir();
        let _l = lock("minimal.lock");
        let out = test_dir().join("out-minimal");
        // The test binaries of one run share it: the first one builds.
        if built_this_run(&out) {
            return out;
        }
        let _ = std::fs::remove_dir_all(&out);
        let o = kiln(&[
            "build",
            "recipes/minimal.toml",
            "--keep-raw",
            "--dev-key",
            "--json",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "kiln build failed:\n{}", text(&o));
        // The build's report names each stage's key, so tests find its output in the cache
        // by key, never by listing the cache.
        std::fs::write(out.join(".build.json"), &o.stdout).unwrap();
        assert!(cache.join("stages").is_dir());
        mark_built(&out);
        out
    })
}

/// The cache directory of `stage`'s output in the minimal build (its report names the key).
pub fn minimal_stage_dir(stage: &str) -> PathBuf {
    let out = minimal_out();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(".build.json")).unwrap())
            .expect("the minimal build's JSON report");
    let key = report["stages"]
        .as_array()
        .expect("stages in the report")
        .iter()
        .find(|s| s["stage"] == stage)
        .and_then(|s| s["key"].as_str())
        .unwrap_or_else(|| panic!("no {stage} stage with a key in the minimal build"));
    cache_dir()
        .join("stages")
        .join(format!("{stage}-{}", &key[..32]))
}

/// The board image of recipes/minimal.toml.
pub fn minimal_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| minimal_out().join("minimal_image.bin"))
}

/// A file of the minimal build, e.g. `artifact("qemu", "_image.qcow2")`.
pub fn artifact(platform: &str, suffix: &str) -> PathBuf {
    let p = minimal_out().join(format!("minimal_{platform}{suffix}"));
    assert!(p.exists(), "{} was not built", p.display());
    p
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
    boot_disk(image, firmware, true)
}

/// Boots `image` (any format QEMU reads) headless with TCG until its ready line; without
/// `snapshot`, the guest's writes stay in the image.
pub fn boot_disk(image: &Path, firmware: &str, snapshot: bool) -> kiln_qemu::Boot {
    let (kiln, _) = binaries();
    let mut args = vec![
        "run",
        image.to_str().unwrap(),
        "--firmware",
        firmware,
        "--accel",
        "tcg",
        "--until-ready",
        "--timeout",
        "300",
    ];
    if snapshot {
        args.push("--snapshot");
    }
    let o = Command::new(kiln)
        .current_dir(root())
        .args(&args)
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

/// `kiln run IMAGE --accel tcg --until-ready` with `extra` arguments (attached disks, the
/// firmware, --snapshot): whether the ready line came, and the console. For boots that are
/// meant to fail; QEMU stops at the guest's first reboot.
pub fn run_until_ready(image: &Path, extra: &[&str]) -> (bool, Vec<String>) {
    let (kiln, _) = binaries();
    let o = Command::new(kiln)
        .current_dir(root())
        .args([
            "run",
            image.to_str().unwrap(),
            "--accel",
            "tcg",
            "--until-ready",
        ])
        .args(["--timeout", "300"])
        .args(extra)
        .output()
        .expect("run kiln run");
    // kiln's own error (a QEMU that would not start) ends the console.
    let console = String::from_utf8_lossy(&o.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&o.stderr).lines())
        .map(String::from)
        .collect();
    (o.status.success(), console)
}

/// The public half of the development key the test builds are signed with.
pub fn dev_public_key() -> PathBuf {
    minimal_out();
    let p = cache_dir().join("keys/INSECURE-kiln-development-key.pem.pub");
    assert!(p.exists(), "{} was not written", p.display());
    p
}

/// Payloads of later releases of the minimal recipe, built once per test run (board image
/// only): v2 (version 0.2.0, a working system) and v3 (0.3.0, whose system reboots before
/// its ready point). Returns (v2 payload, v3 payload).
pub fn update_payloads() -> &'static (PathBuf, PathBuf) {
    static P: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let overlay = root().join("recipes/minimal/overlay");
        let broken = root().join("tests/data/never-ready");
        let built = build_payloads(
            "updates",
            &[
                ("v2", "0.2.0", format!("[{overlay:?}]")),
                ("v3", "0.3.0", format!("[{overlay:?}, {broken:?}]")),
            ],
        );
        (built[0].clone(), built[1].clone())
    })
}

/// The payload of an older release of the minimal recipe, for downgrades: 0.0.9, below the
/// image's 0.1.0, whose ready point does not mark its slot good (an operator would), so it
/// runs untried for a whole boot. Built once per test run (board image only).
pub fn old_payload() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let overlay = root().join("recipes/minimal/overlay");
        let unmarked = root().join("tests/data/no-mark-good");
        build_payloads(
            "updates-old",
            &[("v0", "0.0.9", format!("[{overlay:?}, {unmarked:?}]"))],
        )
        .remove(0)
    })
}

/// Builds each (name, version, overlays) variant of the minimal recipe into
/// `target/kiln-test/<dir>` once per test run; returns their payloads in order.
fn build_payloads(dir_name: &str, variants: &[(&str, &str, String)]) -> Vec<PathBuf> {
    minimal_out();
    let _l = lock(&format!("{dir_name}.lock"));
    let dir = test_dir().join(dir_name);
    let payloads: Vec<PathBuf> = variants
        .iter()
        .map(|(name, _, _)| dir.join(format!("{name}_update.payload")))
        .collect();
    if built_this_run(&dir) {
        return payloads;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let minimal = std::fs::read_to_string(root().join("recipes/minimal.toml")).unwrap();
    for (name, version, overlays) in variants {
        let recipe = minimal
            .replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
            .replace(
                "overlays = [\"minimal/overlay\"]",
                &format!("overlays = {overlays}"),
            );
        assert_ne!(recipe, minimal);
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, recipe).unwrap();
        let o = kiln(&[
            "build",
            path.to_str().unwrap(),
            "--board-dir",
            "board-profiles",
            "--platform",
            "none",
            "--dev-key",
            "--output",
            dir.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "kiln build {name} failed:\n{}",
            text(&o)
        );
    }
    mark_built(&dir);
    payloads
}

/// A copy of board-profiles/ as `<dir>/boards`, with kernel-config/ beside it (the platform
/// profiles name their kernel requirement lists as ../kernel-config/...). Returns the copy.
pub fn board_profiles_copy(dir: &Path) -> PathBuf {
    let boards = dir.join("boards");
    for (from, to) in [
        (root().join("board-profiles"), boards.clone()),
        (root().join("kernel-config"), dir.join("kernel-config")),
    ] {
        tool("cp", &["-a", from.to_str().unwrap(), to.to_str().unwrap()]);
    }
    boards
}

/// A writable copy of an image (sparse), for tests that change it.
pub fn copy_image(src: &Path, name: &str) -> PathBuf {
    let dest = test_dir().join(name);
    let _ = std::fs::remove_file(&dest);
    tool(
        "cp",
        &[
            "--sparse=always",
            src.to_str().unwrap(),
            dest.to_str().unwrap(),
        ],
    );
    dest
}

/// `kiln run` on pipes: the serial console of a guest a test types into, as a person would.
/// QEMU keeps running across guest reboots; dropping the console kills it.
pub struct Console {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<String>,
    pub lines: Vec<String>,
    log: File,
    started: Instant,
}

impl Console {
    /// Boots `image` (raw, written to by the guest) with TCG and `attach`ed read-only disks
    /// (/dev/vdb, /dev/vdc, ...). The console is also written to target/kiln-test/NAME.console,
    /// each line with the seconds since the start.
    pub fn start(name: &str, image: &Path, attach: &[&Path]) -> Console {
        let mut args = Vec::new();
        for a in attach {
            args.extend(["--attach", a.to_str().unwrap()]);
        }
        Console::start_with(name, image, &args)
    }

    /// Boots `image` with TCG and more `kiln run` options.
    pub fn start_with(name: &str, image: &Path, args: &[&str]) -> Console {
        let (kiln, _) = binaries();
        let mut c = Command::new(kiln);
        c.current_dir(root())
            .args(["run", image.to_str().unwrap(), "--accel", "tcg"])
            .args(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().expect("start kiln run");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let rx = kiln_qemu::console_lines(stdout);
        let log = File::create(test_dir().join(format!("{name}.console"))).unwrap();
        Console {
            child,
            stdin,
            rx,
            lines: Vec::new(),
            log,
            started: Instant::now(),
        }
    }

    /// Waits for a console line containing `what`; returns it. Fails the test, with the last
    /// console lines, on a timeout or if the guest stops.
    pub fn expect(&mut self, what: &str, timeout_s: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    use std::io::Write;
                    let t = self.started.elapsed().as_secs_f64();
                    let _ = writeln!(self.log, "[{t:7.1}] {line}");
                    self.lines.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "waiting for {what:?}: {}; last console lines:\n{}",
                    if matches!(e, mpsc::RecvTimeoutError::Timeout) {
                        format!("nothing within {timeout_s} s")
                    } else {
                        "the guest stopped".to_string()
                    },
                    self.lines[self.lines.len().saturating_sub(40)..].join("\n")
                ),
            }
        }
    }

    /// The ready line of the next boot.
    pub fn ready(&mut self) -> String {
        self.expect(kiln_qemu::READY_PREFIX, 300)
    }

    /// Types a command line into the guest's shell.
    pub fn send(&mut self, cmd: &str) {
        use std::io::Write;
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .expect("write to the guest console");
    }

    /// Pulls the plug: QEMU is killed without the guest shutting down.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `key=value` field of a ready line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// `kiln slot status --json` of an image.
pub fn slot_status(image: &Path) -> serde_json::Value {
    let o = kiln(&["slot", "status", image.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "kiln slot status: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The SHA-256 of every entry of `dir` by name, hidden ones too (a build must leave nothing
/// else there); a directory is listed as `dir/`.
pub fn file_hashes(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            m.insert(format!("{name}/"), String::new());
        } else {
            let out = tool("sha256sum", &[e.path().to_str().unwrap()]);
            m.insert(name, out.split_whitespace().next().unwrap().to_string());
        }
    }
    m
}

/// Every `*.DIGESTS` in `dir` verifies against the files beside it (`sha256sum -c` of its
/// SHA-256 lines): a reader never sees a DIGESTS that does not describe them.
pub fn digests_hold(dir: &Path) -> Result<(), String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".DIGESTS") {
            continue;
        }
        let digests = std::fs::read_to_string(e.path()).map_err(|e| format!("{name}: {e}"))?;
        let mut sums = String::new();
        let mut on = false;
        for l in digests.lines() {
            if l.starts_with('#') {
                on = l == "# SHA256 HASH";
            } else if on {
                sums.push_str(l);
                sums.push('\n');
            }
        }
        let mut c = Command::new("sha256sum")
            .args(["-c", "--strict", "-"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(sums.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        if !o.status.success() {
            return Err(format!(
                "{name} does not describe the files beside it:\n{}",
                text(&o)
            ));
        }
    }
    Ok(())
}

/// What a build leaves that must be gone once builds have ended: kiln's temporary names in
/// the cache and staging directories in the output directories.
pub fn leftovers(cache: &Path, outs: &[&Path]) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let list = |d: &Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (n, p) in list(&cache.join("work")) {
        if n.starts_with("build-") || n.starts_with("kbuild-") {
            v.push(p);
        }
    }
    for sub in ["stages", "xz-chunks"] {
        for (n, p) in list(&cache.join(sub)) {
            if n.starts_with(".tmp-") {
                v.push(p);
            }
        }
    }
    for (_, d) in list(&cache.join("debs")) {
        for (n, p) in list(&d) {
            if n.ends_with(".tmp") || n == ".kiln-apt-lists" {
                v.push(p);
            }
        }
    }
    for o in outs {
        for (n, p) in list(o) {
            if n.starts_with(".kiln-staging-") || n.contains(".partial-") || n.ends_with(".part") {
                v.push(p);
            }
        }
    }
    v
}

/// Every stage in `cache` matches its manifest, every digest recomputed (what a build
/// published is what is there), and every xz chunk is a header describing it and an xz
/// stream that `xz` decodes to the bytes its name hashes. Chunks already checked (by name,
/// size and time in `seen`) are not decoded again.
pub fn cache_is_sound(
    cache: &Path,
    seen: &mut std::collections::HashSet<(String, u64, i64)>,
) -> Result<(), String> {
    let stages = cache.join("stages");
    for e in std::fs::read_dir(&stages)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') {
            continue;
        }
        kiln_host::manifest::verify(&e.path(), kiln_host::manifest::Check::Full)
            .map_err(|why| format!("stage {n}: {why}"))?;
    }
    let chunks = cache.join("xz-chunks");
    for e in std::fs::read_dir(&chunks).into_iter().flatten().flatten() {
        use std::os::unix::fs::MetadataExt;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') {
            continue;
        }
        let m = e.metadata().unwrap();
        let id = (n.clone(), m.len(), m.mtime_nsec());
        if seen.contains(&id) {
            continue;
        }
        let (hash, rest) = n
            .split_once('-')
            .ok_or(format!("chunk {n}: a name kiln does not make"))?;
        if !rest.ends_with(".chunk") || hash.len() != 64 {
            return Err(format!("chunk {n}: a name kiln does not make"));
        }
        let bytes = std::fs::read(e.path()).unwrap();
        if bytes.len() < 88 || &bytes[..16] != b"kiln-xz-chunk-1\n" {
            return Err(format!("chunk {n}: no header"));
        }
        let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let script = format!(
            "set -o pipefail; tail -c +89 '{}' | xz -dc | tee >(wc -c >&2) | sha256sum",
            e.path().display()
        );
        let o = Command::new("bash").args(["-c", &script]).output().unwrap();
        let got = String::from_utf8_lossy(&o.stdout);
        let size: u64 = String::from_utf8_lossy(&o.stderr)
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        if !o.status.success() || !got.starts_with(hash) || size != len {
            return Err(format!(
                "chunk {n}: its stream decodes to {size} bytes with SHA-256 {}, header says {len}",
                got.split_whitespace().next().unwrap_or("?")
            ));
        }
        seen.insert(id);
    }
    Ok(())
}

/// A small random number generator for tests that pick random times: its seed is printed,
/// and `KILN_TEST_SEED` repeats a run.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("KILN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random seed: KILN_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// `kiln` (or another build of it) started with the test agent and `env`, in its own process
/// group (so a test can kill it with everything it started), not waited for.
pub fn spawn_kiln(kiln: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    use std::os::unix::process::CommandExt;
    let (_, agent) = binaries();
    let mut c = Command::new(kiln);
    c.args(args)
        .current_dir(root())
        .env("KILN_AGENT", agent)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("KILN_FAILPOINT")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("start kiln")
}
