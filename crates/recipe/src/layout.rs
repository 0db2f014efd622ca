//! Disk layouts as data: partitions with numbers, labels, types, sizes and what fills them,
//! plus named variants that resize some partitions (CoreOS's `base` and `vm`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use uuid::Uuid;

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
    pub slot: Option<SlotName>,
    /// Slot attributes of a freshly built image.
    #[serde(default)]
    pub priority: u8,
    #[serde(default)]
    pub tries: u8,
    #[serde(default)]
    pub successful: bool,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum SlotName {
    #[serde(rename = "a", alias = "A")]
    A,
    #[serde(rename = "b", alias = "B")]
    B,
}

/// A layout with its variant applied and its references checked.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub name: String,
    pub variant: String,
    pub alignment: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub number: u32,
    pub label: String,
    pub type_name: String,
    pub type_guid: Uuid,
    pub uuid: Option<Uuid>,
    pub size: ByteSize,
    pub content: Content,
    pub filesystem: Option<Filesystem>,
    pub slot: Option<SlotName>,
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
}

impl Layout {
    pub fn by_content(&self, content: Content) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.content == content)
    }

    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.label == label)
    }

    pub fn slot(&self, slot: SlotName) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.slot == Some(slot))
    }
}
