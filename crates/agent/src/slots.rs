//! The A/B state of the disk the system runs from, and updates to its passive slot. The
//! state and payload code is kiln-update's, the same the builder and `kiln update` use.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_update::apply::{self, Disk};
use kiln_update::state::{Slot, SlotState};

use crate::{blockdev, mounts};

/// The running slot and the whole disk it is on, from the device mounted at /usr; that disk
/// must be the one GRUB booted from (`kiln.disk=`), which the initramfs made sure of.
fn running() -> Result<(Slot, PathBuf)> {
    let mi = mounts::MountInfo::read()?;
    let usr = mi.get("/usr").context("/usr is not a mount point")?;
    let part = blockdev::partition_of(usr.major, usr.minor)?;
    blockdev::check_boot_disk(&part.disk, "/usr")?;
    let slot = Slot::from_guid(&part.part_guid).with_context(|| {
        format!(
            "/usr is {} (partition GUID {}), which is neither USR-A nor USR-B",
            part.dev.display(),
            part.part_guid
        )
    })?;
    Ok((slot, part.disk))
}

pub fn state() -> Result<(Slot, SlotState)> {
    let (slot, disk) = running()?;
    Ok((slot, Disk::open(&disk, false)?.state()?))
}

pub fn status() -> Result<()> {
    let (slot, st) = state()?;
    println!("running: USR-{slot}");
    print!("{st}");
    Ok(())
}

/// Marks the running slot good; writes the state only when something changes, or when a
/// copy of it is damaged (the write goes to that copy and restores it). A state that was
/// lost altogether is rebuilt (see [`repair_state`]).
pub fn mark_good() -> Result<SlotState> {
    let (slot, disk) = running()?;
    let disk = Disk::open(&disk, true)?;
    let r = disk.read_store()?;
    let Some(current) = r.state() else {
        return fresh_state(&disk, slot, &r.problems());
    };
    let mut st = current.clone();
    let changed = st.mark_good(slot)?;
    if changed || !r.all_valid() {
        disk.write_state(&st)?;
    }
    if changed {
        println!("kiln-agent: marked USR-{slot} good");
    } else if !r.all_valid() {
        println!(
            "kiln-agent: rewrote the damaged copy of the slot state ({})",
            r.problems()
        );
    }
    Ok(st)
}

/// `repair-state`: both copies valid again, or a fresh state if none was.
pub fn repair_state() -> Result<()> {
    let (slot, disk) = running()?;
    let disk = Disk::open(&disk, true)?;
    let r = disk.read_store()?;
    match r.state() {
        None => {
            fresh_state(&disk, slot, &r.problems())?;
        }
        Some(st) if !r.all_valid() => {
            let st = st.clone();
            disk.store()?.rebuild(&st)?;
            println!(
                "kiln-agent: rewrote the slot state from /{} ({})",
                r.current_path().unwrap_or("?"),
                r.problems()
            );
        }
        Some(_) => println!(
            "kiln-agent: the slot state is sound (/{} is current, generation {})",
            r.current_path().unwrap_or("?"),
            r.generation().unwrap_or(0)
        ),
    }
    Ok(())
}

/// Writes a fresh state when no copy is valid, from what the running system knows: this slot
/// runs and reached its ready point, so it is good; the other slot's contents are unknown, so
/// it is never booted until an update is applied to it.
fn fresh_state(disk: &Disk, slot: Slot, why: &str) -> Result<SlotState> {
    let field = |k: &str| {
        crate::os_release_value(k).with_context(|| {
            format!("/usr/lib/os-release has no {k}, needed to rebuild the slot state")
        })
    };
    let board = field("KILN_BOARD")?;
    let version = field("VERSION")?;
    let st = SlotState::recovered(&board, slot, &version)?;
    disk.store()?.rebuild(&st)?;
    println!(
        "kiln-agent: the slot state was lost ({why}); wrote a fresh one: USR-{slot} good, USR-{} not to be booted",
        slot.other()
    );
    Ok(st)
}

pub fn apply(source: &Path, tries: u8) -> Result<()> {
    let (active, disk_path) = running()?;
    let keys_dir = Path::new("/").join(kiln_update::TRUSTED_KEYS_DIR);
    let trusted = kiln_update::keys::load_verifying_keys(&keys_dir)?;
    if trusted.is_empty() {
        anyhow::bail!(
            "this image trusts no update key ({} is empty): it was built without a signing key",
            keys_dir.display()
        );
    }
    let mut src = std::fs::File::open(source)
        .with_context(|| format!("cannot open the payload {}", source.display()))?;
    let disk = Disk::open(&disk_path, true)?;
    let applied = apply::apply(&disk, &mut src, &trusted, active, tries, &mut |m| {
        println!("kiln-agent: {m}")
    })?;
    println!(
        "kiln-agent: update applied: {} {} in USR-{}; reboot to try it",
        applied.header.os_name, applied.header.version, applied.slot
    );
    Ok(())
}
