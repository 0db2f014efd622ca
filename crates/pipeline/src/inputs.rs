//! A stage's inputs: labelled values. Their SHA-256 is the stage's key (its name in the
//! cache); the labels keep two inputs from colliding when their values are concatenated, and
//! let `--explain` name the input that changed. A copy is written beside every cached output.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// kiln's code identity (build.rs): the SHA-256 of the sources that shape stage outputs. The
/// first input of every stage, so a change to that code rebuilds the stages, and `--explain`
/// says so.
pub const CODE_ID: &str = env!("KILN_CODE_ID");

/// Values longer than this are recorded by their hash (the key always hashes the value).
const SHOWN: usize = 200;

#[derive(Debug, Clone)]
pub struct Inputs(Vec<(&'static str, Vec<u8>)>);

impl Default for Inputs {
    fn default() -> Self {
        Self(vec![("kiln code", CODE_ID.as_bytes().to_vec())])
    }
}

impl Inputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an input (text, or any bytes).
    pub fn add(mut self, label: &'static str, value: impl AsRef<[u8]>) -> Self {
        self.0.push((label, value.as_ref().to_vec()));
        self
    }

    /// The key of `stage` made from these inputs.
    pub fn key(&self, stage: &str) -> String {
        let mut h = Sha256::new();
        h.update(stage);
        h.update([0]);
        for (label, v) in &self.0 {
            h.update(label);
            h.update([0]);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v);
        }
        hex::encode(h.finalize())
    }

    /// What is written beside the output: each value as text, or its hash when it is long
    /// or not text.
    pub fn record(&self) -> Record {
        Record(
            self.0
                .iter()
                .map(|(label, v)| {
                    let shown = match std::str::from_utf8(v) {
                        Ok(t) if t.len() <= SHOWN && !t.chars().any(char::is_control) => {
                            t.to_string()
                        }
                        _ => format!(
                            "sha256:{} ({} bytes)",
                            hex::encode(Sha256::digest(v)),
                            v.len()
                        ),
                    };
                    (label.to_string(), shown)
                })
                .collect(),
        )
    }
}

/// Labelled inputs as recorded: `[["label", "value"], ...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record(pub Vec<(String, String)>);

impl Record {
    /// What differs from an earlier record, one phrase per input.
    pub fn changes_from(&self, before: &Record) -> Vec<String> {
        let mut out = Vec::new();
        for (label, now) in &self.0 {
            match before.0.iter().find(|(l, _)| l == label) {
                None => out.push(format!("{label} is new")),
                Some((_, was)) if was != now => out.push(format!(
                    "{label} changed (was {}, now {})",
                    short(was),
                    short(now)
                )),
                Some(_) => {}
            }
        }
        for (label, _) in &before.0 {
            if !self.0.iter().any(|(l, _)| l == label) {
                out.push(format!("{label} is gone"));
            }
        }
        out
    }
}

/// A value short enough for one line: hashes and keys cut to 12 characters.
fn short(v: &str) -> String {
    let v = v.strip_prefix("sha256:").unwrap_or(v);
    let first = v.split(' ').next().unwrap_or(v);
    if first.len() > 24 && first.chars().all(|c| c.is_ascii_hexdigit()) {
        format!("{}…", &first[..12])
    } else if v.chars().count() > 48 {
        format!("{}…", v.chars().take(48).collect::<String>())
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_values_apart_and_changes_are_named() {
        let a = Inputs::new().add("x", "ab").add("y", "c");
        let b = Inputs::new().add("x", "a").add("y", "bc");
        assert_ne!(a.key("s"), b.key("s"));
        assert_ne!(a.key("s"), a.key("t"));
        assert_eq!(
            a.key("s"),
            Inputs::new().add("x", "ab").add("y", "c").key("s")
        );
        let long = "z".repeat(500);
        let c = Inputs::new()
            .add("x", "ab")
            .add("y", &long)
            .add("w", [0u8, 1]);
        let rec = c.record();
        assert!(rec.0[2].1.starts_with("sha256:") && rec.0[2].1.ends_with("(500 bytes)"));
        assert!(rec.0[3].1.starts_with("sha256:"));
        let changes = rec.changes_from(&a.record());
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes[0].starts_with("y changed (was c, now "),
            "{changes:?}"
        );
        assert_eq!(changes[1], "w is new");
        assert_eq!(a.record().changes_from(&c.record())[1], "w is gone");
        assert!(a.record().changes_from(&a.record()).is_empty());
    }

    /// kiln's code identity is every stage's first input: 64 hex digits, recorded so that
    /// `--explain` names it when it changes.
    #[test]
    fn the_code_identity_is_the_first_input() {
        assert_eq!(CODE_ID.len(), 64);
        assert!(CODE_ID.bytes().all(|b| b.is_ascii_hexdigit()));
        let rec = Inputs::new().add("x", "1").record();
        assert_eq!(rec.0[0], ("kiln code".to_string(), CODE_ID.to_string()));
        let mut before = rec.clone();
        before.0[0].1 = "0".repeat(64);
        assert_eq!(
            rec.changes_from(&before),
            [format!(
                "kiln code changed (was 000000000000…, now {}…)",
                &CODE_ID[..12]
            )]
        );
    }
}
