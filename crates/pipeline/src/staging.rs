//! The output directory is changed all at once: images are written into a staging directory
//! beside the outputs and moved into place only when every one succeeded, so a failed build
//! leaves the output directory as it was. The build holds the output directory's lock
//! throughout, so no other kiln writes or cleans it meanwhile.
//!
//! A reader never sees a platform's DIGESTS beside files it does not describe: [`publish`]
//! first takes every old DIGESTS the build replaces out of the directory, then moves the
//! new files in, and moves each new DIGESTS in last, once every file it names is in place and
//! is the very file it was computed over. The directory is flushed between the three steps,
//! so a power cut keeps that order too. Killed between them, the build leaves a platform
//! without DIGESTS (so nothing of it verifies) until the next build publishes it whole.
//!
//! [`publish`]: Staging::publish

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const PREFIX: &str = ".kiln-staging-";
const DIGESTS_SUFFIX: &str = ".DIGESTS";

pub struct Staging {
    dir: PathBuf,
    out: PathBuf,
    moves: Vec<(PathBuf, PathBuf)>,
}

impl Staging {
    /// Makes a staging directory in the output directory (which the caller has locked, so
    /// every staging directory there is a killed build's, and goes).
    pub fn create(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create output directory {}", out.display()))?;
        for e in std::fs::read_dir(out)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
        let dir = out.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Staging {
            dir,
            out: out.to_path_buf(),
            moves: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A staged file goes to the output directory under its own name; returns where.
    pub fn add(&mut self, staged: PathBuf) -> Result<PathBuf> {
        let name = staged
            .file_name()
            .with_context(|| format!("{} has no file name", staged.display()))?;
        self.add_as(staged.clone(), name.to_string_lossy().as_ref())
    }

    /// A staged file goes to the output directory as `name`.
    pub fn add_as(&mut self, staged: PathBuf, name: &str) -> Result<PathBuf> {
        let dest = self.out.join(name);
        self.moves.push((staged, dest.clone()));
        Ok(dest)
    }

    /// Moves every staged file into place: old DIGESTS out, the files in, new DIGESTS in.
    pub fn publish(mut self) -> Result<()> {
        let moves = std::mem::take(&mut self.moves);
        let is_digests = |p: &Path| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(DIGESTS_SUFFIX))
        };
        let (digests, files): (Vec<_>, Vec<_>) =
            moves.into_iter().partition(|(_, to)| is_digests(to));
        // Which file each name will be, to check beside each DIGESTS before it goes in.
        let mut identity = std::collections::HashMap::new();
        for (from, to) in &files {
            let m = std::fs::metadata(from)
                .with_context(|| format!("cannot stat {}", from.display()))?;
            identity.insert(to.clone(), (m.dev(), m.ino(), m.len()));
        }

        for (_, to) in &digests {
            if to.symlink_metadata().is_ok() {
                let name = to.file_name().expect("a DIGESTS has a name");
                let aside = self.dir.join(format!(".old-{}", name.to_string_lossy()));
                rename(to, &aside)?;
            }
        }
        sync_dir(&self.out)?;
        for (from, to) in &files {
            rename(from, to)?;
        }
        sync_dir(&self.out)?;
        for (from, to) in &digests {
            let text = std::fs::read_to_string(from)
                .with_context(|| format!("cannot read {}", from.display()))?;
            for e in kiln_formats::digests::parse(&text)
                .with_context(|| format!("{} as written", from.display()))?
            {
                let beside = self.out.join(&e.name);
                let now = std::fs::symlink_metadata(&beside)
                    .map(|m| (m.dev(), m.ino(), m.len()))
                    .ok();
                if now.is_none() || now != identity.get(&beside).copied() {
                    bail!(
                        "{} is not the file {} was computed over: not publishing it",
                        beside.display(),
                        to.display()
                    );
                }
            }
            rename(from, to)?;
        }
        sync_dir(&self.out)
    }
}

/// One rename into or out of the output directory (a failpoint for the crash tests).
fn rename(from: &Path, to: &Path) -> Result<()> {
    kiln_host::failpoint::hit("output-rename");
    std::fs::rename(from, to).with_context(|| format!("cannot move {} into place", to.display()))
}

/// Flushes a directory's entries: the renames so far are on disk before the next ones.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot flush {}", dir.display()))
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Published or failed, the staging directory goes.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(s: &Staging, name: &str, text: &str) -> PathBuf {
        let p = s.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn digests_of(s: &Staging, files: &[&Path], name: &str) -> PathBuf {
        let p = s.path().join(name);
        kiln_formats::digests(files, &p).unwrap();
        p
    }

    #[test]
    fn publishes_files_then_digests_and_replaces_old_ones() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("r_qemu.DIGESTS"), "old").unwrap();
        std::fs::write(out.join("r_qemu_image.qcow2"), "old").unwrap();
        let mut s = Staging::create(&out).unwrap();
        let img = stage(&s, "r_qemu_image.qcow2", "new image");
        let sh = stage(&s, "r_qemu.sh", "new script");
        let dg = digests_of(&s, &[&img, &sh], "r_qemu.DIGESTS");
        for f in [img, sh, dg] {
            s.add(f).unwrap();
        }
        s.publish().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["r_qemu.DIGESTS", "r_qemu.sh", "r_qemu_image.qcow2"]);
        let o = std::process::Command::new("sha256sum")
            .args(["-c", "--ignore-missing", "r_qemu.DIGESTS"])
            .current_dir(&out)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains("r_qemu_image.qcow2: OK"));
    }

    /// A DIGESTS whose files are not the ones it was computed over is not published, and the
    /// old one is already out of the way: no DIGESTS describes other files.
    #[test]
    fn a_digests_file_over_other_files_is_not_published() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("r_qemu.DIGESTS"), "old").unwrap();
        let mut s = Staging::create(&out).unwrap();
        let img = stage(&s, "r_qemu_image.qcow2", "new image");
        let dg = digests_of(&s, &[&img], "r_qemu.DIGESTS");
        // The image is named by the DIGESTS but not published with it.
        s.add(dg).unwrap();
        let e = format!("{:#}", s.publish().unwrap_err());
        assert!(e.contains("is not the file"), "{e}");
        assert!(!out.join("r_qemu.DIGESTS").exists());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    /// Every DIGESTS in `out` verifies with sha256sum against the files beside it.
    fn digests_hold(out: &Path) -> Result<(), String> {
        for e in std::fs::read_dir(out).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(DIGESTS_SUFFIX) {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap();
            let sums: String = kiln_formats::digests::parse(&text)
                .map_err(|e| format!("{name}: {e}"))?
                .iter()
                .map(|e| format!("{}  {}\n", e.sha256, e.name))
                .collect();
            std::fs::write(out.join(".sums"), sums).unwrap();
            let o = std::process::Command::new("sha256sum")
                .args(["-c", "--quiet", ".sums"])
                .current_dir(out)
                .output()
                .unwrap();
            std::fs::remove_file(out.join(".sums")).unwrap();
            if !o.status.success() {
                return Err(format!("{name}: {}", String::from_utf8_lossy(&o.stdout)));
            }
        }
        Ok(())
    }

    /// A publish cut off after some of a platform's files moved (here a rename that fails;
    /// a kill does the same) leaves no DIGESTS that describes other files than those beside
    /// it: the old one went first.
    #[test]
    fn a_publish_cut_short_leaves_no_mismatching_digests() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // The previous build's files, published whole.
        let mut s = Staging::create(&out).unwrap();
        let img = stage(&s, "r_qemu_image.qcow2", "old image");
        let sh = stage(&s, "r_qemu.sh", "old script");
        let dg = digests_of(&s, &[&img, &sh], "r_qemu.DIGESTS");
        for f in [img, sh, dg] {
            s.add(f).unwrap();
        }
        s.publish().unwrap();
        digests_hold(&out).unwrap();
        // This build's script cannot be moved into place (a directory holds its name).
        std::fs::remove_file(out.join("r_qemu.sh")).unwrap();
        std::fs::create_dir_all(out.join("r_qemu.sh/x")).unwrap();
        let mut s = Staging::create(&out).unwrap();
        let img = stage(&s, "r_qemu_image.qcow2", "new image");
        let sh = stage(&s, "r_qemu.sh", "new script");
        let dg = digests_of(&s, &[&img, &sh], "r_qemu.DIGESTS");
        for f in [img, sh, dg] {
            s.add(f).unwrap();
        }
        assert!(s.publish().is_err());
        assert_eq!(
            std::fs::read_to_string(out.join("r_qemu_image.qcow2")).unwrap(),
            "new image"
        );
        digests_hold(&out).unwrap();
    }
}
