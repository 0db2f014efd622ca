//! Writing into a staging tree (a root filesystem being assembled) without ever leaving it.
//! Paths are resolved the way a chroot would: absolute symlinks restart at the staging root
//! and `..` stops there, so a symlink in the tree (or in an overlay) cannot send a write to the
//! host.

use std::ffi::OsString;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use filetime::FileTime;
use walkdir::WalkDir;

const MAX_SYMLINKS: usize = 40;

/// The mode an overlay or OEM entry gets in the image: a checkout keeps only the execute bit
/// (git), so anything else would make the image depend on the umask of whoever checked out.
pub fn overlay_mode(is_dir: bool, mode: u32) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Resolves `rel` (a path inside the image) to a host path under `root`, following symlinks
/// found in `root` as if `root` were `/`. The last component is not followed when
/// `follow_last` is false (so a symlink itself can be replaced).
pub fn resolve_in_root(root: &Path, rel: &Path, follow_last: bool) -> Result<PathBuf> {
    let mut pending: Vec<OsString> = components(rel);
    pending.reverse();
    let mut cur: Vec<OsString> = Vec::new();
    let mut followed = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let candidate = root.join(cur.iter().collect::<PathBuf>()).join(&c);
        let is_last = pending.is_empty();
        match candidate.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    bail!(
                        "too many levels of symlinks resolving {} in {}",
                        rel.display(),
                        root.display()
                    );
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    cur.clear();
                }
                let mut t = components(&target);
                t.reverse();
                pending.extend(t);
            }
            _ => cur.push(c),
        }
    }
    Ok(root.join(cur.iter().collect::<PathBuf>()))
}

fn components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// `mkdir -p` inside the image.
pub fn create_dir_all_in(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut done = PathBuf::new();
    for c in components(rel) {
        done.push(&c);
        let host = resolve_in_root(root, &done, true)?;
        match host.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "{} exists in the image and is not a directory",
                done.display()
            ),
            Err(_) => {
                std::fs::create_dir(&host)
                    .with_context(|| format!("cannot create {}", host.display()))?;
                // Not the umask of whoever runs kiln.
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    resolve_in_root(root, rel, true)
}

/// Writes a file at an image path, replacing what is there (a symlink is replaced, not
/// followed).
pub fn write_file_in(root: &Path, rel: &Path, data: &[u8], mode: u32) -> Result<()> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let dir = create_dir_all_in(root, parent)?;
    let name = rel.file_name().context("empty path")?;
    let host = dir.join(name);
    remove_non_dir(&host)?;
    std::fs::write(&host, data).with_context(|| format!("cannot write {}", host.display()))?;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn remove_non_dir(host: &Path) -> Result<()> {
    if let Ok(m) = host.symlink_metadata() {
        if m.is_dir() {
            bail!("{} is a directory", host.display());
        }
        std::fs::remove_file(host).with_context(|| format!("cannot replace {}", host.display()))?;
    }
    Ok(())
}

/// Copies an overlay tree over the image: directories are merged (an existing directory keeps
/// its mode; a new one gets 0755), files and symlinks replace what is there. Symlinks are
/// copied as symlinks, never followed on the host: every overlay entry is opened (or its link
/// read) through its parent directories without following a symlink, and a file must still be
/// the one the walk listed, so an entry swapped for a symlink meanwhile is refused.
pub fn apply_overlay(overlay: &Path, root: &Path) -> Result<()> {
    for e in WalkDir::new(overlay)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let e = e.with_context(|| format!("cannot walk {}", overlay.display()))?;
        let rel = e.path().strip_prefix(overlay)?;
        let m = e.path().symlink_metadata()?;
        overlay_entry(overlay, rel, &m, root)?;
    }
    Ok(())
}

/// One entry of an overlay, `m` being what the walk saw of it.
fn overlay_entry(overlay: &Path, rel: &Path, m: &std::fs::Metadata, root: &Path) -> Result<()> {
    let shown = overlay.join(rel);
    if m.is_dir() {
        create_dir_all_in(root, rel)?;
        return Ok(());
    }
    let parent = create_dir_all_in(root, rel.parent().unwrap_or(Path::new("")))?;
    let host = parent.join(rel.file_name().context("empty path")?);
    if m.file_type().is_symlink() {
        let target = readlink_beneath(overlay, rel)?;
        remove_non_dir(&host)?;
        symlink(target, &host)
            .with_context(|| format!("cannot create symlink {}", host.display()))?;
    } else if m.is_file() {
        let from = open_beneath(overlay, rel)?;
        let opened = check_same_file(&from, m, &shown)?;
        remove_non_dir(&host)?;
        copy_to_new(from, &shown, &host)?;
        std::fs::set_permissions(
            &host,
            std::fs::Permissions::from_mode(overlay_mode(false, opened.mode())),
        )?;
    } else {
        bail!(
            "{}: overlays may hold files, directories and symlinks only",
            shown.display()
        );
    }
    Ok(())
}

fn cstring(p: &std::ffi::OsStr) -> Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_encoded_bytes()).with_context(|| format!("{p:?} holds a NUL byte"))
}

/// `openat` of one name in `dir` without following a symlink there.
fn openat_nofollow(
    dir: libc::c_int,
    name: &std::ffi::OsStr,
    flags: libc::c_int,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::io::FromRawFd;
    let c = cstring(name).map_err(std::io::Error::other)?;
    // SAFETY: c is NUL-terminated; the descriptor returned is owned by the File.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The directory holding `rel` (relative to `base`), reached without following symlinks.
fn parent_beneath(base: &Path, rel: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let mut dir =
        std::fs::File::open(base).with_context(|| format!("cannot open {}", base.display()))?;
    let mut at = base.to_path_buf();
    for c in rel.parent().unwrap_or(Path::new("")).components() {
        let Component::Normal(name) = c else {
            bail!(
                "{}: not a plain path inside {}",
                rel.display(),
                base.display()
            );
        };
        at.push(name);
        dir = openat_nofollow(dir.as_raw_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY)
            .with_context(|| {
                format!(
                    "{} is no longer a directory (was it replaced by a symlink?)",
                    at.display()
                )
            })?;
    }
    Ok(dir)
}

/// Opens the file `rel` under `base` for reading, following no symlink on the way.
fn open_beneath(base: &Path, rel: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let dir = parent_beneath(base, rel)?;
    let name = rel.file_name().context("empty path")?;
    // O_NONBLOCK: a fifo swapped in must not hang the build (it is refused right after).
    openat_nofollow(dir.as_raw_fd(), name, libc::O_RDONLY | libc::O_NONBLOCK).with_context(|| {
        format!(
            "cannot open {} (was it replaced by a symlink?)",
            base.join(rel).display()
        )
    })
}

/// The target of the symlink `rel` under `base`, read through its parents without
/// following a symlink.
fn readlink_beneath(base: &Path, rel: &Path) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::io::AsRawFd;
    let dir = parent_beneath(base, rel)?;
    let name = cstring(rel.file_name().context("empty path")?)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for its length; name is NUL-terminated.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read the symlink {}", base.join(rel).display()));
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// The opened file must be a regular file and the one `walked` describes (same device and
/// inode): what was checked is what is copied. Returns its metadata.
fn check_same_file(
    f: &std::fs::File,
    walked: &std::fs::Metadata,
    shown: &Path,
) -> Result<std::fs::Metadata> {
    let m = f
        .metadata()
        .with_context(|| format!("cannot stat {}", shown.display()))?;
    if !m.is_file() {
        bail!("{} is not a regular file", shown.display());
    }
    if (m.dev(), m.ino()) != (walked.dev(), walked.ino()) {
        bail!(
            "{} changed while it was being copied (another file is there now)",
            shown.display()
        );
    }
    Ok(m)
}

/// Copies an open file to a path that must not exist yet (never writes through a symlink or
/// into a file that is hard-linked elsewhere).
fn copy_to_new(mut from: std::fs::File, src: &Path, dst: &Path) -> Result<()> {
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .with_context(|| format!("cannot create {}", dst.display()))?;
    std::io::copy(&mut from, &mut to)
        .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Copies the file at `src` (which `walked` describes; a symlink there is not followed) to a
/// path that must not exist yet.
fn copy_new(src: &Path, walked: &std::fs::Metadata, dst: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)
        .with_context(|| format!("cannot read {}", src.display()))?;
    check_same_file(&from, walked, src)?;
    copy_to_new(from, src, dst)
}

/// Sets every timestamp in a tree to `epoch` (symlinks included), so filesystems built from it
/// do not depend on when the files were written.
pub fn normalize_times(root: &Path, epoch: i64) -> Result<()> {
    let t = FileTime::from_unix_time(epoch, 0);
    for e in WalkDir::new(root).follow_links(false) {
        let e = e.with_context(|| format!("cannot walk {}", root.display()))?;
        filetime::set_symlink_file_times(e.path(), t, t)
            .with_context(|| format!("cannot set times of {}", e.path().display()))?;
    }
    Ok(())
}

/// Copies the tree `src` into the image at `root`/`prefix`, with hard links where possible
/// (same filesystem), keeping symlinks, modes and ownership. Destinations are resolved inside
/// `root` like any image path, and an existing file is replaced (unlinked first), never
/// written into: it may be a symlink, or a hard link into the stage cache.
pub fn link_or_copy_tree(src: &Path, root: &Path, prefix: &Path) -> Result<()> {
    let mut dirs: std::collections::HashMap<PathBuf, PathBuf> = std::collections::HashMap::new();
    for e in WalkDir::new(src).follow_links(false).sort_by_file_name() {
        let e = e.with_context(|| format!("cannot walk {}", src.display()))?;
        let rel = prefix.join(e.path().strip_prefix(src)?);
        let m = e.path().symlink_metadata()?;
        let ft = m.file_type();
        if ft.is_dir() {
            let host = create_dir_all_in(root, &rel)?;
            // The owner first, as for files (chown may clear a set-group-ID bit).
            chown(&host, &m)?;
            std::fs::set_permissions(&host, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            dirs.insert(rel, host);
            continue;
        }
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = match dirs.get(&parent_rel) {
            Some(p) => p.clone(),
            None => create_dir_all_in(root, &parent_rel)?,
        };
        let to = parent.join(rel.file_name().context("empty path")?);
        remove_non_dir(&to)?;
        if ft.is_symlink() {
            symlink(std::fs::read_link(e.path())?, &to)
                .with_context(|| format!("cannot create symlink {}", to.display()))?;
        } else if ft.is_file() {
            match std::fs::hard_link(e.path(), &to) {
                // The source's own inode: its owner and mode are already right, and a chown
                // would clear a set-user-ID bit on it, in the stage cache.
                Ok(()) => continue,
                // EXDEV: another filesystem; EPERM: protected_hardlinks for a non-owner.
                Err(err) if matches!(err.raw_os_error(), Some(libc::EXDEV) | Some(libc::EPERM)) => {
                    copy_new(e.path(), &m, &to)?;
                    // The owner first: chown clears set-user-ID and set-group-ID bits.
                    chown(&to, &m)?;
                    std::fs::set_permissions(
                        &to,
                        std::fs::Permissions::from_mode(m.mode() & 0o7777),
                    )?;
                    continue;
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("cannot link {}", to.display()))
                }
            }
        } else {
            // Device nodes and fifos: recreate with mknod so ownership and numbers survive.
            let c = std::ffi::CString::new(to.as_os_str().as_encoded_bytes())?;
            // SAFETY: c is a valid NUL-terminated path; mode and rdev come from lstat.
            let rc = unsafe { libc::mknod(c.as_ptr(), m.mode(), m.rdev() as libc::dev_t) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot create device node {}", to.display()));
            }
        }
        chown(&to, &m)?;
    }
    Ok(())
}

/// Gives `path` (not following a symlink) the owner of `like`: ownership matters in the image.
fn chown(path: &Path, like: &std::fs::Metadata) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid path; lchown does not follow symlinks.
    if unsafe { libc::lchown(c.as_ptr(), like.uid(), like.gid()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot chown {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_cannot_leave_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink("/etc", root.join("usr/evil")).unwrap();
        symlink("../../../../../../tmp", root.join("usr/climb")).unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("bin/sh"), true).unwrap(),
            root.join("usr/bin/sh")
        );
        // An absolute symlink lands in the image's /etc, not the host's.
        assert_eq!(
            resolve_in_root(&root, Path::new("usr/evil/passwd"), true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("usr/climb/x"), true).unwrap(),
            root.join("tmp/x")
        );
        write_file_in(&root, Path::new("usr/evil/passwd"), b"x", 0o644).unwrap();
        assert_eq!(std::fs::read(root.join("etc/passwd")).unwrap(), b"x");
    }

    #[test]
    fn symlink_loops_are_errors() {
        let d = tempfile::tempdir().unwrap();
        symlink("b", d.path().join("a")).unwrap();
        symlink("a", d.path().join("b")).unwrap();
        assert!(resolve_in_root(d.path(), Path::new("a/x"), true).is_err());
    }

    #[test]
    fn tree_copy_never_writes_through_symlinks_or_into_linked_files() {
        let d = tempfile::tempdir().unwrap();
        let (src, root, host) = (
            d.path().join("src"),
            d.path().join("root"),
            d.path().join("host"),
        );
        std::fs::create_dir_all(src.join("m")).unwrap();
        std::fs::write(src.join("m/dep"), "new").unwrap();
        std::fs::write(src.join("m/linked"), "new").unwrap();
        std::fs::create_dir_all(root.join("usr/lib/modules/m")).unwrap();
        std::fs::write(&host, "host").unwrap();
        // A symlink to a host file, and a file hard-linked to something outside.
        symlink(&host, root.join("usr/lib/modules/m/dep")).unwrap();
        let cached = d.path().join("cached");
        std::fs::write(&cached, "cached").unwrap();
        std::fs::hard_link(&cached, root.join("usr/lib/modules/m/linked")).unwrap();
        link_or_copy_tree(&src, &root, Path::new("usr/lib/modules")).unwrap();
        assert_eq!(std::fs::read_to_string(&host).unwrap(), "host");
        assert_eq!(std::fs::read_to_string(&cached).unwrap(), "cached");
        assert_eq!(
            std::fs::read_to_string(root.join("usr/lib/modules/m/dep")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("usr/lib/modules/m/linked")).unwrap(),
            "new"
        );
    }

    #[test]
    fn overlay_keeps_image_directory_modes_and_normalises_its_own() {
        let d = tempfile::tempdir().unwrap();
        let (root, ov) = (d.path().join("root"), d.path().join("ov"));
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::fs::create_dir_all(ov.join("tmp")).unwrap();
        std::fs::create_dir_all(ov.join("new")).unwrap();
        std::fs::set_permissions(ov.join("tmp"), std::fs::Permissions::from_mode(0o775)).unwrap();
        std::fs::write(ov.join("new/f"), "x").unwrap();
        std::fs::set_permissions(ov.join("new/f"), std::fs::Permissions::from_mode(0o664)).unwrap();
        apply_overlay(&ov, &root).unwrap();
        let mode = |p: &str| root.join(p).symlink_metadata().unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("new/f"), 0o644);
    }

    #[test]
    fn overlay_through_image_symlink_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let ov = d.path().join("ov");
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        symlink("/usr/sbin", root.join("sbin")).unwrap();
        std::fs::create_dir_all(ov.join("sbin")).unwrap();
        std::fs::write(ov.join("sbin/init"), "#!/bin/sh\n").unwrap();
        apply_overlay(&ov, &root).unwrap();
        assert!(root.join("usr/sbin/init").is_file());
    }

    /// An overlay entry swapped for a symlink after the walk listed it (the file itself, or
    /// a directory above it) is refused; the host file it points at is not copied.
    #[test]
    fn an_overlay_entry_swapped_for_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (root, ov, host) = (
            d.path().join("root"),
            d.path().join("ov"),
            d.path().join("host"),
        );
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(ov.join("etc")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("motd"), "host secret").unwrap();
        std::fs::write(ov.join("etc/motd"), "welcome").unwrap();

        // The file becomes a symlink to a host file between the walk's stat and the copy.
        let walked = ov.join("etc/motd").symlink_metadata().unwrap();
        std::fs::remove_file(ov.join("etc/motd")).unwrap();
        symlink(host.join("motd"), ov.join("etc/motd")).unwrap();
        let e = format!(
            "{:#}",
            overlay_entry(&ov, Path::new("etc/motd"), &walked, &root).unwrap_err()
        );
        assert!(e.contains("etc/motd"), "{e}");
        assert!(!root.join("etc/motd").exists());

        // The directory above it becomes a symlink to a host directory.
        std::fs::remove_file(ov.join("etc/motd")).unwrap();
        std::fs::write(ov.join("etc/motd"), "welcome").unwrap();
        let walked = ov.join("etc/motd").symlink_metadata().unwrap();
        std::fs::rename(ov.join("etc"), d.path().join("etc-moved")).unwrap();
        symlink(&host, ov.join("etc")).unwrap();
        let e = format!(
            "{:#}",
            overlay_entry(&ov, Path::new("etc/motd"), &walked, &root).unwrap_err()
        );
        assert!(e.contains("no longer a directory"), "{e}");
        assert!(!root.join("etc/motd").exists());

        // Another regular file put in its place is refused too: what was listed is copied.
        std::fs::remove_file(ov.join("etc")).unwrap();
        std::fs::rename(d.path().join("etc-moved"), ov.join("etc")).unwrap();
        let walked = ov.join("etc/motd").symlink_metadata().unwrap();
        // Written beside it first, so it cannot reuse the old inode number.
        std::fs::write(ov.join("etc/motd.new"), "other").unwrap();
        std::fs::rename(ov.join("etc/motd.new"), ov.join("etc/motd")).unwrap();
        let e = format!(
            "{:#}",
            overlay_entry(&ov, Path::new("etc/motd"), &walked, &root).unwrap_err()
        );
        assert!(e.contains("changed while it was being copied"), "{e}");

        // Untouched, it is copied; a symlink entry is copied as a symlink.
        symlink("../host/motd", ov.join("etc/link")).unwrap();
        apply_overlay(&ov, &root).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            "other"
        );
        assert_eq!(
            std::fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("../host/motd")
        );
    }

    /// The tree copy's fallback (another filesystem) does not follow a symlink swapped in.
    #[test]
    fn copy_new_does_not_follow_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("secret"), "host secret").unwrap();
        std::fs::write(d.path().join("f"), "data").unwrap();
        let walked = d.path().join("f").symlink_metadata().unwrap();
        std::fs::remove_file(d.path().join("f")).unwrap();
        symlink(d.path().join("secret"), d.path().join("f")).unwrap();
        assert!(copy_new(&d.path().join("f"), &walked, &d.path().join("g")).is_err());
        assert!(!d.path().join("g").exists());
    }

    /// A set-user-ID program keeps its mode in the image, and the tree it came from (the
    /// package stage, in kiln's cache) is left exactly as it was: chown on a hard-linked file
    /// would clear the bit on the cache's own inode.
    #[test]
    fn tree_copy_keeps_setuid_and_leaves_the_source_alone() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        std::fs::write(src.join("usr/bin/su"), "elf").unwrap();
        std::fs::set_permissions(
            src.join("usr/bin/su"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let mode = |p: &Path| p.symlink_metadata().unwrap().mode() & 0o7777;
        // Hard links on one filesystem; copies onto another (/dev/shm, where there is one).
        let other = tempfile::tempdir_in("/dev/shm").ok();
        let roots = [
            Some(d.path().join("root")),
            other.as_ref().map(|o| o.path().join("root")),
        ];
        for root in roots.into_iter().flatten() {
            std::fs::create_dir_all(&root).unwrap();
            link_or_copy_tree(&src, &root, Path::new("")).unwrap();
            assert_eq!(mode(&root.join("usr/bin/su")), 0o4755, "{}", root.display());
            assert_eq!(mode(&src.join("usr/bin/su")), 0o4755, "{}", root.display());
        }
    }
}
