//! ROOT: the state partition (/etc, /var, /home, the merged-/usr links, an empty /usr) as an
//! ext4 image, one per ROOT size (layout variants differ there; the content does not).

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_fs::ext4::Ext4;
use kiln_recipe::Partition;

use super::tree::Tree;
use super::Stage;
use crate::ids;
use crate::inputs::Inputs;

pub struct Root<'a> {
    pub tree: &'a Tree<'a>,
    pub part: &'a Partition,
    /// The recipe's identity (part of the tree's key), which seeds the UUID and hash seed:
    /// every image of the recipe shares its ROOT content.
    pub identity: &'a str,
    pub epoch: i64,
    /// e2fsprogs's version.
    pub tools: &'a str,
    /// The platform whose image it is made for, for the report. Not an input: images with
    /// ROOT of the same size share the stage.
    pub for_platform: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct RootImage {
    pub image: PathBuf,
}

impl Stage for Root<'_> {
    const NAME: &'static str = "root";
    type Output = RootImage;

    fn platform(&self) -> Option<&str> {
        self.for_platform
    }

    fn inputs(&self) -> Inputs {
        Inputs::new()
            .add("tree", self.tree.key())
            .add("size", self.part.size.0.to_string())
            .add("tools", self.tools)
    }

    fn build(&self, out: &Path) -> Result<()> {
        Ext4 {
            label: &self.part.label,
            uuid: ids::derive(self.identity, "root-fs"),
            hash_seed: ids::derive(self.identity, "root-hash-seed"),
            epoch: self.epoch,
            size: self.part.size.0,
            what: &self.part.label,
            origin: "the image's state tree (/etc, /var, /home, ...)",
        }
        .build(&self.tree.get()?.root, &out.join("fs.img"))
    }

    fn output(&self, dir: &Path) -> Result<RootImage> {
        Ok(RootImage {
            image: dir.join("fs.img"),
        })
    }
}
