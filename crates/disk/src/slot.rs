//! USR A/B slot selection, mirroring what GRUB's `gptprio.next` does on a
//! CoreOS-style image.
//!
//! The slots are found by their fixed partition (unique) GUIDs. Rule:
//! - a slot is a candidate if its priority is > 0 and it has tries left
//!   or has booted successfully (priority 0 means "never boot", as in
//!   ChromeOS and `gptprio`);
//! - the candidate with the highest priority wins; on a tie, A wins (as
//!   `gptprio` keeps the first match in table order, and A precedes B);
//! - a slot picked on tries alone (successful == 0) consumes one try.

use std::fmt;

use uuid::Uuid;

use crate::gpt::Gpt;

/// Partition GUID of USR-A (partition 3 in the CoreOS layout).
pub const USR_A_GUID: Uuid = Uuid::from_u128(0x7130c94a_213a_4e5a_8e26_6cce9662f132);
/// Partition GUID of USR-B (partition 4 in the CoreOS layout).
pub const USR_B_GUID: Uuid = Uuid::from_u128(0xe03dd35c_7c2d_4a47_b3fe_27f15780a57c);
/// Partition GUID of the ROOT partition (partition 9 in the CoreOS layout).
pub const ROOT_C_GUID: Uuid = Uuid::from_u128(0xd82521b4_07ac_4f1c_8840_ddefedc332f3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
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

/// The slot the next boot will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotChoice {
    pub slot: Slot,
    /// 1-based partition number of the chosen entry.
    pub number: u32,
    /// True when chosen on tries alone, so booting decrements its tries.
    pub consumes_try: bool,
}

/// Which USR slot boots next, or `None` if neither is bootable.
pub fn next_boot(gpt: &Gpt) -> Option<SlotChoice> {
    let mut best: Option<(u8, SlotChoice)> = None;
    for (number, e) in gpt.partitions() {
        let Some(slot) = Slot::from_guid(&e.part_guid) else {
            continue;
        };
        let a = e.attributes;
        let priority = a.priority();
        if priority == 0 || (a.tries() == 0 && !a.successful()) {
            continue;
        }
        let better = match &best {
            None => true,
            Some((p, cur)) => {
                priority > *p || (priority == *p && slot == Slot::A && cur.slot == Slot::B)
            }
        };
        if better {
            let choice = SlotChoice {
                slot,
                number,
                consumes_try: !a.successful(),
            };
            best = Some((priority, choice));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::Attributes;
    use crate::gpt::PartitionEntry;
    use crate::types::COREOS_USR;

    fn gpt(a: (u8, u8, bool), b: (u8, u8, bool)) -> Gpt {
        let mut g = Gpt::new(Uuid::nil(), 1 << 20);
        for (number, guid, (prio, tries, ok), first) in
            [(3, USR_A_GUID, a, 4096), (4, USR_B_GUID, b, 8192)]
        {
            let e = PartitionEntry {
                type_guid: COREOS_USR,
                part_guid: guid,
                first_lba: first,
                last_lba: first + 4095,
                attributes: Attributes::slot(prio, tries, ok).unwrap(),
                name: String::new(),
            };
            g.set_partition(number, Some(e)).unwrap();
        }
        g
    }

    fn pick(g: &Gpt) -> Option<(Slot, u32, bool)> {
        next_boot(g).map(|c| (c.slot, c.number, c.consumes_try))
    }

    #[test]
    fn fresh_image_boots_a() {
        assert_eq!(
            pick(&gpt((1, 0, true), (0, 0, false))),
            Some((Slot::A, 3, false))
        );
    }

    #[test]
    fn after_update_b_is_tried() {
        assert_eq!(
            pick(&gpt((1, 0, true), (2, 1, false))),
            Some((Slot::B, 4, true))
        );
    }

    #[test]
    fn failed_update_rolls_back_to_a() {
        assert_eq!(
            pick(&gpt((1, 0, true), (2, 0, false))),
            Some((Slot::A, 3, false))
        );
    }

    #[test]
    fn nothing_bootable() {
        assert_eq!(pick(&gpt((0, 0, false), (0, 0, false))), None);
        // Priority 0 never boots, whatever the other fields say.
        assert_eq!(pick(&gpt((0, 5, true), (0, 1, false))), None);
    }

    #[test]
    fn tie_prefers_a_and_successful_b_is_kept() {
        assert_eq!(
            pick(&gpt((2, 0, true), (2, 0, true))),
            Some((Slot::A, 3, false))
        );
        assert_eq!(
            pick(&gpt((1, 0, true), (2, 0, true))),
            Some((Slot::B, 4, false))
        );
        // Tie-break does not depend on table order.
        let mut g = gpt((2, 1, false), (2, 1, false));
        g.entries.swap(2, 3);
        assert_eq!(pick(&g), Some((Slot::A, 4, true)));
    }

    #[test]
    fn display_and_label() {
        assert_eq!(Slot::A.to_string(), "A");
        assert_eq!(Slot::B.to_string(), "B");
        assert_eq!(Slot::A.label(), "USR-A");
        assert_eq!(Slot::B.label(), "USR-B");
    }
}
