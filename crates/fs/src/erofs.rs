//! erofs images for USR: read-only by construction, compressed, every timestamp fixed with -T.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_host::{tools::MKFS_EROFS, Cmd};
use uuid::Uuid;

use crate::mib;

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
        let mut c = Cmd::new(MKFS_EROFS);
        c.arg("--quiet")
            .arg(format!("-T{}", self.epoch))
            .arg(format!("-U{}", self.uuid));
        if self.compression != "none" {
            c.arg(format!("-z{}", self.compression));
        }
        c.arg(out)
            .arg(tree)
            .what(format!("make the {} filesystem", self.what))
            .run()?;
        let size = std::fs::metadata(out)
            .with_context(|| format!("mkfs.erofs left no {}", out.display()))?
            .len();
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
