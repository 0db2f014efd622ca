//! The cache: downloaded .deb files (kept between builds so a second build downloads nothing)
//! and stage outputs named by their key, each with the record of its labelled inputs and the
//! manifest of its files, checked whenever it is reused. A lock file serialises builds
//! sharing a cache.
//!
//! The directory is marked as kiln's with a CACHEDIR.TAG; kiln refuses a directory that is
//! neither empty nor its own (it removes what a killed build left there, so it must never
//! take `~` for its cache), and removes only names it makes.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln_host::manifest;

use crate::inputs::{Inputs, Record};
use crate::report::StageReport;

/// The record of a stage's inputs, inside its output directory.
pub const INPUTS_FILE: &str = "kiln-inputs.json";
/// `<stages>/.last/<stage>` holds the key of the stage's latest output, for `--explain`.
const LAST_DIR: &str = ".last";
/// https://bford.info/cachedir/: backup tools skip a directory holding this file.
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const TAG_SIGNATURE: &str = "Signature: 8a477f597d28d172789f06886806bc55";
/// The line after the signature that makes the tag kiln's, not another program's.
const TAG_OWNER: &str = "# This file is a cache directory tag created by kiln.";
/// Everything kiln makes at the top of its cache. A directory holding only these (and no
/// tag) is a cache of a kiln from before the tag, and is taken over.
const TOP_NAMES: &[&str] = &[
    CACHEDIR_TAG,
    "lock",
    "debs",
    "stages",
    "work",
    "xz-chunks",
    "kernel-src",
    "logs",
    "keys",
];
/// Prefixes of the scratch directories builds make in `work/`.
pub const WORK_PREFIXES: &[&str] = &["build-", "kbuild-"];
/// Prefix of a stage output being made, or an old one being replaced, in `stages/`.
const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, Clone)]
pub struct CacheDirs {
    pub root: PathBuf,
    /// One lock per stage key within this process: platforms built in parallel that need
    /// the same stage wait for one build of it instead of racing.
    keys: std::sync::Arc<Mutex<HashMap<String, std::sync::Arc<Mutex<()>>>>>,
    /// Stages this process built: a --rebuild builds each once, not once per platform.
    built: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
    /// Cached stages this process checked against their manifests (once each).
    verified: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Makes `root` kiln's cache: a missing or empty directory gets the tag; one with kiln's tag
/// (or only kiln's names, from before the tag) is kiln's; anything else is refused.
fn claim(root: &Path) -> Result<()> {
    let tag = root.join(CACHEDIR_TAG);
    if is_kiln_tag(&tag) {
        return Ok(());
    }
    let entries: Vec<String> = match std::fs::read_dir(root) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot read {}", root.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read cache directory {}", root.display()))
        }
    };
    if let Some(foreign) = entries.iter().find(|n| !TOP_NAMES.contains(&n.as_str())) {
        bail!(
            "{} is not empty and is not a kiln cache (it has no CACHEDIR.TAG written by kiln, \
             and holds {foreign:?}): kiln removes what builds leave in its cache, so it uses only \
             an empty or new directory or its own; give another --cache-dir (or KILN_CACHE_DIR)",
            root.display()
        );
    }
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create cache directory {}", root.display()))?;
    kiln_host::atomic::write_file_atomic(
        &tag,
        format!(
            "{TAG_SIGNATURE}\n{TAG_OWNER}\n# For information about cache directory tags, see:\n#\thttps://bford.info/cachedir/\n"
        )
        .as_bytes(),
        0o644,
    )
}

fn is_kiln_tag(tag: &Path) -> bool {
    std::fs::read_to_string(tag).is_ok_and(|t| {
        let mut lines = t.lines();
        lines.next() == Some(TAG_SIGNATURE) && lines.next() == Some(TAG_OWNER)
    })
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

    /// The cache at `root`, made if it is missing or empty. A directory that holds anything
    /// and is not kiln's cache is refused, and left as it was.
    pub fn new(root: PathBuf) -> Result<Self> {
        claim(&root)?;
        for d in ["debs", "stages", "work"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p)
                .with_context(|| format!("cannot create cache directory {}", p.display()))?;
        }
        Ok(Self {
            root,
            keys: Default::default(),
            built: Default::default(),
            verified: Default::default(),
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

    /// Removes what killed builds left: only names kiln makes, each where kiln makes it.
    fn remove_leftovers(&self) -> Result<()> {
        let remove = |p: &Path| -> Result<()> {
            tracing::debug!("removing leftover {}", p.display());
            let r = match p.symlink_metadata() {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
                Ok(_) => std::fs::remove_file(p),
                Err(_) => return Ok(()),
            };
            r.with_context(|| format!("cannot remove {}", p.display()))
        };
        let names = |d: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        };
        for (n, p) in names(&self.root.join("work")) {
            if WORK_PREFIXES.iter().any(|w| n.starts_with(w)) {
                remove(&p)?;
            }
        }
        for (n, p) in names(&self.root.join("stages")) {
            if n.starts_with(TMP_PREFIX) {
                remove(&p)?;
            }
        }
        for (n, p) in names(&self.root.join("stages").join(LAST_DIR)) {
            if is_tmp_of_last(&n) {
                remove(&p)?;
            }
        }
        for (n, p) in names(&self.root.join("xz-chunks")) {
            // A chunk being written, or one of a kiln from before chunks had a header.
            if n.starts_with(kiln_formats::xz::CHUNK_TMP_PREFIX)
                || kiln_formats::xz::is_headerless_chunk(&n)
            {
                remove(&p)?;
            }
        }
        for (n, p) in names(&self.root.join("kernel-src")) {
            if n.starts_with(kiln_boot::kbuild::UNPACK_PREFIX) {
                remove(&p)?;
            }
        }
        // Half-copied packages (collected under a temporary name, then renamed).
        for (_, dist) in names(&self.root.join("debs")) {
            for (n, p) in names(&dist) {
                if crate::stages::packages::is_deb_tmp(&n) {
                    remove(&p)?;
                }
            }
        }
        Ok(())
    }

    /// Returns the cached output of stage `name` (shown and stored as `tag`, e.g.
    /// `oem:qemu`) for `inputs`, or runs `produce` into a fresh directory and publishes it
    /// atomically (rename) so a half-made stage is never used. A cached output is checked
    /// against its manifest first (once per process) and made again if it fails. The
    /// report says why it was built: the first time, `--rebuild`, a damaged output, or which
    /// inputs changed since its latest output.
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
        let mut damaged = None;
        if dir.is_dir() && (!rebuild || built_here) {
            match self.check(&id, &dir, built_here) {
                Ok(()) => {
                    tracing::info!("{tag}: cached");
                    self.set_last(tag, &key);
                    return Ok((
                        dir,
                        key.clone(),
                        report(tag, &key, true, "cached".into(), start, 0),
                    ));
                }
                Err(why) if !dir.join(manifest::FILE).exists() => {
                    // Not damage: a kiln from before manifests made it.
                    tracing::info!(
                        "{tag}: the cached output has no manifest ({why}); building it again"
                    );
                    damaged = Some(None);
                }
                Err(why) => {
                    tracing::warn!(
                        "{tag}: the cached output {} is damaged ({why}); building it again",
                        dir.display()
                    );
                    damaged = Some(Some(why));
                }
            }
        }
        let why = match (damaged, rebuild) {
            (Some(Some(d)), _) => format!("rebuilt: the cached output was damaged ({d})"),
            (Some(None), _) => {
                "rebuilt: the cached output has no manifest to check it by (an older kiln made it)"
                    .to_string()
            }
            (None, true) => "rebuilt: --rebuild".to_string(),
            (None, false) => self.why(tag, &record),
        };
        tracing::info!("{tag}: building");
        let tmp = self.root.join("stages").join(format!(
            "{TMP_PREFIX}{tag}-{}-{}",
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
        // What a later build checks before it trusts the output.
        manifest::record(&tmp)?;
        // On disk before it is published: nothing of a stage is trusted unwritten.
        kiln_host::atomic::syncfs(&tmp)?;
        kiln_host::failpoint::hit("stage-publish");
        if dir.exists() {
            // Move the old output aside first, so a killed rebuild never leaves a
            // half-deleted directory under the stage's real name.
            let old = self.root.join("stages").join(format!(
                "{TMP_PREFIX}old-{tag}-{}-{}",
                &key[..16],
                std::process::id()
            ));
            std::fs::rename(&dir, &old)?;
            kiln_host::failpoint::hit("stage-replace");
            std::fs::rename(&tmp, &dir)?;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&tmp, &dir)?;
        }
        kiln_host::failpoint::hit("stage-published");
        self.built.lock().expect("built set").insert(id.clone());
        self.verified.lock().expect("verified set").insert(id);
        self.set_last(tag, &key);
        let r = report(tag, &key, false, why, start, peak);
        tracing::info!("{tag}: done in {:.1} s", r.seconds);
        Ok((dir, key, r))
    }

    /// Checks a cached stage against its manifest, once per process (the cache is locked:
    /// nothing else changes it meanwhile).
    fn check(&self, id: &str, dir: &Path, built_here: bool) -> std::result::Result<(), String> {
        if built_here || self.verified.lock().expect("verified set").contains(id) {
            return Ok(());
        }
        let t = Instant::now();
        manifest::verify(dir, manifest::Check::from_env())?;
        tracing::debug!(
            "{} checked against its manifest in {:.0} ms",
            dir.display(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        self.verified
            .lock()
            .expect("verified set")
            .insert(id.to_string());
        Ok(())
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

/// `.last/<tag>.tmp<pid>`: a key being written.
fn is_tmp_of_last(name: &str) -> bool {
    name.rsplit_once(".tmp")
        .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
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

pub struct CacheLock(#[allow(dead_code)] File);

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// `--cache-dir ~`: a directory holding anything that is not kiln's is refused, named,
    /// and left exactly as it was.
    #[test]
    fn a_foreign_directory_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        std::fs::create_dir_all(home.join("work/thesis")).unwrap();
        std::fs::write(home.join("work/thesis/draft.tex"), "years of it").unwrap();
        std::fs::write(home.join(".bashrc"), "").unwrap();
        let e = format!("{:#}", CacheDirs::new(home.clone()).unwrap_err());
        assert!(e.contains(&home.display().to_string()), "{e}");
        assert!(e.contains("is not empty and is not a kiln cache"), "{e}");
        assert_eq!(names(&home), [".bashrc", "work"]);
        assert_eq!(names(&home.join("work")), ["thesis"]);

        // Another program's cache, with its own CACHEDIR.TAG, is not kiln's either.
        let other = d.path().join("target");
        std::fs::create_dir_all(other.join("debug")).unwrap();
        std::fs::write(
            other.join(CACHEDIR_TAG),
            format!("{TAG_SIGNATURE}\n# cargo\n"),
        )
        .unwrap();
        assert!(CacheDirs::new(other.clone()).is_err());
        assert_eq!(names(&other), [CACHEDIR_TAG, "debug"]);
    }

    #[test]
    fn new_empty_and_older_kiln_caches_are_taken() {
        let d = tempfile::tempdir().unwrap();
        for (name, prepare) in [
            ("missing", (|_: &Path| {}) as fn(&Path)),
            ("empty", |p: &Path| std::fs::create_dir(p).unwrap()),
            ("older kiln's", |p: &Path| {
                for sub in ["debs", "stages", "work", "xz-chunks"] {
                    std::fs::create_dir_all(p.join(sub)).unwrap();
                }
                std::fs::write(p.join("lock"), "").unwrap();
            }),
        ] {
            let root = d.path().join(name.replace(' ', "-"));
            prepare(&root);
            CacheDirs::new(root.clone()).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let tag = std::fs::read_to_string(root.join(CACHEDIR_TAG)).unwrap();
            // The exact signature line the specification requires.
            assert!(
                tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55\n"),
                "{tag}"
            );
            // Marked, it is kiln's from then on, whatever it holds.
            std::fs::write(root.join("stages/notes"), "").unwrap();
            CacheDirs::new(root).unwrap();
        }
    }

    /// What a killed build leaves is removed when the next one takes the lock; nothing else
    /// is, even inside kiln's own directories.
    #[test]
    fn leftovers_are_only_names_kiln_makes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let c = CacheDirs::new(root.clone()).unwrap();
        let made = [
            "work/build-a1B2c3/image/etc/passwd",
            "work/kbuild-x/.config",
            "stages/.tmp-usr-0123456789abcdef-42/fs.img",
            "stages/.tmp-old-esp:qemu-0123456789abcdef-42/fs.img",
            "xz-chunks/.tmp-00aa-2.chunk-42",
            "xz-chunks/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08-2.xz",
            "kernel-src/.unpack-Xy12/linux/Makefile",
            "debs/bookworm-amd64/.bash_5.2_amd64.deb.tmp",
        ];
        let foreign = [
            "work/notes.txt",
            "work/builds/keep",
            "stages/usr-0123456789abcdef0123456789abcdef/fs.img",
            "xz-chunks/00aa-2.xz",
            "xz-chunks/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08-2.chunk",
            "debs/bookworm-amd64/bash_5.2_amd64.deb",
            "debs/bookworm-amd64/.hidden",
        ];
        for f in made.iter().chain(&foreign) {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "").unwrap();
        }
        std::fs::create_dir_all(root.join("stages/.last")).unwrap();
        std::fs::write(root.join("stages/.last/usr.tmp42"), "").unwrap();
        std::fs::write(root.join("stages/.last/usr"), "").unwrap();
        drop(c.lock().unwrap());
        for f in made {
            // The leftover itself: the entry of its kiln directory (a whole tree, or a file).
            let depth = if f.starts_with("debs/") { 3 } else { 2 };
            let top: PathBuf = Path::new(f).iter().take(depth).collect();
            assert!(!root.join(&top).exists(), "{f} was left");
        }
        for f in foreign {
            assert!(root.join(f).exists(), "{f} was removed");
        }
        assert!(!root.join("stages/.last/usr.tmp42").exists());
        assert!(root.join("stages/.last/usr").exists());
    }

    fn produce(out: &Path) -> Result<()> {
        std::fs::create_dir_all(out.join("root/etc"))?;
        std::fs::write(out.join("root/etc/os-release"), "ID=kiln\n")?;
        std::fs::write(out.join("fs.img"), vec![1u8; 64 << 10])?;
        Ok(())
    }

    /// A cached stage that lost a file, or whose file was cut short, is built again and the
    /// report says why; an intact one is taken as it is.
    #[test]
    fn a_damaged_stage_is_rebuilt() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cache");
        let inputs = Inputs::new().add("x", "1");
        let (dir, _, r) = CacheDirs::new(root.clone())
            .unwrap()
            .stage("usr", "usr", &inputs, false, produce)
            .unwrap();
        assert!(!r.cached);
        assert!(dir.join(manifest::FILE).exists());
        type Damage = fn(&Path);
        for (damage, want) in [
            (
                (|d: &Path| std::fs::remove_file(d.join("root/etc/os-release")).unwrap()) as Damage,
                "root/etc/os-release is missing",
            ),
            (
                |d: &Path| std::fs::write(d.join("fs.img"), b"").unwrap(),
                "fs.img: 0 bytes, recorded 65536",
            ),
            (
                |d: &Path| std::fs::write(d.join("root/etc/os-release"), "ID=evil\n").unwrap(),
                "root/etc/os-release: it was modified after it was recorded",
            ),
            (
                |d: &Path| std::fs::remove_file(d.join(INPUTS_FILE)).unwrap(),
                "kiln-inputs.json is missing",
            ),
        ] {
            damage(&dir);
            // A new process: nothing checked yet.
            let c = CacheDirs::new(root.clone()).unwrap();
            let (dir2, _, r) = c.stage("usr", "usr", &inputs, false, produce).unwrap();
            assert_eq!(dir2, dir);
            assert!(!r.cached, "{want}: taken from the cache");
            assert_eq!(
                r.explain,
                format!("rebuilt: the cached output was damaged ({want})")
            );
            manifest::verify(&dir, manifest::Check::Full).unwrap();
            assert_eq!(
                std::fs::read_to_string(dir.join("root/etc/os-release")).unwrap(),
                "ID=kiln\n"
            );
        }
        let (_, _, r) = CacheDirs::new(root.clone())
            .unwrap()
            .stage("usr", "usr", &inputs, false, |_| unreachable!("cached"))
            .unwrap();
        assert!(r.cached && r.explain == "cached");
        // An output without a manifest (an older kiln's) is built again, and said so.
        std::fs::remove_file(dir.join(manifest::FILE)).unwrap();
        let (_, _, r) = CacheDirs::new(root)
            .unwrap()
            .stage("usr", "usr", &inputs, false, produce)
            .unwrap();
        assert!(r.explain.contains("no manifest"), "{}", r.explain);
        assert!(std::fs::read_dir(d.path().join("cache/stages"))
            .unwrap()
            .all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")));
    }
}
