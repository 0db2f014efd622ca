//! FAT filesystems (the ESP) with mkfs.vfat and mtools: files are copied in with mcopy, never
//! through a mount. SOURCE_DATE_EPOCH fixes the timestamps mtools writes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kiln_host::tools::{self, MCOPY, MKFS_VFAT, MMD};
use kiln_host::Cmd;

use crate::mib;

pub struct Vfat<'a> {
    /// Volume label, at most 11 characters.
    pub label: &'a str,
    /// Volume serial number ("volume id").
    pub serial: u32,
    pub epoch: i64,
    pub size: u64,
    pub what: &'a str,
}

impl Vfat<'_> {
    /// Builds the image at `out` holding `files` (image path, host file).
    pub fn build(&self, files: &[(String, PathBuf)], out: &Path) -> Result<()> {
        if self.label.is_empty() || self.label.len() > 11 {
            bail!(
                "{}: a FAT label has 1 to 11 characters, `{}` has {}",
                self.what,
                self.label,
                self.label.len()
            );
        }
        tools::check_all(&[MKFS_VFAT, MMD, MCOPY])?;
        let total: u64 = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map(|m| m.len().div_ceil(4096) * 4096))
            .sum::<std::io::Result<u64>>()?;
        // FAT32 tables and reserved sectors take about 1% plus 1 MiB.
        let usable = self.size.saturating_sub(self.size / 100 + 1024 * 1024);
        if total > usable {
            bail!(
                "{}: the boot files take {} but the {} partition is {} ({} usable); enlarge it in the layout",
                self.what,
                mib(total),
                self.what,
                mib(self.size),
                mib(usable)
            );
        }
        if out.exists() {
            std::fs::remove_file(out)?;
        }
        let epoch = self.epoch.to_string();
        Cmd::new(MKFS_VFAT)
            .env("SOURCE_DATE_EPOCH", &epoch)
            .arg("--invariant")
            .args(["-F", "32", "-n", self.label, "-i"])
            .arg(format!("{:08X}", self.serial))
            .arg("-C")
            .arg(out)
            .arg((self.size / 1024).to_string())
            .what(format!("make the {} filesystem", self.what))
            .run()?;

        // Directories first, in sorted order, so the directory entries are repeatable.
        let mut dirs: Vec<String> = Vec::new();
        for (dest, _) in files {
            let mut acc = String::new();
            let parts: Vec<&str> = dest.trim_start_matches('/').split('/').collect();
            for part in &parts[..parts.len().saturating_sub(1)] {
                acc.push('/');
                acc.push_str(part);
                if !dirs.contains(&acc) {
                    dirs.push(acc.clone());
                }
            }
        }
        dirs.sort();
        let img = out.as_os_str();
        for d in &dirs {
            Cmd::new(MMD)
                .env("SOURCE_DATE_EPOCH", &epoch)
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(img)
                .arg(format!("::{d}"))
                .what(format!("make the directory {d} in {}", self.what))
                .run()?;
        }
        let mut sorted: Vec<&(String, PathBuf)> = files.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        for (dest, src) in sorted {
            Cmd::new(MCOPY)
                .env("SOURCE_DATE_EPOCH", &epoch)
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(img)
                .arg(src)
                .arg(format!("::{}", dest.trim_start_matches('/')))
                .what(format!("copy {} into {}", src.display(), self.what))
                .run()?;
        }
        Ok(())
    }
}
