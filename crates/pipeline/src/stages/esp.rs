//! The ESP: GRUB for UEFI, grub.cfg (the A/B choice and a menu entry per slot), the initial
//! slot state (both copies), and slot A's kernel and initramfs, as a FAT image.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_boot::grub;
use kiln_fs::vfat::Vfat;
use kiln_recipe::{Firmware, Resolved, Slot};
use kiln_update::state::{self, GrubEntry, SlotFields, SlotState};

use super::grub::GrubImages;
use super::initramfs::InitramfsImage;
use super::kernel::KernelFiles;
use super::{Built, Stage};
use crate::ids;
use crate::images::Image;
use crate::inputs::Inputs;

pub struct Esp<'a> {
    pub image: &'a Image<'a>,
    pub kernel: &'a Built<KernelFiles>,
    pub initramfs: &'a Built<InitramfsImage>,
    pub grub: &'a Built<GrubImages>,
    /// The GRUB environment blocks holding the initial slot state: one per copy
    /// ([`state::ENV_PATHS`]), generations 1 and 0, so the first is the state.
    pub slots_env: [Vec<u8>; 2],
    pub grub_cfg: String,
    /// `\EFI\BOOT\<name>`, for UEFI boards.
    pub efi_binary: Option<&'a str>,
    pub epoch: i64,
    /// dosfstools and mtools versions.
    pub tools: &'a str,
}

impl<'a> Esp<'a> {
    /// The ESP of `image`: its slot state and grub.cfg made from the recipe.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        r: &'a Resolved,
        image: &'a Image<'a>,
        kernel: &'a Built<KernelFiles>,
        initramfs: &'a Built<InitramfsImage>,
        grub: &'a Built<GrubImages>,
        tools: &'a str,
    ) -> Result<Self> {
        let initial = initial_state(r, image);
        let block = |generation| {
            initial
                .to_env(generation)
                .context("the initial slot state cannot be written")
        };
        let slots_env = [block(1)?, block(0)?];
        let entries: Vec<GrubEntry> = Slot::ALL
            .iter()
            .map(|&slot| GrubEntry {
                slot,
                title: r.os.name.clone(),
                cmdline: kernel_cmdline(image, slot),
            })
            .collect();
        Ok(Esp {
            image,
            kernel,
            initramfs,
            grub,
            slots_env,
            grub_cfg: grub::config(&state::grub_script(&entries), r.board.grub.timeout),
            efi_binary: r
                .board
                .grub
                .efi_binary
                .as_deref()
                .filter(|_| r.has_firmware(Firmware::Uefi)),
            epoch: r.source_date_epoch,
            tools,
        })
    }
}

impl Esp<'_> {
    /// The slots' kernel and initramfs files: slot A's as they are, or, when the layout fixes
    /// their sizes, padded with zeros to them, and slot B's of the same sizes, all zeros, for
    /// updates to overwrite in place.
    fn slot_files(&self, out: &Path) -> Result<Vec<(String, PathBuf)>> {
        let (kernel, initrd) = (&self.kernel.vmlinuz, &self.initramfs.image);
        let Some(sizes) = self.image.layout.esp().slot_files else {
            return Ok(vec![
                (format!("/{}", state::kernel_path(Slot::A)), kernel.clone()),
                (format!("/{}", state::initrd_path(Slot::A)), initrd.clone()),
            ]);
        };
        let head =
            std::fs::read(kernel).with_context(|| format!("cannot read {}", kernel.display()))?;
        if let Some(why) = kiln_update::system::kernel_padding_problem(&head, sizes.kernel) {
            bail!(
                "the kernel cannot have a slot file of {} bytes: {why}; lower kernel-file-size in the layout",
                sizes.kernel
            );
        }
        let mut files = Vec::new();
        for (what, src, size, path) in [
            (
                "kernel",
                kernel,
                sizes.kernel,
                state::kernel_path as fn(Slot) -> String,
            ),
            ("initramfs", initrd, sizes.initramfs, state::initrd_path),
        ] {
            let len = std::fs::metadata(src)
                .with_context(|| format!("cannot read {}", src.display()))?
                .len();
            if len > size {
                bail!(
                    "the {what} is {len} bytes, more than the {size} bytes of a slot's {what} file: raise {what}-file-size on the ESP in the layout"
                );
            }
            for slot in Slot::ALL {
                let host = out.join(path(slot).replace('/', "_"));
                if slot == Slot::A {
                    std::fs::copy(src, &host)
                        .with_context(|| format!("cannot copy {}", src.display()))?;
                }
                // The zeros as a hole: only the ESP image holds them.
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&host)
                    .and_then(|f| f.set_len(size))
                    .with_context(|| format!("cannot write {}", host.display()))?;
                files.push((format!("/{}", path(slot)), host));
            }
        }
        Ok(files)
    }
}

#[derive(Debug, Clone)]
pub struct EspImage {
    pub image: PathBuf,
}

impl Stage for Esp<'_> {
    const NAME: &'static str = "esp";
    type Output = EspImage;

    fn platform(&self) -> Option<&str> {
        self.image.platform_name()
    }

    fn inputs(&self) -> Inputs {
        Inputs::new()
            .add("kernel", &self.kernel.key)
            .add("initramfs", &self.initramfs.key)
            .add("grub", &self.grub.key)
            .add("state", &self.slots_env[0])
            .add("state-copy", &self.slots_env[1])
            .add("grub.cfg", &self.grub_cfg)
            .add("identity", &self.image.identity)
            .add("size", self.image.layout.esp().size.0.to_string())
            .add(
                "slot files",
                match self.image.layout.esp().slot_files {
                    Some(f) => format!("{} {}", f.kernel, f.initramfs),
                    None => "exact".to_string(),
                },
            )
            .add("tools", self.tools)
    }

    fn build(&self, out: &Path) -> Result<()> {
        std::fs::write(out.join("grub.cfg"), &self.grub_cfg)?;
        let mut files = vec![("/grub/grub.cfg".to_string(), out.join("grub.cfg"))];
        for (i, path) in state::ENV_PATHS.iter().enumerate() {
            let host = out.join(format!("slots-{i}.env"));
            std::fs::write(&host, &self.slots_env[i])?;
            // A 1024-byte file on a fresh FAT gets contiguous clusters, which the agent
            // checks before writing the copy in place.
            files.push((format!("/{path}"), host));
        }
        files.extend(self.slot_files(out)?);
        if let Some(bin) = self.efi_binary {
            let efi = self
                .grub
                .efi
                .as_ref()
                .context("the grub stage made no UEFI image")?;
            files.push((format!("/EFI/BOOT/{bin}"), efi.clone()));
        }
        let part = self.image.layout.esp();
        Vfat {
            label: &part.label,
            serial: ids::derive_serial(&self.image.identity, "esp-serial"),
            epoch: self.epoch,
            size: part.size.0,
            what: &part.label,
        }
        .build(&files, &out.join("fs.img"))
    }

    fn output(&self, dir: &Path) -> Result<EspImage> {
        Ok(EspImage {
            image: dir.join("fs.img"),
        })
    }
}

/// The state a new image starts in: the slots as the layout declares them (by default A
/// priority 1 and successful, B empty), with this build's version in A.
fn initial_state(r: &Resolved, image: &Image) -> SlotState {
    let fields = |s: Slot| {
        let p = image.layout.usr(s);
        SlotFields {
            priority: p.priority,
            tries: p.tries,
            successful: p.successful,
            version: if s == Slot::A {
                r.os.version.clone()
            } else {
                String::new()
            },
        }
    };
    SlotState {
        board: r.board.name.clone(),
        a: fields(Slot::A),
        b: fields(Slot::B),
    }
}

/// The kernel command line of a slot's menu entry.
fn kernel_cmdline(image: &Image, slot: Slot) -> String {
    let mut args = vec![
        format!("mount.usr=PARTUUID={}", image.layout.usr_guid(slot)),
        "mount.usrflags=ro".to_string(),
        format!("root=LABEL={}", image.layout.root().label),
    ];
    args.extend(image.cmdline.iter().cloned());
    args.push(format!("kiln.oem.id={}", image.oem_id));
    args.join(" ")
}
