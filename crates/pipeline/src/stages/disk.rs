//! The disk: a GPT with the partitions at their planned offsets, GRUB's boot code in the MBR
//! and its core image in BIOS-BOOT. Not cached: it is the stages' outputs laid side by side,
//! written sparse (a second of work), and kept only as long as the artifacts need it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_boot::grub;
use kiln_disk::{Attributes, DiskPlan, PartitionSpec};
use kiln_recipe::{Layout, Resolved};

use crate::ids;

/// A disk's partition table and size, planned from the layout: a layout or size the format
/// cannot take fails here, before any stage runs.
pub fn plan(
    r: &Resolved,
    layout: &Layout,
    identity: &str,
    platform: Option<&kiln_recipe::Platform>,
) -> Result<DiskPlan> {
    let specs: Vec<PartitionSpec> = layout
        .partitions
        .iter()
        .map(|p| PartitionSpec {
            number: p.number,
            label: p.label.clone(),
            type_guid: p.type_guid,
            part_guid: p
                .uuid
                .unwrap_or_else(|| ids::derive(identity, &format!("part-{}", p.label))),
            size_bytes: p.size.0,
            // The slot state lives in /kiln/slots.env on the ESP, not in these bits.
            attributes: Attributes::default(),
        })
        .collect();
    let mut plan = kiln_disk::plan(&specs, layout.alignment)?;
    plan.gpt.disk_guid = ids::derive(identity, "disk");
    if let Some(p) = platform {
        let size = super::artifact::disk_size(r, p, plan.disk_size_bytes)?;
        plan.disk_size_bytes = size;
        plan.gpt.disk_sectors = size / 512;
    }
    Ok(plan)
}

/// What fills the disk: each partition's image by number, and GRUB's BIOS core if the
/// board boots with BIOS.
pub struct Contents {
    pub partitions: Vec<(u32, PathBuf)>,
    pub bios_core: Option<PathBuf>,
}

/// Writes the disk `image` (through a temporary file beside it, renamed when complete).
/// `scratch` holds the patched core image.
pub fn write(
    plan: &DiskPlan,
    layout: &Layout,
    contents: &Contents,
    scratch: &Path,
    image: &Path,
) -> Result<u64> {
    let mut parts = contents.partitions.clone();
    let mut boot_code = None;
    if let Some(core) = &contents.bios_core {
        let bb = layout
            .bios_boot()
            .context("BIOS firmware needs a bios-boot partition (checked at load)")?;
        let pp = plan
            .partition(bb.number)
            .with_context(|| format!("partition {} not planned", bb.number))?;
        let lba = pp.offset_bytes / 512;
        let patched = grub::patch_core(std::fs::read(core)?, lba, pp.size_bytes)?;
        let core_path = scratch.join("core.img");
        std::fs::write(&core_path, patched)?;
        parts.push((bb.number, core_path));
        boot_code = Some(grub::bios_boot_code(lba)?);
    }
    let tmp = kiln_host::atomic::Staged::new(image)?;
    let f = &std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path())
        .with_context(|| format!("cannot open {}", tmp.path().display()))?;
    f.set_len(plan.disk_size_bytes)?;
    let mut w = f;
    plan.gpt.write(&mut w, boot_code.as_deref())?;
    for (number, src) in &parts {
        let p = plan
            .partition(*number)
            .with_context(|| format!("partition {number} not planned"))?;
        kiln_disk::copy_sparse(src, f, p.offset_bytes, p.size_bytes, &p.label)?;
    }
    // 0600, the mode the disk image had when it was a tempfile.
    tmp.commit(0o600)
        .with_context(|| format!("cannot write {}", image.display()))?;
    Ok(plan.disk_size_bytes)
}
