//! Building a kernel from source. The source is a kernel tree or a tarball (unpacked once into
//! the cache); the recipe's fragments are merged and resolved against the tree with make
//! (`olddefconfig`, `allnoconfig` or `defconfig` under them), which is how a 3.15-era config is
//! carried forward; a migration report says what that changed. The kernel and modules are then
//! built out of tree (O=), with make's output in a log file and a progress line now and then.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln_host::tools::{Tool, BC, BISON, FLEX, GCC, LD, LIBELF_H, MAKE, OPENSSL_H, PERL, TAR, XZ};
use kiln_host::{manifest, Cmd, Event};
use kiln_recipe::recipe::ConfigBase;
use sha2::{Digest, Sha256};

use crate::kconfig::{Config, Value};

/// What building a kernel needs on the host.
pub const TOOLS: &[Tool] = &[
    MAKE, GCC, LD, BC, BISON, FLEX, PERL, TAR, XZ, LIBELF_H, OPENSSL_H,
];

/// What identifies a kernel source. A tarball: the SHA-256 of its bytes. A tree: a hash over
/// each file's path, size and modification time, as make itself judges a tree (hashing a
/// gigabyte of source on every build would cost seconds that an unchanged rebuild must not).
pub fn source_hash(source: &Path) -> Result<String> {
    if source.is_file() {
        let sha = kiln_host::hash::sha256_file(source)
            .with_context(|| format!("cannot hash the kernel source {}", source.display()))?;
        return Ok(format!("tarball:{sha}"));
    }
    let mut h = Sha256::new();
    use std::os::unix::fs::MetadataExt;
    let mut entries = Vec::new();
    for e in walkdir::WalkDir::new(source).sort_by_file_name() {
        let e = e.with_context(|| format!("cannot read kernel tree {}", source.display()))?;
        let rel = e.path().strip_prefix(source).unwrap_or(e.path());
        // Version control metadata is not source.
        if rel.starts_with(".git") {
            continue;
        }
        let m = e.metadata()?;
        entries.push(format!(
            "{}\0{}\0{}\0{}\n",
            rel.display(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ));
    }
    for e in entries {
        h.update(e.as_bytes());
    }
    Ok(format!("tree:{}", hex::encode(h.finalize())))
}

/// The toolchain a kernel build depends on: the first line of `gcc`, `ld`, `make`, `bison`
/// and `flex` --version, and the host architecture (kiln does not cross-compile kernels).
pub fn toolchain() -> Result<String> {
    let mut t = format!("host {}\n", std::env::consts::ARCH);
    for tool in [GCC, LD, MAKE, BISON, FLEX] {
        // Checked: a tool that cannot say its version cannot be trusted to build a kernel,
        // and its first line would otherwise be an error message in the cache key.
        let o = Cmd::new(tool)
            .arg("--version")
            .what(format!("ask {tool} for its version"))
            .run()?;
        let first = String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        writeln!(t, "{tool}: {first}")?;
    }
    Ok(t)
}

/// Checks that `board_arch` is the host's: kiln builds kernels natively only.
pub fn check_arch(board_arch: &str) -> Result<()> {
    if board_arch != std::env::consts::ARCH {
        bail!(
            "this board is {board_arch} and this machine is {}: kiln builds kernels from source \
             only for the machine's own architecture (use the board's kernel package instead)",
            std::env::consts::ARCH
        );
    }
    Ok(())
}

/// A directory is a kernel tree if it has the top-level Makefile, Kconfig and arch/.
pub fn check_tree(dir: &Path) -> Result<()> {
    kiln_recipe::check_kernel_tree(dir).map_err(anyhow::Error::msg)
}

/// Prefix of a source tarball being unpacked in `<cache>/kernel-src` (a killed build's is
/// removed by the next).
pub const UNPACK_PREFIX: &str = ".unpack-";

/// The tree to build: `source` itself, or the tarball unpacked into `<cache>/<hash>` (once:
/// the unpack gets a manifest, is flushed and is published by rename, so a killed one is
/// never used; a later build checks it against the manifest and unpacks it again if it was
/// damaged).
pub fn tree(source: &Path, hash: &str, cache: &Path) -> Result<PathBuf> {
    if source.is_dir() {
        check_tree(source)?;
        return Ok(source.to_path_buf());
    }
    let id = hash.rsplit(':').next().unwrap_or(hash);
    let dest = cache.join(&id[..32.min(id.len())]);
    if dest.is_dir() {
        if let Err(why) = manifest::verify(&dest, manifest::Check::from_env()) {
            tracing::warn!(
                "kernel: the unpacked source {} is damaged ({why}); unpacking it again",
                dest.display()
            );
            let old = cache.join(format!("{UNPACK_PREFIX}old-{}", std::process::id()));
            std::fs::rename(&dest, &old)?;
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        }
    }
    if !dest.is_dir() {
        std::fs::create_dir_all(cache)?;
        let tmp = tempfile::Builder::new()
            .prefix(UNPACK_PREFIX)
            .tempdir_in(cache)
            .context("cannot make a directory to unpack the kernel source in")?;
        tracing::info!("kernel: unpacking {}", source.display());
        Cmd::new(TAR)
            .arg("-xf")
            .arg(source)
            .arg("-C")
            .arg(tmp.path())
            .arg("--no-same-owner")
            .what(format!(
                "unpack kernel source {} (is it a .tar, .tar.gz or .tar.xz?)",
                source.display()
            ))
            .run()?;
        manifest::record(tmp.path())?;
        // On disk before it has its name: a power cut must not leave half a tree under it.
        kiln_host::atomic::syncfs(tmp.path())?;
        std::fs::rename(tmp.keep(), &dest)?;
    }
    // The tarball's one top-level directory (linux-source-6.1/), or the tree itself.
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dest)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    let root = if check_tree(&dest).is_ok() {
        dest.clone()
    } else if dirs.len() == 1 {
        dirs.pop().expect("one")
    } else {
        bail!(
            "{} does not hold a kernel tree (no top-level Makefile, Kconfig and arch/, nor one \
             directory holding them)",
            source.display()
        );
    };
    check_tree(&root).with_context(|| format!("kernel source {}", source.display()))?;
    Ok(root)
}

/// Every symbol the tree's Kconfig files define.
pub fn symbols(tree: &Path) -> Result<BTreeSet<String>> {
    let mut set = BTreeSet::new();
    for e in walkdir::WalkDir::new(tree) {
        let e = e?;
        let name = e.file_name().to_string_lossy();
        if !e.file_type().is_file() || !name.starts_with("Kconfig") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let l = line.trim_start();
            let rest = l
                .strip_prefix("config ")
                .or_else(|| l.strip_prefix("menuconfig "));
            if let Some(sym) = rest.and_then(|r| r.split_whitespace().next()) {
                set.insert(sym.to_string());
            }
        }
    }
    Ok(set)
}

/// Paths of one out-of-tree kernel build.
pub struct Build<'a> {
    pub tree: &'a Path,
    /// make's O= directory.
    pub dir: &'a Path,
    pub arch: &'a str,
    /// Everything make prints goes here.
    pub log: &'a Path,
    pub epoch: i64,
}

impl Build<'_> {
    fn make(&self) -> Cmd {
        let mut c = Cmd::new(MAKE);
        c.arg("-C")
            .arg(self.tree)
            .arg(format!("O={}", self.dir.display()))
            .arg(format!("ARCH={}", self.arch))
            // Reproducible: the build's time, user and host are the recipe's, not ours.
            .env("KBUILD_BUILD_TIMESTAMP", format!("@{}", self.epoch))
            .env("KBUILD_BUILD_USER", "kiln")
            .env("KBUILD_BUILD_HOST", "kiln")
            .env("KBUILD_BUILD_VERSION", "1")
            .env("SOURCE_DATE_EPOCH", self.epoch.to_string())
            .env("LC_ALL", "C");
        c
    }

    /// Merges `fragments` (later lines win) and resolves them against the tree with `base`.
    /// Returns (what the fragments asked for, the resolved config).
    pub fn configure(&self, fragments: &[PathBuf], base: ConfigBase) -> Result<(Config, Config)> {
        let mut asked = Config::default();
        for f in fragments {
            asked.apply_file(f)?;
        }
        std::fs::create_dir_all(self.dir)?;
        let merged = self.dir.join("kiln-fragments.config");
        std::fs::write(&merged, asked.to_text())?;
        let dot = self.dir.join(".config");
        let mut c = self.make();
        match base {
            ConfigBase::Olddefconfig => {
                std::fs::copy(&merged, &dot)?;
                c.arg("olddefconfig");
            }
            ConfigBase::Allnoconfig => {
                c.arg(format!("KCONFIG_ALLCONFIG={}", merged.display()))
                    .arg("allnoconfig");
            }
            ConfigBase::Defconfig => {
                self.run(self.make().arg("defconfig"), "make defconfig")?;
                // Kconfig reads .config in order: the fragments, appended, win.
                let mut text = std::fs::read_to_string(&dot)?;
                text.push_str(&asked.to_text());
                std::fs::write(&dot, text)?;
                c.arg("olddefconfig");
            }
        }
        self.run(&mut c, &format!("make {}", base.make_target()))?;
        let resolved = Config::read(&dot)?;
        Ok((asked, resolved))
    }

    /// The kernel release string (uname -r) of the configured tree.
    pub fn release(&self) -> Result<String> {
        let o = self
            .make()
            .arg("-s")
            .arg("kernelrelease")
            .what("ask make for the kernel release")
            .run()?;
        let r = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if r.is_empty() || r.contains(char::is_whitespace) {
            bail!("make kernelrelease printed {r:?}, not a kernel release");
        }
        Ok(r)
    }

    /// Builds the kernel image and the modules with `jobs` jobs; returns the image's path.
    pub fn compile(&self, jobs: usize) -> Result<PathBuf> {
        let start = Instant::now();
        self.run(
            self.make().arg(format!("-j{jobs}")).arg("all"),
            "the kernel build",
        )?;
        tracing::info!("kernel: compiled in {:.0} s", start.elapsed().as_secs_f64());
        let o = self
            .make()
            .arg("-s")
            .arg("image_name")
            .what("ask make where the kernel image is")
            .run()?;
        let image = self.dir.join(String::from_utf8_lossy(&o.stdout).trim());
        if !image.is_file() {
            bail!(
                "the kernel build made no image at {} (see {})",
                image.display(),
                self.log.display()
            );
        }
        Ok(image)
    }

    /// Installs the modules under `<dest>/lib/modules/<release>` (stripped, with depmod's
    /// index), without the build/source links that would point into this machine.
    pub fn install_modules(&self, dest: &Path, release: &str) -> Result<()> {
        self.run(
            self.make()
                .arg(format!("INSTALL_MOD_PATH={}", dest.display()))
                .arg("INSTALL_MOD_STRIP=1")
                .arg("modules_install"),
            "make modules_install",
        )?;
        let dir = dest.join("lib/modules").join(release);
        for link in ["build", "source"] {
            let p = dir.join(link);
            if p.symlink_metadata().is_ok() {
                std::fs::remove_file(&p)?;
            }
        }
        if !dir.join("modules.dep").is_file() {
            bail!("make modules_install left no {}/modules.dep", dir.display());
        }
        Ok(())
    }

    /// Runs a make step with its output appended to the log; a progress line every 30 s
    /// (how long, how many compile and link steps, the latest). On failure: the log's tail
    /// and where the whole log is.
    fn run(&self, cmd: &mut Cmd, what: &str) -> Result<()> {
        let mut steps = 0u64;
        let mut latest = String::new();
        cmd.run_lines(self.log, |e| match e {
            Event::Line(line) => {
                let t = line.trim_start();
                if ["CC ", "LD ", "AR ", "AS "]
                    .iter()
                    .any(|k| t.starts_with(k))
                {
                    steps += 1;
                    latest = t.to_string();
                }
            }
            Event::Tick(elapsed) => tracing::info!(
                "kernel: {what}: {:.0} s, {steps} steps, at {latest}",
                elapsed.as_secs_f64()
            ),
        })
        .with_context(|| format!("{what} failed"))
    }
}

/// What carrying the fragments forward to this tree did to them.
#[derive(Debug, Default)]
pub struct Migration {
    /// Options the tree no longer has: (option, asked value, where).
    pub gone: Vec<(String, Value, String)>,
    /// Options whose resolved value is not what was asked: (option, asked, resolved, where).
    pub changed: Vec<(String, Value, Value, String)>,
}

/// Compares the fragments with the resolved config, knowing the tree's symbols.
pub fn migration(asked: &Config, resolved: &Config, symbols: &BTreeSet<String>) -> Migration {
    let mut m = Migration::default();
    for (name, (want, at)) in &asked.values {
        if !symbols.contains(name) {
            m.gone.push((name.clone(), want.clone(), at.clone()));
            continue;
        }
        let have = resolved.get(name).cloned().unwrap_or(Value::No);
        if &have != want {
            m.changed
                .push((name.clone(), want.clone(), have, at.clone()));
        }
    }
    m
}

impl Migration {
    /// The report as text; `violations` are the requirement misses, one line each.
    pub fn report(&self, header: &str, violations: &[String]) -> String {
        let mut t = format!("{header}\n");
        let _ = writeln!(t, "\noptions that no longer exist ({}):", self.gone.len());
        for (n, v, at) in &self.gone {
            let _ = writeln!(t, "  CONFIG_{n} ({v}), {at}");
        }
        let _ = writeln!(
            t,
            "\noptions whose value the migration changed ({}):",
            self.changed.len()
        );
        for (n, want, have, at) in &self.changed {
            let _ = writeln!(t, "  CONFIG_{n}: {want} -> {have}, {at}");
        }
        let _ = writeln!(t, "\nrequirements violated ({}):", violations.len());
        for v in violations {
            let _ = writeln!(t, "  {v}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_separates_gone_from_changed() {
        let mut asked = Config::default();
        asked
            .apply(
                "CONFIG_EXT4_FS=y\nCONFIG_EXT4_USE_FOR_EXT23=y\nCONFIG_VIRTIO_PCI=m\n\
                 # CONFIG_RD_LZO is not set\nCONFIG_NR_CPUS=128\n",
                "a.config",
            )
            .unwrap();
        let mut resolved = Config::default();
        resolved
            .apply(
                "CONFIG_EXT4_FS=y\nCONFIG_NR_CPUS=64\n# CONFIG_RD_LZO is not set\n",
                ".config",
            )
            .unwrap();
        let symbols: BTreeSet<String> = ["EXT4_FS", "VIRTIO_PCI", "RD_LZO", "NR_CPUS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = migration(&asked, &resolved, &symbols);
        assert_eq!(m.gone.len(), 1);
        assert_eq!(m.gone[0].0, "EXT4_USE_FOR_EXT23");
        assert_eq!(m.gone[0].2, "a.config:2");
        let changed: Vec<String> = m
            .changed
            .iter()
            .map(|(n, w, h, _)| format!("{n} {w} {h}"))
            .collect();
        // Absent from .config means not set (its dependencies are unmet).
        assert_eq!(changed, ["NR_CPUS 128 64", "VIRTIO_PCI m not set"]);
        let r = m.report("kernel x", &["qemu: CONFIG_VIRTIO_PCI is not set".into()]);
        assert!(r.contains(
            "options that no longer exist (1):\n  CONFIG_EXT4_USE_FOR_EXT23 (y), a.config:2"
        ));
        assert!(r.contains("CONFIG_NR_CPUS: 128 -> 64, a.config:5"));
        assert!(r.contains("requirements violated (1):"));
    }

    #[test]
    fn symbols_come_from_kconfig_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("fs/ext4")).unwrap();
        std::fs::write(
            d.path().join("fs/ext4/Kconfig"),
            "config EXT4_FS\n\ttristate \"x\"\nmenuconfig MISC_FILESYSTEMS\n\tbool\n",
        )
        .unwrap();
        std::fs::write(d.path().join("fs/ext4/notes"), "config NOT_A_SYMBOL\n").unwrap();
        let s = symbols(d.path()).unwrap();
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            ["EXT4_FS", "MISC_FILESYSTEMS"]
        );
    }

    /// make runs through the runner: the environment is kiln's (LC_ALL=C, KBUILD_*), its
    /// output goes to the log, and a failed step says which and where the log is.
    #[test]
    fn make_steps_log_their_output_and_say_what_failed() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(
            tree.join("Makefile"),
            "kernelrelease:\n\t@echo 6.1.0-kiln-$$KBUILD_BUILD_USER-$$LC_ALL\n\
             olddefconfig:\n\t@echo '  CC      scripts/kconfig/conf.o'\n\t@echo 'no config here' >&2; exit 2\n",
        )
        .unwrap();
        let log = d.path().join("kernel.log");
        let b = Build {
            tree: &tree,
            dir: &d.path().join("out"),
            arch: "x86_64",
            log: &log,
            epoch: 0,
        };
        assert_eq!(b.release().unwrap(), "6.1.0-kiln-kiln-C");
        let e = b.configure(&[], ConfigBase::Olddefconfig).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.starts_with("make olddefconfig failed: "), "{e}");
        assert!(e.contains("exit status: 2"), "{e}");
        assert!(e.contains("no config here"), "{e}");
        assert!(
            e.contains(&format!("(whole log: {})", log.display())),
            "{e}"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("### "), "{text}");
        assert!(text.contains(" olddefconfig\n"), "{text}");
        assert!(
            text.contains("\n  CC      scripts/kconfig/conf.o\n"),
            "{text}"
        );
    }

    #[test]
    fn toolchain_names_each_tool() {
        let t = toolchain().unwrap();
        assert!(
            t.starts_with(&format!("host {}\ngcc: ", std::env::consts::ARCH)),
            "{t}"
        );
        assert!(t.contains("\nmake: GNU Make"), "{t}");
    }

    #[test]
    fn a_tree_hash_follows_file_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Makefile"), "VERSION = 6\n").unwrap();
        let a = source_hash(d.path()).unwrap();
        assert_eq!(a, source_hash(d.path()).unwrap());
        std::fs::write(d.path().join("Makefile"), "VERSION = 7\nx\n").unwrap();
        assert_ne!(a, source_hash(d.path()).unwrap());
    }

    /// A tarball holding a (tiny) kernel tree under one top-level directory.
    fn tarball(dir: &Path) -> PathBuf {
        let src = dir.join("src/linux-source-6.1");
        std::fs::create_dir_all(src.join("arch/x86")).unwrap();
        std::fs::create_dir_all(src.join("drivers")).unwrap();
        std::fs::write(src.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 1\n").unwrap();
        std::fs::write(src.join("Kconfig"), "source \"arch/x86/Kconfig\"\n").unwrap();
        std::fs::write(src.join("arch/x86/Kconfig"), "config X86\n\tdef_bool y\n").unwrap();
        std::fs::write(src.join("drivers/big.c"), "x".repeat(100_000)).unwrap();
        let tar = dir.join("linux-source-6.1.tar");
        let st = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.join("src"))
            .arg("linux-source-6.1")
            .status()
            .unwrap();
        assert!(st.success());
        tar
    }

    /// An unpacked source that lost files, or whose files were cut short, is unpacked again;
    /// a whole one is used as it is.
    #[test]
    fn a_damaged_unpacked_source_is_unpacked_again() {
        let d = tempfile::tempdir().unwrap();
        let tar = tarball(d.path());
        let cache = d.path().join("kernel-src");
        let hash = source_hash(&tar).unwrap();
        let root = tree(&tar, &hash, &cache).unwrap();
        assert_eq!(root.file_name().unwrap(), "linux-source-6.1");
        let unpacked = root.parent().unwrap().to_path_buf();
        assert!(unpacked.join(manifest::FILE).is_file());
        type Damage = fn(&Path);
        for damage in [
            (|r: &Path| std::fs::remove_file(r.join("arch/x86/Kconfig")).unwrap()) as Damage,
            |r: &Path| std::fs::write(r.join("drivers/big.c"), b"").unwrap(),
            |r: &Path| std::fs::remove_file(r.parent().unwrap().join(manifest::FILE)).unwrap(),
        ] {
            damage(&root);
            let again = tree(&tar, &hash, &cache).unwrap();
            assert_eq!(again, root);
            assert_eq!(
                std::fs::read_to_string(root.join("arch/x86/Kconfig")).unwrap(),
                "config X86\n\tdef_bool y\n"
            );
            assert_eq!(
                std::fs::metadata(root.join("drivers/big.c")).unwrap().len(),
                100_000
            );
            manifest::verify(&unpacked, manifest::Check::Full).unwrap();
        }
        // Nothing but the one unpacked tree is left in the cache.
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    }
}
