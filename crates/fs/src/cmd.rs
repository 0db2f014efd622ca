//! Running host tools with their output captured, so a failure says what ran and what it
//! printed. Each run also records the tool's peak memory for the calling thread's stage.

use std::cell::Cell;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{bail, Context, Result};

thread_local! {
    static PEAK_RSS_KIB: Cell<u64> = const { Cell::new(0) };
}

/// The largest resident set (KiB) of the tools run on this thread since the last call.
pub fn take_peak_rss_kib() -> u64 {
    PEAK_RSS_KIB.with(|p| p.replace(0))
}

/// Runs `cmd`; on failure the error names the command and carries the tail of its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let shown = describe(cmd);
    tracing::debug!("running {shown}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let mut stderr = Vec::new();
    let _ = err_pipe.read_to_end(&mut stderr);
    let stdout = out_t.join().unwrap_or_default();
    let status = wait_with_rusage(child.id())?;
    if !status.success() {
        bail!("{shown} failed ({status}):\n{}", tail(&stdout, &stderr, 30));
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` with stdout and stderr going to `log`; on failure shows the log's tail and
/// where the whole log is.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let shown = describe(cmd);
    let f =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let status = wait_with_rusage(child.id())?;
    if !status.success() {
        let text = std::fs::read(log).unwrap_or_default();
        bail!(
            "{shown} failed ({status}):\n{}\n(whole log: {})",
            tail(&text, b"", 25),
            log.display()
        );
    }
    Ok(())
}

/// Reaps a child with wait4 to learn its peak memory as well as its status.
fn wait_with_rusage(pid: u32) -> Result<ExitStatus> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r == pid as libc::pid_t {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4 failed");
        }
    }
    let rss = ru.ru_maxrss.max(0) as u64;
    PEAK_RSS_KIB.with(|p| p.set(p.get().max(rss)));
    Ok(ExitStatus::from_raw(status))
}

/// The last `n` lines of a command's stdout and stderr.
pub fn tail(stdout: &[u8], stderr: &[u8], n: usize) -> String {
    let mut text = String::from_utf8_lossy(stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(stderr));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_output() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("boom") && err.contains("exit status: 3"),
            "{err}"
        );
        let out = run(Command::new("sh").args(["-c", "echo ok"])).unwrap();
        assert_eq!(out.stdout, b"ok\n");
        assert!(take_peak_rss_kib() > 0);
    }
}
