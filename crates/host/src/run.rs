//! The one way kiln runs a host tool: [`Cmd`], a builder around [`std::process::Command`].
//! Every child starts from the scrubbed environment of [`crate::env`] plus what the call
//! site sets; its exit status is checked; a failure names the command and carries the end
//! of what it printed. Each run also records the child's peak memory for the calling
//! thread, which the build reports per stage ([`take_peak_rss_kib`]).

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

use crate::tools::{self, Tool};

/// Lines of output an error carries.
const TAIL_LINES: usize = 30;
/// Lines of a log file an error carries (the rest is in the file, which the error names).
const LOG_TAIL_LINES: usize = 25;
/// How often [`Cmd::run_lines`] reports that a long run is still going.
pub const TICK: Duration = Duration::from_secs(30);

thread_local! {
    static PEAK_RSS_KIB: Cell<u64> = const { Cell::new(0) };
}

/// The largest resident set (KiB) of the tools run on this thread since the last call.
pub fn take_peak_rss_kib() -> u64 {
    PEAK_RSS_KIB.with(|p| p.replace(0))
}

/// What [`Cmd::run_lines`] hands its callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A line the tool printed (stdout or stderr), without its line end.
    Line(&'a str),
    /// Every [`TICK`] while the tool runs: the time since it started.
    Tick(Duration),
}

enum Program {
    Tool(Tool),
    /// A program named by configuration (a board profile's QEMU binary).
    Named(String),
}

/// A host tool to run. Setters take `&mut self` as [`Command`]'s do, so a command can be
/// built in one expression or step by step.
pub struct Cmd {
    program: Program,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    parent_env: Option<Vec<(OsString, OsString)>>,
    cwd: Option<PathBuf>,
    what: Option<String>,
    kill_with_parent: bool,
    discard_stdout: bool,
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
}

impl Cmd {
    /// A command running `tool`, found on $PATH when it runs (a missing tool is an error
    /// naming its package).
    pub fn new(tool: Tool) -> Self {
        Self::with(Program::Tool(tool))
    }

    /// A command running a program named by configuration rather than by kiln's code; the
    /// package is named on error if [`tools::TOOLS`] knows the name.
    pub fn program(name: &str) -> Self {
        Self::with(Program::Named(name.to_string()))
    }

    fn with(program: Program) -> Self {
        Cmd {
            program,
            args: Vec::new(),
            envs: Vec::new(),
            parent_env: None,
            cwd: None,
            what: None,
            kill_with_parent: false,
            discard_stdout: false,
            stdin: None,
            stdout: None,
            stderr: None,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets a variable for the child, on top of the scrubbed environment.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.envs
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// What the run is for, as a verb phrase ("make the USR filesystem"): a failure then
    /// reads "cannot make the USR filesystem", caused by the command's own error.
    pub fn what(&mut self, what: impl Into<String>) -> &mut Self {
        self.what = Some(what.into());
        self
    }

    /// The environment to scrub instead of kiln's own (tests give one explicitly).
    pub fn parent_env<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.parent_env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.as_ref().to_os_string(), v.as_ref().to_os_string()))
                .collect(),
        );
        self
    }

    /// For [`Cmd::spawn`]: the child gets SIGKILL when the thread that spawned it exits, so
    /// a killed kiln leaves no QEMU running.
    pub fn kill_with_parent(&mut self) -> &mut Self {
        self.kill_with_parent = true;
        self
    }

    /// For [`Cmd::run`]: stdout goes to /dev/null instead of memory (a benchmark of a
    /// tool's own speed); stderr is still captured for errors.
    pub fn discard_stdout(&mut self) -> &mut Self {
        self.discard_stdout = true;
        self
    }

    /// For [`Cmd::spawn`] (which otherwise inherits kiln's stdin).
    pub fn stdin(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.stdin = Some(s.into());
        self
    }

    /// For [`Cmd::spawn`] (which otherwise inherits kiln's stdout).
    pub fn stdout(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.stdout = Some(s.into());
        self
    }

    /// For [`Cmd::spawn`] (which otherwise inherits kiln's stderr).
    pub fn stderr(&mut self, s: impl Into<Stdio>) -> &mut Self {
        self.stderr = Some(s.into());
        self
    }

    /// The command line as the program's name and its arguments, for messages.
    pub fn describe(&self) -> String {
        let name = match &self.program {
            Program::Tool(t) => OsStr::new(t.name),
            Program::Named(n) => OsStr::new(n.as_str()),
        };
        describe(name, &self.args)
    }

    /// Runs to completion with stdout and stderr captured; fails unless it exits 0.
    pub fn run(&mut self) -> Result<Output> {
        let r = self.output(true).map(|(o, _)| o);
        self.in_context(r)
    }

    /// Runs to completion with output captured and does not look at the exit status: only
    /// for probes whose failure is an answer (say so where it is used). Failing to start
    /// is still an error.
    pub fn output_unchecked(&mut self) -> Result<Output> {
        let r = self.output(false).map(|(o, _)| o);
        self.in_context(r)
    }

    /// [`Cmd::run`], with stdout parsed as JSON.
    pub fn run_json<T: DeserializeOwned>(&mut self) -> Result<T> {
        let r = self.output(true).and_then(|(o, shown)| {
            serde_json::from_slice(&o.stdout)
                .with_context(|| format!("{shown} did not print the JSON kiln expects"))
        });
        self.in_context(r)
    }

    /// Runs with stdout and stderr going to `log` (created afresh); on failure the error
    /// carries the log's tail and where the whole log is.
    pub fn run_logged(&mut self, log: &Path) -> Result<()> {
        let r = self.logged(log);
        self.in_context(r)
    }

    /// Runs with every line the tool prints appended to `log` (after a `### command` line)
    /// and handed to `on_event`, which also gets a [`Event::Tick`] every [`TICK`] while the
    /// tool runs (for a progress line). On failure the error carries the log's tail and
    /// where the whole log is.
    pub fn run_lines(&mut self, log: &Path, on_event: impl FnMut(Event<'_>)) -> Result<()> {
        let r = self.lines(log, on_event);
        self.in_context(r)
    }

    /// Starts the tool and hands it over. Its stdio is kiln's unless set with
    /// [`Cmd::stdin`] and friends. The caller reaps it, so its memory is not recorded.
    pub fn spawn(&mut self) -> Result<Child> {
        let r = self.start();
        self.in_context(r)
    }

    fn start(&mut self) -> Result<Child> {
        let (mut c, shown) = self.command()?;
        if let Some(s) = self.stdin.take() {
            c.stdin(s);
        }
        if let Some(s) = self.stdout.take() {
            c.stdout(s);
        }
        if let Some(s) = self.stderr.take() {
            c.stderr(s);
        }
        if self.kill_with_parent {
            die_with_parent(&mut c);
        }
        c.spawn().with_context(|| format!("cannot start {shown}"))
    }

    fn in_context<T>(&self, r: Result<T>) -> Result<T> {
        match &self.what {
            Some(w) => r.with_context(|| format!("cannot {w}")),
            None => r,
        }
    }

    /// The std command (program found, environment scrubbed) and how to show it.
    fn command(&self) -> Result<(Command, String)> {
        let path = match &self.program {
            Program::Tool(t) => tools::require(*t)?,
            Program::Named(n) => tools::require_named(n)?,
        };
        let shown = describe(path.as_os_str(), &self.args);
        let parent = match &self.parent_env {
            Some(p) => p.clone(),
            None => std::env::vars_os().collect(),
        };
        let mut c = Command::new(&path);
        c.args(&self.args)
            .env_clear()
            .envs(crate::env::scrub(parent))
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        tracing::debug!("running {shown}");
        Ok((c, shown))
    }

    fn output(&mut self, check: bool) -> Result<(Output, String)> {
        let (mut c, shown) = self.command()?;
        die_with_parent(&mut c);
        let out = if self.discard_stdout {
            Stdio::null()
        } else {
            Stdio::piped()
        };
        let mut child = c
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        // Both pipes drained at once, so neither fills up and stops the tool.
        let out_t = child.stdout.take().map(|mut p| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        });
        let mut stderr = Vec::new();
        if let Some(mut p) = child.stderr.take() {
            let _ = p.read_to_end(&mut stderr);
        }
        let stdout = out_t
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        let status = wait_with_rusage(&child)?;
        if check && !status.success() {
            bail!("{shown} failed ({status}){}", shown_tail(&stdout, &stderr));
        }
        Ok((
            Output {
                status,
                stdout,
                stderr,
            },
            shown,
        ))
    }

    fn logged(&mut self, log: &Path) -> Result<()> {
        let (mut c, shown) = self.command()?;
        die_with_parent(&mut c);
        let f = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let f2 = f
            .try_clone()
            .with_context(|| format!("cannot open {} twice", log.display()))?;
        let child = c
            .stdin(Stdio::null())
            .stdout(f2)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        let status = wait_with_rusage(&child)?;
        if !status.success() {
            bail!("{shown} failed ({status}):\n{}", log_tail(log));
        }
        Ok(())
    }

    fn lines(&mut self, log: &Path, mut on_event: impl FnMut(Event<'_>)) -> Result<()> {
        let (mut c, shown) = self.command()?;
        die_with_parent(&mut c);
        let mut logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let write_err =
            |e| anyhow::Error::new(e).context(format!("cannot write {}", log.display()));
        writeln!(logf, "### {shown}").map_err(write_err)?;
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let pipes: Vec<Box<dyn Read + Send>> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        let readers: Vec<_> = pipes
            .into_iter()
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(p);
                    loop {
                        let mut line = Vec::new();
                        match r.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                if tx.send(line).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let start = Instant::now();
        let mut next_tick = start + TICK;
        let mut write_failed = None;
        loop {
            let now = Instant::now();
            if now >= next_tick {
                on_event(Event::Tick(start.elapsed()));
                next_tick = now + TICK;
            }
            match rx.recv_timeout(next_tick.saturating_duration_since(now)) {
                Ok(mut line) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    // The bytes as printed go to the log; the callback gets text.
                    if let Err(e) = logf.write_all(&line) {
                        write_failed.get_or_insert(e);
                    }
                    let text = String::from_utf8_lossy(&line);
                    on_event(Event::Line(text.trim_end_matches(['\n', '\r'])));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Both pipes closed: the tool (and anything it left holding them) is done.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let status = wait_with_rusage(&child)?;
        drop(logf);
        if !status.success() {
            bail!(
                "{shown} failed ({status}); the end of its log:\n{}",
                log_tail(log)
            );
        }
        if let Some(e) = write_failed {
            return Err(write_err(e));
        }
        Ok(())
    }
}

/// The command line and the names (not the values) of the variables set for it.
impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.envs.iter().map(|(k, _)| k.to_string_lossy()).collect();
        f.debug_struct("Cmd")
            .field("command", &self.describe())
            .field("env", &names)
            .field("what", &self.what)
            .finish()
    }
}

/// The child gets SIGKILL when the thread that started it exits: with kiln killed (kill -9,
/// the OOM killer), no tool of its goes on writing into the cache that the next build has
/// locked. Only for children reaped by the thread that starts them (run, run_logged,
/// run_lines), or handed over on purpose ([`Cmd::kill_with_parent`]).
fn die_with_parent(c: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; they only set this child's
    // parent-death signal and read its parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // kiln died between the fork and the prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Reaps a child with wait4 to learn its peak memory as well as its status.
fn wait_with_rusage(child: &Child) -> Result<ExitStatus> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child, which nothing else reaps (the Child is borrowed
        // and never waited on).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
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

fn describe(program: &OsStr, args: &[OsString]) -> String {
    let mut s = program.to_string_lossy().into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last lines of a tool's stdout then stderr, after a colon and a newline; or that it
/// printed nothing.
fn shown_tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(stderr));
    let t = last_lines(&text, TAIL_LINES);
    if t.trim().is_empty() {
        " and printed nothing".to_string()
    } else {
        format!(":\n{t}")
    }
}

/// A log's last lines and where the whole log is.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    format!(
        "{}\n(whole log: {})",
        last_lines(&String::from_utf8_lossy(&text), LOG_TAIL_LINES),
        log.display()
    )
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::Tool;

    const SH: Tool = Tool {
        name: "sh",
        package: "dash",
    };
    const ENV: Tool = Tool {
        name: "env",
        package: "coreutils",
    };

    #[test]
    fn failure_carries_output_and_exit_status() {
        let err = Cmd::new(SH)
            .args(["-c", "echo one; echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("sh -c echo one; echo boom"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("one\nboom"), "{err}");
        let out = Cmd::new(SH).args(["-c", "echo ok"]).run().unwrap();
        assert_eq!(out.stdout, b"ok\n");
    }

    #[test]
    fn only_the_last_lines_are_carried() {
        let err = Cmd::new(SH)
            .args(["-c", "seq 1 100; exit 1"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\n71\n") && err.ends_with("\n100"), "{err}");
        assert!(!err.contains("\n70\n"), "{err}");
        let err = Cmd::new(SH).args(["-c", "exit 4"]).run().unwrap_err();
        assert!(err.to_string().ends_with("and printed nothing"), "{err}");
    }

    #[test]
    fn what_says_what_could_not_be_done() {
        let err = Cmd::new(SH)
            .args(["-c", "exit 1"])
            .what("make the USR filesystem")
            .run()
            .unwrap_err();
        assert_eq!(err.to_string(), "cannot make the USR filesystem");
        assert!(format!("{err:#}").contains("exit status: 1"), "{err:#}");
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let t = Tool {
            name: "mkfs.vfat-kiln-test-missing",
            package: "dosfstools",
        };
        let err = Cmd::new(t)
            .arg("x")
            .what("make the ESP filesystem")
            .run()
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("cannot make the ESP filesystem: missing host tools"),
            "{err}"
        );
        assert!(err.contains("mkfs.vfat-kiln-test-missing (Debian package dosfstools)"));
        assert!(err.contains("apt-get install dosfstools"), "{err}");
    }

    #[test]
    fn unchecked_output_keeps_the_status() {
        let o = Cmd::new(SH)
            .args(["-c", "echo no; exit 1"])
            .output_unchecked()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(o.stdout, b"no\n");
    }

    #[test]
    fn json_errors_name_the_command() {
        #[derive(serde::Deserialize, Debug)]
        struct V {
            a: u32,
        }
        let v: V = Cmd::new(SH)
            .args(["-c", r#"echo '{"a": 7}'"#])
            .run_json()
            .unwrap();
        assert_eq!(v.a, 7);
        let err = Cmd::new(SH)
            .args(["-c", "echo not json"])
            .run_json::<V>()
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("sh -c echo not json did not print the JSON"),
            "{err}"
        );
    }

    #[test]
    fn the_environment_is_scrubbed() {
        let out = Cmd::new(ENV)
            .parent_env([
                ("KILN_SIGNING_KEY_PEM", "-----BEGIN PRIVATE KEY-----"),
                ("http_proxy", "http://proxy:3128"),
                ("PATH", "/usr/bin:/bin"),
            ])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .run()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "PATH=/usr/bin:/bin",
                "SOURCE_DATE_EPOCH=1700000000",
                "http_proxy=http://proxy:3128"
            ]
        );
        // kiln's own environment is scrubbed the same way.
        let out = Cmd::new(ENV).run().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        for line in text.lines() {
            let name = line.split('=').next().unwrap();
            assert!(crate::env::is_allowed(OsStr::new(name)), "{line}");
        }
        // Cargo sets CARGO_* for tests: none of it reaches a child.
        assert!(!text.contains("CARGO_"), "{text}");
    }

    #[test]
    fn peak_rss_is_recorded() {
        const DD: Tool = Tool {
            name: "dd",
            package: "coreutils",
        };
        take_peak_rss_kib();
        Cmd::new(SH).args(["-c", "true"]).run().unwrap();
        assert!(take_peak_rss_kib() > 0);
        assert_eq!(take_peak_rss_kib(), 0, "taking it resets it");
        // dd reads into one 32 MiB buffer, so it holds at least that much.
        Cmd::new(DD)
            .args(["if=/dev/zero", "of=/dev/null", "bs=32M", "count=1"])
            .run()
            .unwrap();
        let peak = take_peak_rss_kib();
        assert!(peak >= 32 * 1024, "{peak} KiB");
        // The largest of several runs is kept.
        Cmd::new(SH).args(["-c", "true"]).run().unwrap();
        Cmd::new(DD)
            .args(["if=/dev/zero", "of=/dev/null", "bs=32M", "count=1"])
            .run()
            .unwrap();
        Cmd::new(SH).args(["-c", "true"]).run().unwrap();
        assert!(take_peak_rss_kib() >= 32 * 1024);
    }

    #[test]
    fn logged_runs_show_the_log_tail_and_path() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        Cmd::new(SH)
            .args(["-c", "echo fine"])
            .run_logged(&log)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "fine\n");
        let err = Cmd::new(SH)
            .args(["-c", "echo out; echo err >&2; exit 2"])
            .run_logged(&log)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 2"), "{err}");
        assert!(err.contains("out\nerr"), "{err}");
        assert!(
            err.contains(&format!("(whole log: {})", log.display())),
            "{err}"
        );
    }

    #[test]
    fn line_runs_append_to_the_log_and_hand_over_each_line() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("make.log");
        let mut seen = Vec::new();
        Cmd::new(SH)
            .args(["-c", "echo '  CC a.o'; echo warn >&2; printf 'no newline'"])
            .run_lines(&log, |e| {
                if let Event::Line(l) = e {
                    seen.push(l.to_string())
                }
            })
            .unwrap();
        seen.sort();
        assert_eq!(seen, ["  CC a.o", "no newline", "warn"]);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("### "), "{text}");
        assert!(text.contains("  CC a.o\n"), "{text}");
        let err = Cmd::new(SH)
            .args(["-c", "echo broken; exit 2"])
            .run_lines(&log, |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failed (exit status: 2); the end of its log:"),
            "{err}"
        );
        // The log is appended to: the first run's lines are still there.
        assert!(err.contains("  CC a.o") && err.contains("broken"), "{err}");
        assert!(err.contains("(whole log: "), "{err}");
    }

    /// A tool that `run` waits for dies with kiln: this test's binary, run again as the
    /// "kiln" (KILN_TEST_PARENT), starts `sleep 600` through Cmd::run and is killed with
    /// SIGKILL; the sleep is gone moments later instead of sleeping on.
    #[test]
    fn tools_die_with_a_killed_kiln() {
        if std::env::var_os("KILN_TEST_PARENT").is_some() {
            const SLEEP: Tool = Tool {
                name: "sleep",
                package: "coreutils",
            };
            let _ = Cmd::new(SLEEP).arg("600").run();
            return;
        }
        let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "run::tests::tools_die_with_a_killed_kiln",
                "--nocapture",
            ])
            .env("KILN_TEST_PARENT", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The sleep: a process whose parent is the "kiln" and whose command is sleep.
        let is_sleep_of = |pid: &str, ppid: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            stat.contains("(sleep)") && after.split(' ').nth(1) == Some(ppid.to_string().as_str())
        };
        let find = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .find(|p| is_sleep_of(p, parent.id()))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let sleep = loop {
            if let Some(p) = find() {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the test parent started no sleep"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        parent.kill().unwrap();
        parent.wait().unwrap();
        // Gone, or a zombie waiting for a reaper that is not ours to be.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{sleep}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(") ")
                .map(|x| x.1)
                .unwrap_or("")
                .chars()
                .next();
            if !stat.contains("(sleep)") || state == Some('Z') {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sleep {sleep} outlived its killed parent: {stat}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn spawned_children_get_the_scrubbed_environment() {
        let mut child = Cmd::new(ENV)
            .parent_env([("KILN_SIGNING_KEY", "/k"), ("TZ", "UTC")])
            .kill_with_parent()
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut text = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(text, "TZ=UTC\n");
    }
}
