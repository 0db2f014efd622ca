//! Image files as kiln meets them after a build: their format, told from their bytes, and
//! ways to read and change them as raw disks: unpacking a packed artifact, a raw working copy
//! of a qcow2 that replaces the original only when a change succeeded, and the few sectors of
//! a qcow2, vmdk or vhd that hold its GPT and ESP, read without converting the whole disk.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_host::{qemu_img, tools::TAR, Cmd};

/// What a file holds, from its first bytes (and a VHD's footer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    /// A raw disk compressed with xz (metal, EC2).
    Xz,
    /// A gzip-compressed tar holding disk.raw (GCE).
    Gzip,
}

impl ImageFormat {
    pub fn detect(path: &Path) -> Result<Self> {
        let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut head = Vec::new();
        (&mut f)
            .take(512)
            .read_to_end(&mut head)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let head = head.as_slice();
        if head.starts_with(b"QFI\xfb") {
            return Ok(ImageFormat::Qcow2);
        }
        if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
            return Ok(ImageFormat::Vmdk);
        }
        if head.starts_with(b"conectix") {
            return Ok(ImageFormat::Vhd);
        }
        let len = f.metadata()?.len();
        if len >= 512 {
            // A fixed VHD has its footer only at the end.
            let mut tail = [0u8; 8];
            f.seek(SeekFrom::Start(len - 512))?;
            f.read_exact(&mut tail)?;
            if &tail == b"conectix" {
                return Ok(ImageFormat::Vhd);
            }
        }
        if head.starts_with(b"\xfd7zXZ\0") {
            return Ok(ImageFormat::Xz);
        }
        if head.starts_with(b"\x1f\x8b") {
            return Ok(ImageFormat::Gzip);
        }
        Ok(ImageFormat::Raw)
    }

    /// The name qemu-img and QEMU give the format; none for a packed file.
    pub fn qemu_name(self) -> Option<&'static str> {
        match self {
            ImageFormat::Raw => Some("raw"),
            ImageFormat::Qcow2 => Some("qcow2"),
            ImageFormat::Vmdk => Some("vmdk"),
            ImageFormat::Vhd => Some("vpc"),
            ImageFormat::Xz | ImageFormat::Gzip => None,
        }
    }

    /// A packed artifact: it must be unpacked ([`unpack`]) before QEMU can read it.
    pub fn is_packed(self) -> bool {
        self.qemu_name().is_none()
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Xz => "xz",
            ImageFormat::Gzip => "gzip",
        })
    }
}

/// Unpacks a platform's packed disk (.xz, GCE .tar.gz) into `dir/disk.raw`, sparse.
pub fn unpack(image: &Path, format: ImageFormat, dir: &Path) -> Result<PathBuf> {
    let raw = dir.join("disk.raw");
    match format {
        ImageFormat::Xz => {
            let f =
                File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
            // Multi-stream: kiln writes one .xz stream per chunk.
            let mut dec = xz2::read::XzDecoder::new_multi_decoder(std::io::BufReader::new(f));
            let mut out =
                File::create(&raw).with_context(|| format!("cannot create {}", raw.display()))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut len = 0u64;
            loop {
                let mut n = 0;
                while n < buf.len() {
                    let k = dec
                        .read(&mut buf[n..])
                        .with_context(|| format!("cannot decompress {}", image.display()))?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                if n == 0 {
                    break;
                }
                // Leave zeros as holes.
                if buf[..n].iter().any(|&b| b != 0) {
                    out.write_all_at(&buf[..n], len)?;
                }
                len += n as u64;
            }
            out.set_len(len)?;
            out.flush()?;
        }
        ImageFormat::Gzip => {
            Cmd::new(TAR)
                .arg("-xzSf")
                .arg(image)
                .arg("-C")
                .arg(dir)
                .arg("disk.raw")
                .what(format!(
                    "unpack {}: is it a GCE tarball holding disk.raw?",
                    image.display()
                ))
                .run()?;
        }
        other => bail!("{} is {other}, not a packed disk", image.display()),
    }
    Ok(raw)
}

/// An image file to change as a raw disk: the file itself, or a raw copy of a qcow2 beside
/// it that replaces the original (keeping its compat level) only when [`finish`] is told the
/// change succeeded.
///
/// [`finish`]: WorkingCopy::finish
pub struct WorkingCopy {
    orig: PathBuf,
    raw: PathBuf,
    qcow2_compat: Option<String>,
    tmp: Option<tempfile::TempDir>,
}

impl WorkingCopy {
    /// `what` names the command, for the error about other formats.
    pub fn open(path: &Path, what: &str) -> Result<Self> {
        match ImageFormat::detect(path)? {
            ImageFormat::Raw => Ok(Self {
                orig: path.to_path_buf(),
                raw: path.to_path_buf(),
                qcow2_compat: None,
                tmp: None,
            }),
            ImageFormat::Qcow2 => {
                let compat = qemu_img::info(path, "qcow2")?
                    .qcow2_compat()
                    .unwrap_or("1.1")
                    .to_string();
                // Beside the image: same filesystem for the final rename, and no writes
                // outside the directory the user pointed at.
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
                let tmp = tempfile::Builder::new()
                    .prefix(".kiln-image-")
                    .tempdir_in(dir.unwrap_or(Path::new(".")))
                    .context("cannot make a temporary directory beside the image")?;
                let raw = tmp.path().join("disk.raw");
                qemu_img::convert(path, "qcow2", &raw, "raw", None)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(Self {
                    orig: path.to_path_buf(),
                    raw,
                    qcow2_compat: Some(compat),
                    tmp: Some(tmp),
                })
            }
            other => bail!(
                "{} is {other}: {what} works on raw and qcow2 images (convert with qemu-img convert -O raw)",
                path.display(),
            ),
        }
    }

    /// The raw disk to read and write.
    pub fn raw(&self) -> &Path {
        &self.raw
    }

    /// For a changed qcow2: converts back and renames over the original. Without a change
    /// (or for a raw image, changed in place) nothing happens.
    pub fn finish(self, changed: bool) -> Result<()> {
        let (Some(compat), Some(tmp), true) = (&self.qcow2_compat, &self.tmp, changed) else {
            return Ok(());
        };
        let out = tmp.path().join("disk.qcow2");
        qemu_img::convert(
            &self.raw,
            "raw",
            &out,
            "qcow2",
            Some(&format!("compat={compat}")),
        )
        .context("cannot write the qcow2 image back")?;
        File::open(&out)?.sync_all()?;
        std::fs::rename(&out, &self.orig)
            .with_context(|| format!("cannot replace {}", self.orig.display()))?;
        Ok(())
    }
}

/// Some sectors of a qcow2, vmdk or vhd image, read by qemu-img and laid at their offsets in a
/// sparse raw file of the image's virtual size: enough to read the GPT (the first 34 and the
/// last 33 sectors) and what [`SparseView::copy`] adds, without converting the whole disk.
pub struct SparseView {
    image: PathBuf,
    format: &'static str,
    raw: PathBuf,
    dir: PathBuf,
}

impl SparseView {
    /// The GPT sectors of `image`, in `dir`.
    pub fn gpt(image: &Path, format: ImageFormat, dir: &Path) -> Result<Self> {
        let format = format
            .qemu_name()
            .filter(|f| *f != "raw")
            .with_context(|| {
                format!("{} is {format}: not a qcow2, vmdk or vhd", image.display())
            })?;
        let size = qemu_img::info(image, format)?.virtual_size;
        let sectors = size / 512;
        if sectors < 68 {
            bail!(
                "{} is too small ({size} bytes) to hold a GPT",
                image.display()
            );
        }
        let raw = dir.join("gpt.raw");
        File::create(&raw)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("cannot create {}", raw.display()))?;
        let v = SparseView {
            image: image.to_path_buf(),
            format,
            raw,
            dir: dir.to_path_buf(),
        };
        v.copy(0, 34)?;
        v.copy(sectors - 33, sectors)?;
        Ok(v)
    }

    /// Copies sectors `first..end` of the image to the same place in the view: at most
    /// [`SparseView::MAX_COPY`] bytes, inside the disk, streamed rather than held in memory.
    pub fn copy(&self, first: u64, end: u64) -> Result<()> {
        let sectors = std::fs::metadata(&self.raw)?.len() / 512;
        if first >= end || end > sectors || (end - first) * 512 > Self::MAX_COPY {
            bail!(
                "{}: refusing to copy sectors {first}..{end}: the disk has {sectors}, and kiln copies at most {} MiB of it",
                self.image.display(),
                Self::MAX_COPY >> 20
            );
        }
        let part = self.dir.join(format!("part-{first}.raw"));
        // qemu-img dd counts `count` from the start of the image, skipped blocks included.
        qemu_img::dd(&self.image, self.format, &part, 512, first, end)?;
        let mut from = File::open(&part)?.take((end - first) * 512);
        let mut to = std::fs::OpenOptions::new().write(true).open(&self.raw)?;
        to.seek(SeekFrom::Start(first * 512))?;
        std::io::copy(&mut from, &mut to)?;
        std::fs::remove_file(&part)?;
        Ok(())
    }

    /// The most [`SparseView::copy`] copies at once (a kiln ESP is 128 MiB).
    pub const MAX_COPY: u64 = 1 << 30;

    /// The view, a raw file.
    pub fn path(&self) -> &Path {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{convert, DiskFormat, Stamp};
    use crate::options::{Qcow2Compat, VhdSubformat, VmdkAdapter, VmdkSubformat};
    use crate::testutil::make_raw;

    #[test]
    fn formats_are_told_from_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 << 20);
        assert_eq!(ImageFormat::detect(&raw).unwrap(), ImageFormat::Raw);
        let cases = [
            (DiskFormat::qcow2(), ImageFormat::Qcow2),
            (
                DiskFormat::Vmdk {
                    subformat: VmdkSubformat::MonolithicSparse,
                    adapter: VmdkAdapter::Lsilogic,
                },
                ImageFormat::Vmdk,
            ),
            (
                DiskFormat::Vhd {
                    subformat: VhdSubformat::Fixed,
                },
                ImageFormat::Vhd,
            ),
            (
                DiskFormat::Vhd {
                    subformat: VhdSubformat::Dynamic,
                },
                ImageFormat::Vhd,
            ),
        ];
        for (i, (f, want)) in cases.into_iter().enumerate() {
            let dest = dir.path().join(format!("{i}.img"));
            convert(&raw, &f, &dest, &Stamp::default()).unwrap();
            assert_eq!(ImageFormat::detect(&dest).unwrap(), want, "{f}");
        }
        let xz = dir.path().join("x.xz");
        crate::xz_compress(&raw, &xz, 1, 0, None).unwrap();
        assert_eq!(ImageFormat::detect(&xz).unwrap(), ImageFormat::Xz);
        assert!(ImageFormat::Xz.is_packed());
        let back = tempfile::tempdir().unwrap();
        let unpacked = unpack(&xz, ImageFormat::Xz, back.path()).unwrap();
        assert_eq!(
            std::fs::read(&unpacked).unwrap(),
            std::fs::read(&raw).unwrap()
        );
        assert!(unpack(&raw, ImageFormat::Raw, back.path()).is_err());
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(ImageFormat::detect(&empty).unwrap(), ImageFormat::Raw);
        assert!(ImageFormat::detect(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_gzip_that_is_not_a_gce_tarball_is_named() {
        let d = tempfile::tempdir().unwrap();
        let bad = d.path().join("x.tar.gz");
        std::fs::write(&bad, b"\x1f\x8b not really").unwrap();
        assert_eq!(ImageFormat::detect(&bad).unwrap(), ImageFormat::Gzip);
        let e = format!(
            "{:#}",
            unpack(&bad, ImageFormat::Gzip, d.path()).unwrap_err()
        );
        assert!(e.contains("is it a GCE tarball holding disk.raw?"), "{e}");
        assert!(e.contains("exit status: 2"), "{e}");
    }

    #[test]
    fn a_qcow2_working_copy_replaces_the_original_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 << 20);
        let q = dir.path().join("disk.qcow2");
        convert(
            &raw,
            &DiskFormat::Qcow2 {
                compat: Qcow2Compat::V2,
            },
            &q,
            &Stamp::default(),
        )
        .unwrap();
        let before = std::fs::read(&q).unwrap();
        let w = WorkingCopy::open(&q, "test").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(w.raw())
            .unwrap()
            .write_all_at(b"changed", 4096)
            .unwrap();
        w.finish(false).unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), before);
        let w = WorkingCopy::open(&q, "test").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(w.raw())
            .unwrap()
            .write_all_at(b"changed", 4096)
            .unwrap();
        w.finish(true).unwrap();
        let info = qemu_img::info(&q, "qcow2").unwrap();
        assert_eq!(info.qcow2_compat(), Some("0.10"));
        let w = WorkingCopy::open(&q, "test").unwrap();
        let mut got = [0u8; 7];
        File::open(w.raw())
            .unwrap()
            .read_exact_at(&mut got, 4096)
            .unwrap();
        assert_eq!(&got, b"changed");
        // Nothing left beside the image.
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let vmdk = dir.path().join("d.vmdk");
        convert(
            &raw,
            &DiskFormat::Vmdk {
                subformat: VmdkSubformat::MonolithicSparse,
                adapter: VmdkAdapter::Lsilogic,
            },
            &vmdk,
            &Stamp::default(),
        )
        .unwrap();
        let e = WorkingCopy::open(&vmdk, "kiln slot")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("is vmdk: kiln slot works on raw and qcow2"),
            "{e}"
        );
    }

    #[test]
    fn a_sparse_view_holds_the_sectors_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let raw = make_raw(dir.path(), 4 << 20);
        let q = dir.path().join("disk.qcow2");
        convert(&raw, &DiskFormat::qcow2(), &q, &Stamp::default()).unwrap();
        let work = tempfile::tempdir().unwrap();
        let v = SparseView::gpt(&q, ImageFormat::Qcow2, work.path()).unwrap();
        let want = std::fs::read(&raw).unwrap();
        let got = std::fs::read(v.path()).unwrap();
        assert_eq!(got.len(), want.len());
        // First and last sectors copied; the middle one only once asked for.
        assert_eq!(got[..512], want[..512]);
        assert_eq!(got[got.len() - 512..], want[want.len() - 512..]);
        let mid = (want.len() / 2) & !511;
        assert!(got[mid..mid + 512].iter().all(|&b| b == 0));
        v.copy(mid as u64 / 512, mid as u64 / 512 + 1).unwrap();
        let got = std::fs::read(v.path()).unwrap();
        assert_eq!(got[mid..mid + 512], want[mid..mid + 512]);
        assert!(SparseView::gpt(&raw, ImageFormat::Raw, work.path()).is_err());
    }
}
