//! Byte sizes written the way people write them in TOML: "128MiB", "2GiB", "512".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A size in bytes. Deserializes from an integer (bytes) or a string with a binary unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. \"128MiB\" or \"2GiB\""))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => KIB,
            "MiB" | "M" => MIB,
            "GiB" | "G" => GIB,
            "TiB" | "T" => GIB * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB or TiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(GIB) {
            write!(f, "{}GiB", b / GIB)
        } else if b != 0 && b.is_multiple_of(MIB) {
            write!(f, "{}MiB", b / MIB)
        } else if b != 0 && b.is_multiple_of(KIB) {
            write!(f, "{}KiB", b / KIB)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a size: an integer number of bytes or a string such as \"128MiB\"",
            )
        })? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("128MiB".parse::<ByteSize>().unwrap().0, 128 * MIB);
        assert_eq!("2GiB".parse::<ByteSize>().unwrap().0, 2 * GIB);
        assert_eq!("512".parse::<ByteSize>().unwrap().0, 512);
        assert!("12XB".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(6 * GIB).to_string(), "6GiB");
        assert_eq!(ByteSize(3).to_string(), "3B");
    }
}
