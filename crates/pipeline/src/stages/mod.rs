//! The stages, one module each. A stage is a struct whose fields are its inputs; it says
//! what they are ([`Stage::inputs`], whose hash is its key), how to make its output from them
//! ([`Stage::build`]) and what the output is ([`Stage::output`], a typed view of the files
//! instead of paths found by string).

use std::path::Path;

use anyhow::Result;

use crate::inputs::Inputs;

pub mod artifact;
pub mod disk;
pub mod esp;
pub mod grub;
pub mod initramfs;
pub mod kernel;
pub mod kernel_source;
pub mod oem;
pub mod packages;
pub mod payload;
pub mod root;
pub mod tree;
pub mod usr;

pub trait Stage {
    /// The stage's name in keys, the cache and the report.
    const NAME: &'static str;
    type Output;

    /// The platform a per-platform stage is for (shown as `oem:qemu`).
    fn platform(&self) -> Option<&str> {
        None
    }

    /// Everything the output is made from, labelled.
    fn inputs(&self) -> Inputs;

    /// Makes the output in `out`, an empty directory published only if this succeeds.
    fn build(&self, out: &Path) -> Result<()>;

    /// The output of a finished stage directory.
    fn output(&self, dir: &Path) -> Result<Self::Output>;
}

/// A stage's output with its key (what later stages name it by in their inputs).
#[derive(Debug, Clone)]
pub struct Built<T> {
    pub key: String,
    pub out: T,
}

impl<T> std::ops::Deref for Built<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.out
    }
}

/// A stage's name in the cache and the report: `esp`, or `esp:qemu` for a platform's.
pub fn tag<S: Stage>(s: &S) -> String {
    match s.platform() {
        Some(p) => format!("{}:{p}", S::NAME),
        None => S::NAME.to_string(),
    }
}
