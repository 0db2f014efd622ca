//! erofs images for USR: read-only by construction, compressed, every timestamp fixed with -T.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use uuid::Uuid;

use crate::{cmd, mib, tools};

pub struct Erofs<'a> {
    pub uuid: Uuid,
    pub epoch: i64,
    /// lz4, lz4hc or none.
    pub compression: &'a str,
    /// Partition size: the image must fit.
    pub limit: u64,
    pub what: &'a str,
}

impl Erofs<'_> {
    pub fn build(&self, tree: &Path, out: &Path) -> Result<u64> {
        let mkfs = tools::require("mkfs.erofs")?;
        let mut c = Command::new(mkfs);
        c.arg("--quiet")
            .arg(format!("-T{}", self.epoch))
            .arg(format!("-U{}", self.uuid));
        if self.compression != "none" {
            c.arg(format!("-z{}", self.compression));
        }
        c.arg(out).arg(tree);
        cmd::run(&mut c).with_context(|| format!("cannot make the {} filesystem", self.what))?;
        let size = std::fs::metadata(out)?.len();
        if size > self.limit {
            bail!(
                "{}: the erofs image of {} is {} but the {} partition is {}; \
                 remove packages, use stronger compression (usr-compression = \"lz4hc\"), \
                 or enlarge the partition in the layout",
                self.what,
                tree.display(),
                mib(size),
                self.what,
                mib(self.limit)
            );
        }
        Ok(size)
    }
}
