//! Everything kiln takes from the host, in one place:
//!
//! - [`tools`]: the programs and files kiln needs, each with its Debian package;
//! - [`run`]: the one command runner ([`Cmd`]), whose children start from the scrubbed
//!   environment of [`mod@env`];
//! - [`qemu_img`]: qemu-img, typed;
//! - [`atomic`]: files written to a temporary beside their destination, then renamed;
//! - [`hash`]: file hashes;
//! - [`manifest`]: what a cached directory holds, recorded and verified;
//! - [`lock`]: directory locks;
//! - [`failpoint`]: places the crash tests kill kiln at (with the `failpoints` feature).
//!
//! No other kiln crate starts a process. kiln-update (linked into the in-image agent) does
//! not depend on this crate, so the agent carries no process-running code.

pub mod atomic;
pub mod env;
pub mod failpoint;
pub mod hash;
pub mod lock;
pub mod manifest;
pub mod qemu_img;
pub mod run;
pub mod tools;

pub use run::{take_peak_rss_kib, Cmd, Event};
pub use tools::Tool;
