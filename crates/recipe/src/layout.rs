//! Disk layouts as data: partitions with numbers, labels, types, sizes and what fills them,
//! plus named variants that resize some partitions (CoreOS's `base` and `vm`). A resolved
//! [`Layout`] has been checked to hold every partition the build relies on, so its accessors
//! return partitions, not options.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Result};
use kiln_disk::Slot;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use uuid::Uuid;

use crate::board::Firmware;
use crate::source::SourceFile;
use crate::units::ByteSize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LayoutFile {
    pub description: Option<String>,
    /// Partition starts are aligned to this (1 MiB in the CoreOS layout).
    pub alignment: ByteSize,
    /// Type names usable in `partition.type`, mapped to GPT type GUIDs.
    pub types: BTreeMap<String, Uuid>,
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionDef>,
    /// Named variants: label -> size overrides.
    #[serde(default, rename = "variant")]
    pub variants: BTreeMap<String, VariantDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PartitionDef {
    pub number: Spanned<u32>,
    pub label: Spanned<String>,
    #[serde(rename = "type")]
    pub type_name: Spanned<String>,
    /// Fixed partition GUID (the USR slots have them); otherwise derived from the recipe.
    pub uuid: Option<Uuid>,
    pub size: ByteSize,
    pub content: Content,
    /// Filesystem for partitions whose content is a tree; the USR one may be overridden
    /// by the recipe.
    pub filesystem: Option<Filesystem>,
    /// For USR partitions: which update slot this is.
    pub slot: Option<Slot>,
    /// Slot attributes of a freshly built image.
    #[serde(default)]
    pub priority: u8,
    #[serde(default)]
    pub tries: u8,
    #[serde(default)]
    pub successful: bool,
    /// For the ESP: the fixed size of each slot's kernel file and initramfs file. The build
    /// pads them with zeros to it (slot B's too, all zeros), and an update overwrites them in
    /// place, so the FAT itself never changes after the build.
    pub kernel_file_size: Option<Spanned<ByteSize>>,
    pub initramfs_file_size: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VariantDef {
    pub description: Option<String>,
    /// Partition label -> size.
    pub sizes: BTreeMap<String, Spanned<ByteSize>>,
}

/// What kiln puts into a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    /// EFI system partition: GRUB for UEFI, GRUB config, a kernel and initramfs per slot.
    Esp,
    /// GRUB's BIOS core image.
    BiosBoot,
    /// The read-only /usr of the image (slot A in a fresh image).
    Usr,
    /// The platform's OEM tree.
    Oem,
    /// The state partition: /etc, /var, /home.
    Root,
    /// Left empty (the passive slot, reserved partitions).
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filesystem {
    Vfat,
    Ext4,
    Erofs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Vfat => "vfat",
            Filesystem::Ext4 => "ext4",
            Filesystem::Erofs => "erofs",
        }
    }
}

/// A layout with its variant applied and its roles checked.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The layout file's name without `.toml`.
    pub name: String,
    pub variant: String,
    pub alignment: u64,
    /// Sorted by number.
    pub partitions: Vec<Partition>,
    roles: Roles,
}

/// Where the partitions the build relies on are in `partitions`.
#[derive(Debug, Clone)]
struct Roles {
    esp: usize,
    bios_boot: Option<usize>,
    usr_a: usize,
    usr_b: usize,
    oem: usize,
    root: usize,
}

#[derive(Debug, Clone)]
pub struct Partition {
    pub number: u32,
    pub label: String,
    pub type_name: String,
    pub type_guid: Uuid,
    pub uuid: Option<Uuid>,
    pub size: ByteSize,
    pub content: Content,
    pub filesystem: Option<Filesystem>,
    pub slot: Option<Slot>,
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
    /// For the ESP: the fixed sizes of the slots' kernel and initramfs files, if the layout
    /// sets them.
    pub slot_files: Option<SlotFiles>,
}

/// The fixed sizes, in bytes, of each slot's kernel and initramfs file on the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFiles {
    pub kernel: u64,
    pub initramfs: u64,
}

impl Layout {
    /// The EFI system partition: GRUB's configuration, the slot state, the kernels.
    pub fn esp(&self) -> &Partition {
        &self.partitions[self.roles.esp]
    }

    /// GRUB's BIOS core image, if the layout has room for one (BIOS boards need it).
    pub fn bios_boot(&self) -> Option<&Partition> {
        self.roles.bios_boot.map(|i| &self.partitions[i])
    }

    /// A USR slot's partition.
    pub fn usr(&self, slot: Slot) -> &Partition {
        match slot {
            Slot::A => &self.partitions[self.roles.usr_a],
            Slot::B => &self.partitions[self.roles.usr_b],
        }
    }

    /// The USR slots' fixed partition GUID (checked at load: both have one).
    pub fn usr_guid(&self, slot: Slot) -> Uuid {
        self.usr(slot)
            .uuid
            .expect("checked at load: both slots have a fixed uuid")
    }

    pub fn oem(&self) -> &Partition {
        &self.partitions[self.roles.oem]
    }

    /// The state partition.
    pub fn root(&self) -> &Partition {
        &self.partitions[self.roles.root]
    }

    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.label == label)
    }
}

/// Reads a layout file and applies `variant` (named in `variant_src`, so an unknown one is
/// reported there).
pub fn load(path: &Path, variant: &Spanned<String>, variant_src: &SourceFile) -> Result<Layout> {
    let src = SourceFile::read(path)?;
    let f: LayoutFile = src.parse()?;
    let v = f.variants.get(variant.get_ref()).ok_or_else(|| {
        variant_src.error_at(
            &variant.span(),
            format!(
                "unknown layout variant `{}`; {} defines: {}",
                variant.get_ref(),
                path.display(),
                f.variants.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if f.alignment.0 == 0 || !f.alignment.0.is_multiple_of(512) {
        bail!(
            "{}: alignment must be a non-zero multiple of 512 bytes",
            path.display()
        );
    }
    let mut numbers = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let mut parts = Vec::new();
    for p in &f.partitions {
        let n = *p.number.get_ref();
        if !(1..=128).contains(&n) {
            return Err(src.error_at(&p.number.span(), "partition number must be 1..=128"));
        }
        if !numbers.insert(n) {
            return Err(src.error_at(
                &p.number.span(),
                format!("partition number {n} is used twice"),
            ));
        }
        let label = p.label.get_ref();
        if label.is_empty()
            || label.len() > 36
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(src.error_at(
                &p.label.span(),
                "a label has 1 to 36 ASCII letters, digits, '-' or '_' (it names the partition and its filesystem)",
            ));
        }
        let fs_limit = match p.filesystem {
            Some(Filesystem::Vfat) => Some(11),
            Some(Filesystem::Ext4) => Some(16),
            _ => None,
        };
        if let Some(max) = fs_limit.filter(|m| label.len() > *m) {
            return Err(src.error_at(
                &p.label.span(),
                format!(
                    "label `{label}` is longer than a {} filesystem label ({max} characters)",
                    p.filesystem.map(|f| f.as_str()).unwrap_or("")
                ),
            ));
        }
        if !labels.insert(label.clone()) {
            return Err(src.error_at(&p.label.span(), format!("label `{label}` is used twice")));
        }
        let type_guid = *f.types.get(p.type_name.get_ref()).ok_or_else(|| {
            src.error_at(
                &p.type_name.span(),
                format!(
                    "unknown partition type `{}`; [types] defines: {}",
                    p.type_name.get_ref(),
                    f.types.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if p.priority > 15 || p.tries > 15 {
            return Err(src.error_at(
                &p.number.span(),
                "priority and tries are 4-bit values (0..=15)",
            ));
        }
        let size = v.sizes.get(label).map(|s| *s.get_ref()).unwrap_or(p.size);
        if size.0 == 0 {
            return Err(src.error_at(
                &p.label.span(),
                "a partition cannot have size 0; leave the number out instead",
            ));
        }
        let slot_files = match (&p.kernel_file_size, &p.initramfs_file_size) {
            (None, None) => None,
            (Some(k), Some(i)) => {
                if p.content != Content::Esp {
                    return Err(src.error_at(
                        &k.span(),
                        "kernel-file-size and initramfs-file-size belong on the partition with content = \"esp\"",
                    ));
                }
                for x in [k, i] {
                    if x.get_ref().0 == 0 || !x.get_ref().0.is_multiple_of(512) {
                        return Err(src.error_at(
                            &x.span(),
                            "a slot file size is a non-zero multiple of 512 bytes (e.g. \"16MiB\")",
                        ));
                    }
                }
                let (k, i) = (k.get_ref().0, i.get_ref().0);
                // Both slots' files, and room for GRUB, its config and the state.
                if 2 * (k + i) + (4 << 20) > size.0 {
                    return Err(src.error_at(
                        &p.label.span(),
                        format!(
                            "two slots' kernel and initramfs files ({} MiB) and 4 MiB for the rest do not fit the {} MiB of `{label}`: make the files or the partition fit",
                            (2 * (k + i)) >> 20,
                            size.0 >> 20
                        ),
                    ));
                }
                Some(SlotFiles {
                    kernel: k,
                    initramfs: i,
                })
            }
            (Some(x), None) | (None, Some(x)) => {
                return Err(src.error_at(
                    &x.span(),
                    "set both kernel-file-size and initramfs-file-size, or neither",
                ));
            }
        };
        parts.push(Partition {
            number: n,
            label: label.clone(),
            type_name: p.type_name.get_ref().clone(),
            type_guid,
            uuid: p.uuid,
            size,
            content: p.content,
            filesystem: p.filesystem,
            slot: p.slot,
            priority: p.priority,
            tries: p.tries,
            successful: p.successful,
            slot_files,
        });
    }
    // Every variant, not only the one chosen: a typo in another is found before it is used.
    for (name, var) in &f.variants {
        for (label, size) in &var.sizes {
            if !labels.contains(label) {
                return Err(src.error_at(
                    &size.span(),
                    format!("variant `{name}` resizes `{label}`, which is not a partition label"),
                ));
            }
            if size.get_ref().0 == 0 {
                return Err(src.error_at(&size.span(), "a partition cannot have size 0"));
            }
        }
    }
    parts.sort_by_key(|p| p.number);
    let roles = roles(&parts, path)?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("layout")
        .to_string();
    Ok(Layout {
        name,
        variant: variant.get_ref().clone(),
        alignment: f.alignment.0,
        partitions: parts,
        roles,
    })
}

/// Finds the partitions the build relies on: one of each role (an ESP, slot A with the USR
/// content and slot B empty, both with fixed GUIDs, OEM, ROOT) and at most one BIOS boot.
fn roles(parts: &[Partition], path: &Path) -> Result<Roles> {
    let mut found: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in parts.iter().enumerate() {
        let role = match (p.content, p.slot) {
            (_, Some(Slot::A)) => "slot a",
            (_, Some(Slot::B)) => "slot b",
            (Content::Usr, None) => bail!(
                "{}: a partition with content = \"usr\" needs slot = \"a\"",
                path.display()
            ),
            (Content::Esp, _) => "esp",
            (Content::BiosBoot, _) => "bios-boot",
            (Content::Oem, _) => "oem",
            (Content::Root, _) => "root",
            (Content::Empty, _) => continue,
        };
        found.entry(role).or_default().push(i);
    }
    let one = |role: &str| -> Result<usize> {
        match found.get(role).map(Vec::as_slice).unwrap_or_default() {
            [i] => Ok(*i),
            [] if role == "esp" => bail!(
                "{}: the layout needs an esp partition (kernels live there)",
                path.display()
            ),
            [] => bail!("{}: the layout needs one {role} partition", path.display()),
            _ => bail!(
                "{}: the layout has more than one {role} partition",
                path.display()
            ),
        }
    };
    let bios_boot = match found
        .get("bios-boot")
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        [] => None,
        [i] => Some(*i),
        _ => bail!(
            "{}: the layout has more than one bios-boot partition",
            path.display()
        ),
    };
    let roles = Roles {
        usr_a: one("slot a")?,
        usr_b: one("slot b")?,
        root: one("root")?,
        oem: one("oem")?,
        esp: one("esp")?,
        bios_boot,
    };
    let (a, b) = (&parts[roles.usr_a], &parts[roles.usr_b]);
    if a.content != Content::Usr
        || b.content != Content::Empty
        || a.uuid.is_none()
        || b.uuid.is_none()
    {
        bail!(
            "{}: slot a must have content = \"usr\", slot b content = \"empty\", both a fixed uuid",
            path.display()
        );
    }
    for p in parts {
        let needs_fs = matches!(p.content, Content::Esp | Content::Oem | Content::Root);
        if needs_fs && p.filesystem.is_none() {
            bail!(
                "{}: partition {} needs a `filesystem`",
                path.display(),
                p.label
            );
        }
    }
    Ok(roles)
}

/// A layout a firmware can boot: BIOS needs a bios-boot partition for GRUB's core image.
pub fn check_for_firmware(layout: &Layout, firmware: &[Firmware], path: &Path) -> Result<()> {
    if firmware.contains(&Firmware::Bios) && layout.bios_boot().is_none() {
        bail!(
            "{}: BIOS firmware needs a bios-boot partition in the layout",
            path.display()
        );
    }
    Ok(())
}
