//! Failpoints: named places where a test has kiln killed with SIGKILL, as `kill -9` would, to
//! prove that a build killed there leaves nothing that a later build trusts.
//! `KILN_FAILPOINT=NAME` kills the process at the first pass through NAME, `NAME:N` at the
//! N-th (counted across threads). They are compiled in only with the `failpoints` feature
//! (the crash tests build such a kiln); without it [`hit`] is empty and the variable is
//! ignored. The names are listed in docs/build.md.

/// Kills the process here if `KILN_FAILPOINT` names this place (and this is the pass it
/// names).
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSES: AtomicU64 = AtomicU64::new(0);
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("KILN_FAILPOINT").ok()?;
        Some(match v.split_once(':') {
            Some((n, at)) => (n.to_string(), at.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    let Some((want, at)) = spec else { return };
    if want != name {
        return;
    }
    let pass = PASSES.fetch_add(1, Ordering::SeqCst) + 1;
    if pass == *at {
        eprintln!("kiln: failpoint {name} (pass {pass}): killing kiln");
        // SAFETY: kill and getpid have no preconditions; SIGKILL ends the process here.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // The signal is delivered before kill returns to a single-threaded caller; another
        // thread may run on for an instant, never past this.
        loop {
            std::thread::park();
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
