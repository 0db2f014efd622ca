//! The cache: downloaded .deb files (kept between builds so a second build downloads nothing)
//! and stage outputs named by their key, each with the record of its labelled inputs. A lock
//! file serialises builds sharing a cache.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::inputs::{Inputs, Record};
use crate::report::StageReport;

/// The record of a stage's inputs, inside its output directory.
pub const INPUTS_FILE: &str = "kiln-inputs.json";
/// `<stages>/.last/<stage>` holds the key of the stage's latest output, for `--explain`.
const LAST_DIR: &str = ".last";

#[derive(Debug, Clone)]
pub struct CacheDirs {
    pub root: PathBuf,
    /// One lock per stage key within this process: platforms built in parallel that need
    /// the same stage wait for one build of it instead of racing.
    keys: std::sync::Arc<Mutex<HashMap<String, std::sync::Arc<Mutex<()>>>>>,
    /// Stages this process built: a --rebuild builds each once, not once per platform.
    built: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
}

impl CacheDirs {
    /// `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
            return d.into();
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("kiln");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache/kiln")
    }

    pub fn new(root: PathBuf) -> Result<Self> {
        for d in ["debs", "stages", "work"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p)
                .with_context(|| format!("cannot create cache directory {}", p.display()))?;
        }
        Ok(Self {
            root,
            keys: Default::default(),
            built: Default::default(),
        })
    }

    /// .deb files for one suite and architecture.
    pub fn debs(&self, suite: &str, arch: &str) -> Result<PathBuf> {
        let p = self.root.join("debs").join(format!("{suite}-{arch}"));
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    pub fn stage_dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root
            .join("stages")
            .join(format!("{stage}-{}", &key[..32]))
    }

    /// A scratch directory for one build, removed when dropped.
    pub fn work_dir(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(self.root.join("work"))
            .context("cannot create a work directory in the cache")
    }

    /// Takes the cache lock (blocking) for the lifetime of the returned guard.
    pub fn lock(&self) -> Result<CacheLock> {
        let path = self.root.join("lock");
        let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            tracing::info!(
                "waiting for another kiln build using {}",
                self.root.display()
            );
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error()).context("cannot lock the cache");
            }
        }
        // Holding the lock, no other build is running: what a killed build left is garbage.
        self.remove_leftovers()?;
        Ok(CacheLock(f))
    }

    fn remove_leftovers(&self) -> Result<()> {
        for sub in ["stages", "work"] {
            for e in std::fs::read_dir(self.root.join(sub))?.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if sub == "work" || name.starts_with(".tmp-") {
                    tracing::debug!("removing leftover {}", e.path().display());
                    std::fs::remove_dir_all(e.path())
                        .with_context(|| format!("cannot remove {}", e.path().display()))?;
                }
            }
        }
        // Half-copied packages (collected under a temporary name, then renamed).
        for dist in std::fs::read_dir(self.root.join("debs"))?.flatten() {
            for e in std::fs::read_dir(dist.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with('.') && n.ends_with(".tmp") {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
        Ok(())
    }

    /// Returns the cached output of stage `name` (shown and stored as `tag`, e.g.
    /// `oem:qemu`) for `inputs`, or runs `produce` into a fresh directory and publishes it
    /// atomically (rename) so a half-made stage is never used. The report says why it was
    /// built: the first time, `--rebuild`, or which inputs changed since its latest output.
    pub fn stage(
        &self,
        name: &str,
        tag: &str,
        inputs: &Inputs,
        rebuild: bool,
        produce: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<(PathBuf, String, StageReport)> {
        let key = inputs.key(name);
        let record = inputs.record();
        let dir = self.stage_dir(tag, &key);
        let start = Instant::now();
        let id = format!("{tag}-{key}");
        let key_lock = self
            .keys
            .lock()
            .expect("key table")
            .entry(id.clone())
            .or_default()
            .clone();
        let _guard = key_lock.lock().unwrap_or_else(|e| e.into_inner());
        let built_here = self.built.lock().expect("built set").contains(&id);
        if dir.is_dir() && (!rebuild || built_here) {
            tracing::info!("{tag}: cached");
            self.set_last(tag, &key);
            return Ok((
                dir,
                key.clone(),
                report(tag, &key, true, "cached".into(), start, 0),
            ));
        }
        let why = if rebuild {
            "rebuilt: --rebuild".to_string()
        } else {
            self.why(tag, &record)
        };
        tracing::info!("{tag}: building");
        let tmp = self.root.join("stages").join(format!(
            ".tmp-{tag}-{}-{}",
            &key[..16],
            std::process::id()
        ));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        kiln_host::take_peak_rss_kib();
        if let Err(e) = produce(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.context(format!("stage {tag} failed")));
        }
        let peak = kiln_host::take_peak_rss_kib();
        std::fs::write(tmp.join(INPUTS_FILE), serde_json::to_vec_pretty(&record)?)?;
        // On disk before it is published: a cached stage is trusted as it is.
        syncfs(&tmp)?;
        if dir.exists() {
            // Move the old output aside first, so a killed rebuild never leaves a
            // half-deleted directory under the stage's real name.
            let old = self.root.join("stages").join(format!(
                ".tmp-old-{tag}-{}-{}",
                &key[..16],
                std::process::id()
            ));
            std::fs::rename(&dir, &old)?;
            std::fs::rename(&tmp, &dir)?;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&tmp, &dir)?;
        }
        self.built.lock().expect("built set").insert(id);
        self.set_last(tag, &key);
        let r = report(tag, &key, false, why, start, peak);
        tracing::info!("{tag}: done in {:.1} s", r.seconds);
        Ok((dir, key, r))
    }

    /// Why a stage that is not cached must be built, from the record of its latest output.
    fn why(&self, tag: &str, now: &Record) -> String {
        let last = match std::fs::read_to_string(self.last_file(tag)) {
            Ok(k) if k.trim().len() == 64 => k.trim().to_string(),
            _ => return "built: no earlier output of this stage".into(),
        };
        let earlier = self.stage_dir(tag, &last).join(INPUTS_FILE);
        match std::fs::read(&earlier)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        {
            Some(before) => {
                let changes = now.changes_from(&before);
                if changes.is_empty() {
                    // Same inputs, another key: what kiln itself makes of them changed.
                    "rebuilt: kiln's pipeline version changed".into()
                } else {
                    format!("rebuilt: {}", changes.join("; "))
                }
            }
            None => "rebuilt: inputs changed (the earlier output is gone)".into(),
        }
    }

    fn last_file(&self, tag: &str) -> PathBuf {
        self.root.join("stages").join(LAST_DIR).join(tag)
    }

    /// Remembers the stage's latest key; losing it only makes `--explain` vaguer.
    fn set_last(&self, tag: &str, key: &str) {
        let f = self.last_file(tag);
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        let ok = f
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, key).is_ok()
            && std::fs::rename(&tmp, &f).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

fn report(
    stage: &str,
    key: &str,
    cached: bool,
    why: String,
    start: Instant,
    peak: u64,
) -> StageReport {
    StageReport {
        stage: stage.to_string(),
        key: Some(key.to_string()),
        cached,
        explain: why,
        seconds: start.elapsed().as_secs_f64(),
        tool_peak_rss_kib: peak,
    }
}

/// Flushes the filesystem holding `path` (one call for a stage's thousands of files).
fn syncfs(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("syncfs {}", path.display()));
    }
    Ok(())
}

pub struct CacheLock(#[allow(dead_code)] File);
