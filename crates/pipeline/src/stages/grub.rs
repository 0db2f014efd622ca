//! GRUB: the BIOS core image and the UEFI binary, each with every module it needs built in
//! and the prefix `(,gptN)/grub`, the ESP of the disk it was loaded from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_boot::grub;
use kiln_recipe::board::GrubDef;
use kiln_recipe::Firmware;

use super::Stage;
use crate::inputs::Inputs;

pub struct Grub<'a> {
    pub grub: &'a GrubDef,
    pub firmware: &'a [Firmware],
    /// The ESP's partition number, in the prefix.
    pub esp_number: u32,
    /// grub-common, grub-pc-bin and grub-efi-amd64-bin versions.
    pub tools: &'a str,
}

#[derive(Debug, Clone)]
pub struct GrubImages {
    /// The BIOS core image, for BIOS boards.
    pub core: Option<PathBuf>,
    /// The UEFI binary, for UEFI boards.
    pub efi: Option<PathBuf>,
}

impl Stage for Grub<'_> {
    const NAME: &'static str = "grub";
    type Output = GrubImages;

    fn inputs(&self) -> Inputs {
        Inputs::new()
            .add(
                "board",
                serde_json::to_string(self.grub).expect("plain data serializes"),
            )
            .add("firmware", format!("{:?}", self.firmware))
            .add("esp-number", self.esp_number.to_string())
            .add("tools", self.tools)
    }

    fn build(&self, out: &Path) -> Result<()> {
        // `(,gptN)`: the partition on the disk GRUB was loaded from, on BIOS and UEFI alike.
        let prefix = format!("(,gpt{})/grub", self.esp_number);
        let g = self.grub;
        if self.firmware.contains(&Firmware::Bios) {
            let mut m = g.modules.clone();
            m.extend(g.bios_modules.iter().cloned());
            let target = g.bios_target.as_deref().context("checked at load")?;
            grub::mkimage(target, &prefix, &m, &out.join("core.img"))?;
        }
        if self.firmware.contains(&Firmware::Uefi) {
            let mut m = g.modules.clone();
            m.extend(g.efi_modules.iter().cloned());
            let target = g.efi_target.as_deref().context("checked at load")?;
            grub::mkimage(target, &prefix, &m, &out.join("grub.efi"))?;
        }
        Ok(())
    }

    fn output(&self, dir: &Path) -> Result<GrubImages> {
        let some = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Ok(GrubImages {
            core: some("core.img"),
            efi: some("grub.efi"),
        })
    }
}
