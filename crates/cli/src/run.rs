//! `kiln run`: boot an image in QEMU, for a person or headless to its ready line. With
//! `--platform`, the platform's virtual hardware (machine, disk controller, NIC, firmware,
//! config drive) boots its artifact as shipped: qcow2, vmdk and vhd directly; .xz and the GCE
//! .tar.gz unpacked into a temporary sparse file first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_formats::ImageFormat;
use kiln_qemu::{Accel, Disk, Vm};
use kiln_recipe::Firmware;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Disk image to boot: raw, qcow2, vmdk, vhd, or a platform's .xz or .tar.gz.
    image: PathBuf,
    /// Boot on this platform's virtual hardware (from board-profiles/platforms/NAME.toml).
    #[arg(long, value_name = "NAME")]
    platform: Option<String>,
    /// Firmware: bios (SeaBIOS) or uefi (OVMF) [default: bios, or the platform's]
    #[arg(long, value_parser = parse_firmware)]
    firmware: Option<Firmware>,
    /// Accelerator: auto (KVM when a probe guest runs under it, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto", env = "KILN_ACCEL")]
    accel: Accel,
    /// Board profile whose [qemu] table gives machine, memory and firmware files.
    #[arg(long, default_value = "amd64-usr")]
    board: String,
    /// Board profiles directory [default: the nearest board-profiles/ above the current directory]
    #[arg(long, value_name = "DIR")]
    board_dir: Option<PathBuf>,
    /// Disk model: virtio-blk-pci, ide-hd, scsi-hd (virtio-scsi), pvscsi, nvme, ...
    /// [default: the platform's, else the board's]
    #[arg(long)]
    disk: Option<String>,
    /// Leave the image unchanged: guest writes go to a temporary overlay.
    #[arg(long)]
    snapshot: bool,
    /// Boot a qcow2, vmdk or vhd that reads other files (a backing file, a data file,
    /// extents in other files, a parent disk). Without it such an image is refused: it can
    /// name any host file, which the guest would then read and write.
    #[arg(long)]
    allow_external_files: bool,
    /// Attach FILE as a further read-only virtio disk (/dev/vdb, /dev/vdc, ...): an update
    /// payload for `kiln-agent update apply /dev/vdb`, for instance. Repeatable.
    #[arg(long, value_name = "FILE")]
    attach: Vec<PathBuf>,
    /// Attach FILE as a further writable disk (after the --attach ones): the guest's writes
    /// stay in FILE, unless --snapshot. Repeatable.
    #[arg(long, value_name = "FILE")]
    attach_rw: Vec<PathBuf>,
    /// Device model of the --attach and --attach-rw disks: virtio-blk-pci, ide-hd (AHCI on
    /// q35, /dev/sda...), scsi-hd, nvme, ...
    #[arg(long, value_name = "MODEL", default_value = "virtio-blk-pci")]
    attach_disk: String,
    /// Boot headless, print the console, exit 0 at the ready line (1 on failure or timeout).
    #[arg(long)]
    until_ready: bool,
    /// Seconds to wait for the ready line with --until-ready.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn parse_firmware(s: &str) -> Result<Firmware, String> {
    match s {
        "bios" => Ok(Firmware::Bios),
        "uefi" => Ok(Firmware::Uefi),
        _ => Err(format!("unknown firmware `{s}`; use bios or uefi")),
    }
}

fn board_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    match explicit {
        Some(d) => Ok(d),
        None => std::env::current_dir()?
            .ancestors()
            .map(|d| d.join(kiln_recipe::BOARD_DIR_NAME))
            .find(|d| d.is_dir())
            .context("no board-profiles/ directory here or above; pass --board-dir"),
    }
}

pub fn run(a: RunArgs) -> Result<i32> {
    let board_dir = board_dir(a.board_dir)?;
    let path = board_dir.join(format!("{}.toml", a.board));
    if !path.is_file() {
        bail!(
            "unknown board `{}`; known boards: {}",
            a.board,
            kiln_recipe::known_boards(&board_dir).join(", ")
        );
    }
    let src = kiln_recipe::SourceFile::read(&path)?;
    let board: kiln_recipe::board::BoardFile = src.parse()?;
    let boot: Option<kiln_recipe::platform::BootDef> = match &a.platform {
        None => None,
        Some(name) => {
            let known = kiln_recipe::known_platforms(&board_dir);
            if !known.contains(name) {
                bail!(
                    "unknown platform `{name}`; known platforms: {}",
                    known.join(", ")
                );
            }
            let p = board_dir
                .join(kiln_recipe::PLATFORM_DIR_NAME)
                .join(format!("{name}.toml"));
            let f: kiln_recipe::platform::PlatformFile =
                kiln_recipe::SourceFile::read(&p)?.parse()?;
            Some(f.boot)
        }
    };
    let firmware = a
        .firmware
        .or(boot.as_ref().map(|b| b.firmware))
        .unwrap_or(Firmware::Bios);
    if !board.firmware.iter().any(|f| *f.get_ref() == firmware) {
        bail!(
            "board {} does not boot with {} firmware",
            a.board,
            firmware.as_str()
        );
    }
    let tmp = tempfile::tempdir()?;
    let mut image = a.image.clone();
    let mut format = ImageFormat::detect(&image)?;
    if format.is_packed() {
        image = kiln_formats::unpack(&a.image, format, tmp.path())?;
        format = ImageFormat::Raw;
    } else if !a.allow_external_files {
        kiln_formats::image::check_self_contained(&image, format).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}; or pass --allow-external-files to boot it with the files it names"
            )
        })?;
    }
    let mut disks = vec![Disk {
        path: image,
        format: format.qemu_name().unwrap_or("raw").into(),
        interface: a
            .disk
            .or(boot.as_ref().map(|b| b.disk.clone()))
            .unwrap_or_else(|| board.qemu.disk.clone()),
        read_only: false,
    }];
    let attached = a.attach.iter().map(|f| (f, true));
    for (f, read_only) in attached.chain(a.attach_rw.iter().map(|f| (f, false))) {
        disks.push(Disk {
            path: f.clone(),
            format: "raw".into(),
            interface: a.attach_disk.clone(),
            read_only,
        });
    }
    if boot.as_ref().is_some_and(|b| b.config_drive) {
        disks.push(Disk {
            path: config_drive(tmp.path())?,
            format: "raw".into(),
            interface: "virtio-blk-pci".into(),
            read_only: false,
        });
    }
    let vm = Vm {
        disks,
        machine: boot.as_ref().map(|b| b.machine.clone()),
        nic: boot
            .as_ref()
            .map(|b| b.nic.clone())
            .unwrap_or_else(|| "virtio-net-pci".into()),
        qemu: board.qemu,
        firmware,
        accel: a.accel,
        snapshot: a.snapshot,
        no_reboot: a.until_ready,
    };
    if !a.until_ready {
        let st = vm.run_interactive()?;
        return Ok(st.code().unwrap_or(1));
    }
    let mut stdout = std::io::stdout();
    let boot = vm.run_until(
        |l| l.starts_with(kiln_qemu::READY_PREFIX),
        Duration::from_secs(a.timeout),
        Some(&mut stdout),
    )?;
    match boot.ready {
        Some(_) => Ok(0),
        None => bail!("the image did not print its ready line"),
    }
}

/// An OpenStack-style config drive: FAT labelled config-2 holding
/// openstack/latest/meta_data.json.
fn config_drive(dir: &Path) -> Result<PathBuf> {
    let img = dir.join("config-2.img");
    let meta = dir.join("meta_data.json");
    std::fs::write(&meta, "{\"uuid\": \"kiln-run\", \"hostname\": \"kiln\"}\n")
        .with_context(|| format!("cannot write {}", meta.display()))?;
    // Made for one boot and thrown away: the time stamps are now's, the serial fixed. 64 MiB
    // (sparse, about 1 MiB on disk): Vfat makes FAT32, which needs 65525 clusters, and
    // mtools cannot write to a smaller one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    kiln_fs::vfat::Vfat {
        label: "config-2",
        serial: 0x6b696c6e,
        epoch: now,
        size: 64 << 20,
        what: "config drive",
    }
    .build(&[("/openstack/latest/meta_data.json".into(), meta)], &img)?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_drive_is_labelled_config_2_and_holds_the_meta_data() {
        let d = tempfile::tempdir().unwrap();
        let img = config_drive(d.path()).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes.len(), 64 << 20);
        // The FAT32 boot sector's volume label.
        assert_eq!(&bytes[71..82], b"config-2   ");
        let o = std::process::Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .arg("::/openstack/latest/meta_data.json")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "{\"uuid\": \"kiln-run\", \"hostname\": \"kiln\"}\n"
        );
    }
}
