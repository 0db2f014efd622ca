//! kiln's build orchestrator. A build is a pipeline of stages, each a function of declared
//! inputs whose hash names its output in the stage cache:
//!
//! ```text
//! recipe ─┬─ packages (mmdebstrap) ───────────────┬─ usr (erofs) ──┐
//!         ├─ kernel (kernel package, busybox) ─┬──┤                ├─ disk (GPT + partitions)
//!         │                                    │  └─ root (ext4) ──┤
//!         │                                    └─ initramfs ─ esp ─┤
//!         ├─ grub (BIOS core, EFI image) ──────────────────────────┤
//!         └─ oem (ext4) ───────────────────────────────────────────┘
//! ```
//!
//! Data flows one way; independent stages run in parallel; a stage whose key is already in
//! the cache is not run again.

pub mod artifact;
pub mod cache;
pub mod ids;
pub mod key;
pub mod packages;
pub mod pipeline;
pub mod report;

pub use cache::CacheDirs;
pub use pipeline::{build, BuildOptions, BuildOutput, Signing};
pub use report::StageReport;
