//! `kiln run`: boot an image in QEMU, for a person or headless to its ready line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_qemu::{Accel, Disk, Vm};
use kiln_recipe::Firmware;

#[derive(clap::Args)]
pub struct RunArgs {
    /// Raw disk image to boot.
    image: PathBuf,
    /// Firmware: bios (SeaBIOS) or uefi (OVMF).
    #[arg(long, default_value = "bios", value_parser = parse_firmware)]
    firmware: Firmware,
    /// Accelerator: auto (KVM when a probe guest runs under it, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto", env = "KILN_ACCEL")]
    accel: Accel,
    /// Board profile whose [qemu] table gives machine, memory and firmware files.
    #[arg(long, default_value = "amd64-usr")]
    board: String,
    /// Board profiles directory [default: the nearest board-profiles/ above the current directory]
    #[arg(long, value_name = "DIR")]
    board_dir: Option<PathBuf>,
    /// Disk model: virtio-blk-pci, ide-hd, scsi-hd (virtio-scsi), nvme, ... [default: the board's]
    #[arg(long)]
    disk: Option<String>,
    /// Leave the image unchanged: guest writes go to a temporary overlay.
    #[arg(long)]
    snapshot: bool,
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

pub fn run(a: RunArgs) -> Result<i32> {
    let board_dir = match a.board_dir {
        Some(d) => d,
        None => std::env::current_dir()?
            .ancestors()
            .map(|d| d.join(kiln_recipe::BOARD_DIR_NAME))
            .find(|d| d.is_dir())
            .context("no board-profiles/ directory here or above; pass --board-dir")?,
    };
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
    if !board.firmware.iter().any(|f| *f.get_ref() == a.firmware) {
        bail!(
            "board {} does not boot with {} firmware",
            a.board,
            a.firmware.as_str()
        );
    }
    let vm = Vm {
        disks: vec![Disk {
            path: a.image.clone(),
            format: "raw".into(),
            interface: a.disk.unwrap_or_else(|| board.qemu.disk.clone()),
        }],
        qemu: board.qemu,
        machine: None,
        nic: "virtio-net-pci".into(),
        firmware: a.firmware,
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
