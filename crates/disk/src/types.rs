//! Well-known GPT partition type GUIDs, by the short names kiln uses in
//! recipes and prints in `kiln inspect`.

use uuid::Uuid;

pub const EFI_SYSTEM: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
pub const BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
pub const COREOS_USR: Uuid = Uuid::from_u128(0x5dfbf5f4_2848_4bac_aa5e_0d9a20b745a6);
pub const LINUX_DATA: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
pub const COREOS_RESERVED: Uuid = Uuid::from_u128(0xc95dc21a_df0e_4340_8d7b_26cbfa9a03e0);
pub const COREOS_RESIZE: Uuid = Uuid::from_u128(0x3884dd41_8582_4404_b9a8_e9b84f2df50e);
pub const COREOS_ROOT_RAID: Uuid = Uuid::from_u128(0xbe9067b9_ea49_4f15_b4f6_f36f8c9e1818);

/// A named partition type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionType {
    pub name: &'static str,
    pub guid: Uuid,
}

pub const KNOWN_TYPES: &[PartitionType] = &[
    PartitionType {
        name: "efi-system",
        guid: EFI_SYSTEM,
    },
    PartitionType {
        name: "bios-boot",
        guid: BIOS_BOOT,
    },
    PartitionType {
        name: "coreos-usr",
        guid: COREOS_USR,
    },
    PartitionType {
        name: "linux-data",
        guid: LINUX_DATA,
    },
    PartitionType {
        name: "coreos-reserved",
        guid: COREOS_RESERVED,
    },
    PartitionType {
        name: "coreos-resize",
        guid: COREOS_RESIZE,
    },
    PartitionType {
        name: "coreos-root-raid",
        guid: COREOS_ROOT_RAID,
    },
];

/// Short name of a known type GUID.
pub fn type_name(guid: &Uuid) -> Option<&'static str> {
    KNOWN_TYPES.iter().find(|t| t.guid == *guid).map(|t| t.name)
}

/// Type GUID for a short name (ASCII case-insensitive, so "EFI-SYSTEM" works).
pub fn type_by_name(name: &str) -> Option<Uuid> {
    KNOWN_TYPES
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .map(|t| t.guid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_both_ways() {
        for t in KNOWN_TYPES {
            assert_eq!(type_name(&t.guid), Some(t.name));
            assert_eq!(type_by_name(t.name), Some(t.guid));
        }
        assert_eq!(
            type_by_name("EFI-System").unwrap().to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(type_name(&Uuid::nil()), None);
        assert_eq!(type_by_name("ntfs"), None);
    }

    #[test]
    fn names_and_guids_unique() {
        for (i, a) in KNOWN_TYPES.iter().enumerate() {
            for b in &KNOWN_TYPES[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.guid, b.guid);
            }
        }
    }
}
