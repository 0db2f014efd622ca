//! kiln's fuzz targets (see targets.rs) as a library for the AFL++ binaries.
#[path = "targets.rs"]
pub mod targets;
