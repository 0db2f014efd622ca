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

/// Resolves PARTUUID=, PARTLABEL=, LABEL= (ext4) or a /dev path to a /dev path.
pub fn find(spec: &str) -> Result<PathBuf> {
    if spec.starts_with("/dev/") {
        return if Path::new(spec).exists() {
            Ok(spec.into())
        } else {
            bail!("{spec} does not exist")
        };
    }
    let (key, value) = spec
        .split_once('=')
        .with_context(|| format!("`{spec}`: expected PARTUUID=, PARTLABEL=, LABEL= or /dev/..."))?;
    let want_guid = if key == "PARTUUID" {
        Some(Uuid::parse_str(value).with_context(|| format!("`{value}` is not a GUID"))?)
    } else {
        None
    };
    if !["PARTUUID", "PARTLABEL", "LABEL"].contains(&key) {
        bail!("`{key}=`: expected PARTUUID=, PARTLABEL= or LABEL=");
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .context("cannot list /sys/class/block")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let sys = Path::new("/sys/class/block").join(&name);
        let Some(number) = read_trim(&sys.join("partition")).and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dev = Path::new("/dev").join(&name);
        if key == "LABEL" {
            if ext4_label(&dev).as_deref() == Some(value) {
                return Ok(dev);
            }
            continue;
        }
        let Ok(real) = std::fs::canonicalize(&sys) else {
            continue;
        };
        let Some(disk_name) = real.parent().and_then(|p| p.file_name()) else {
            continue;
        };
        let Ok(gpt) = read_gpt(&Path::new("/dev").join(disk_name)) else {
            continue;
        };
        let Some(e) = gpt.partition(number) else {
            continue;
        };
        let hit = match want_guid {
            Some(g) => e.part_guid == g,
            None => e.name == value,
        };
        if hit {
            return Ok(dev);
        }
    }
    bail!("no partition with {spec}")
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
