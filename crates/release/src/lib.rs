//! kiln releases: the release directory with its manifest, DIGESTS and minisign signature,
//! verifying one, and channels (alpha, beta, stable) that releases are promoted through.

pub mod channel;
pub mod release;
pub mod sign;
pub mod stage;
pub mod verify;
