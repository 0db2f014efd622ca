//! Running host tools with their output captured, so a failure says what ran and what it printed.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Runs `cmd`; on failure the error names the command and carries the tail of its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let shown = describe(cmd);
    tracing::debug!("running {shown}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}",
            out.status,
            tail(&out.stdout, &out.stderr, 30)
        );
    }
    Ok(out)
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
