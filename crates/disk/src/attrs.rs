//! GPT partition attribute bits, including the ChromeOS/CoreOS A/B slot
//! fields used by GRUB's `gptprio` to choose the USR partition to boot.
//!
//! Layout of the 64-bit attribute word (UEFI reserves 48..=63 for the
//! partition type's own use; ChromeOS/CoreOS define them as below):
//! - bits 48..=51: priority (0 = never boot, 15 = highest)
//! - bits 52..=55: tries left
//! - bit 56: successful (booted to completion at least once)
//!
//! Every other bit is carried through unchanged.

use std::fmt;

const PRIORITY_SHIFT: u32 = 48;
const TRIES_SHIFT: u32 = 52;
const SUCCESSFUL_BIT: u32 = 56;
const NIBBLE: u64 = 0xF;

/// Largest value the 4-bit priority and tries fields can hold.
pub const MAX_NIBBLE: u8 = 15;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttrError {
    #[error("{field} {value} is out of range (0..={max})")]
    OutOfRange {
        field: &'static str,
        value: u8,
        max: u8,
    },
}

/// The 64-bit GPT partition attribute word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Attributes(pub u64);

impl Attributes {
    /// Attributes with only the slot fields set.
    pub fn slot(priority: u8, tries: u8, successful: bool) -> Result<Self, AttrError> {
        let mut a = Attributes(0);
        a.set_priority(priority)?;
        a.set_tries(tries)?;
        a.set_successful(successful);
        Ok(a)
    }

    pub fn priority(self) -> u8 {
        self.nibble(PRIORITY_SHIFT)
    }

    pub fn tries(self) -> u8 {
        self.nibble(TRIES_SHIFT)
    }

    pub fn successful(self) -> bool {
        self.0 & (1 << SUCCESSFUL_BIT) != 0
    }

    /// Errors (rather than clamping) so a typo in a recipe is not silently
    /// turned into a different boot order.
    pub fn set_priority(&mut self, priority: u8) -> Result<(), AttrError> {
        self.set_nibble(PRIORITY_SHIFT, "priority", priority)
    }

    pub fn set_tries(&mut self, tries: u8) -> Result<(), AttrError> {
        self.set_nibble(TRIES_SHIFT, "tries", tries)
    }

    pub fn set_successful(&mut self, successful: bool) {
        if successful {
            self.0 |= 1 << SUCCESSFUL_BIT;
        } else {
            self.0 &= !(1 << SUCCESSFUL_BIT);
        }
    }

    /// Bits outside the slot fields (e.g. bit 0 "required", bit 2
    /// "legacy BIOS bootable").
    pub fn other_bits(self) -> u64 {
        self.0 & !Self::slot_mask()
    }

    fn slot_mask() -> u64 {
        (NIBBLE << PRIORITY_SHIFT) | (NIBBLE << TRIES_SHIFT) | (1 << SUCCESSFUL_BIT)
    }

    fn nibble(self, shift: u32) -> u8 {
        // Masked to 4 bits, so the narrowing cannot lose information.
        ((self.0 >> shift) & NIBBLE) as u8
    }

    fn set_nibble(&mut self, shift: u32, field: &'static str, value: u8) -> Result<(), AttrError> {
        if value > MAX_NIBBLE {
            return Err(AttrError::OutOfRange {
                field,
                value,
                max: MAX_NIBBLE,
            });
        }
        self.0 = (self.0 & !(NIBBLE << shift)) | (u64::from(value) << shift);
        Ok(())
    }
}

impl fmt::Display for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "priority={} tries={} successful={}",
            self.priority(),
            self.tries(),
            u8::from(self.successful())
        )?;
        // Only mention other bits when present, to keep the common case short.
        if self.other_bits() != 0 {
            write!(f, " other=0x{:016x}", self.other_bits())?;
        }
        Ok(())
    }
}

impl From<u64> for Attributes {
    fn from(v: u64) -> Self {
        Attributes(v)
    }
}

impl From<Attributes> for u64 {
    fn from(a: Attributes) -> Self {
        a.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coreos_usr_a_bits() {
        // What sgdisk prints as "Attribute flags: 0101000000000000".
        let a = Attributes::slot(1, 0, true).unwrap();
        assert_eq!(a.0, 0x0101_0000_0000_0000);
        assert_eq!(a.to_string(), "priority=1 tries=0 successful=1");
    }

    #[test]
    fn setters_round_trip_and_keep_other_bits() {
        let mut a = Attributes(0xF000_0000_0000_0005);
        a.set_priority(15).unwrap();
        a.set_tries(7).unwrap();
        a.set_successful(true);
        assert_eq!((a.priority(), a.tries(), a.successful()), (15, 7, true));
        a.set_priority(2).unwrap();
        a.set_tries(0).unwrap();
        a.set_successful(false);
        assert_eq!((a.priority(), a.tries(), a.successful()), (2, 0, false));
        assert_eq!(a.other_bits(), 0xF000_0000_0000_0005);
        assert_eq!(
            a.to_string(),
            "priority=2 tries=0 successful=0 other=0xf000000000000005"
        );
    }

    #[test]
    fn out_of_range_rejected_without_change() {
        let mut a = Attributes::slot(3, 1, false).unwrap();
        let err = a.set_priority(16).unwrap_err();
        assert_eq!(err.to_string(), "priority 16 is out of range (0..=15)");
        assert!(a.set_tries(200).is_err());
        assert_eq!((a.priority(), a.tries()), (3, 1));
        assert!(Attributes::slot(0, 16, true).is_err());
    }
}
