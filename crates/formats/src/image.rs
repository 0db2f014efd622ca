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
        let len = f.metadata()?.len();
        let mut tail = [0u8; 8];
        if len >= 512 {
            f.seek(SeekFrom::Start(len - 512))?;
            f.read_exact(&mut tail)?;
        }
        Ok(Self::from_bytes(&head, (len >= 512).then_some(&tail[..])))
    }

    /// The format of a file whose first (up to) 512 bytes are `head` and whose last 512-byte
    /// sector starts with `tail` (none for a shorter file).
    pub fn from_bytes(head: &[u8], tail: Option<&[u8]>) -> Self {
        if head.starts_with(b"QFI\xfb") {
            return ImageFormat::Qcow2;
        }
        if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
            return ImageFormat::Vmdk;
        }
        // A dynamic VHD has a copy of its footer first; a fixed one only at the end.
        if head.starts_with(b"conectix") || tail.is_some_and(|t| t.starts_with(b"conectix")) {
            return ImageFormat::Vhd;
        }
        if head.starts_with(b"\xfd7zXZ\0") {
            return ImageFormat::Xz;
        }
        if head.starts_with(b"\x1f\x8b") {
            return ImageFormat::Gzip;
        }
        ImageFormat::Raw
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

/// Refuses an image that makes QEMU and qemu-img read other files: a qcow2 with a backing
/// file or an external data file, a VMDK descriptor file (its extents are other files) or one
/// with a parent, a differencing VHD. Such an image can name any host file, whose bytes kiln
/// would then show, copy, or hand to a guest read-write. The headers are checked before any
/// qemu tool opens the image; qemu-img's own account of the files it reads is checked after.
pub fn check_self_contained(path: &Path, format: ImageFormat) -> Result<()> {
    let refuse = |what: String| -> Result<()> {
        bail!(
            "{} is a {format} image that reads other files ({what}): kiln reads only \
             self-contained images (make one with qemu-img convert -O {})",
            path.display(),
            format.qemu_name().unwrap_or("raw")
        )
    };
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = f.metadata()?.len();
    let read_at = |offset: u64, n: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        f.read_exact_at(&mut b, offset)?;
        Ok(b)
    };
    if let Some(what) = header_refusal(format, len, &read_at)? {
        return refuse(what);
    }
    if format.is_packed() || format == ImageFormat::Raw {
        return Ok(());
    }
    let name = format.qemu_name().expect("not packed");
    let others = qemu_img::info(path, name)?.external_files(path);
    if !others.is_empty() {
        return refuse(others.join(", "));
    }
    Ok(())
}

/// What in an image's headers names another file, if anything: the check
/// [`check_self_contained`] makes before any qemu tool opens the file. `read_at(offset, n)`
/// reads `n` bytes of the file (of `len` bytes).
pub fn header_refusal(
    format: ImageFormat,
    len: u64,
    read_at: &dyn Fn(u64, usize) -> Result<Vec<u8>>,
) -> Result<Option<String>> {
    let head = read_at(0, len.min(4096) as usize)?;
    let be64 = |o: usize| {
        head.get(o..o + 8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8")))
    };
    Ok(match format {
        ImageFormat::Qcow2 => {
            // qcow2 v3: incompatible feature bit 2 is an external data file.
            let version = head
                .get(4..8)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4")));
            if be64(8).is_some_and(|o| o != 0) {
                Some("a backing file".into())
            } else if version == Some(3) && be64(72).is_some_and(|f| f & 4 != 0) {
                Some("an external data file".into())
            } else {
                None
            }
        }
        ImageFormat::Vmdk => {
            if head.starts_with(b"# Disk DescriptorFile") {
                Some("a descriptor file, whose extents are other files".into())
            } else if embedded_vmdk_descriptor(&head, read_at)?.lines().any(|l| {
                l.trim_start().starts_with("parentFileNameHint")
                    && l.split_once('=')
                        .is_some_and(|(_, v)| !v.trim().trim_matches('"').is_empty())
            }) {
                Some("a parent disk".into())
            } else {
                None
            }
        }
        ImageFormat::Vhd => {
            // The footer's disk type (offset 60): 4 is a differencing disk, which has a parent.
            let end = if len >= 512 {
                read_at(len - 512, 512)?
            } else {
                Vec::new()
            };
            let footer = if end.starts_with(b"conectix") {
                &end[..]
            } else {
                &head[..]
            };
            (footer.get(60..64) == Some(&4u32.to_be_bytes()[..]))
                .then(|| "a parent disk (a differencing VHD)".into())
        }
        ImageFormat::Raw | ImageFormat::Xz | ImageFormat::Gzip => None,
    })
}

/// The descriptor a sparse VMDK embeds (offset and size in sectors at 28 and 36 of its
/// header), at most 1 MiB.
fn embedded_vmdk_descriptor(
    head: &[u8],
    read_at: &dyn Fn(u64, usize) -> Result<Vec<u8>>,
) -> Result<String> {
    let le64 = |o: usize| {
        head.get(o..o + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")))
    };
    let (offset, sectors) = (le64(28), le64(36));
    if !head.starts_with(b"KDMV") || offset == 0 || sectors == 0 {
        return Ok(String::new());
    }
    if sectors > 2048 {
        bail!("the VMDK's embedded descriptor claims {sectors} sectors; a descriptor is small");
    }
    let d = read_at(offset.saturating_mul(512), sectors as usize * 512)
        .context("the VMDK's embedded descriptor lies past the end of the file")?;
    let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
    Ok(String::from_utf8_lossy(&d[..end]).into_owned())
}

/// Space an unpacked disk leaves free on its filesystem.
const RESERVE: u64 = 512 << 20;

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("{} has a NUL byte", dir.display()))?;
    // SAFETY: statvfs fills a plain struct for a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read the free space of {}", dir.display()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Unpacks a platform's packed disk (.xz, GCE .tar.gz) into `dir/disk.raw`, sparse.
pub fn unpack(image: &Path, format: ImageFormat, dir: &Path) -> Result<PathBuf> {
    let room = free_bytes(dir)?.saturating_sub(RESERVE);
    unpack_within(image, format, dir, room)
}

/// [`unpack`], writing at most `room` bytes of data.
fn unpack_within(image: &Path, format: ImageFormat, dir: &Path, room: u64) -> Result<PathBuf> {
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
            // A small .xz can decompress to far more data than the disk holds: stop short of
            // filling the filesystem (zeros stay holes and cost nothing).
            let mut data = 0u64;
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
                    data += n as u64;
                    if data > room {
                        drop(out);
                        let _ = std::fs::remove_file(&raw);
                        bail!(
                            "{} decompresses to more data than {} has room for ({}, keeping \
                             {} free): it is not a disk kiln can unpack here",
                            image.display(),
                            dir.display(),
                            kiln_fs::mib(room),
                            kiln_fs::mib(RESERVE)
                        );
                    }
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
            // A symlink or hard link named disk.raw would hand another file to QEMU.
            let m = std::fs::symlink_metadata(&raw)
                .with_context(|| format!("{} holds no disk.raw", image.display()))?;
            if !m.file_type().is_file() {
                bail!(
                    "{}: disk.raw is not a regular file (a link or another kind): a GCE image's \
                     only member is the disk itself",
                    image.display()
                );
            }
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
                check_self_contained(path, ImageFormat::Qcow2)?;
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
        let kind = format;
        let format = format
            .qemu_name()
            .filter(|f| *f != "raw")
            .with_context(|| {
                format!("{} is {format}: not a qcow2, vmdk or vhd", image.display())
            })?;
        check_self_contained(image, kind)?;
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

    /// Images that name other files are refused before qemu-img or QEMU reads them, and the
    /// refusal names what they read; kiln's own artifacts pass.
    #[test]
    fn images_that_read_other_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let secret = dir.join("secret.raw");
        std::fs::write(&secret, vec![b's'; 1 << 20]).unwrap();
        let qemu_img = |args: &[&str]| {
            let o = std::process::Command::new("qemu-img")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        };
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "secret.raw",
            "-F",
            "raw",
            "back.qcow2",
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=secret.raw,data_file_raw=on",
            "data.qcow2",
            "1M",
        ]);
        std::fs::write(
            dir.join("desc.vmdk"),
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\nRW 2048 FLAT \"secret.raw\" 0\n",
        )
        .unwrap();
        // A single-file VMDK whose embedded descriptor names a parent.
        let raw = make_raw(dir, 4 << 20);
        let child = dir.join("child.vmdk");
        convert(
            &raw,
            &DiskFormat::Vmdk {
                subformat: VmdkSubformat::MonolithicSparse,
                adapter: VmdkAdapter::Lsilogic,
            },
            &child,
            &Stamp::default(),
        )
        .unwrap();
        let bytes = std::fs::read(&child).unwrap();
        let at = bytes.windows(10).position(|w| w == b"parentCID=").unwrap();
        let mut patched = bytes.clone();
        let hint = b"parentFileNameHint=\"secret.raw\"\n";
        patched.splice(at..at, hint.iter().copied());
        patched.truncate(bytes.len());
        std::fs::write(&child, &patched).unwrap();
        // A differencing VHD: disk type 4 in its footer (checksum made right).
        let vhd = dir.join("diff.vhd");
        convert(
            &raw,
            &DiskFormat::Vhd {
                subformat: VhdSubformat::Fixed,
            },
            &vhd,
            &Stamp::default(),
        )
        .unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&vhd)
            .unwrap();
        let len = f.metadata().unwrap().len();
        let mut footer = [0u8; 512];
        f.read_exact_at(&mut footer, len - 512).unwrap();
        footer[60..64].copy_from_slice(&4u32.to_be_bytes());
        let sum = !footer
            .iter()
            .enumerate()
            .filter(|(i, _)| !(64..68).contains(i))
            .fold(0u32, |a, (_, &b)| a.wrapping_add(b as u32));
        footer[64..68].copy_from_slice(&sum.to_be_bytes());
        f.write_all_at(&footer, len - 512).unwrap();
        for (name, says) in [
            ("back.qcow2", "a backing file"),
            ("data.qcow2", "an external data file"),
            ("desc.vmdk", "a descriptor file"),
            ("child.vmdk", "a parent disk"),
            ("diff.vhd", "a differencing VHD"),
        ] {
            let p = dir.join(name);
            let format = ImageFormat::detect(&p).unwrap();
            let e = check_self_contained(&p, format).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("self-contained"),
                "{name}: {e}"
            );
            // Every reader of images refuses it too.
            let work = tempfile::tempdir().unwrap();
            assert!(SparseView::gpt(&p, format, work.path()).is_err(), "{name}");
            if format == ImageFormat::Qcow2 {
                assert!(WorkingCopy::open(&p, "test").is_err(), "{name}");
            }
        }
        // kiln's own formats pass.
        for (i, f) in [
            DiskFormat::qcow2(),
            DiskFormat::Vmdk {
                subformat: VmdkSubformat::StreamOptimized,
                adapter: VmdkAdapter::Lsilogic,
            },
            DiskFormat::Vhd {
                subformat: VhdSubformat::Dynamic,
            },
        ]
        .iter()
        .enumerate()
        {
            let p = dir.join(format!("own-{i}.img"));
            convert(&raw, f, &p, &Stamp::default()).unwrap();
            check_self_contained(&p, ImageFormat::detect(&p).unwrap()).unwrap();
        }
        // Given relative to the working directory, a VMDK is still its own extent.
        let vmdk = dir.join("own.vmdk");
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
        check_self_contained(&vmdk, ImageFormat::Vmdk).unwrap();
    }

    /// An .xz that decompresses to more data than there is room for stops there and leaves
    /// nothing behind; zeros are holes and do not count.
    #[test]
    fn an_xz_bomb_stops_short_of_filling_the_disk() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data.raw");
        std::fs::write(&data, vec![1u8; 4 << 20]).unwrap();
        let xz = d.path().join("bomb.xz");
        crate::xz_compress(&data, &xz, 1, 6, None).unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = unpack_within(&xz, ImageFormat::Xz, out.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more data than"), "{e}");
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
        // 64 MiB of zeros is only holes.
        let zeros = d.path().join("zeros.raw");
        std::fs::File::create(&zeros)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let zxz = d.path().join("zeros.xz");
        crate::xz_compress(&zeros, &zxz, 1, 0, None).unwrap();
        let raw = unpack_within(&zxz, ImageFormat::Xz, out.path(), 1 << 20).unwrap();
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 64 << 20);
    }

    /// A GCE tarball whose disk.raw is a symlink does not hand its target to QEMU.
    #[test]
    fn a_gce_tarball_with_a_linked_disk_raw_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", src.join("disk.raw")).unwrap();
        let tgz = d.path().join("evil.tar.gz");
        let st = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&src)
            .arg("disk.raw")
            .status()
            .unwrap();
        assert!(st.success());
        let out = tempfile::tempdir().unwrap();
        let e = unpack(&tgz, ImageFormat::Gzip, out.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk.raw is not a regular file"), "{e}");
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
