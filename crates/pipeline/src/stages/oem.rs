//! OEM: the platform's OEM tree and its `oem-release`, as an ext4 image for the OEM
//! partition (mounted read-only at /usr/share/oem).

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_fs::ext4::Ext4;
use kiln_fs::stage as st;
use kiln_recipe::Partition;

use super::Stage;
use crate::ids;
use crate::images::Image;
use crate::inputs::Inputs;

pub struct Oem<'a> {
    pub image: &'a Image<'a>,
    pub part: &'a Partition,
    pub epoch: i64,
    /// e2fsprogs's version.
    pub tools: &'a str,
}

#[derive(Debug, Clone)]
pub struct OemImage {
    pub image: PathBuf,
}

impl Stage for Oem<'_> {
    const NAME: &'static str = "oem";
    type Output = OemImage;

    fn platform(&self) -> Option<&str> {
        self.image.platform_name()
    }

    fn inputs(&self) -> Inputs {
        Inputs::new()
            .add("identity", &self.image.identity)
            .add("oem", self.image.oem_id)
            .add("tree", self.image.oem_tree_hash)
            .add("size", self.part.size.0.to_string())
            .add("tools", self.tools)
    }

    fn build(&self, out: &Path) -> Result<()> {
        let v = self.image;
        let tree = out.join("tree");
        std::fs::create_dir_all(&tree)?;
        st::apply_overlay(v.oem_tree, &tree)?;
        st::write_file_in(
            &tree,
            Path::new("oem-release"),
            format!("ID={}\n", v.oem_id).as_bytes(),
            0o644,
        )?;
        st::normalize_times(&tree, self.epoch)?;
        Ext4 {
            label: &self.part.label,
            uuid: ids::derive(&v.identity, "oem-fs"),
            hash_seed: ids::derive(&v.identity, "oem-hash-seed"),
            epoch: self.epoch,
            size: self.part.size.0,
            what: &self.part.label,
            origin: &format!("the OEM tree {}", v.oem_tree.display()),
        }
        .build(&tree, &out.join("fs.img"))?;
        std::fs::remove_dir_all(&tree)?;
        Ok(())
    }

    fn output(&self, dir: &Path) -> Result<OemImage> {
        Ok(OemImage {
            image: dir.join("fs.img"),
        })
    }
}
