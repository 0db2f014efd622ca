//! Block devices through sysfs, and their GPT entries read with kiln-disk.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_disk::Gpt;
use uuid::Uuid;

pub struct PartInfo {
    pub dev: PathBuf,
    pub disk: PathBuf,
    pub part_guid: Uuid,
    pub label: String,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Size in 512-byte sectors of a block device, by its name in /sys/class/block.
pub fn sectors(name: &str) -> Result<u64> {
    read_trim(&Path::new("/sys/class/block").join(name).join("size"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("cannot read the size of {name} from sysfs"))
}

/// The GPT of a whole-disk device.
pub fn read_gpt(disk: &Path) -> Result<Gpt> {
    let name = disk.file_name().context("bad disk path")?;
    let sectors = sectors(&name.to_string_lossy())?;
    let mut f = File::open(disk).with_context(|| format!("cannot open {}", disk.display()))?;
    Ok(Gpt::read(&mut f, sectors * 512)?.gpt)
}

/// The partition behind a device number: its /dev node, disk, GPT partition GUID and label.
pub fn partition_of(major: u32, minor: u32) -> Result<PartInfo> {
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .with_context(|| format!("no block device {major}:{minor}"))?;
    let number: u32 = read_trim(&sys.join("partition"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{} is not a partition", sys.display()))?;
    let name = sys.file_name().context("bad sysfs path")?;
    let disk_name = sys
        .parent()
        .and_then(|p| p.file_name())
        .context("partition without a disk")?;
    let disk = Path::new("/dev").join(disk_name);
    let gpt = read_gpt(&disk)?;
    let e = gpt
        .partition(number)
        .with_context(|| format!("{} has no GPT entry {number}", disk.display()))?;
    Ok(PartInfo {
        dev: Path::new("/dev").join(name),
        disk,
        part_guid: e.part_guid,
        label: e.name.clone(),
    })
}

/// A name that matches on more than one disk, or more than once on the boot disk: the
/// initramfs refuses to boot rather than guess (`kiln-agent` exits 2 for it).
#[derive(Debug)]
pub struct Ambiguous(pub String);

impl std::fmt::Display for Ambiguous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Ambiguous {}

/// What a partition is looked up by.
enum Spec {
    PartUuid(Uuid),
    PartLabel(String),
    /// The ext2/3/4 volume label.
    Label(String),
    Dev(PathBuf),
}

fn parse_spec(spec: &str) -> Result<Spec> {
    if spec.starts_with("/dev/") {
        return Ok(Spec::Dev(spec.into()));
    }
    let (key, value) = spec
        .split_once('=')
        .with_context(|| format!("`{spec}`: expected PARTUUID=, PARTLABEL=, LABEL= or /dev/..."))?;
    Ok(match key {
        "PARTUUID" => Spec::PartUuid(
            Uuid::parse_str(value).with_context(|| format!("`{value}` is not a GUID"))?,
        ),
        "PARTLABEL" => Spec::PartLabel(value.to_string()),
        "LABEL" => Spec::Label(value.to_string()),
        _ => bail!("`{key}=`: expected PARTUUID=, PARTLABEL= or LABEL="),
    })
}

/// Block device names in /sys/class/block, sorted.
fn block_names() -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .context("cannot list /sys/class/block")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The whole disks: block devices that are not partitions.
fn disks() -> Result<Vec<String>> {
    Ok(block_names()?
        .into_iter()
        .filter(|n| {
            !Path::new("/sys/class/block")
                .join(n)
                .join("partition")
                .exists()
        })
        .collect())
}

/// The partitions of a whole disk: (name, GPT entry number), in number order.
fn partitions_of(disk: &str) -> Vec<(String, u32)> {
    let dir = Path::new("/sys/class/block").join(disk);
    let mut v: Vec<(String, u32)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let n = read_trim(&e.path().join("partition"))?.parse().ok()?;
            Some((name, n))
        })
        .collect();
    v.sort_by_key(|(_, n)| *n);
    v
}

fn disk_name(disk: &Path) -> Result<String> {
    Ok(disk
        .file_name()
        .with_context(|| format!("{} is not a /dev path", disk.display()))?
        .to_string_lossy()
        .into_owned())
}

/// Does partition `name` (number `number` on a disk whose GPT is `gpt`) match?
fn matches(spec: &Spec, gpt: Option<&Gpt>, name: &str, number: u32) -> bool {
    let entry = gpt.and_then(|g| g.partition(number));
    match spec {
        Spec::PartUuid(g) => entry.is_some_and(|e| e.part_guid == *g),
        Spec::PartLabel(l) => entry.is_some_and(|e| e.name == *l),
        Spec::Label(l) => ext4_label(&Path::new("/dev").join(name)).as_deref() == Some(l),
        Spec::Dev(d) => Path::new("/dev").join(name) == *d,
    }
}

/// The /dev paths of the partitions of `disk` that match `spec`.
fn matches_on(disk: &str, spec: &Spec) -> Vec<PathBuf> {
    let gpt = read_gpt(&Path::new("/dev").join(disk)).ok();
    partitions_of(disk)
        .into_iter()
        .filter(|(name, n)| matches(spec, gpt.as_ref(), name, *n))
        .map(|(name, _)| Path::new("/dev").join(name))
        .collect()
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The disk the system booted from: the one whole disk holding a partition with `spec`
/// (`PARTUUID=<the ESP's GUID>`, what GRUB passes as `kiln.disk=`). Not there (yet) is an
/// error; on two or more disks it is [`Ambiguous`]: copies of one image, and no way to tell
/// which one the firmware booted.
pub fn boot_disk(spec: &str) -> Result<PathBuf> {
    let Spec::PartUuid(guid) = parse_spec(spec)? else {
        bail!("the boot disk is named by PARTUUID=<the ESP's partition GUID>, not `{spec}`");
    };
    let mut found = Vec::new();
    for d in disks()? {
        let Ok(gpt) = read_gpt(&Path::new("/dev").join(&d)) else {
            continue;
        };
        if gpt.partitions().any(|(_, e)| e.part_guid == guid) {
            found.push(Path::new("/dev").join(d));
        }
    }
    match found.len() {
        0 => bail!("no disk has a partition with {spec}"),
        1 => Ok(found.remove(0)),
        n => Err(Ambiguous(format!(
            "the boot disk's partition {spec} is on {n} disks ({}): they are copies of one image, and the one booted cannot be told apart; detach the others",
            list(&found)
        ))
        .into()),
    }
}

/// The partition of `disk` that matches PARTUUID=, PARTLABEL=, LABEL= (ext4) or a /dev path.
/// Two matches on the disk are [`Ambiguous`].
pub fn find_on(disk: &Path, spec: &str) -> Result<PathBuf> {
    let s = parse_spec(spec)?;
    let name = disk_name(disk)?;
    let mut found = matches_on(&name, &s);
    match found.len() {
        0 => bail!("no partition with {spec} on {}", disk.display()),
        1 => Ok(found.remove(0)),
        n => Err(Ambiguous(format!(
            "{n} partitions of {} match {spec} ({}); refusing to pick one",
            disk.display(),
            list(&found)
        ))
        .into()),
    }
}

/// Resolves PARTUUID=, PARTLABEL=, LABEL= (ext4) or a /dev path to a /dev path on any disk.
/// Only for command lines from before `kiln.disk=` (an older grub.cfg booting a newer
/// initramfs): with no boot disk to hold to, a name on more than one partition of all the
/// disks is [`Ambiguous`] (every kiln image has the same USR GUIDs and labels, so a second
/// kiln disk or stick would otherwise supply them).
pub fn find(spec: &str) -> Result<PathBuf> {
    let s = parse_spec(spec)?;
    if let Spec::Dev(d) = &s {
        return if d.exists() {
            Ok(d.clone())
        } else {
            bail!("{spec} does not exist")
        };
    }
    let mut found = Vec::new();
    for d in disks()? {
        found.extend(matches_on(&d, &s));
    }
    match found.len() {
        0 => bail!("no partition with {spec}"),
        1 => Ok(found.remove(0)),
        n => Err(Ambiguous(format!(
            "{n} partitions match {spec} ({}), and the kernel command line has no kiln.disk= to tell the boot disk (a grub.cfg older than this initramfs); refusing to pick one: detach the other disks",
            list(&found)
        ))
        .into()),
    }
}

/// The value of `kiln.disk=` on the kernel command line, if there is one.
pub fn cmdline_disk_spec() -> Result<Option<String>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("cannot read /proc/cmdline")?;
    let key = format!("{}=", kiln_update::state::BOOT_DISK_ARG);
    Ok(cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix(&key))
        .next_back()
        .map(String::from))
}

/// Checks that `disk` is the disk the system booted from (named by `kiln.disk=`), for the
/// commands that write to the boot disk. Without `kiln.disk=` (an older grub.cfg) the disk
/// the caller found is taken as it is.
pub fn check_boot_disk(disk: &Path, what: &str) -> Result<()> {
    let Some(spec) = cmdline_disk_spec()? else {
        return Ok(());
    };
    let boot =
        boot_disk(&spec).with_context(|| format!("kiln.disk={spec} on the kernel command line"))?;
    if boot != disk {
        bail!(
            "{what} is on {} but the system booted from {} (kiln.disk={spec}); refusing to act on another disk",
            disk.display(),
            boot.display()
        );
    }
    Ok(())
}

/// The volume label of an ext2/3/4 filesystem (superblock at 1024, magic at +0x38, name at +0x78).
fn ext4_label(dev: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(dev).ok()?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}
