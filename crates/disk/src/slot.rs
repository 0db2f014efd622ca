//! The USR A/B slots, found by their fixed partition (unique) GUIDs: the one slot type of
//! kiln (layouts name slots with it, the A/B state and the agent use it). Their state and the
//! rule that picks one to boot live in kiln-update (`state`), on the ESP: stock GRUB cannot
//! read GPT attribute bits.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// Partition GUID of USR-A (partition 3 in the CoreOS layout).
pub const USR_A_GUID: Uuid = Uuid::from_u128(0x7130c94a_213a_4e5a_8e26_6cce9662f132);
/// Partition GUID of USR-B (partition 4 in the CoreOS layout).
pub const USR_B_GUID: Uuid = Uuid::from_u128(0xe03dd35c_7c2d_4a47_b3fe_27f15780a57c);
/// Partition GUID of the ROOT partition (partition 9 in the CoreOS layout).
pub const ROOT_C_GUID: Uuid = Uuid::from_u128(0xd82521b4_07ac_4f1c_8840_ddefedc332f3);

/// A USR slot. Shown as `A`/`B` (the ready line, JSON, labels); written `a`/`b` in GRUB
/// variables and ESP file names ([`Slot::key`]); read from either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The lower-case name GRUB variables and ESP file names use.
    pub fn key(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot of the pair.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The partition label used for this slot.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "USR-A",
            Slot::B => "USR-B",
        }
    }

    pub fn part_guid(self) -> Uuid {
        match self {
            Slot::A => USR_A_GUID,
            Slot::B => USR_B_GUID,
        }
    }

    pub fn from_guid(guid: &Uuid) -> Option<Slot> {
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| s.part_guid() == *guid)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

impl FromStr for Slot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            _ => Err(format!("unknown slot {s:?}: use a or b")),
        }
    }
}

impl serde::Serialize for Slot {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Slot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_label() {
        assert_eq!(Slot::A.to_string(), "A");
        assert_eq!(Slot::B.to_string(), "B");
        assert_eq!(Slot::A.label(), "USR-A");
        assert_eq!(Slot::B.label(), "USR-B");
        assert_eq!(Slot::A.key(), "a");
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!("b".parse::<Slot>(), Ok(Slot::B));
        assert_eq!("B".parse::<Slot>(), Ok(Slot::B));
        assert!("c".parse::<Slot>().unwrap_err().contains("use a or b"));
        assert_eq!(Slot::from_guid(&USR_B_GUID), Some(Slot::B));
    }
}
