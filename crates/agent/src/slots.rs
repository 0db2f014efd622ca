//! The A/B state of the disk the system runs from, and updates to its passive slot. The
//! state and payload code is kiln-update's, the same the builder and `kiln update` use; every
//! write holds the disk's lock (an flock on the disk's /dev node) and reads the state again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_update::apply::{self, Disk, Expected, Options, Running};
use kiln_update::state::{Slot, SlotState};
use kiln_update::system;

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
    let m = disk.mark_good_with(slot, Some(&|| recovered_state(slot)))?;
    if let Some(why) = &m.rebuilt {
        println!(
            "kiln-agent: the slot state was lost ({why}); wrote a fresh one: USR-{slot} good, USR-{} not to be booted",
            slot.other()
        );
    } else if m.changed {
        println!("kiln-agent: marked USR-{slot} good");
    }
    if let Some(why) = &m.repaired {
        println!("kiln-agent: rewrote the damaged copy of the slot state ({why})");
    }
    Ok(m.state)
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

/// The state the running system rebuilds when no copy is valid, from what it knows: this
/// slot runs and reached its ready point, so it is good; the other slot's contents are
/// unknown, so it is never booted until an update is applied to it.
fn recovered_state(slot: Slot) -> Result<SlotState> {
    let field = |k: &str| {
        crate::os_release_value(k).with_context(|| {
            format!("/usr/lib/os-release has no {k}, needed to rebuild the slot state")
        })
    };
    let board = field("KILN_BOARD")?;
    let version = field("VERSION")?;
    SlotState::recovered(&board, slot, &version)
}

/// Writes a fresh state ([`recovered_state`]) to every copy, when no copy is valid. The
/// caller holds the disk's lock and has just read the copies.
fn fresh_state(disk: &Disk, slot: Slot, why: &str) -> Result<SlotState> {
    let st = recovered_state(slot)?;
    disk.store()?.rebuild(&st)?;
    println!(
        "kiln-agent: the slot state was lost ({why}); wrote a fresh one: USR-{slot} good, USR-{} not to be booted",
        slot.other()
    );
    Ok(st)
}

/// What the running system is, for binding a payload to it: its slot, and from the running
/// /usr its os-release ID and VERSION; the architecture is this agent's own.
fn running_system(slot: Slot) -> Result<Running> {
    let field = |k: &str| {
        system::os_release_in(Path::new("/"), k)
            .with_context(|| format!("/usr/lib/os-release has no {k}"))
    };
    Ok(Running {
        slot,
        os_id: field("ID")?,
        version: field("VERSION")?,
        arch: system::debian_arch()
            .context("kiln-agent was built for an architecture kiln has no Debian name for")?
            .to_string(),
    })
}

pub fn trusted_keys(root: &Path) -> Result<Vec<kiln_update::VerifyingKey>> {
    let keys_dir = root.join(kiln_update::TRUSTED_KEYS_DIR);
    let trusted = kiln_update::keys::load_verifying_keys(&keys_dir)?;
    if trusted.is_empty() {
        bail!(
            "this image trusts no update key ({} is empty): it was built without a signing key",
            keys_dir.display()
        );
    }
    Ok(trusted)
}

/// `update apply`: `source` is a file or a block device holding the payload.
pub fn apply(
    source: &Path,
    tries: u8,
    allow_downgrade: bool,
    expect_sha256: Option<String>,
) -> Result<()> {
    let src = std::fs::File::open(source)
        .with_context(|| format!("cannot open the payload {}", source.display()))?;
    let opts = Options {
        tries,
        allow_downgrade,
        expect: expect_sha256.map(|sha256| Expected { sha256, size: None }),
    };
    apply_file(src, &opts)
}

pub fn apply_file(mut src: std::fs::File, opts: &Options) -> Result<()> {
    let (active, disk_path) = running()?;
    let trusted = trusted_keys(Path::new("/"))?;
    let running = running_system(active)?;
    let disk = Disk::open(&disk_path, true)?;
    let applied = apply::apply(&disk, &mut src, &trusted, &running, opts, &mut |m| {
        println!("kiln-agent: {m}")
    })?;
    println!(
        "kiln-agent: update applied: {} {} in USR-{}; reboot to try it",
        applied.header.os_name, applied.header.version, applied.slot
    );
    Ok(())
}
