//! Booting kiln images in QEMU for people (`kiln run`) and for tests. The command line comes
//! from the board profile's `[qemu]` table; the serial console is ttyS0. A booted kiln image
//! prints one ready line, documented in the README:
//!
//! `kiln: ready version=<v> slot=<A|B> usr=<ro|rw> root=<rw|ro> oem=<id> ...`

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kiln_host::Cmd;
use kiln_recipe::board::QemuDef;
use kiln_recipe::Firmware;

pub const READY_PREFIX: &str = "kiln: ready ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if a probe guest runs under it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("unknown accelerator `{s}`; use auto, kvm or tcg")),
        }
    }
}

/// A disk attached to the guest.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    /// raw, qcow2, vmdk, vpc; None lets QEMU guess (never for raw images).
    pub format: String,
    /// QEMU device model: virtio-blk-pci, ide-hd, scsi-hd, nvme, ...
    pub interface: String,
    /// The guest cannot write to it.
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub qemu: QemuDef,
    /// Overrides the board's machine (pc for IDE, for instance).
    pub machine: Option<String>,
    /// NIC device model.
    pub nic: String,
    pub firmware: Firmware,
    pub accel: Accel,
    pub disks: Vec<Disk>,
    /// Keep the images unchanged (writes go to a temporary overlay).
    pub snapshot: bool,
    /// Exit instead of rebooting, so a failed boot ends the run.
    pub no_reboot: bool,
}

/// What a headless boot printed.
#[derive(Debug, Clone)]
pub struct Boot {
    pub console: Vec<String>,
    pub ready: Option<String>,
}

impl Boot {
    /// `key=value` fields of the ready line.
    pub fn field(&self, key: &str) -> Option<&str> {
        let line = self.ready.as_deref()?;
        line.strip_prefix(READY_PREFIX)?
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// True if a tiny guest runs under KVM here (a 64 KiB ROM that writes to isa-debug-exit).
pub fn kvm_works(binary: &str) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let rom = dir.path().join("probe.rom");
    let mut img = vec![0u8; 65536];
    // At the reset vector: mov al,1; out 0xf4,al; hlt.
    img[65536 - 16..65536 - 11].copy_from_slice(&[0xB0, 0x01, 0xE6, 0xF4, 0xF4]);
    if std::fs::write(&rom, img).is_err() {
        return false;
    }
    // A failure to start is an answer here (no KVM), not an error.
    let Ok(mut child) = Cmd::program(binary)
        .args([
            // The CPU model a KVM run uses: on some hosts that is what fails.
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-display",
            "none",
            "-bios",
        ])
        .arg(&rom)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code() == Some(3);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Vm {
    fn accel_name(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Auto => {
                if kvm_works(&self.qemu.binary) {
                    "kvm"
                } else {
                    "tcg"
                }
            }
        }
    }

    /// The QEMU command. `vars` is a writable copy of the UEFI variable store (UEFI only).
    /// `serial` is QEMU's -serial backend: stdio, or mon:stdio for a person (Ctrl-a x).
    pub fn command(&self, vars: Option<&Path>, serial: &str) -> Result<Cmd> {
        kiln_host::tools::require_named(&self.qemu.binary)?;
        let accel = self.accel_name();
        tracing::info!("booting with {accel}");
        let mut c = Cmd::program(&self.qemu.binary);
        // QEMU dies with kiln: a killed `kiln run` must not leave a guest running.
        c.kill_with_parent();
        let machine = self.machine.as_deref().unwrap_or(&self.qemu.machine);
        c.args(["-machine", &format!("{machine},accel={accel}")]);
        c.args(["-m", &self.qemu.memory_mib.to_string()]);
        if let Some(cpu) = &self.qemu.cpu {
            c.args(["-cpu", if accel == "kvm" { "host" } else { cpu }]);
        }
        c.args([
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            serial,
        ]);
        if self.no_reboot {
            c.arg("-no-reboot");
        }
        if self.snapshot {
            c.arg("-snapshot");
        }
        if self.firmware == Firmware::Uefi {
            kiln_host::tools::require_named(&self.qemu.ovmf_code)?;
            let vars = vars.context("UEFI needs a variable store")?;
            c.args([
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    self.qemu.ovmf_code
                ),
            ]);
            c.args([
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        let mut controllers: Vec<&str> = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            if !d.path.exists() {
                bail!("disk image {} does not exist", d.path.display());
            }
            let path = d.path.display().to_string();
            if path.contains(',') {
                bail!("disk image path {path} contains a comma, which QEMU cannot take");
            }
            c.args([
                "-drive",
                &format!(
                    "file={path},format={},if=none,id=d{i}{}",
                    d.format,
                    if d.read_only { ",readonly=on" } else { "" }
                ),
            ]);
            // SCSI disks need their host adapter: virtio-scsi, VMware's pvscsi, LSI.
            let mut scsi_on = |ctl: &'static str, c: &mut Cmd| {
                if !controllers.contains(&ctl) {
                    c.args(["-device", &format!("{ctl},id={}", ctl.replace('-', "_"))]);
                    controllers.push(ctl);
                }
                format!("scsi-hd,drive=d{i},bus={}.0", ctl.replace('-', "_"))
            };
            let dev = match d.interface.as_str() {
                "scsi-hd" | "virtio-scsi" => scsi_on("virtio-scsi-pci", &mut c),
                "pvscsi" => scsi_on("pvscsi", &mut c),
                "lsi" | "lsilogic" => scsi_on("lsi53c895a", &mut c),
                "nvme" => format!("nvme,drive=d{i},serial=kiln{i}"),
                // On q35 the IDE buses are the ICH9 AHCI ports; on pc, PIIX IDE.
                "ide-hd" => format!("ide-hd,drive=d{i},bus=ide.{i}"),
                other => format!("{other},drive=d{i}"),
            };
            // With other disks attached (payloads, copies of other images), the firmware must
            // still boot the image: it is the first disk, and first in the boot order.
            let dev = if i == 0 && self.disks.len() > 1 {
                format!("{dev},bootindex=0")
            } else {
                dev
            };
            c.args(["-device", &dev]);
        }
        c.args([
            "-netdev",
            // restrict=on: the guest reaches nothing beyond its own user network.
            "user,id=n0,restrict=on",
            "-device",
            &format!("{},netdev=n0", self.nic),
        ]);
        Ok(c)
    }

    fn vars_copy(&self, dir: &Path) -> Result<Option<PathBuf>> {
        if self.firmware != Firmware::Uefi {
            return Ok(None);
        }
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(&self.qemu.ovmf_vars, &vars)
            .with_context(|| format!("cannot copy {} (install ovmf)", self.qemu.ovmf_vars))?;
        Ok(Some(vars))
    }

    /// Boots with the console on this terminal; returns QEMU's exit status when the guest
    /// powers off.
    pub fn run_interactive(&self) -> Result<std::process::ExitStatus> {
        let dir = tempfile::tempdir()?;
        let vars = self.vars_copy(dir.path())?;
        // The serial console and the monitor muxed on stdio: Ctrl-a x quits, Ctrl-a c is the
        // monitor.
        let mut child = self.command(vars.as_deref(), "mon:stdio")?.spawn()?;
        child.wait().context("cannot wait for QEMU")
    }

    /// Boots headless until `stop` matches a console line (or the guest exits, or `timeout`).
    /// Every console line goes to `echo` as it arrives.
    pub fn run_until(
        &self,
        stop: impl Fn(&str) -> bool,
        timeout: Duration,
        mut echo: Option<&mut dyn Write>,
    ) -> Result<Boot> {
        let dir = tempfile::tempdir()?;
        let vars = self.vars_copy(dir.path())?;
        let mut c = self.command(vars.as_deref(), "stdio")?;
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard(c.spawn()?);
        let stdout = child.0.stdout.take().expect("piped");
        let rx = console_lines(stdout);
        let deadline = Instant::now() + timeout;
        let mut boot = Boot {
            console: Vec::new(),
            ready: None,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no ready line within {} s; last console lines:\n{}",
                    timeout.as_secs(),
                    last_lines(&boot.console, 30)
                );
            }
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(w) = echo.as_deref_mut() {
                        let _ = writeln!(w, "{line}");
                    }
                    let hit = stop(&line);
                    if line.starts_with(READY_PREFIX) && boot.ready.is_none() {
                        boot.ready = Some(line.clone());
                    }
                    boot.console.push(line);
                    if hit {
                        return Ok(boot);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.0.wait()?;
                    let mut err = String::new();
                    if let Some(mut e) = child.0.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut err);
                    }
                    bail!(
                        "QEMU exited ({status}) before the expected console line; stderr: {}\nlast console lines:\n{}",
                        err.trim(),
                        last_lines(&boot.console, 30)
                    );
                }
            }
        }
    }
}

/// The lines a guest's serial console prints, delivered by a reader thread as they arrive
/// (without their line ends); the channel closes when the stream ends.
pub fn console_lines<R: std::io::Read + Send + 'static>(out: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

fn last_lines(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Kills QEMU when dropped, so no guest outlives its run.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(binary: &str, disk: &Path) -> Vm {
        Vm {
            qemu: QemuDef {
                binary: binary.into(),
                machine: "q35".into(),
                memory_mib: 512,
                cpu: Some("max".into()),
                disk: "virtio-blk-pci".into(),
                ovmf_code: "/nonexistent/OVMF_CODE.fd".into(),
                ovmf_vars: "/nonexistent/OVMF_VARS.fd".into(),
            },
            machine: None,
            nic: "virtio-net-pci".into(),
            firmware: Firmware::Bios,
            accel: Accel::Tcg,
            disks: vec![Disk {
                path: disk.to_path_buf(),
                format: "raw".into(),
                interface: "pvscsi".into(),
                read_only: true,
            }],
            snapshot: true,
            no_reboot: true,
        }
    }

    #[test]
    fn command_line_follows_the_board_and_disks() {
        // Installed by scripts/install-deps.sh: a missing QEMU fails here.
        assert!(
            kiln_host::tools::find(kiln_host::tools::QEMU_SYSTEM_X86_64).is_some(),
            "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)"
        );
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        std::fs::write(&disk, [0u8; 512]).unwrap();
        let c = vm("qemu-system-x86_64", &disk)
            .command(None, "stdio")
            .unwrap()
            .describe();
        assert!(c.starts_with("qemu-system-x86_64 -machine q35,accel=tcg -m 512 -cpu max "));
        assert!(c.contains(" -no-reboot -snapshot "), "{c}");
        assert!(
            c.contains(&format!(
                "-drive file={},format=raw,if=none,id=d0,readonly=on -device pvscsi,id=pvscsi -device scsi-hd,drive=d0,bus=pvscsi.0",
                disk.display()
            )),
            "{c}"
        );
    }

    #[test]
    fn a_missing_qemu_or_firmware_is_named() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        std::fs::write(&disk, [0u8; 512]).unwrap();
        let e = vm("qemu-system-kiln-missing", &disk)
            .command(None, "stdio")
            .unwrap_err()
            .to_string();
        assert!(e.contains("qemu-system-kiln-missing"), "{e}");
        if kiln_host::tools::find(kiln_host::tools::QEMU_SYSTEM_X86_64).is_some() {
            let mut v = vm("qemu-system-x86_64", &disk);
            v.firmware = Firmware::Uefi;
            let e = v.command(None, "stdio").unwrap_err().to_string();
            assert!(e.contains("/nonexistent/OVMF_CODE.fd"), "{e}");
        }
    }
}
