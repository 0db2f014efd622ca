//! kiln-agent: runs inside kiln images, statically linked so the initramfs can use it too.
//! It reads the GPT itself (with kiln-disk, the same code the builder writes it with) because
//! neither the kernel nor busybox can look a partition up by its GPT identity.

mod blockdev;
mod grow;
mod mounts;
mod slots;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kiln_update::apply::{self, Expected};
use kiln_update::channel::{self, ChannelDir, SeqStore};
use kiln_update::system;

#[derive(Parser)]
#[command(name = "kiln-agent", version, about = "The agent inside kiln images")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the /dev path of a partition: PARTUUID=<guid>, PARTLABEL=<gpt name>,
    /// LABEL=<ext4 label> or a /dev path. Exits 1 if it is not (yet) there, 2 if it matches
    /// more than one partition of --disk.
    Find {
        spec: String,
        /// Only partitions of this whole disk (the boot disk) [default: the first match on
        /// any disk, as before kiln.disk= existed]
        #[arg(long, value_name = "DEV")]
        disk: Option<std::path::PathBuf>,
    },
    /// Print the whole disk holding the partition PARTUUID=<guid> (the ESP GRUB booted from,
    /// given on the kernel command line as kiln.disk=). Exits 1 if no disk has it (yet), 2
    /// if more than one does (copies of one image).
    BootDisk { spec: String },
    /// The ready point: check the running system, mark the running slot good, and print the
    /// ready line on stdout: `kiln: ready version=.. slot=.. usr=ro|rw root=rw|ro oem=..`,
    /// the devices behind them and the slot the next boot takes.
    Ready {
        /// Only report; leave the slot state alone.
        #[arg(long)]
        no_mark_good: bool,
    },
    /// Print the A/B slot state of the boot disk and the slot the next boot takes.
    Status,
    /// Mark the running slot good: it booted far enough, so it stays the fallback.
    MarkGood,
    /// Rewrite the slot state on the boot disk: a copy that is damaged is rewritten from the
    /// valid one; if neither is valid, a fresh state is written from what the running system
    /// knows (the running slot, good; the other slot never to boot until an update).
    RepairState,
    /// Update payloads.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// Grow the ext4 filesystem mounted at MOUNT_POINT, and its partition if it is the last
    /// one, to the end of its disk (moving the backup GPT there). Does nothing if there is
    /// nothing to grow.
    GrowRoot { mount_point: PathBuf },
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// Verify a payload (a file, or a block device holding one) against the keys in
    /// /usr/share/kiln/update-keys, write it to the passive slot, and mark that slot to be
    /// tried at the next boot. Nothing is written unless the whole payload verifies, is for
    /// this board, OS and architecture, is not older than the running system, and the running
    /// slot is marked good (the passive one may be the last good system).
    Apply {
        source: PathBuf,
        /// Boots the new slot gets to mark itself good (1 to 15).
        #[arg(long, default_value_t = 1)]
        tries: u8,
        /// Install a payload older than the running system.
        #[arg(long)]
        allow_downgrade: bool,
        /// The SHA-256 the payload file must have (from a channel index).
        #[arg(long, value_name = "HEX")]
        expect_sha256: Option<String>,
    },
    /// Read a release channel (the directory of its index.json, e.g. a mounted mirror's
    /// <board>/channels/stable), check its signature against the trusted keys, its board and
    /// that it is not older than one seen before, and print what it offers: the payload to
    /// apply, or that this system is up to date. A channel below the running version is
    /// refused as a downgrade.
    Check {
        channel: PathBuf,
        /// The system's root, for checking an image mounted elsewhere [default: /].
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Accept a channel whose version is below the running one.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// `update check`, then apply the payload the channel offers, checked against the size and
    /// SHA-256 its signed index names. Does nothing when the system is up to date.
    ApplyFromChannel {
        channel: PathBuf,
        /// Boots the new slot gets to mark itself good (1 to 15).
        #[arg(long, default_value_t = 1)]
        tries: u8,
        /// Accept and install a channel version below the running one.
        #[arg(long)]
        allow_downgrade: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Find { spec, disk } => match disk {
            Some(d) => blockdev::find_on(&d, &spec),
            None => blockdev::find(&spec),
        }
        .map(|dev| println!("{}", dev.display())),
        Cmd::BootDisk { spec } => {
            blockdev::boot_disk(&spec).map(|dev| println!("{}", dev.display()))
        }
        Cmd::Ready { no_mark_good } => ready(!no_mark_good),
        Cmd::Status => slots::status(),
        Cmd::MarkGood => slots::mark_good().map(|_| ()),
        Cmd::RepairState => slots::repair_state(),
        Cmd::Update(UpdateCmd::Apply {
            source,
            tries,
            allow_downgrade,
            expect_sha256,
        }) => slots::apply(&source, tries, allow_downgrade, expect_sha256),
        Cmd::Update(UpdateCmd::Check {
            channel,
            root,
            allow_downgrade,
        }) => check(&channel, &root, allow_downgrade).map(|_| ()),
        Cmd::Update(UpdateCmd::ApplyFromChannel {
            channel,
            tries,
            allow_downgrade,
        }) => apply_from_channel(&channel, tries, allow_downgrade),
        Cmd::GrowRoot { mount_point } => {
            grow::grow(&mount_point).map(|s| println!("kiln-agent: grow-root: {s}"))
        }
    };
    if let Err(e) = r {
        eprintln!("kiln-agent: {e:#}");
        let ambiguous = e.chain().any(|c| c.is::<blockdev::Ambiguous>());
        std::process::exit(if ambiguous { 2 } else { 1 });
    }
}

/// `update check`: what a signed channel index offers this system, and the payload's
/// expected size and digest when it offers one.
fn check(
    channel: &Path,
    root: &Path,
    allow_downgrade: bool,
) -> Result<(ChannelDir, Option<(String, Expected)>)> {
    let trusted = slots::trusted_keys(root)?;
    let field = |k: &str| {
        system::os_release_in(root, k)
            .with_context(|| format!("{} has no {k}", root.join("usr/lib/os-release").display()))
    };
    let (running, board) = (field("VERSION")?, field("KILN_BOARD")?);
    let dir = ChannelDir::open(channel)?;
    let seen = SeqStore::new(root);
    let offer = channel::check(&dir, &trusted, &board, &running, &seen, allow_downgrade)?;
    if let Some(n) = &offer.note {
        println!("kiln-agent: {n}");
    }
    let i = &offer.index;
    match (&offer.payload, &i.payload) {
        (Some(rel), Some(p)) => {
            println!(
                "kiln-agent: channel {} offers {} (running {running}): payload {} ({} bytes, sha256 {})",
                i.channel,
                i.version,
                channel.join(rel).display(),
                p.size,
                p.sha256
            );
            let expect = Expected {
                sha256: p.sha256.clone(),
                size: Some(p.size),
            };
            Ok((dir, Some((rel.clone(), expect))))
        }
        _ if i.version == running => {
            println!(
                "kiln-agent: channel {} is at {running}: up to date",
                i.channel
            );
            Ok((dir, None))
        }
        _ => {
            println!(
                "kiln-agent: channel {} is at {} (running {running}) but names no payload",
                i.channel, i.version
            );
            Ok((dir, None))
        }
    }
}

/// `update apply-from-channel`: the payload the channel's signed index names, opened in the
/// same state of the channel the index was read from, and held to its size and digest.
fn apply_from_channel(channel: &Path, tries: u8, allow_downgrade: bool) -> Result<()> {
    let (dir, offer) = check(channel, Path::new("/"), allow_downgrade)?;
    let Some((rel, expect)) = offer else {
        return Ok(());
    };
    let src = dir.open_file(&rel)?;
    slots::apply_file(
        src,
        &apply::Options {
            tries,
            allow_downgrade,
            expect: Some(expect),
        },
    )
}

fn os_release_value(key: &str) -> Option<String> {
    system::os_release_in(Path::new("/"), key)
}

fn ready(mark_good: bool) -> Result<()> {
    let version = os_release_value("VERSION_ID").unwrap_or_else(|| "unknown".into());
    let mi = mounts::MountInfo::read()?;
    let usr = mi.get("/usr").context("/usr is not a mount point")?;
    let root = mi.get("/").context("/ is not in mountinfo")?;
    let usr_part = blockdev::partition_of(usr.major, usr.minor).ok();
    let root_part = blockdev::partition_of(root.major, root.minor).ok();
    let slot = usr_part
        .as_ref()
        .and_then(|p| kiln_disk::slot::Slot::from_guid(&p.part_guid))
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".into());
    // Both the mount flag and an actual write attempt must agree.
    let usr_ro = usr.read_only() && !mounts::writable(Path::new("/usr"));
    let root_rw = !root.read_only() && mounts::writable(Path::new("/"));
    let root_mib = fs_size_mib("/");
    let oem_id = std::fs::read_to_string("/usr/share/oem/oem-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("ID=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "none".into());
    let oem_part = mi
        .get("/usr/share/oem")
        .and_then(|m| blockdev::partition_of(m.major, m.minor).ok());
    let oem_label = oem_part
        .as_ref()
        .map(|p| p.label.clone())
        .unwrap_or_else(|| "none".into());
    let dev = |p: &Option<blockdev::PartInfo>| {
        p.as_ref()
            .map(|p| p.dev.display().to_string())
            .unwrap_or_else(|| "none".into())
    };
    // The disk everything came from: the one GRUB booted (kiln.disk=), else /usr's.
    let disk = blockdev::cmdline_disk_spec()
        .ok()
        .flatten()
        .and_then(|spec| blockdev::boot_disk(&spec).ok())
        .or_else(|| usr_part.as_ref().map(|p| p.disk.clone()))
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "unknown".into());
    // The ready point is reached: this slot stays the one to fall back to.
    let next = if mark_good {
        match slots::mark_good() {
            Ok(st) => st.next_boot().map(|c| c.slot.to_string()),
            Err(e) => {
                eprintln!("kiln-agent: warning: cannot mark the running slot good: {e:#}");
                None
            }
        }
    } else {
        slots::state()
            .ok()
            .and_then(|(_, st)| st.next_boot())
            .map(|c| c.slot.to_string())
    };
    let next = next.unwrap_or_else(|| "unknown".into());
    println!(
        "kiln: ready version={version} slot={slot} usr={} root={} oem={oem_id} usr-fs={} usr-partuuid={} usr-dev={} root-fs={} root-partlabel={} root-fs-mib={root_mib} oem-partlabel={oem_label} disk={disk} root-dev={} oem-dev={} next={next}",
        if usr_ro { "ro" } else { "rw" },
        if root_rw { "rw" } else { "ro" },
        usr.fstype,
        usr_part.as_ref().map(|p| p.part_guid.to_string()).unwrap_or_else(|| "none".into()),
        usr_part.as_ref().map(|p| p.dev.display().to_string()).unwrap_or_else(|| usr.source.clone()),
        root.fstype,
        root_part.as_ref().map(|p| p.label.clone()).unwrap_or_else(|| "none".into()),
        dev(&root_part),
        dev(&oem_part),
    );
    Ok(())
}

/// Size of the filesystem at `path` in MiB (statvfs), 0 if unknown.
fn fs_size_mib(path: &str) -> u64 {
    let c = std::ffi::CString::new(path).expect("no NUL");
    // SAFETY: statvfs fills a plain struct for a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_blocks as u64 * st.f_frsize as u64 / (1024 * 1024)
}
