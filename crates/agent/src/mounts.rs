//! /proc/self/mountinfo, and whether a directory can really be written.

use std::path::Path;

use anyhow::{Context, Result};

pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mount_point: String,
    pub options: String,
    pub fstype: String,
    pub source: String,
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

pub struct MountInfo(Vec<Mount>);

impl MountInfo {
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        Ok(Self(text.lines().filter_map(parse_line).collect()))
    }

    /// The mount visible at `point` (the last one mounted there).
    pub fn get(&self, point: &str) -> Option<&Mount> {
        self.0.iter().rev().find(|m| m.mount_point == point)
    }
}

fn parse_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    let (maj, min) = l.get(2)?.split_once(':')?;
    Some(Mount {
        major: maj.parse().ok()?,
        minor: min.parse().ok()?,
        mount_point: unescape(l.get(4)?),
        options: l.get(5)?.to_string(),
        fstype: r.first()?.to_string(),
        source: r.get(1)?.to_string(),
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Tries to create and remove a file in `dir`.
pub fn writable(dir: &Path) -> bool {
    let p = dir.join(format!(".kiln-write-test.{}", std::process::id()));
    match std::fs::File::create(&p) {
        Ok(_) => {
            let _ = std::fs::remove_file(&p);
            true
        }
        Err(_) => false,
    }
}
