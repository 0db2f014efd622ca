//! The A/B state of the disk the system runs from, and updates to its passive slot. The
//! state and payload code is kiln-update's, the same the builder and `kiln update` use; every
//! write holds the disk's lock (an flock on the disk's /dev node) and reads the state again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_update::apply::{self, Disk, Expected, Options, Running};
use kiln_update::state::{Slot, SlotState};
use kiln_update::system;

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
    let (st, changed) = Disk::open(&disk, true)?.mark_good(slot)?;
    if changed {
        println!("kiln-agent: marked USR-{slot} good");
    }
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
