//! Update payloads and A/B slots: what the builder writes and the agent applies.

pub mod apply;
pub mod channel;
pub mod esp;
pub mod keys;
pub mod payload;
pub mod state;
pub mod version;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Where an image keeps the public keys it accepts updates from (relative to /).
pub const TRUSTED_KEYS_DIR: &str = "usr/share/kiln/update-keys";
