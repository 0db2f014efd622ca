//! What every stage of one build shares: the recipe, the options, the host tools' versions,
//! the cache (locked for the build) and the reports of the stages run so far.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Result};
use kiln_boot::initramfs;
use kiln_host::lock::DirLock;
use kiln_host::tools::{self, Tool};
use kiln_recipe::{Filesystem, Firmware, Resolved};

use crate::cache::CacheLock;
use crate::options::BuildOptions;
use crate::report::StageReport;
use crate::stages::{self, Built, Stage};
use crate::versions::HostTools;

pub struct Build<'a> {
    pub recipe: &'a Resolved,
    pub opts: &'a BuildOptions,
    pub tools: HostTools,
    /// The suite's downloaded .deb files.
    pub debs: PathBuf,
    pub agent_hash: String,
    work: tempfile::TempDir,
    reports: Mutex<Vec<StageReport>>,
    _lock: CacheLock,
    /// Held for the whole build: one kiln at a time writes (and cleans) an output directory.
    out_lock: DirLock,
}

/// The stage outputs every image builds on.
pub struct Shared<'a> {
    pub kernel: &'a Built<stages::kernel::KernelFiles>,
    pub tree: &'a stages::tree::Tree<'a>,
    pub usr: &'a Built<stages::usr::UsrImage>,
    pub grub: &'a Built<stages::grub::GrubImages>,
    pub initramfs: &'a Built<stages::initramfs::InitramfsImage>,
}

impl<'a> Build<'a> {
    /// Checks that the build can run here (root, host tools, a static agent), then takes the
    /// cache for it.
    pub fn start(r: &'a Resolved, opts: &'a BuildOptions) -> Result<Self> {
        // mmdebstrap's root mode keeps file ownership as the packages say; run kiln as root
        // (in a container, root of its user namespace is enough: nothing is mounted).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("kiln build must run as root (root in a user namespace is enough): the package tree keeps the owners the packages set");
        }
        tools::check_all(&required_tools(r))?;
        initramfs::check_static(&opts.agent, "kiln-agent", &r.board.arch)?;
        // The output directory before the cache, always in this order (a release build holds
        // its release directory before either), so two builds never wait on each other.
        let out_lock = DirLock::acquire(&opts.output_dir, "build writing to")?;
        let lock = opts.cache.lock()?;
        Ok(Build {
            recipe: r,
            opts,
            tools: HostTools::probe(),
            debs: opts.cache.debs(&r.packages.suite, &r.board.debian_arch)?,
            agent_hash: kiln_host::hash::sha256_file(&opts.agent)?,
            work: opts.cache.work_dir()?,
            reports: Mutex::new(Vec::new()),
            _lock: lock,
            out_lock,
        })
    }

    pub fn output_lock(&self) -> &DirLock {
        &self.out_lock
    }

    /// Runs a stage (or takes its cached output) and records what happened.
    pub fn run<S: Stage>(&self, s: &S) -> Result<Built<S::Output>> {
        let tag = stages::tag(s);
        let (dir, key, report) =
            self.opts
                .cache
                .stage(S::NAME, &tag, &s.inputs(), self.opts.rebuild, |out| {
                    s.build(out)
                })?;
        self.report(report);
        Ok(Built {
            key,
            out: s.output(&dir)?,
        })
    }

    pub fn report(&self, r: StageReport) {
        self.reports.lock().expect("reports").push(r);
    }

    pub fn reports(&self) -> Vec<StageReport> {
        self.reports.lock().expect("reports").clone()
    }

    /// The build's scratch directory, removed when the build ends.
    pub fn work(&self) -> &Path {
        self.work.path()
    }
}

/// Host tools every build needs, checked before any work starts.
fn required_tools(r: &Resolved) -> Vec<Tool> {
    let mut t = vec![
        tools::MMDEBSTRAP,
        tools::MKE2FS,
        tools::DEBUGFS,
        tools::MKFS_VFAT,
        tools::MCOPY,
        tools::MMD,
        tools::GRUB_MKIMAGE,
        tools::DEPMOD,
    ];
    if !r.platforms.is_empty() {
        t.extend([tools::QEMU_IMG, tools::TAR, tools::PIGZ]);
    }
    if r.usr_filesystem == Filesystem::Erofs {
        t.push(tools::MKFS_EROFS);
    }
    if r.has_firmware(Firmware::Bios) {
        t.push(tools::GRUB_BIOS_BOOT_IMG);
    }
    if r.has_firmware(Firmware::Uefi) {
        t.push(tools::GRUB_EFI_LINUX_MOD);
    }
    if r.kernel.build.is_some() {
        t.extend(kiln_boot::kbuild::TOOLS);
    }
    t
}
