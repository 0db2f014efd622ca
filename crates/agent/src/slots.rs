//! The A/B state of the disk the system runs from, and updates to its passive slot. The
//! state and payload code is kiln-update's, the same the builder and `kiln update` use.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_update::apply::{self, Disk};
use kiln_update::state::{Slot, SlotState};

use crate::{blockdev, mounts};

/// The running slot and the whole disk it is on, from the device mounted at /usr.
fn running() -> Result<(Slot, PathBuf)> {
    let mi = mounts::MountInfo::read()?;
    let usr = mi.get("/usr").context("/usr is not a mount point")?;
    let part = blockdev::partition_of(usr.major, usr.minor)?;
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

/// Marks the running slot good; writes the ESP only when something changes.
pub fn mark_good() -> Result<SlotState> {
    let (slot, disk) = running()?;
    let disk = Disk::open(&disk, true)?;
    let mut st = disk.state()?;
    if st.mark_good(slot)? {
        disk.write_state(&st)?;
        println!("kiln-agent: marked USR-{slot} good");
    }
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
