//! The initramfs: one per board, with the modules of every platform of the board (a slot's
//! kernel and initramfs travel in the update payload, which serves every platform).

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_boot::initramfs;

use super::kernel::KernelFiles;
use super::{Built, Stage};
use crate::inputs::Inputs;

pub struct Initramfs<'a> {
    pub kernel: &'a Built<KernelFiles>,
    pub agent: &'a Path,
    pub agent_hash: &'a str,
    pub modules: &'a [String],
    /// USR's filesystem type, which the init mounts.
    pub usr_fs: &'a str,
    /// How the init finds the OEM partition, e.g. PARTLABEL=OEM.
    pub oem_spec: String,
    pub epoch: i64,
    /// The board's architecture, which busybox and the agent are checked against. Not an
    /// input: it is checked, it does not shape the image.
    pub arch: &'a str,
}

#[derive(Debug, Clone)]
pub struct InitramfsImage {
    pub image: PathBuf,
}

impl Stage for Initramfs<'_> {
    const NAME: &'static str = "initramfs";
    type Output = InitramfsImage;

    fn inputs(&self) -> Inputs {
        Inputs::new()
            .add("kernel", &self.kernel.key)
            .add("agent", self.agent_hash)
            .add("modules", self.modules.join(" "))
            .add("usr-fs", self.usr_fs)
            .add("oem", &self.oem_spec)
            .add("init", initramfs::INIT_SCRIPT)
            .add("epoch", self.epoch.to_string())
    }

    fn build(&self, out: &Path) -> Result<()> {
        initramfs::build(
            &initramfs::Inputs {
                kernel: &self.kernel.tree(),
                busybox: &self.kernel.busybox,
                agent: self.agent,
                modules: self.modules,
                usr_fstype: self.usr_fs,
                oem_spec: &self.oem_spec,
                epoch: self.epoch,
                arch: self.arch,
            },
            &out.join("initrd.img"),
        )
        .map(|_| ())
    }

    fn output(&self, dir: &Path) -> Result<InitramfsImage> {
        Ok(InitramfsImage {
            image: dir.join("initrd.img"),
        })
    }
}
