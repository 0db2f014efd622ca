//! qemu-img, typed: what kiln asks of it (info, convert, dd, check, compare) with the JSON
//! of `qemu-img info` read into [`Info`]. Every path goes through [`path`], so a relative
//! path with a `:` is never taken for a protocol (`nbd:`, `http:`...).

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::run::Cmd;
use crate::tools::QEMU_IMG;

/// What `qemu-img info --output=json` says about an image (the fields kiln reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Info {
    /// qemu's format name: raw, qcow2, vmdk, vpc.
    pub format: String,
    /// The size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes the image takes on the host.
    #[serde(default)]
    pub actual_size: Option<u64>,
    #[serde(default)]
    pub format_specific: Option<FormatSpecific>,
    /// A qcow2's (or a VMDK's parent's) backing file: another file the image reads.
    #[serde(default)]
    pub backing_filename: Option<String>,
}

/// The format's own part of [`Info`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FormatSpecific {
    /// The format it describes (qcow2, vmdk...).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: FormatData,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FormatData {
    /// qcow2: "1.1" (v3) or "0.10" (v2).
    #[serde(default)]
    pub compat: Option<String>,
    /// vmdk: monolithicSparse, streamOptimized...
    #[serde(default)]
    pub create_type: Option<String>,
    /// qcow2: an external data file holding the guest's bytes.
    #[serde(default)]
    pub data_file: Option<String>,
    /// vmdk: the files holding the disk's data (for a single-file VMDK, itself).
    #[serde(default)]
    pub extents: Vec<Extent>,
}

/// A VMDK extent as `qemu-img info` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Extent {
    #[serde(default)]
    pub filename: String,
}

impl Info {
    /// The qcow2 compat level, for a qcow2 image.
    pub fn qcow2_compat(&self) -> Option<&str> {
        self.data("qcow2")?.compat.as_deref()
    }

    /// The VMDK subformat, for a vmdk image.
    pub fn vmdk_create_type(&self) -> Option<&str> {
        self.data("vmdk")?.create_type.as_deref()
    }

    /// Every file other than `image` that reading the image reads: a backing file, a data
    /// file, VMDK extents in other files. Names as qemu-img gives them.
    pub fn external_files(&self, image: &Path) -> Vec<String> {
        let own = std::fs::canonicalize(image).ok();
        let dir = image.parent().unwrap_or(Path::new("."));
        let is_own = |name: &str| {
            let p = Path::new(name);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            };
            // A name relative to the working directory (as the image was given) or to the
            // image's directory.
            [p, PathBuf::from(name)]
                .iter()
                .any(|c| std::fs::canonicalize(c).ok() == own && own.is_some())
        };
        let mut out: Vec<String> = self.backing_filename.iter().cloned().collect();
        if let Some(d) = &self.format_specific {
            out.extend(d.data.data_file.iter().cloned());
            out.extend(
                d.data
                    .extents
                    .iter()
                    .filter(|e| !is_own(&e.filename))
                    .map(|e| e.filename.clone()),
            );
        }
        out
    }

    fn data(&self, kind: &str) -> Option<&FormatData> {
        self.format_specific
            .as_ref()
            .filter(|f| f.kind == kind)
            .map(|f| &f.data)
    }
}

/// A path as qemu-img should see it: a relative path gets a leading `./` so that a `:` in it
/// is never read as a protocol prefix.
pub fn path(p: &Path) -> PathBuf {
    if p.is_absolute() || p.starts_with(".") {
        p.to_path_buf()
    } else {
        Path::new(".").join(p)
    }
}

/// `qemu-img info` of `image`, read as `format` (never guessed: a raw image could claim to
/// be anything).
pub fn info(image: &Path, format: &str) -> Result<Info> {
    Cmd::new(QEMU_IMG)
        .args(["info", "--output=json", "-f", format])
        .arg(path(image))
        .what(format!("read the image information of {}", image.display()))
        .run_json()
}

/// `qemu-img convert` of `src` (read as `src_format`) to `dest` as `dest_format` with the
/// `-o` options `options`; a raw result is written sparse.
pub fn convert(
    src: &Path,
    src_format: &str,
    dest: &Path,
    dest_format: &str,
    options: Option<&str>,
) -> Result<()> {
    let mut c = Cmd::new(QEMU_IMG);
    c.args(["convert", "-q", "-f", src_format, "-O", dest_format]);
    if let Some(o) = options {
        c.args(["-o", o]);
    }
    c.arg(path(src))
        .arg(path(dest))
        .what(format!(
            "convert {} ({src_format}) to {dest_format} at {}",
            src.display(),
            dest.display()
        ))
        .run()?;
    Ok(())
}

/// `qemu-img dd`: blocks of `block` bytes from `skip` up to (not including) `count` of
/// `src` (read as `format`) into the raw file `dest`. qemu-img counts `count` from the start
/// of the image, skipped blocks included.
pub fn dd(src: &Path, format: &str, dest: &Path, block: u64, skip: u64, count: u64) -> Result<()> {
    let mut ifile = std::ffi::OsString::from("if=");
    ifile.push(path(src));
    let mut ofile = std::ffi::OsString::from("of=");
    ofile.push(path(dest));
    Cmd::new(QEMU_IMG)
        .args(["dd", "-f", format, "-O", "raw"])
        .arg(format!("bs={block}"))
        .arg(format!("skip={skip}"))
        .arg(format!("count={count}"))
        .arg(ifile)
        .arg(ofile)
        .what(format!(
            "copy blocks {skip}..{count} of {} out",
            src.display()
        ))
        .run()?;
    Ok(())
}

/// `qemu-img check`: fails unless the image is consistent (no corruption, no leaks).
/// qemu-img checks qcow2, vmdk and a few others; raw and vpc have nothing to check.
pub fn check(image: &Path, format: &str) -> Result<()> {
    Cmd::new(QEMU_IMG)
        .args(["check", "-f", format])
        .arg(path(image))
        .what(format!("check {} ({format})", image.display()))
        .run()?;
    Ok(())
}

/// `qemu-img compare`: fails unless the guest sees the same bytes in both images.
pub fn compare(a: &Path, a_format: &str, b: &Path, b_format: &str) -> Result<()> {
    Cmd::new(QEMU_IMG)
        .args(["compare", "-f", a_format, "-F", b_format])
        .arg(path(a))
        .arg(path(b))
        .what(format!("compare {} with {}", a.display(), b.display()))
        .run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    const MIB: u64 = 1 << 20;

    /// A sparse raw disk with a recognisable sector at `at`.
    fn raw(dir: &Path, name: &str, size: u64, at: u64) -> PathBuf {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[0x5a; 512]).unwrap();
        p
    }

    #[test]
    fn info_reads_format_size_and_format_data() {
        let d = tempfile::tempdir().unwrap();
        let src = raw(d.path(), "disk.raw", 4 * MIB, MIB);
        let i = info(&src, "raw").unwrap();
        assert_eq!(i.format, "raw");
        assert_eq!(i.virtual_size, 4 * MIB);
        assert_eq!(i.qcow2_compat(), None);

        let q = d.path().join("disk.qcow2");
        convert(&src, "raw", &q, "qcow2", Some("compat=0.10")).unwrap();
        let i = info(&q, "qcow2").unwrap();
        assert_eq!((i.format.as_str(), i.virtual_size), ("qcow2", 4 * MIB));
        assert_eq!(i.qcow2_compat(), Some("0.10"));
        assert_eq!(i.vmdk_create_type(), None);
        check(&q, "qcow2").unwrap();
        compare(&src, "raw", &q, "qcow2").unwrap();

        let v = d.path().join("disk.vmdk");
        convert(&src, "raw", &v, "vmdk", Some("subformat=streamOptimized")).unwrap();
        let i = info(&v, "vmdk").unwrap();
        assert_eq!(i.vmdk_create_type(), Some("streamOptimized"));
        check(&v, "vmdk").unwrap();
    }

    #[test]
    fn dd_copies_the_blocks_asked_for() {
        let d = tempfile::tempdir().unwrap();
        let src = raw(d.path(), "disk.raw", MIB, 40 * 512);
        let q = d.path().join("disk.qcow2");
        convert(&src, "raw", &q, "qcow2", None).unwrap();
        let out = d.path().join("part.raw");
        dd(&q, "qcow2", &out, 512, 40, 42).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len(), 2 * 512);
        assert!(bytes[..512].iter().all(|&b| b == 0x5a));
        assert!(bytes[512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn failures_say_what_and_carry_qemu_img_output() {
        let d = tempfile::tempdir().unwrap();
        let src = raw(d.path(), "a.raw", MIB, 0);
        let other = raw(d.path(), "b.raw", MIB, 512);
        let e = format!("{:#}", compare(&src, "raw", &other, "raw").unwrap_err());
        assert!(e.starts_with("cannot compare"), "{e}");
        assert!(e.contains("Content mismatch"), "{e}");
        let e = format!(
            "{:#}",
            info(&d.path().join("none.qcow2"), "qcow2").unwrap_err()
        );
        assert!(
            e.contains("none.qcow2") && e.contains("exit status: 1"),
            "{e}"
        );
        let e = format!("{:#}", info(&src, "qcow2").unwrap_err());
        assert!(e.contains("qcow2"), "{e}");
    }

    #[test]
    fn relative_paths_with_a_colon_stay_files() {
        assert_eq!(path(Path::new("nbd:b.img")), Path::new("./nbd:b.img"));
        assert_eq!(path(Path::new("/x/a:b")), Path::new("/x/a:b"));
        assert_eq!(path(Path::new("./a")), Path::new("./a"));
        assert_eq!(path(Path::new("../a")), Path::new("./../a"));
    }

    #[test]
    fn info_json_reads_without_optional_fields() {
        let i: Info = serde_json::from_str(
            r#"{"virtual-size": 512, "filename": "x", "format": "vpc", "dirty-flag": false}"#,
        )
        .unwrap();
        assert_eq!(i.format_specific, None);
        assert_eq!(i.actual_size, None);
        let i: Info = serde_json::from_str(
            r#"{"virtual-size": 512, "format": "qcow2", "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "lazy-refcounts": false}}}"#,
        )
        .unwrap();
        assert_eq!(i.qcow2_compat(), Some("1.1"));
    }
}
