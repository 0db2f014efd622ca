//! `kiln verify DIR`: the signature over DIGESTS, then every file against DIGESTS, naming each
//! file that is missing, extra or altered.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ed25519_dalek::VerifyingKey;

use crate::release::{self, Manifest, DIGESTS, MANIFEST, SIGNATURE};

/// What verifying a release found.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per problem: `missing: F`, `extra: F`, `altered: F (...)`, `signature: ...`.
    pub problems: Vec<String>,
    pub files: usize,
    pub bytes: u64,
    pub trusted_comment: Option<String>,
    pub manifest: Option<Manifest>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies the release in `dir` with `key`.
pub fn verify(dir: &Path, key: &VerifyingKey) -> Result<Report> {
    let mut r = Report::default();
    let digests_path = dir.join(DIGESTS);
    let text = match std::fs::read_to_string(&digests_path) {
        Ok(t) => t,
        Err(e) => {
            r.problems.push(format!(
                "missing: {DIGESTS} ({e}): is {} a release directory?",
                dir.display()
            ));
            return Ok(r);
        }
    };
    match std::fs::read_to_string(dir.join(SIGNATURE)) {
        Ok(sig) => match crate::sign::verify(key, text.as_bytes(), &sig) {
            Ok(tc) => r.trusted_comment = Some(tc),
            Err(e) => r.problems.push(format!("signature: {SIGNATURE}: {e:#}")),
        },
        Err(_) => r
            .problems
            .push(format!("missing: {SIGNATURE} (the release is not signed)")),
    }
    let entries = match kiln_formats::digests::parse(&text) {
        Ok(e) => e,
        Err(e) => {
            r.problems.push(format!("altered: {DIGESTS} ({e:#})"));
            return Ok(r);
        }
    };
    let present = release::release_files(dir)?;
    for name in &present {
        if !entries.iter().any(|e| &e.name == name) {
            r.problems.push(format!("extra: {name} (not in {DIGESTS})"));
        }
    }
    let mut to_hash: Vec<(usize, PathBuf)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = dir.join(&e.name);
        match std::fs::symlink_metadata(&p) {
            Err(_) => r.problems.push(format!("missing: {}", e.name)),
            Ok(m) if !m.is_file() => r
                .problems
                .push(format!("altered: {} (not a regular file)", e.name)),
            Ok(m) => {
                r.bytes += m.len();
                to_hash.push((i, p));
            }
        }
    }
    let paths: Vec<PathBuf> = to_hash.iter().map(|(_, p)| p.clone()).collect();
    let hashes = release::hash_files(&paths)?;
    for ((i, _), (s256, s512)) in to_hash.iter().zip(hashes) {
        let e = &entries[*i];
        let mut what = Vec::new();
        if s256 != e.sha256 {
            what.push("SHA-256");
        }
        if s512 != e.sha512 {
            what.push("SHA-512");
        }
        if !what.is_empty() {
            let verb = if what.len() > 1 { "differ" } else { "differs" };
            r.problems.push(format!(
                "altered: {} ({} {verb})",
                e.name,
                what.join(" and ")
            ));
        }
    }
    r.files = entries.len();
    if entries.iter().any(|e| e.name == MANIFEST) {
        match std::fs::read(dir.join(MANIFEST))
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice::<Manifest>(&b)?))
        {
            Ok(m) => r.manifest = Some(m),
            Err(e) => r
                .problems
                .push(format!("altered: {MANIFEST} (unreadable: {e:#})")),
        }
    } else {
        r.problems
            .push(format!("missing: {MANIFEST} (not in {DIGESTS})"));
    }
    r.problems.sort();
    r.problems.dedup();
    Ok(r)
}
