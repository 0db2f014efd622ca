//! Update payloads and A/B slots: what the builder writes and the agent applies.

pub mod apply;
pub mod channel;
pub mod dev;
pub mod erofs;
pub mod esp;
pub mod fat;
pub mod keys;
pub mod lock;
pub mod payload;
pub mod state;
pub mod store;
pub mod system;
pub mod version;

pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// Where an image keeps the public keys it accepts updates from (relative to /).
pub const TRUSTED_KEYS_DIR: &str = "usr/share/kiln/update-keys";
