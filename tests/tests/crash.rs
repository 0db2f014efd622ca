//! kill -9 during `kiln build`: a build of recipes/minimal.toml for all seven platforms is
//! killed with SIGKILL at random times (the seed is printed; KILN_TEST_SEED repeats a run)
//! and at kiln's failpoints (a stage being published, replaced and just published, an xz
//! chunk being published and just published, a rename into the output directory). After each
//! kill, the output directory holds no DIGESTS that does not describe the files beside it;
//! the next build succeeds, its outputs are byte-identical to those of a build from a fresh
//! cache, every stage in the cache matches its manifest and every xz chunk decodes to what its
//! name says, and nothing of the killed build is left (no temporary stage, chunk, work or
//! staging directory).
//!
//! The builds share only the downloaded .debs with the test cache, and are signed with the
//! golden test's fixed key, so that two caches build the same bytes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::*;

/// Random kill points (the requirement is 20 or more); `KILN_CRASH_KILLS` sets another
/// number, for a quicker look while working on the test.
const RANDOM_KILLS: usize = 20;

const KEY: &str = "tests/data/golden/INSECURE-golden-signing-key.pem";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Crash {
    kiln: PathBuf,
    dir: PathBuf,
    cache: PathBuf,
    out: PathBuf,
    key: String,
    want: std::collections::BTreeMap<String, String>,
    seen: HashSet<(String, u64, i64)>,
    runs: usize,
}

/// How a started build ended.
enum End {
    /// Killed with SIGKILL (by the test or by a failpoint); its stderr.
    Killed(String),
    /// Exited by itself; its status, stdout and stderr.
    Exited(std::process::ExitStatus, String, String),
}

/// A new cache directory holding only the test cache's downloaded packages (hard links:
/// kiln never writes a published .deb).
fn fresh_cache(at: &Path) -> PathBuf {
    std::fs::create_dir_all(at).unwrap();
    tool(
        "cp",
        &["-al", s(&cache_dir().join("debs")), s(&at.join("debs"))],
    );
    at.to_path_buf()
}

/// The live processes of process group `pgid`.
fn group(pgid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so count after its ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // A zombie has ended (whoever adopted it has yet to reap it).
        if f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            v.push(pid);
        }
    }
    v
}

impl Crash {
    fn args(&self) -> Vec<String> {
        [
            "build",
            "recipes/minimal.toml",
            "--platform",
            "all",
            "--json",
            "--output",
            s(&self.out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    }

    /// Starts the failpoint kiln on `cache` into `out`, in its own process group, its stdout
    /// and stderr in files under logs/.
    fn start(&mut self, cache: &Path, out: &Path, failpoint: Option<&str>) -> (Child, PathBuf) {
        use std::os::unix::process::CommandExt;
        self.runs += 1;
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("run-{:03}", self.runs));
        let (_, agent) = binaries();
        let mut args = self.args();
        *args.last_mut().unwrap() = s(out).to_string();
        let mut c = Command::new(&self.kiln);
        c.args(&args)
            .current_dir(root())
            .env("KILN_CACHE_DIR", cache)
            .env("KILN_AGENT", agent)
            .env("KILN_SIGNING_KEY_PEM", &self.key)
            .env_remove("KILN_SIGNING_KEY")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("KILN_CACHE_VERIFY")
            .env_remove("KILN_FAILPOINT")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        if let Some(f) = failpoint {
            c.env("KILN_FAILPOINT", f);
        }
        (c.spawn().expect("start kiln"), log)
    }

    /// Waits for the build, killing kiln with SIGKILL once `kill_at` has passed. Whatever
    /// kiln started and left running is killed too, so that the next build starts alone
    /// (as after a reboot); how many there were is printed.
    fn finish(&self, mut child: Child, log: &Path, kill_at: Option<Duration>) -> End {
        let t = Instant::now();
        let pid = child.id() as i32;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if kill_at.is_some_and(|k| t.elapsed() >= k) {
                // SAFETY: kill(2) of our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let left = group(pid);
        if !left.is_empty() {
            eprintln!(
                "    {} processes kiln started outlived it; killed",
                left.len()
            );
            // SAFETY: killpg(2) of the group the test made for this build.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !group(pid).is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "the build's processes do not end"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let out = std::fs::read_to_string(log.with_extension("out")).unwrap_or_default();
        let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(libc::SIGKILL) {
            End::Killed(err)
        } else {
            End::Exited(status, out, err)
        }
    }

    /// After a kill: a DIGESTS in the output directory describes the files beside it.
    fn after_kill(&self, what: &str) {
        if let Err(e) = digests_hold(&self.out) {
            panic!("after {what}: {e}");
        }
    }

    /// The checks of a build that ran to its end: it succeeded, its outputs are the fresh
    /// cache's, the cache is sound and nothing is left. Prints what it reused.
    fn check_done(&mut self, what: &str, st: std::process::ExitStatus, out: &str, err: &str) {
        assert!(st.success(), "{what}: the next build failed ({st}):\n{err}");
        let build: serde_json::Value = serde_json::from_str(out)
            .unwrap_or_else(|e| panic!("{what}: the build's JSON: {e}\n{out}"));
        let stages = build["stages"].as_array().expect("stages");
        let built: Vec<&str> = stages
            .iter()
            .filter(|s| s["key"].is_string() && !s["cached"].as_bool().unwrap())
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        let cached = stages
            .iter()
            .filter(|s| s["key"].is_string() && s["cached"].as_bool().unwrap())
            .count();
        let damaged: Vec<&str> = stages
            .iter()
            .filter(|s| s["explain"].as_str().unwrap().contains("damaged"))
            .map(|s| s["stage"].as_str().unwrap())
            .collect();
        eprintln!(
            "    next build: {:.1} s, reused {cached} cached stages, built {built:?}{}",
            build["seconds"].as_f64().unwrap_or(0.0),
            if damaged.is_empty() {
                String::new()
            } else {
                format!(" (found damaged: {damaged:?})")
            }
        );
        let now = file_hashes(&self.out);
        if now != self.want {
            let diff: Vec<String> = self
                .want
                .keys()
                .chain(now.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| self.want.get(*k) != now.get(*k))
                .map(|k| format!("{k}: {:?}, fresh cache {:?}", now.get(k), self.want.get(k)))
                .collect();
            panic!(
                "{what}: the outputs differ from a fresh cache's:\n  {}",
                diff.join("\n  ")
            );
        }
        digests_hold(&self.out).unwrap();
        let t = Instant::now();
        if let Err(e) = cache_is_sound(&self.cache, &mut self.seen) {
            panic!("{what}: the cache holds a corrupt entry: {e}");
        }
        eprintln!(
            "    outputs as a fresh cache's; cache sound (checked in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
        let left = leftovers(&self.cache, &[&self.out]);
        assert!(left.is_empty(), "{what}: left {left:?}");
    }

    /// The build after a kill, run to its end and checked.
    fn resume(&mut self, what: &str) {
        let (c, log) = self.start(&self.cache.clone(), &self.out.clone(), None);
        match self.finish(c, &log, None) {
            End::Exited(st, out, err) => self.check_done(what, st, &out, &err),
            End::Killed(err) => panic!("{what}: the next build was killed:\n{err}"),
        }
    }

    /// One build stopped at failpoint `spec` (`NAME` or `NAME:N`), which it must reach, then
    /// the next build.
    fn at_failpoint(&mut self, spec: &str, prepared: &str) {
        let name = spec.split(':').next().unwrap();
        let t = Instant::now();
        let (c, log) = self.start(&self.cache.clone(), &self.out.clone(), Some(spec));
        match self.finish(c, &log, None) {
            End::Killed(err) => assert!(
                err.contains(&format!("kiln: failpoint {name} ")),
                "{spec}: killed, but not at its failpoint:\n{err}"
            ),
            End::Exited(st, _, err) => {
                panic!("failpoint {spec} was never reached ({prepared}); the build {st}:\n{err}")
            }
        }
        eprintln!(
            "failpoint {spec} ({prepared}): killed after {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let what = format!("failpoint {spec}");
        self.after_kill(&what);
        self.resume(&what);
    }

    /// Builds killed at random times within `span` until `want` kills, each followed by
    /// the next build.
    fn random_kills(
        &mut self,
        rng: &mut Rng,
        span: Duration,
        want: usize,
        kills: &mut usize,
        tries: &mut usize,
    ) {
        while *kills < want {
            *tries += 1;
            assert!(
                *tries <= 3 * want,
                "{tries} builds, only {kills} were killed before they ended"
            );
            let at = span.mul_f64(rng.unit());
            let (ch, log) = self.start(&self.cache.clone(), &self.out.clone(), None);
            match self.finish(ch, &log, Some(at)) {
                End::Killed(err) => {
                    *kills += 1;
                    let last = plain(err.lines().last().unwrap_or(""));
                    eprintln!(
                        "kill {kills}: at {:.2} s (its last line: {last})",
                        at.as_secs_f64()
                    );
                    let what = format!("kill {kills} at {:.2} s", at.as_secs_f64());
                    self.after_kill(&what);
                    self.resume(&what);
                }
                End::Exited(st, out, err) => {
                    eprintln!(
                        "(a build ended before its kill at {:.2} s)",
                        at.as_secs_f64()
                    );
                    self.check_done("a build that was not killed", st, &out, &err);
                }
            }
        }
    }

    /// The published stages of the cache, by name.
    fn stages(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.cache.join("stages"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// Stages a build can make again in seconds: the per-platform ones and the small
    /// images (not the package tree, the kernel or the USR image).
    fn cheap_stages(&self) -> Vec<PathBuf> {
        self.stages()
            .into_iter()
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                ["oem", "esp", "root", "grub"]
                    .iter()
                    .any(|k| n.starts_with(&format!("{k}-")) || n.starts_with(&format!("{k}:")))
            })
            .collect()
    }

    fn chunks(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.cache.join("xz-chunks"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
}

/// A log line without its colours.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for ch in line.chars() {
        match (esc, ch) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out.trim().to_string()
}

/// `n` distinct entries of `v`, at random.
fn pick(rng: &mut Rng, v: &[PathBuf], n: usize) -> Vec<PathBuf> {
    let mut v = v.to_vec();
    let mut out = Vec::new();
    while out.len() < n && !v.is_empty() {
        out.push(v.remove(rng.below(v.len())));
    }
    out
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Changes the first byte of a small regular file of the stage `dir` (a new file in its
/// place, so that nothing hard-linked to it changes): the damage a later build must notice.
/// Returns the file, or none if the stage has no file under 1 MiB besides kiln's own.
fn damage(rng: &mut Rng, dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.path().symlink_metadata().unwrap();
            let n = name(&e.path());
            if m.is_dir() {
                todo.push(e.path());
            } else if m.is_file()
                && m.len() > 0
                && m.len() < (1 << 20)
                && !(d == dir && n.starts_with("kiln-"))
            {
                files.push(e.path());
            }
        }
    }
    if files.is_empty() {
        return None;
    }
    files.sort();
    let f = files[rng.below(files.len())].clone();
    let m = f.symlink_metadata().unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[0] ^= 0xff;
    std::fs::remove_file(&f).unwrap();
    std::fs::write(&f, &bytes).unwrap();
    std::os::unix::fs::chown(&f, Some(m.uid()), Some(m.gid())).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
    Some(f)
}

#[test]
#[ignore = "slow: about 80 min on two cores (each kill's next build and its full cache check); KILN_CRASH_TESTS=1 scripts/test.sh runs it"]
fn a_build_killed_anywhere_leaves_nothing_a_later_build_trusts() {
    let started = Instant::now();
    // The test cache holds the packages (the shared build downloads them).
    minimal_out();
    let kiln = failpoint_kiln().to_path_buf();
    let dir = test_dir().join("crash");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::from_env();
    let mut c = Crash {
        kiln,
        dir: dir.clone(),
        cache: PathBuf::new(),
        out: dir.join("out"),
        key: std::fs::read_to_string(root().join(KEY)).unwrap(),
        want: Default::default(),
        seen: HashSet::new(),
        runs: 0,
    };

    // The reference: a build from a fresh cache, then one from the same cache, warm (how
    // long a build takes when every stage is cached: the span of the random kill times).
    let reference = fresh_cache(&dir.join("reference-cache"));
    let t = Instant::now();
    let (ch, log) = c.start(&reference, &dir.join("reference"), None);
    match c.finish(ch, &log, None) {
        End::Exited(st, _, err) => assert!(st.success(), "the reference build: {err}"),
        End::Killed(err) => panic!("the reference build was killed: {err}"),
    }
    let fresh = t.elapsed();
    c.want = file_hashes(&dir.join("reference"));
    assert!(
        c.want.contains_key("minimal_update.payload"),
        "{:?}",
        c.want
    );
    assert_eq!(c.want.len(), 21, "{:?}", c.want.keys());
    let t = Instant::now();
    let (ch, log) = c.start(&reference, &dir.join("warm"), None);
    match c.finish(ch, &log, None) {
        End::Exited(st, _, err) => assert!(st.success(), "the warm build: {err}"),
        End::Killed(err) => panic!("the warm build was killed: {err}"),
    }
    let warm = t.elapsed();
    assert_eq!(
        file_hashes(&dir.join("warm")),
        c.want,
        "a warm build makes what a fresh one made"
    );
    std::fs::remove_dir_all(dir.join("warm")).unwrap();
    eprintln!(
        "reference: from a fresh cache {:.1} s, warm {:.1} s",
        fresh.as_secs_f64(),
        warm.as_secs_f64()
    );

    // Only the reference's hashes and chunks are needed from here on: its disk space goes.
    let left = leftovers(&reference, &[&dir.join("reference")]);
    assert!(left.is_empty(), "the reference build left {left:?}");
    std::fs::remove_dir_all(dir.join("reference")).unwrap();
    for sub in ["stages", "work"] {
        std::fs::remove_dir_all(reference.join(sub)).unwrap();
    }

    // The cache that is killed into: no stage, so the first kills land in stage builds. It
    // starts with the reference's xz chunks (compressing them takes minutes on two cores; the
    // chunk failpoints below remove some to have them made again).
    c.cache = fresh_cache(&dir.join("cache"));
    tool(
        "cp",
        &[
            "-al",
            s(&reference.join("xz-chunks")),
            s(&c.cache.join("xz-chunks")),
        ],
    );

    let random_kills = std::env::var("KILN_CRASH_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(RANDOM_KILLS);
    // The first kill in the cache without stages, then the failpoints, then the other kills.
    let mut kills = 0;
    let mut tries = 0;
    c.random_kills(&mut rng, warm, 1.min(random_kills), &mut kills, &mut tries);

    // The failpoints, each in a cache that makes the build pass it.
    for (spec, n) in [("stage-publish", 2), ("stage-published", 2)] {
        let gone = pick(&mut rng, &c.cheap_stages(), n);
        for g in &gone {
            std::fs::remove_dir_all(g).unwrap();
        }
        let names: Vec<String> = gone.iter().map(|p| name(p)).collect();
        let at = 1 + rng.below(n);
        c.at_failpoint(&format!("{spec}:{at}"), &format!("removed {names:?}"));
    }
    let cheap = c.cheap_stages();
    let file = pick(&mut rng, &cheap, cheap.len())
        .iter()
        .find_map(|d| damage(&mut rng, d))
        .expect("a stage with a small file");
    c.at_failpoint(
        "stage-replace",
        &format!("damaged {}", file.strip_prefix(&c.cache).unwrap().display()),
    );
    for spec in ["chunk-publish", "chunk-published"] {
        // Without the payload stage, the build compresses everything the chunks were made
        // of (the payload and the xz disks), so it makes each removed chunk again.
        let payload = c
            .stages()
            .into_iter()
            .find(|p| name(p).starts_with("payload-"))
            .expect("a payload stage");
        std::fs::remove_dir_all(&payload).unwrap();
        let gone = pick(&mut rng, &c.chunks(), 3);
        for g in &gone {
            std::fs::remove_file(g).unwrap();
        }
        let at = 1 + rng.below(gone.len());
        c.at_failpoint(
            &format!("{spec}:{at}"),
            &format!("removed the payload stage and {} chunks", gone.len()),
        );
    }
    // Every build renames 7 old DIGESTS aside, 14 files in and 7 DIGESTS in.
    let at = 1 + rng.below(28);
    c.at_failpoint(&format!("output-rename:{at}"), "outputs in place");

    c.random_kills(&mut rng, warm, random_kills, &mut kills, &mut tries);

    eprintln!(
        "{kills} random kills ({tries} builds started for them) and 6 failpoints, {} builds in \
         {:.0} s, seed printed above",
        c.runs,
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
