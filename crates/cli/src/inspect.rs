//! `kiln inspect`: the partition table as kiln reads it, and which USR slot would boot.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_disk::{type_name, Gpt};
use kiln_formats::{ImageFormat, SparseView};
use kiln_update::state::{Choice, SlotState};
use serde::Serialize;

#[derive(Serialize)]
struct Report {
    image: String,
    /// raw, qcow2, vmdk or vhd.
    format: String,
    disk_size: u64,
    disk_guid: String,
    read_from: String,
    partitions: Vec<Part>,
    /// The A/B state: the valid copy with the highest generation on the ESP; absent on a
    /// disk that is not kiln's.
    slots: Option<SlotState>,
    next_boot: Option<Choice>,
    /// Each copy of the state: its path, generation, and why it is not valid if it is not.
    state_copies: Vec<StateCopy>,
}

#[derive(Serialize)]
struct StateCopy {
    path: String,
    generation: Option<u32>,
    current: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct Part {
    number: u32,
    label: String,
    type_name: String,
    type_guid: String,
    partition_guid: String,
    start_lba: u64,
    start_bytes: u64,
    size_bytes: u64,
    /// The GPT attribute bits (kiln keeps no slot state here).
    attributes: String,
}

fn size(b: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if b.is_multiple_of(1024 * MIB) {
        format!("{} GiB", b / (1024 * MIB))
    } else if b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else {
        format!("{b} B")
    }
}

pub fn inspect(image: &Path, json: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let format = ImageFormat::detect(image)?;
    let view = match format {
        ImageFormat::Raw => None,
        ImageFormat::Qcow2 | ImageFormat::Vmdk | ImageFormat::Vhd => {
            Some(SparseView::gpt(image, format, tmp.path())?)
        }
        other => anyhow::bail!(
            "{} is {other}-compressed: unpack it first (kiln inspect reads raw, qcow2, vmdk and vhd)",
            image.display()
        ),
    };
    let source = view.as_ref().map_or(image, |v| v.path()).to_path_buf();
    let mut f =
        std::fs::File::open(&source).with_context(|| format!("cannot open {}", image.display()))?;
    let len = f.metadata()?.len();
    let read = Gpt::read(&mut f, len)
        .with_context(|| format!("{} has no readable GPT", image.display()))?;
    let gpt = &read.gpt;
    let parts: Vec<Part> = gpt
        .partitions()
        .map(|(n, e)| Part {
            number: n,
            label: e.name.clone(),
            type_name: type_name(&e.type_guid).unwrap_or("unknown").to_string(),
            type_guid: e.type_guid.to_string(),
            partition_guid: e.part_guid.to_string(),
            start_lba: e.first_lba,
            start_bytes: e.first_lba * 512,
            size_bytes: e.sectors() * 512,
            attributes: format!("{:#018x}", e.attributes.0),
        })
        .collect();
    // The slot state: on the ESP, which for a non-raw image is copied out next to the GPT.
    let esp = gpt
        .partitions()
        .find(|(_, e)| type_name(&e.type_guid) == Some("efi-system"));
    if let Some((n, e)) = esp {
        // Bounded before anything is copied: a tiny qcow2 can claim a 1 TiB ESP.
        let bytes = e.sectors().saturating_mul(512);
        if bytes > kiln_update::apply::MAX_ESP_BYTES {
            anyhow::bail!(
                "{}: GPT partition {n}, the EFI system partition, is {bytes} bytes ({} MiB), more than the {} MiB kiln reads: refused before copying it (kiln's ESP is 128 MiB)",
                image.display(),
                bytes >> 20,
                kiln_update::apply::MAX_ESP_BYTES >> 20
            );
        }
        if let Some(v) = &view {
            v.copy(e.first_lba, e.last_lba + 1)?;
        }
    }
    let store = kiln_update::apply::Disk::open(&source, false).and_then(|d| d.read_store());
    let (slots, slots_error, copies) = match store {
        Ok(r) => {
            let copies: Vec<StateCopy> = r
                .copies
                .iter()
                .enumerate()
                .map(|(i, (path, c))| StateCopy {
                    path: format!("/{path}"),
                    generation: c.as_ref().ok().and_then(|p| p.generation),
                    current: r.current == Some(i),
                    error: c.as_ref().err().cloned(),
                })
                .collect();
            match r.state() {
                Some(s) => (Some(s.clone()), None, copies),
                None => (
                    None,
                    Some(format!("no valid copy: {}", r.problems())),
                    copies,
                ),
            }
        }
        Err(e) => (None, Some(format!("{e:#}")), Vec::new()),
    };
    let next = slots.as_ref().and_then(|s| s.next_boot());
    let report = Report {
        format: format.to_string(),
        image: image.display().to_string(),
        disk_size: len,
        disk_guid: gpt.disk_guid.to_string(),
        read_from: read.source.to_string(),
        partitions: parts,
        slots,
        next_boot: next,
        state_copies: copies,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} ({}): {} ({} bytes), disk GUID {}, read from the {} GPT",
        report.image,
        report.format,
        size(len),
        len,
        report.disk_guid,
        report.read_from
    );
    if let Some(e) = read.primary_error.as_ref().or(read.backup_error.as_ref()) {
        println!("warning: {e}");
    }
    println!(
        "{:>3}  {:<12} {:<16} {:<36} {:>10} {:>9}  attributes",
        "#", "label", "type", "partition GUID", "start LBA", "size"
    );
    for p in &report.partitions {
        let attrs = if p.attributes == "0x0000000000000000" {
            "-"
        } else {
            &p.attributes
        };
        println!(
            "{:>3}  {:<12} {:<16} {:<36} {:>10} {:>9}  {}",
            p.number,
            p.label,
            p.type_name,
            p.partition_guid,
            p.start_lba,
            size(p.size_bytes),
            attrs
        );
    }
    match (&report.slots, slots_error) {
        (Some(st), _) => {
            if let Some(c) = report.state_copies.iter().find(|c| c.current) {
                let generation = c.generation.map_or("none".to_string(), |g| g.to_string());
                println!("slot state ({}, generation {generation}):", c.path);
            }
            print!("{st}");
        }
        (None, Some(e)) => println!("no A/B slot state: {e}"),
        (None, None) => {}
    }
    for c in &report.state_copies {
        if let Some(e) = &c.error {
            println!("warning: the state's copy {} is not valid: {e}", c.path);
        }
    }
    Ok(())
}
