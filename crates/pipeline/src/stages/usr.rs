//! USR: the image's /usr as a read-only filesystem image (erofs, or ext4 for kernels without
//! erofs), sized to fit slot A. The update payload carries these bytes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kiln_fs::{erofs::Erofs, ext4::Ext4};
use kiln_recipe::{Filesystem, Partition};

use super::tree::Tree;
use super::Stage;
use crate::ids;
use crate::inputs::Inputs;

pub struct Usr<'a> {
    pub tree: &'a Tree<'a>,
    pub filesystem: Filesystem,
    /// erofs's compressor (lz4, lz4hc, none).
    pub compression: &'a str,
    /// Slot A: its size limits the image; its label names the filesystem.
    pub slot: &'a Partition,
    /// The recipe's identity, which seeds the filesystem's UUID and hash seed (part of the
    /// tree's key).
    pub identity: &'a str,
    pub epoch: i64,
    /// erofs-utils and e2fsprogs versions.
    pub tools: String,
}

#[derive(Debug, Clone)]
pub struct UsrImage {
    pub image: PathBuf,
}

impl Stage for Usr<'_> {
    const NAME: &'static str = "usr";
    type Output = UsrImage;

    fn inputs(&self) -> Inputs {
        Inputs::new()
            .add("tree", self.tree.key())
            .add("fs", self.filesystem.as_str())
            .add("compression", self.compression)
            .add("size", self.slot.size.0.to_string())
            .add("tools", &self.tools)
    }

    fn build(&self, out: &Path) -> Result<()> {
        let tree = &self.tree.get()?.usr;
        let img = out.join("fs.img");
        let part = self.slot;
        match self.filesystem {
            Filesystem::Erofs => {
                Erofs {
                    uuid: ids::derive(self.identity, "usr-fs"),
                    epoch: self.epoch,
                    compression: self.compression,
                    limit: part.size.0,
                    what: &part.label,
                }
                .build(tree, &img)?;
            }
            Filesystem::Ext4 => Ext4 {
                label: &part.label,
                uuid: ids::derive(self.identity, "usr-fs"),
                hash_seed: ids::derive(self.identity, "usr-hash-seed"),
                epoch: self.epoch,
                size: part.size.0,
                what: &part.label,
                origin: "the image's /usr",
            }
            .build(tree, &img)?,
            Filesystem::Vfat => bail!("USR cannot be vfat"),
        }
        Ok(())
    }

    fn output(&self, dir: &Path) -> Result<UsrImage> {
        Ok(UsrImage {
            image: dir.join("fs.img"),
        })
    }
}
