//! The packages stage: the recipe's package tree from Debian with mmdebstrap (also used to
//! extract the kernel and busybox packages). Downloaded .deb files are hard-linked into the
//! chroot before apt runs and collected back afterwards, so a second build downloads nothing.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_host::{tools::MMDEBSTRAP, Cmd};
use kiln_recipe::Packages;

use super::Stage;
use crate::inputs::Inputs;

/// The recipe's packages installed into a tree with mmdebstrap.
pub struct PackageTree<'a> {
    pub packages: &'a Packages,
    pub arch: &'a str,
    pub epoch: i64,
    /// mmdebstrap's version.
    pub mmdebstrap: &'a str,
    /// Where downloaded .deb files are kept. Not an input: they are what the mirror serves.
    pub debs: &'a Path,
}

/// The installed tree (`<stage>/root`).
#[derive(Debug, Clone)]
pub struct Installed {
    pub root: PathBuf,
}

impl Stage for PackageTree<'_> {
    const NAME: &'static str = "packages";
    type Output = Installed;

    fn inputs(&self) -> Inputs {
        Inputs::new()
            .add(
                "packages",
                serde_json::to_string(self.packages).expect("plain data serializes"),
            )
            .add("arch", self.arch)
            .add("epoch", self.epoch.to_string())
            .add("mmdebstrap", self.mmdebstrap)
    }

    fn build(&self, out: &Path) -> Result<()> {
        let root = out.join("root");
        Bootstrap {
            packages: self.packages,
            variant: &self.packages.variant,
            include: &self.packages.include,
            arch: self.arch,
            epoch: self.epoch,
            deb_cache: self.debs,
        }
        .run(&root, &out.join("mmdebstrap.log"))?;
        kiln_fs::stage::normalize_times(&root, self.epoch)
    }

    fn output(&self, dir: &Path) -> Result<Installed> {
        Ok(Installed {
            root: dir.join("root"),
        })
    }
}

pub struct Bootstrap<'a> {
    pub packages: &'a Packages,
    /// Overrides the recipe's variant (the kernel stage extracts without installing).
    pub variant: &'a str,
    pub include: &'a [String],
    pub arch: &'a str,
    pub epoch: i64,
    pub deb_cache: &'a Path,
}

// The setup hook runs under sh inside mmdebstrap; paths come through the environment so
// nothing needs quoting.
const SETUP_HOOK: &str = r#"mkdir -p "$1/var/cache/apt/archives" && for f in "$KILN_DEB_CACHE"/*.deb; do [ -e "$f" ] || continue; ln "$f" "$1/var/cache/apt/archives/" 2>/dev/null || cp "$f" "$1/var/cache/apt/archives/"; done"#;
// After `apt update` (which checked the lists against the signed Release file), before
// mmdebstrap removes them: the package lists, to check downloaded .debs against.
const LISTS_HOOK: &str = r#"for f in "$1"/var/lib/apt/lists/*_Packages; do [ -e "$f" ] || continue; ln "$f" "$KILN_APT_LISTS/" 2>/dev/null || cp "$f" "$KILN_APT_LISTS/"; done"#;

/// The record of the cache's .deb files, `sha256sum -c` checkable in that directory.
pub const DEB_SUMS: &str = "SHA256SUMS";

/// Packages and kernel bootstraps run side by side on one .deb cache: one at a time checks
/// it or adds to it.
static DEB_CACHE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Bootstrap<'_> {
    pub fn run(&self, target: &Path, log: &Path) -> Result<()> {
        check_debs(self.deb_cache)?;
        let lists = target.with_file_name(".kiln-apt-lists");
        if lists.exists() {
            std::fs::remove_dir_all(&lists)?;
        }
        std::fs::create_dir_all(&lists)?;
        let mut c = Cmd::new(MMDEBSTRAP);
        // mmdebstrap runs the maintainer scripts: they see only the scrubbed environment
        // (PATH, HOME, TMPDIR, locale, proxies) and these.
        c.env("SOURCE_DATE_EPOCH", self.epoch.to_string())
            .env("KILN_DEB_CACHE", self.deb_cache)
            .env("KILN_APT_LISTS", &lists)
            .args(self.args(target));
        c.what("build the package tree with mmdebstrap")
            .run_logged(log)?;
        // apt's binary caches record the build directory; apt regenerates them on demand.
        for f in ["pkgcache.bin", "srcpkgcache.bin"] {
            let p = target.join("var/cache/apt").join(f);
            if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
        let r = collect_debs(target, self.deb_cache, &lists);
        std::fs::remove_dir_all(&lists)?;
        r
    }

    /// mmdebstrap's arguments: options, then `--` and the positional suite, target and
    /// mirrors, so that no recipe value is ever read as an option.
    fn args(&self, target: &Path) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            // Verbose: apt's own lines (what it fetched) go to the stage log.
            "--verbose".into(),
            format!("--variant={}", self.variant).into(),
            format!("--architectures={}", self.arch).into(),
            format!("--components={}", self.packages.components.join(",")).into(),
            // Keep the downloaded packages in the tree; kiln moves them to its cache.
            // No fsync per file: the tree is packed into filesystem images right after.
            "--dpkgopt=force-unsafe-io".into(),
            // kiln mounts nothing, and so the tree is the same whether or not the build
            // environment allows mounts: maintainer scripts run without /proc, /sys, /dev.
            "--mode=root".into(),
            "--skip=chroot/mount".into(),
            "--skip=essential/unlink".into(),
            "--skip=cleanup/apt/cache".into(),
            format!("--setup-hook={SETUP_HOOK}").into(),
            // The extract hook runs in every variant (the customize hook not in `extract`).
            format!("--extract-hook={LISTS_HOOK}").into(),
        ];
        if !self.include.is_empty() {
            a.push(format!("--include={}", self.include.join(",")).into());
        }
        a.push("--".into());
        a.push(self.packages.suite.clone().into());
        a.push(target.into());
        for m in &self.packages.mirrors {
            a.push(m.into());
        }
        a
    }
}

/// A .deb being added to the cache (`.<name>.tmp`), left behind if kiln was killed.
pub fn is_deb_tmp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".deb.tmp")
}

/// The cache's record: file name to SHA-256.
fn read_sums(cache: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let path = cache.join(DEB_SUMS);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_once("  "))
        .filter(|(h, n)| h.len() == 64 && !n.contains('/'))
        .map(|(h, n)| (n.to_string(), h.to_string()))
        .collect())
}

fn write_sums(cache: &Path, sums: &std::collections::BTreeMap<String, String>) -> Result<()> {
    let text: String = sums.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    kiln_host::atomic::write_file_atomic(&cache.join(DEB_SUMS), text.as_bytes(), 0o644)
}

/// Before apt sees the cache: every .deb must be one kiln recorded, with the SHA-256 it had
/// when it was checked against the mirror's package lists. Any other (damaged, cut short,
/// never recorded) is removed, and apt downloads it again.
fn check_debs(cache: &Path) -> Result<()> {
    let _one = DEB_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let mut sums = read_sums(cache)?;
    let before = sums.len();
    let mut present = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(cache).with_context(|| format!("cannot read {}", cache.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".deb") || name.starts_with('.') {
            continue;
        }
        let why = match sums.get(&name) {
            None => Some("it was never checked against the package lists".to_string()),
            Some(want) => match kiln_host::hash::sha256_file(&e.path()) {
                Ok(h) if &h == want => None,
                Ok(_) => Some("its SHA-256 is not the recorded one".to_string()),
                Err(err) => Some(format!("{err:#}")),
            },
        };
        match why {
            None => {
                present.insert(name);
            }
            Some(why) => {
                tracing::warn!("cached package {name} is damaged ({why}); apt downloads it again");
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot remove {}", e.path().display()))?;
            }
        }
    }
    sums.retain(|n, _| present.contains(n));
    if sums.len() != before {
        write_sums(cache, &sums)?;
    }
    Ok(())
}

/// The SHA-256 and size of every package in apt's lists.
fn listed_debs(lists: &Path) -> Result<std::collections::HashSet<(String, u64)>> {
    let mut set = std::collections::HashSet::new();
    for e in std::fs::read_dir(lists)? {
        let text = std::fs::read_to_string(e?.path())?;
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(':'))
                        .map(|v| v.trim().to_string())
                })
            };
            if let (Some(sha), Some(size)) = (field("SHA256"), field("Size")) {
                if let Ok(size) = size.parse() {
                    set.insert((sha.to_ascii_lowercase(), size));
                }
            }
        }
    }
    Ok(set)
}

/// Moves the .deb files apt left in the tree into the cache (and out of the image). Only
/// those whose SHA-256 and size the mirror's lists give are kept, each recorded before it
/// appears under its name, and flushed first.
fn collect_debs(target: &Path, cache: &Path, lists: &Path) -> Result<()> {
    let archives = target.join("var/cache/apt/archives");
    let Ok(rd) = std::fs::read_dir(&archives) else {
        return Ok(());
    };
    let listed = listed_debs(lists)?;
    if listed.is_empty() {
        tracing::warn!(
            "apt's package lists were not found: the downloaded packages are not cached"
        );
    }
    let _one = DEB_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let mut sums = read_sums(cache)?;
    for e in rd {
        let e = e?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") {
            let name = e.file_name().to_string_lossy().into_owned();
            let dest = cache.join(&name);
            if !dest.exists() {
                let sha = kiln_host::hash::sha256_file(&p)?;
                let size = e.metadata()?.len();
                if listed.contains(&(sha.clone(), size)) {
                    // Atomic publish into the cache: copy to a temporary name, flush, record,
                    // then rename.
                    let tmp = cache.join(format!(".{name}.tmp"));
                    if std::fs::hard_link(&p, &tmp).is_err() {
                        std::fs::copy(&p, &tmp)?;
                    }
                    std::fs::File::open(&tmp)?.sync_all()?;
                    sums.insert(name.clone(), sha);
                    write_sums(cache, &sums)?;
                    kiln_host::failpoint::hit("deb-publish");
                    std::fs::rename(&tmp, &dest)?;
                } else {
                    tracing::warn!("not caching {name}: its SHA-256 and size are not in the mirror's package lists");
                }
            }
            std::fs::remove_file(&p)?;
        }
    }
    let partial = archives.join("partial");
    if partial.is_dir() {
        std::fs::remove_dir_all(&partial)?;
        std::fs::create_dir(&partial)?;
    }
    let lock = archives.join("lock");
    if lock.exists() {
        std::fs::remove_file(lock)?;
    }
    Ok(())
}

/// An installed package, as dpkg's status file has it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// The packages dpkg lists as installed in a package tree, by name.
pub fn installed_packages(root: &Path) -> Result<Vec<InstalledPackage>> {
    let path = root.join("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the package list {}", path.display()))?;
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        if field("Status").as_deref() != Some("install ok installed") {
            continue;
        }
        if let (Some(name), Some(version), Some(arch)) =
            (field("Package"), field("Version"), field("Architecture"))
        {
            out.push(InstalledPackage {
                name,
                version,
                arch,
            });
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn reads_installed_packages_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("var/lib/dpkg")).unwrap();
        std::fs::write(
            d.path().join("var/lib/dpkg/status"),
            "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13\n\n\
             Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
             Package: base-files\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12.4\nDescription: x\n y\n",
        )
        .unwrap();
        let p = installed_packages(d.path()).unwrap();
        let names: Vec<String> = p
            .iter()
            .map(|p| format!("{} {} {}", p.name, p.version, p.arch))
            .collect();
        assert_eq!(names, ["base-files 12.4 amd64", "zlib1g 1:1.2.13 amd64"]);
    }
}

#[cfg(test)]
mod deb_cache_tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b))
    }

    fn sums_check(cache: &Path) -> bool {
        std::process::Command::new("sha256sum")
            .args(["-c", "--strict", "--quiet", DEB_SUMS])
            .current_dir(cache)
            .status()
            .unwrap()
            .success()
    }

    /// Only packages whose hash the mirror's lists give enter the cache; later, a cached one
    /// that is damaged, cut short or was never recorded is removed before apt runs, so apt
    /// downloads it again.
    #[test]
    fn packages_are_checked_into_and_out_of_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let (cache, target, lists) = (
            d.path().join("debs"),
            d.path().join("root"),
            d.path().join("lists"),
        );
        let archives = target.join("var/cache/apt/archives");
        for p in [&cache, &archives, &lists] {
            std::fs::create_dir_all(p).unwrap();
        }
        let debs: Vec<(&str, Vec<u8>)> = vec![
            ("a_1_amd64.deb", b"!<arch>\na".to_vec()),
            ("b_1_amd64.deb", b"!<arch>\nbb".to_vec()),
            ("c_1_amd64.deb", b"!<arch>\nccc".to_vec()),
            (
                "evil_1_amd64.deb",
                b"!<arch>\nnot what the mirror serves".to_vec(),
            ),
        ];
        let mut list = String::new();
        for (name, bytes) in &debs[..3] {
            list.push_str(&format!(
                "Package: {}\nVersion: 1\nFilename: pool/main/{name}\nSize: {}\nSHA256: {}\n\n",
                &name[..1],
                bytes.len(),
                sha(bytes)
            ));
        }
        std::fs::write(
            lists.join("deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"),
            list,
        )
        .unwrap();
        for (name, bytes) in &debs {
            std::fs::write(archives.join(name), bytes).unwrap();
        }
        collect_debs(&target, &cache, &lists).unwrap();
        let mut cached: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        cached.sort();
        assert_eq!(
            cached,
            [DEB_SUMS, "a_1_amd64.deb", "b_1_amd64.deb", "c_1_amd64.deb"]
        );
        assert!(sums_check(&cache));
        assert_eq!(std::fs::read_dir(&archives).unwrap().count(), 0);

        // Damage: a flipped byte (same size), a file emptied, a stray file.
        std::fs::write(cache.join("a_1_amd64.deb"), b"!<arch>\nA").unwrap();
        std::fs::write(cache.join("b_1_amd64.deb"), b"").unwrap();
        std::fs::write(cache.join("stray_1_amd64.deb"), b"!<arch>\n").unwrap();
        check_debs(&cache).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [DEB_SUMS, "c_1_amd64.deb"]);
        assert!(sums_check(&cache));
        assert_eq!(read_sums(&cache).unwrap().len(), 1);
    }

    /// No recipe value reaches mmdebstrap as an option: the positional arguments follow `--`.
    #[test]
    fn positional_arguments_follow_a_double_dash() {
        let packages = Packages {
            suite: "bookworm".into(),
            mirrors: vec!["--customize-hook=touch /tmp/pwned".into()],
            components: vec!["main".into()],
            variant: "essential".into(),
            include: vec!["busybox-static".into()],
        };
        let b = Bootstrap {
            packages: &packages,
            variant: "essential",
            include: &packages.include,
            arch: "amd64",
            epoch: 0,
            deb_cache: Path::new("/nonexistent"),
        };
        let args: Vec<String> = b
            .args(Path::new("/tmp/root"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let dd = args.iter().position(|a| a == "--").expect("a --");
        assert_eq!(
            &args[dd + 1..],
            ["bookworm", "/tmp/root", "--customize-hook=touch /tmp/pwned"]
        );
        assert!(args[..dd].iter().all(|a| a.starts_with("--")));
    }
}
