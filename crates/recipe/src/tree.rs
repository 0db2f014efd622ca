//! Directory trees that recipes point at (overlays, OEM trees): checking that their symlinks
//! stay inside them, and hashing them for cache keys and derived identifiers.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
pub use kiln_fs::stage::overlay_mode;
use sha2::{Digest, Sha256};
use walkdir::WalkDir;

/// Fails if a relative symlink in `root` points outside `root` (after `..` is applied).
/// Absolute targets name paths of the image being built and are left to the image.
pub fn check_symlinks_inside(root: &Path) -> Result<()> {
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot walk {}", root.display()))?;
        if !entry.path_is_symlink() {
            continue;
        }
        let target = std::fs::read_link(entry.path())
            .with_context(|| format!("cannot read symlink {}", entry.path().display()))?;
        if target.is_absolute() {
            continue;
        }
        let rel_parent = entry
            .path()
            .parent()
            .and_then(|p| p.strip_prefix(root).ok())
            .unwrap_or(Path::new(""));
        if escapes(&rel_parent.join(&target)) {
            bail!(
                "symlink {} points to {}, which is outside the overlay {}; \
                 make it point inside the overlay or use an absolute path into the image",
                entry.path().display(),
                target.display(),
                root.display()
            );
        }
    }
    Ok(())
}

/// True if a relative path climbs above its starting point.
fn escapes(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// A content hash of a tree: names, kinds, modes as the image will have them
/// ([`overlay_mode`]), symlink targets and file bytes, in sorted order. Owners and timestamps
/// are left out on purpose: the build normalises them.
pub fn hash_tree(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot walk {}", root.display()))?;
        let rel: PathBuf = entry.path().strip_prefix(root)?.to_path_buf();
        let meta = entry
            .path()
            .symlink_metadata()
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        if !meta.file_type().is_symlink() {
            h.update(overlay_mode(meta.is_dir(), meta.permissions().mode()).to_le_bytes());
        }
        if meta.file_type().is_symlink() {
            h.update(b"l");
            h.update(
                std::fs::read_link(entry.path())?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if meta.is_file() {
            h.update(b"f");
            h.update(meta.size().to_le_bytes());
            let mut f = std::fs::File::open(entry.path())
                .with_context(|| format!("cannot read {}", entry.path().display()))?;
            std::io::copy(&mut f, &mut h)?;
        } else if meta.is_dir() {
            h.update(b"d");
        } else {
            h.update(b"o");
            h.update(meta.rdev().to_le_bytes());
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn escaping_symlinks_are_found() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/x")).unwrap();
        symlink("../hosts", d.path().join("etc/x/ok")).unwrap();
        symlink("/usr/share/zoneinfo/UTC", d.path().join("etc/localtime")).unwrap();
        check_symlinks_inside(d.path()).unwrap();
        symlink("../../../etc/shadow", d.path().join("etc/x/bad")).unwrap();
        let err = check_symlinks_inside(d.path()).unwrap_err().to_string();
        assert!(err.contains("outside the overlay"), "{err}");
        assert!(err.contains("etc/x/bad"), "{err}");
    }

    #[test]
    fn tree_hash_sees_content_and_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "1").unwrap();
        let h1 = hash_tree(d.path()).unwrap();
        std::fs::write(d.path().join("a"), "2").unwrap();
        let h2 = hash_tree(d.path()).unwrap();
        assert_ne!(h1, h2);
        std::fs::rename(d.path().join("a"), d.path().join("b")).unwrap();
        assert_ne!(h2, hash_tree(d.path()).unwrap());
    }
}
