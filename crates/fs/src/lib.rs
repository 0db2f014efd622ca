//! Filesystem images made from directories, never by mounting: `mke2fs -d`, `mkfs.erofs`,
//! `mkfs.vfat` + `mcopy`. Every identifier and timestamp is passed in, so the same tree gives
//! the same bytes. The tools run through kiln-host. Also the helpers that keep writes into a
//! staging tree inside it.

pub mod erofs;
pub mod ext4;
pub mod stage;
pub mod vfat;

/// The size of a tree's content, as a filesystem would roughly need it (each file rounded
/// up to 4 KiB, plus one block per directory and symlink). Used to reject content that
/// cannot fit before running mkfs, with a message that names both sizes.
pub fn tree_footprint(root: &std::path::Path) -> anyhow::Result<u64> {
    use anyhow::Context;
    let mut total = 0u64;
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.with_context(|| format!("cannot walk {}", root.display()))?;
        let m = e.path().symlink_metadata()?;
        total += if m.is_file() {
            m.len().div_ceil(4096) * 4096
        } else {
            4096
        };
    }
    Ok(total)
}

/// Human-readable MiB with one decimal, for error messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
