//! Stage keys: a SHA-256 over labelled inputs. Labels keep two inputs from colliding when
//! their values are concatenated.

use sha2::{Digest, Sha256};

/// Bump to invalidate every cached stage when what a stage produces changes in code.
pub const PIPELINE_VERSION: &str = "kiln-pipeline-3";

#[derive(Clone)]
pub struct Key(Sha256);

impl Key {
    pub fn new(stage: &str) -> Self {
        let mut h = Sha256::new();
        h.update(PIPELINE_VERSION);
        h.update([0]);
        h.update(stage);
        h.update([0]);
        Key(h)
    }

    pub fn add(mut self, label: &str, value: impl AsRef<[u8]>) -> Self {
        let v = value.as_ref();
        self.0.update(label);
        self.0.update([0]);
        self.0.update((v.len() as u64).to_le_bytes());
        self.0.update(v);
        self
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}
