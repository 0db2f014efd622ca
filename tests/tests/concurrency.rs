//! Builds that run at the same time, started with random offsets (the seed is printed;
//! KILN_TEST_SEED repeats a run): two on one cache, two on one output directory with
//! different caches, two release builds of one version. Each pair ends with both built, or one
//! refused with a clear error; what they leave equals what serial builds leave, and nothing
//! else is left (no staging directory, no temporary stage, chunk or work directory).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_tests::*;

// Three rounds each: "several" random offsets, at about a minute a round (two warm builds).
const ROUNDS: usize = 3;

/// The tests of this file one at a time: each races two kiln builds of its own and then
/// checks that no scratch is left in the shared test cache, which another test's builds
/// would be using meanwhile.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two processes, the second started `offset` after the first; their outputs in order.
fn race(
    a: &[&str],
    b: &[&str],
    env_a: &[(&str, &str)],
    env_b: &[(&str, &str)],
    offset: Duration,
) -> (std::process::Output, std::process::Output) {
    let (kiln, _) = binaries();
    let first = spawn_kiln(kiln, a, env_a);
    std::thread::sleep(offset);
    let second = spawn_kiln(kiln, b, env_b);
    (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    )
}

/// A build of the minimal recipe for the board and qemu, signed with the test cache's
/// development key.
fn build_args(out: &Path) -> Vec<String> {
    [
        "build",
        "recipes/minimal.toml",
        "--platform",
        "qemu",
        "--dev-key",
        "--output",
        s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(|x| x.as_str()).collect()
}

/// The time one build takes from a warm cache, for the offsets.
fn warm_build(cache: &Path, out: &Path) -> Duration {
    let t = Instant::now();
    let a = build_args(out);
    let o = kiln_env(&args(&a), &[("KILN_CACHE_DIR", s(cache))]);
    assert!(o.status.success(), "{}", text(&o));
    t.elapsed()
}

#[test]
fn two_builds_on_one_cache_wait_for_each_other() {
    let _serial = one_at_a_time();
    minimal_out();
    let dir = test_dir().join("concurrent-cache");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = cache_dir();
    let reference = dir.join("serial");
    let took = warm_build(&cache, &reference);
    let want = file_hashes(&reference);
    let mut rng = Rng::from_env();
    let mut waited = 0;
    for round in 0..ROUNDS {
        let (oa, ob) = (dir.join(format!("a{round}")), dir.join(format!("b{round}")));
        let offset = took.mul_f64(rng.unit());
        let env = [("KILN_CACHE_DIR", s(&cache))];
        let (a, b) = race(
            &args(&build_args(&oa)),
            &args(&build_args(&ob)),
            &env,
            &env,
            offset,
        );
        assert!(a.status.success(), "round {round}, first:\n{}", text(&a));
        assert!(b.status.success(), "round {round}, second:\n{}", text(&b));
        if text(&b).contains("waiting for another kiln build using") {
            waited += 1;
        }
        assert_eq!(
            file_hashes(&oa),
            want,
            "round {round}: the first build's output"
        );
        assert_eq!(
            file_hashes(&ob),
            want,
            "round {round}: the second build's output"
        );
        let left = leftovers(&cache, &[&oa, &ob]);
        assert!(left.is_empty(), "round {round} left {left:?}");
        eprintln!(
            "round {round}: offset {:.1} s, both built",
            offset.as_secs_f64()
        );
    }
    eprintln!("{ROUNDS} rounds; the second build waited for the first in {waited}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_builds_on_one_output_with_different_caches_wait_for_each_other() {
    let _serial = one_at_a_time();
    minimal_out();
    let dir = test_dir().join("concurrent-output");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A second cache: the test cache hard-linked (kiln never writes a published file, so the
    // two share them safely), with its own lock.
    let other = dir.join("cache");
    tool("cp", &["-al", s(&cache_dir()), s(&other)]);
    let out = dir.join("out");
    let took = warm_build(&cache_dir(), &out);
    let want = file_hashes(&out);
    warm_build(&other, &dir.join("check"));
    assert_eq!(
        file_hashes(&dir.join("check")),
        want,
        "the copied cache builds the same"
    );
    let mut rng = Rng::from_env();
    let mut waited = 0;
    for round in 0..ROUNDS {
        let offset = took.mul_f64(rng.unit());
        let a = build_args(&out);
        let (ra, rb) = race(
            &args(&a),
            &args(&a),
            &[("KILN_CACHE_DIR", s(&cache_dir()))],
            &[("KILN_CACHE_DIR", s(&other))],
            offset,
        );
        assert!(ra.status.success(), "round {round}, first:\n{}", text(&ra));
        assert!(rb.status.success(), "round {round}, second:\n{}", text(&rb));
        if text(&rb).contains("waiting for another kiln build writing to") {
            waited += 1;
        }
        assert_eq!(file_hashes(&out), want, "round {round}: the output");
        digests_hold(&out).unwrap();
        for c in [cache_dir(), other.clone()] {
            let left = leftovers(&c, &[&out]);
            assert!(left.is_empty(), "round {round} left {left:?}");
        }
        eprintln!(
            "round {round}: offset {:.1} s, both built",
            offset.as_secs_f64()
        );
    }
    eprintln!("{ROUNDS} rounds; the second build waited for the first in {waited}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two release builds of one version into one directory: the first makes the release, the
/// second waits for it and is refused, naming it; the release verifies and no partial one is
/// left.
#[test]
fn two_release_builds_of_one_version_make_one_release() {
    let _serial = one_at_a_time();
    minimal_out();
    let dir = test_dir().join("concurrent-release");
    let _ = std::fs::remove_dir_all(&dir);
    let key = dir.join("release-key.pem");
    std::fs::create_dir_all(&dir).unwrap();
    let o = kiln(&["key", "generate", s(&key)]);
    assert!(o.status.success(), "{}", text(&o));
    let release_args = |out: &Path| -> Vec<String> {
        [
            "build",
            "recipes/minimal.toml",
            "--release",
            "--platform",
            "qemu",
            "--signing-key",
            s(&key),
            "--output",
            s(out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let t = Instant::now();
    let first = dir.join("first");
    let o = kiln(&args(&release_args(&first)));
    assert!(o.status.success(), "{}", text(&o));
    let took = t.elapsed();
    let release: PathBuf = first.join("amd64-usr/0.1.0");
    let want = file_hashes(&release);
    let mut rng = Rng::from_env();
    let cache = cache_dir();
    let env = [("KILN_CACHE_DIR", s(&cache))];
    for round in 0..ROUNDS {
        let out = dir.join(format!("r{round}"));
        let offset = took.mul_f64(rng.unit());
        let a = release_args(&out);
        let (ra, rb) = race(&args(&a), &args(&a), &env, &env, offset);
        let ok: Vec<bool> = [&ra, &rb].iter().map(|o| o.status.success()).collect();
        assert_eq!(
            ok.iter().filter(|x| **x).count(),
            1,
            "round {round}: {ok:?}\n{}\n{}",
            text(&ra),
            text(&rb)
        );
        let refused = if ok[0] { &rb } else { &ra };
        let t = text(refused);
        assert_eq!(refused.status.code(), Some(1), "{t}");
        assert!(
            t.contains("release 0.1.0 of board amd64-usr already exists"),
            "{t}"
        );
        let dir = out.join("amd64-usr/0.1.0");
        assert_eq!(file_hashes(&dir), want, "round {round}: the release");
        let o = kiln(&[
            "verify",
            s(&dir),
            "--key",
            &format!("{}.pub", key.display()),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let left = leftovers(&cache_dir(), &[&out.join("amd64-usr")]);
        assert!(left.is_empty(), "round {round} left {left:?}");
        eprintln!(
            "round {round}: offset {:.1} s, one release, the other refused",
            offset.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
