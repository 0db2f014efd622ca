//! kiln's code identity: a SHA-256 of the source of every crate whose code shapes what a
//! stage writes, and of Cargo.lock (their dependencies' versions). It is an input of every
//! stage key, so a change to that code invalidates the cached stages by itself, where a
//! hand-bumped constant could be forgotten.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The crates (beside this one) whose code writes stage outputs. The agent is not among
/// them: its binary is hashed into the stages that carry it.
const CRATES: &[&str] = &[
    "pipeline", "boot", "disk", "formats", "fs", "host", "recipe", "update",
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let crates = manifest.parent().unwrap();
    let workspace = crates.parent().unwrap();
    let mut paths = Vec::new();
    for c in CRATES {
        let dir = crates.join(c);
        for sub in ["src", "Cargo.toml"] {
            let p = dir.join(sub);
            println!("cargo:rerun-if-changed={}", p.display());
            if p.is_dir() {
                files(&p, &mut paths);
            } else if p.exists() {
                paths.push(p);
            }
        }
    }
    let lock = workspace.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    paths.push(lock);
    let mut h = Sha256::new();
    for p in &paths {
        let rel = p.strip_prefix(workspace).unwrap_or(p);
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    let id: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=KILN_CODE_ID={id}");
}
