//! The release directory, `<out>/<board>/<version>/`: the build's artifacts and payload, then
//! `version.txt`, `packages.txt`, `manifest.json`, and `DIGESTS` (SHA-256 and SHA-512 of every
//! other file) with its detached signature `DIGESTS.minisig`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use kiln_formats::digests::{self, Entry};
use kiln_pipeline::BuildOutput;
use kiln_recipe::Resolved;
use serde::{Deserialize, Serialize};

pub const DIGESTS: &str = "DIGESTS";
pub const SIGNATURE: &str = "DIGESTS.minisig";
pub const MANIFEST: &str = "manifest.json";
pub const VERSION_TXT: &str = "version.txt";
pub const PACKAGES_TXT: &str = "packages.txt";

/// A package the image holds, as the build reports it.
pub use kiln_pipeline::InstalledPackage as Package;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub version: String,
    pub config_sha256: Option<String>,
}

/// manifest.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub os_id: String,
    pub board: String,
    pub version: String,
    pub version_id: String,
    pub channel: String,
    pub recipe_hash: String,
    pub source_date_epoch: i64,
    pub signing_key_id: String,
    /// The update payload's file name, when the release has one.
    pub payload: Option<String>,
    pub kernel: Kernel,
    pub artifacts: Vec<Artifact>,
    pub packages: Vec<Package>,
    pub tools: BTreeMap<String, String>,
}

pub const MANIFEST_FORMAT: u32 = 1;

/// SHA-256 and SHA-512 of each file, files hashed in parallel (one per CPU).
pub fn hash_files(files: &[PathBuf]) -> Result<Vec<(String, String)>> {
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let mut out: Vec<Option<Result<(String, String)>>> = (0..files.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut out);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files.len() {
                    break;
                }
                let r = kiln_host::hash::sha256_sha512_file(&files[i]);
                results.lock().expect("results")[i] = Some(r);
            });
        }
    });
    out.into_iter()
        .map(|r| r.expect("every file hashed"))
        .collect()
}

/// Regular files of a release directory other than DIGESTS and its signature, by name.
pub fn release_files(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("{n:?} in {} is not UTF-8", dir.display()))?;
        if name != DIGESTS && name != SIGNATURE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    kiln_host::atomic::write_file_atomic(&dir.join(name), text.as_bytes(), 0o644)
}

/// Adds version.txt, packages.txt, manifest.json, DIGESTS and DIGESTS.minisig to `dir`, which
/// holds the build's artifacts. The signature's timestamp is the build's SOURCE_DATE_EPOCH,
/// so a repeated build signs the same bytes the same way.
pub fn finish(dir: &Path, r: &Resolved, out: &BuildOutput, key: &SigningKey) -> Result<Manifest> {
    write(dir, VERSION_TXT, &r.version_txt())?;
    let mut packages = String::new();
    for p in &out.packages {
        packages.push_str(&format!("{} {} {}\n", p.name, p.version, p.arch));
    }
    write(dir, PACKAGES_TXT, &packages)?;
    let names: Vec<String> = release_files(dir)?
        .into_iter()
        .filter(|n| n != MANIFEST)
        .collect();
    for n in &names {
        let m = std::fs::symlink_metadata(dir.join(n))?;
        if !m.is_file() {
            bail!(
                "{} in a release is not a regular file",
                dir.join(n).display()
            );
        }
    }
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let hashes = hash_files(&paths)?;
    let mut artifacts = Vec::new();
    for ((name, path), (sha256, sha512)) in names.iter().zip(&paths).zip(hashes) {
        artifacts.push(Artifact {
            file: name.clone(),
            size: std::fs::metadata(path)?.len(),
            sha256,
            sha512,
        });
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: r.name.clone(),
        os_id: r.os.id.clone(),
        board: r.board.name.clone(),
        version: r.os.version.clone(),
        version_id: r.os.version_id.clone(),
        channel: r.os.channel.clone(),
        recipe_hash: out.recipe_hash.clone(),
        source_date_epoch: r.source_date_epoch,
        signing_key_id: kiln_update::keys::key_id(&key.verifying_key()),
        payload: out
            .payload
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        kernel: Kernel {
            version: out.kernel_version.clone(),
            config_sha256: out.kernel_config_sha256.clone(),
        },
        artifacts,
        packages: out.packages.clone(),
        tools: out.tools.clone(),
    };
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    write(dir, MANIFEST, &json)?;
    let (m256, m512) = kiln_host::hash::sha256_sha512_file(&dir.join(MANIFEST))?;
    let mut entries: Vec<Entry> = manifest
        .artifacts
        .iter()
        .map(|a| Entry {
            name: a.file.clone(),
            sha256: a.sha256.clone(),
            sha512: a.sha512.clone(),
        })
        .collect();
    entries.push(Entry {
        name: MANIFEST.into(),
        sha256: m256,
        sha512: m512,
    });
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let text = digests::text(&entries)?;
    write(dir, DIGESTS, &text)?;
    let sig = crate::sign::sign(
        key,
        text.as_bytes(),
        &format!(
            "timestamp:{}\tfile:{DIGESTS}\thashed\trelease:{}/{}",
            r.source_date_epoch, r.board.name, r.os.version
        ),
    )?;
    write(dir, SIGNATURE, &sig)?;
    Ok(manifest)
}
