//! Versions of the host tools that shape each stage's output: part of the stage keys, and
//! recorded in a release's manifest.

use std::collections::BTreeMap;

use kiln_host::tools::package_version;

pub struct HostTools {
    pub mmdebstrap: String,
    pub e2fsprogs: String,
    pub erofs: String,
    pub vfat: String,
    pub grub: String,
    pub kmod: String,
}

impl HostTools {
    pub fn probe() -> Self {
        Self {
            mmdebstrap: package_version("mmdebstrap"),
            e2fsprogs: package_version("e2fsprogs"),
            erofs: package_version("erofs-utils"),
            vfat: format!(
                "{} {}",
                package_version("dosfstools"),
                package_version("mtools")
            ),
            grub: format!(
                "{} {} {}",
                package_version("grub-common"),
                package_version("grub-pc-bin"),
                package_version("grub-efi-amd64-bin")
            ),
            kmod: package_version("kmod"),
        }
    }

    /// kiln's version and every tool's, as a release's manifest lists them.
    pub fn as_map(&self) -> BTreeMap<String, String> {
        [
            ("kiln", env!("CARGO_PKG_VERSION").to_string()),
            ("mmdebstrap", self.mmdebstrap.clone()),
            ("e2fsprogs", self.e2fsprogs.clone()),
            ("erofs-utils", self.erofs.clone()),
            ("dosfstools mtools", self.vfat.clone()),
            ("grub", self.grub.clone()),
            ("kmod", self.kmod.clone()),
            ("qemu-utils", package_version("qemu-utils")),
            ("xz-utils", package_version("xz-utils")),
            ("pigz", package_version("pigz")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
