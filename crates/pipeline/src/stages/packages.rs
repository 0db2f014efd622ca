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

impl Bootstrap<'_> {
    pub fn run(&self, target: &Path, log: &Path) -> Result<()> {
        let mut c = Cmd::new(MMDEBSTRAP);
        // mmdebstrap runs the maintainer scripts: they see only the scrubbed environment
        // (PATH, HOME, TMPDIR, locale, proxies) and these.
        c.env("SOURCE_DATE_EPOCH", self.epoch.to_string())
            .env("KILN_DEB_CACHE", self.deb_cache)
            // Verbose: apt's own lines (what it fetched) go to the stage log.
            .arg("--verbose")
            .arg(format!("--variant={}", self.variant))
            .arg(format!("--architectures={}", self.arch))
            .arg(format!(
                "--components={}",
                self.packages.components.join(",")
            ))
            // Keep the downloaded packages in the tree; kiln moves them to its cache.
            // No fsync per file: the tree is packed into filesystem images right after.
            .arg("--dpkgopt=force-unsafe-io")
            // kiln mounts nothing, and so the tree is the same whether or not the build
            // environment allows mounts: maintainer scripts run without /proc, /sys, /dev.
            .arg("--mode=root")
            .arg("--skip=chroot/mount")
            .arg("--skip=essential/unlink")
            .arg("--skip=cleanup/apt/cache")
            .arg(format!("--setup-hook={SETUP_HOOK}"));
        if !self.include.is_empty() {
            c.arg(format!("--include={}", self.include.join(",")));
        }
        c.arg(&self.packages.suite).arg(target);
        for m in &self.packages.mirrors {
            c.arg(m);
        }
        c.what("build the package tree with mmdebstrap")
            .run_logged(log)?;
        // apt's binary caches record the build directory; apt regenerates them on demand.
        for f in ["pkgcache.bin", "srcpkgcache.bin"] {
            let p = target.join("var/cache/apt").join(f);
            if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
        collect_debs(target, self.deb_cache)
    }
}

/// Moves the .deb files apt left in the tree into the cache (and out of the image).
fn collect_debs(target: &Path, cache: &Path) -> Result<()> {
    let archives = target.join("var/cache/apt/archives");
    let Ok(rd) = std::fs::read_dir(&archives) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "deb") {
            let dest = cache.join(e.file_name());
            if !dest.exists() {
                // Atomic publish into the cache: copy to a temporary name, then rename.
                let tmp = cache.join(format!(".{}.tmp", e.file_name().to_string_lossy()));
                if std::fs::hard_link(&p, &tmp).is_err() {
                    std::fs::copy(&p, &tmp)?;
                }
                std::fs::rename(&tmp, &dest)?;
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
