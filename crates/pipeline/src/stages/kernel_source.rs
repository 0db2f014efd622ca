//! The kernel stage, built from source: the recipe's fragments resolved against the tree
//! (with a migration report), compiled out of tree, modules installed; busybox-static from
//! Debian as on the prebuilt path. The output is the same [`KernelFiles`], plus the
//! migration report and the build log.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kiln_boot::kbuild;
use kiln_recipe::{KernelBuild, Resolved};

use super::kernel::{common_inputs, take_busybox, DebianKernel, KernelFiles};
use super::packages::Bootstrap;
use super::Stage;
use crate::inputs::Inputs;

pub struct SourceKernel<'a> {
    pub build: &'a KernelBuild,
    /// The source's hash (computed once: it reads the whole tarball).
    pub source_hash: &'a str,
    /// gcc, ld, make, bison and flex versions.
    pub toolchain: &'a str,
    /// What it shares with the Debian path: busybox-static's package source and the tools.
    pub debian: DebianKernel<'a>,
    /// For the requirement check before compiling. Not an input: the requirement lists do not
    /// shape the kernel.
    pub recipe: &'a Resolved,
    /// Logs and unpacked sources live here. Not an input.
    pub cache_root: &'a Path,
}

impl Stage for SourceKernel<'_> {
    const NAME: &'static str = "kernel";
    type Output = KernelFiles;

    fn inputs(&self) -> Inputs {
        // An unchanged source, fragments and toolchain are never rebuilt.
        let source = format!(
            "{}\n{}\n{:?}\n{}",
            self.source_hash, self.build.fragments_hash, self.build.base, self.toolchain
        );
        common_inputs(Inputs::new().add("source", source), &self.debian)
    }

    fn build(&self, out: &Path) -> Result<()> {
        let b = self.build;
        let r = self.recipe;
        let epoch = self.debian.epoch;
        let key = self.inputs().key(Self::NAME);
        let logs = self.cache_root.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("kernel-{}.log", &key[..16]));
        let report_path = logs.join(format!("kernel-{}.migration.txt", &key[..16]));
        let _ = std::fs::remove_file(&log);
        tracing::info!(
            "kernel: building from {}; log: {}",
            b.source.display(),
            log.display()
        );

        let tree = kbuild::tree(
            &b.source,
            self.source_hash,
            &self.cache_root.join("kernel-src"),
        )?;
        let work = tempfile::Builder::new()
            .prefix("kbuild-")
            .tempdir_in(self.cache_root.join("work"))?;
        let build = kbuild::Build {
            tree: &tree,
            dir: &work.path().join("kbuild"),
            arch: &r.board.arch,
            log: &log,
            epoch,
        };
        let (asked, resolved) = build.configure(&b.fragments, b.base)?;
        let release = build.release()?;
        let migration = kbuild::migration(&asked, &resolved, &kbuild::symbols(&tree)?);
        let violations: Vec<String> = kiln_boot::kconfig::check_platforms(&resolved, r, None)?
            .iter()
            .flat_map(|pc| pc.lines())
            .collect();
        let fragments: Vec<String> = b
            .fragments
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        let report = migration.report(
            &format!(
                "kernel {release} from {}\nconfig: {} under {}",
                b.source.display(),
                fragments.join(", "),
                b.base.make_target()
            ),
            &violations,
        );
        std::fs::write(&report_path, &report)?;
        tracing::info!(
            "kernel {release}: {} option(s) no longer exist, {} changed by the migration, {} requirement(s) violated; report: {}",
            migration.gone.len(),
            migration.changed.len(),
            violations.len(),
            report_path.display()
        );
        if !violations.is_empty() {
            bail!(
                "the configured kernel does not meet the platforms' kernel requirements (nothing was compiled):\n  {}\n\
                 fix the recipe's kernel fragments; the migration report is {}",
                violations.join("\n  "),
                report_path.display()
            );
        }
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        let image = build.compile(jobs)?;
        build.install_modules(&out.join("modules"), &release)?;
        std::fs::copy(&image, out.join("vmlinuz"))?;
        std::fs::copy(build.dir.join(".config"), out.join("config"))?;
        std::fs::write(out.join("migration-report.txt"), &report)?;
        std::fs::copy(&log, out.join("build.log"))?;
        std::fs::write(out.join("version"), format!("{release}\n"))?;

        // busybox for the initramfs, from Debian as on the prebuilt path.
        let extract = out.join("extract");
        Bootstrap {
            packages: self.debian.packages,
            variant: "extract",
            include: &["busybox-static".to_string()],
            arch: self.debian.arch,
            epoch,
            deb_cache: self.debian.debs,
        }
        .run(&extract, &out.join("mmdebstrap.log"))?;
        take_busybox(&extract, out)?;
        std::fs::remove_dir_all(&extract)?;
        kiln_fs::stage::normalize_times(out, epoch)
    }

    fn output(&self, dir: &Path) -> Result<KernelFiles> {
        KernelFiles::read(dir)
    }
}

/// The migration report of a kernel built from source, in its stage directory.
pub fn migration_report(k: &KernelFiles) -> PathBuf {
    k.dir.join("migration-report.txt")
}
