//! The disk images a build writes: the board image, and one per platform, each with what
//! makes it differ (identity, OEM tree, layout variant, kernel arguments, disk size, format).
//! [`build`] makes one: its OEM, ROOT and ESP stages, the disk, and for a platform the
//! artifact in its format with its sidecars and digests.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_disk::DiskPlan;
use kiln_recipe::{Firmware, Layout, Platform, Resolved, Slot};

use crate::context::{Build, Shared};
use crate::report::StageReport;
use crate::stages::{disk, esp::Esp, oem::Oem, root::Root};

pub struct Image<'a> {
    /// "board" or the platform's name.
    pub name: String,
    /// Seeds the disk GUID and the OEM and ESP identifiers.
    pub identity: String,
    pub oem_id: &'a str,
    pub oem_tree: &'a Path,
    /// Content hash of the OEM tree, computed when the recipe was loaded.
    pub oem_tree_hash: &'a str,
    pub layout: &'a Layout,
    pub cmdline: Vec<String>,
    pub platform: Option<&'a Platform>,
    pub plan: DiskPlan,
}

impl Image<'_> {
    pub fn platform_name(&self) -> Option<&str> {
        self.platform.map(|p| p.name.as_str())
    }
}

/// The board image and each platform's, their disks planned: a layout or size a format
/// cannot take fails here, before any work.
pub fn plan(r: &Resolved) -> Result<Vec<Image<'_>>> {
    let mut images = vec![Image {
        name: "board".into(),
        identity: r.identity().to_string(),
        oem_id: &r.oem.id,
        oem_tree: &r.oem.tree,
        oem_tree_hash: r
            .tree_hashes
            .last()
            .context("the OEM tree is hashed last")?,
        layout: &r.layout,
        cmdline: r.kernel.cmdline.clone(),
        platform: None,
        plan: disk::plan(r, &r.layout, r.identity(), None)?,
    }];
    for p in &r.platforms {
        images.push(Image {
            name: p.name.clone(),
            identity: p.identity.clone(),
            oem_id: &p.oem.id,
            oem_tree: &p.oem.tree,
            oem_tree_hash: &p.oem_tree_hash,
            layout: &p.layout,
            cmdline: p.cmdline.clone(),
            platform: Some(p),
            plan: disk::plan(r, &p.layout, &p.identity, Some(p))?,
        });
    }
    Ok(images)
}

/// Writes one image into `staging`; returns its files there.
pub fn build(b: &Build, sh: &Shared, img: &Image, staging: &Path) -> Result<Vec<PathBuf>> {
    let r = b.recipe;
    let layout = img.layout;
    let oem = b.run(&Oem {
        image: img,
        part: layout.oem(),
        epoch: r.source_date_epoch,
        tools: &b.tools.e2fsprogs,
    })?;
    let root = b.run(&Root {
        tree: sh.tree,
        part: layout.root(),
        identity: r.identity(),
        epoch: r.source_date_epoch,
        tools: &b.tools.e2fsprogs,
        for_platform: img.platform_name(),
    })?;
    let esp = b.run(&Esp::new(
        r,
        img,
        sh.kernel,
        sh.initramfs,
        sh.grub,
        &b.tools.vfat,
    )?)?;

    let start = Instant::now();
    let scratch = b.work().join(format!("image-{}", img.name));
    std::fs::create_dir_all(&scratch)?;
    let contents = disk::Contents {
        partitions: vec![
            (layout.esp().number, esp.image.clone()),
            (layout.usr(Slot::A).number, sh.usr.image.clone()),
            (layout.root().number, root.image.clone()),
            (layout.oem().number, oem.image.clone()),
        ],
        bios_core: if r.has_firmware(Firmware::Bios) {
            Some(
                sh.grub
                    .core
                    .clone()
                    .context("the grub stage made no BIOS core image")?,
            )
        } else {
            None
        },
    };
    let files = match img.platform {
        None => {
            let image = staging.join(format!("{}_image.bin", r.name));
            disk::write(&img.plan, layout, &contents, &scratch, &image)?;
            vec![image]
        }
        Some(p) => {
            let raw = scratch.join("disk.raw");
            disk::write(&img.plan, layout, &contents, &scratch, &raw)?;
            let files = crate::stages::artifact::produce(
                r,
                p,
                &img.identity,
                &raw,
                staging,
                b.opts.keep_raw,
                &b.opts.cache.root.join("xz-chunks"),
            )?;
            if !b.opts.keep_raw {
                std::fs::remove_file(&raw)
                    .with_context(|| format!("cannot remove {}", raw.display()))?;
            }
            files
        }
    };
    let tag = match img.platform_name() {
        Some(p) => format!("disk:{p}"),
        None => "disk".to_string(),
    };
    b.report(StageReport::step(
        &tag,
        true,
        "written: disks are made from the cached stages every build",
        start.elapsed().as_secs_f64(),
    ));
    Ok(files)
}
