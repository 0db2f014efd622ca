//! What a build made.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::report::StageReport;
pub use crate::stages::packages::InstalledPackage;

#[derive(Debug, Clone, Serialize)]
pub struct BuildOutput {
    /// The board image (raw), `<recipe>_image.bin`.
    pub image: PathBuf,
    /// Every platform artifact, sidecar and DIGESTS file.
    pub artifacts: Vec<PathBuf>,
    pub image_size: u64,
    /// The signed update payload, `<recipe>_update.payload`, when a key was given.
    pub payload: Option<PathBuf>,
    pub kernel_version: String,
    /// SHA-256 of the kernel's config, when it has one.
    pub kernel_config_sha256: Option<String>,
    /// The recipe hash (Resolved::identity) the image carries.
    pub recipe_hash: String,
    /// What dpkg installed in the image.
    pub packages: Vec<InstalledPackage>,
    /// Versions of kiln and of the host tools that shaped the image.
    pub tools: BTreeMap<String, String>,
    pub stages: Vec<StageReport>,
    pub seconds: f64,
}
