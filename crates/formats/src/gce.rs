//! The Google Compute Engine image: a gzip-compressed GNU tar holding only `disk.raw`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_host::atomic::{parent_dir, Staged};
use kiln_host::tools::{self, PIGZ, TAR};
use kiln_host::Cmd;

use crate::util::{source_size, GIB};

/// Checks that a raw disk of `size` bytes can be a GCE image: a whole number of GiB.
pub fn check_gce_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(GIB) {
        bail!(
            "disk size {size} bytes ({}) is not a whole number of GiB: a GCE image's \
             disk.raw must be a multiple of 1 GiB (1073741824 bytes)",
            kiln_fs::mib(size)
        );
    }
    Ok(())
}

/// Writes `dest` (`*.tar.gz`): a gzip-compressed tar whose only member is `disk.raw`, the
/// bytes of `raw`, in GNU `oldgnu` format with holes stored sparse, owner and group 0,
/// mode 0644, mtime `epoch`; gzip writes no name or timestamp. The size must pass
/// [`check_gce_size`].
pub fn gce_tarball(raw: &Path, dest: &Path, epoch: i64) -> Result<()> {
    let size = source_size(raw)?;
    check_gce_size(size).with_context(|| format!("{} cannot be a GCE image", raw.display()))?;
    if epoch < 0 {
        bail!("timestamp {epoch} is before 1970: give a SOURCE_DATE_EPOCH of 0 or later");
    }
    // pigz: gzip on every core, and the same bytes whatever the number of threads. tar runs
    // it by name, so check for it here.
    tools::check_all(&[TAR, PIGZ])?;
    let name = raw
        .file_name()
        .with_context(|| format!("{} has no file name", raw.display()))?;
    let dir = parent_dir(raw);
    let staged = Staged::new(dest)?;
    let mut cmd = Cmd::new(TAR);
    cmd.args([
        "--create",
        "--format=oldgnu",
        "--sparse",
        // Holes from the bytes (runs of zero blocks), not from how the filesystem happened
        // to allocate the raw file: the same disk always gives the same sparse map.
        "--hole-detection=raw",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--mode=0644",
        "--no-xattrs",
        "--no-acls",
        "--no-selinux",
        "--no-recursion",
        // Whatever the raw file is called, its member is disk.raw; no copy or link needed.
        "--transform=s|.*|disk.raw|",
        "--use-compress-program=pigz -n -6",
    ])
    .arg(format!("--mtime=@{epoch}"))
    .arg("--file")
    .arg(staged.path())
    .arg("--directory")
    .arg(dir)
    .arg("--")
    .arg(name)
    .what(format!(
        "write the GCE tarball {} from {}",
        dest.display(),
        raw.display()
    ))
    .run()?;
    staged.commit(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn one_sparse_oldgnu_member() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), GIB);
        let dest = dir.path().join("kiln-gce.tar.gz");
        gce_tarball(&raw, &dest, 1735689600).unwrap();
        // Sparse: 1 GiB of mostly holes compresses to almost nothing.
        assert!(std::fs::metadata(&dest).unwrap().len() < 64 * 1024);

        let listing = sh(&format!(
            "TZ=UTC tar --full-time -tvzf '{}'",
            dest.display()
        ));
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 1, "{listing}");
        let f: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            f,
            [
                "-rw-r--r--",
                "0/0",
                "1073741824",
                "2025-01-01",
                "00:00:00",
                "disk.raw"
            ],
            "{listing}"
        );

        let header = sh_bytes(&format!("gzip -dc '{}' | head -c 512", dest.display()));
        assert_eq!(header.len(), 512);
        assert_eq!(&header[..9], b"disk.raw\0");
        assert_eq!(&header[257..265], b"ustar  \0", "oldgnu magic");
        assert_eq!(header[156], b'S', "a sparse member");
        // gzip header: no name flag, mtime 0.
        let gz = std::fs::read(&dest).unwrap();
        assert_eq!(gz[3] & 0x08, 0);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);

        // The bytes come back out.
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        sh(&format!(
            "tar -xzf '{}' -C '{}'",
            dest.display(),
            out.display()
        ));
        qemu_compare(&raw, &out.join("disk.raw"), "raw");

        // Repeatable.
        let again = dir.path().join("again.tar.gz");
        gce_tarball(&raw, &again, 1735689600).unwrap();
        assert_eq!(gz, std::fs::read(&again).unwrap());
    }

    #[test]
    fn sizes_and_sources_are_checked() {
        assert!(check_gce_size(10 * GIB).is_ok());
        let e = check_gce_size(GIB + 1024 * 1024).unwrap_err().to_string();
        assert!(
            e.contains("1074790400 bytes") && e.contains("1025.0 MiB") && e.contains("1 GiB"),
            "{e}"
        );
        assert!(check_gce_size(0).is_err());

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.tar.gz");
        assert!(gce_tarball(&dir.path().join("missing.raw"), &dest, 0).is_err());
        let raw = make_raw(dir.path(), 4 * 1024 * 1024);
        let e = format!("{:#}", gce_tarball(&raw, &dest, 0).unwrap_err());
        assert!(e.contains("whole number of GiB"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
