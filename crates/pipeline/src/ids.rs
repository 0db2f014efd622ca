//! Identifiers that would otherwise be random (disk GUID, filesystem UUIDs, hash seeds, FAT
//! serials), derived from the recipe's identity so that builds are repeatable.

use uuid::Uuid;

/// Namespace for kiln's name-based (v5) UUIDs.
pub const KILN_NAMESPACE: Uuid = Uuid::from_u128(0x6b696c6e_2d69_6d61_6765_2d6964730001);

pub fn derive(identity: &str, what: &str) -> Uuid {
    Uuid::new_v5(&KILN_NAMESPACE, format!("{identity}/{what}").as_bytes())
}

/// A FAT volume serial number.
pub fn derive_serial(identity: &str, what: &str) -> u32 {
    let b = derive(identity, what).into_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derive("abc", "disk"), derive("abc", "disk"));
        assert_ne!(derive("abc", "disk"), derive("abd", "disk"));
        assert_ne!(derive("abc", "disk"), derive("abc", "root"));
    }
}
