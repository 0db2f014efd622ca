//! The update payload: this build's USR image, kernel and initramfs, xz-compressed with the
//! chunked, cached compressor of the xz artifacts, and signed.

use std::path::{Path, PathBuf};

use anyhow::Result;
use kiln_recipe::Resolved;
use kiln_update::payload::{self, Meta, SectionName};

use super::initramfs::InitramfsImage;
use super::kernel::KernelFiles;
use super::usr::UsrImage;
use super::{Built, Stage};
use crate::inputs::Inputs;

/// xz preset of the payload body. On the erofs (lz4) USR of the minimal recipe level 1
/// measured 146 MB in 22 s against 131 MB in 92 s at level 6 (2 cores), and xz decompresses
/// both at the same speed.
pub const XZ_LEVEL: u32 = 1;

pub struct Payload<'a> {
    pub recipe: &'a Resolved,
    pub usr: &'a Built<UsrImage>,
    pub kernel: &'a Built<KernelFiles>,
    pub initramfs: &'a Built<InitramfsImage>,
    pub key: &'a kiln_update::SigningKey,
    /// Compressed 16 MiB chunks by content hash. Not an input.
    pub xz_chunks: &'a Path,
}

#[derive(Debug, Clone)]
pub struct PayloadFile {
    pub file: PathBuf,
}

impl Stage for Payload<'_> {
    const NAME: &'static str = "payload";
    type Output = PayloadFile;

    fn inputs(&self) -> Inputs {
        let r = self.recipe;
        Inputs::new()
            .add("usr", &self.usr.key)
            .add("kernel", &self.kernel.key)
            .add("initramfs", &self.initramfs.key)
            .add(
                "os",
                serde_json::to_string(&r.os).expect("plain data serializes"),
            )
            .add("board", &r.board.name)
            .add("epoch", r.source_date_epoch.to_string())
            .add(
                "key",
                kiln_update::keys::public_pem(&self.key.verifying_key()),
            )
            .add("format", payload::FORMAT_VERSION.to_string())
    }

    fn build(&self, out: &Path) -> Result<()> {
        let r = self.recipe;
        let meta = Meta {
            os_id: r.os.id.clone(),
            os_name: r.os.name.clone(),
            version: r.os.version.clone(),
            board: r.board.name.clone(),
            arch: r.board.debian_arch.clone(),
            created: r.source_date_epoch,
        };
        create(
            &out.join("update.payload"),
            &meta,
            &self.usr.image,
            (&self.kernel.vmlinuz, &self.kernel.version),
            &self.initramfs.image,
            r.usr_filesystem.as_str(),
            self.key,
            Some(self.xz_chunks),
        )
        .map(|_| ())
    }

    fn output(&self, dir: &Path) -> Result<PayloadFile> {
        Ok(PayloadFile {
            file: dir.join("update.payload"),
        })
    }
}

/// Makes a payload from its three sections, compressed as `kiln build` compresses them; `kiln
/// update create` makes its payloads with this too, so both give the same bytes.
#[allow(clippy::too_many_arguments)]
pub fn create(
    out: &Path,
    meta: &Meta,
    usr: &Path,
    (kernel, kernel_version): (&Path, &str),
    initramfs: &Path,
    usr_detail: &str,
    key: &kiln_update::SigningKey,
    xz_chunks: Option<&Path>,
) -> Result<payload::Header> {
    let sections = [
        (SectionName::Usr, usr, usr_detail.to_string()),
        (SectionName::Kernel, kernel, kernel_version.to_string()),
        (SectionName::Initramfs, initramfs, String::new()),
    ];
    let compress = |raw: &Path, xz: &Path| -> Result<()> {
        kiln_formats::xz_compress(raw, xz, 0, XZ_LEVEL, xz_chunks)
    };
    payload::create(out, meta, &sections, key, &compress)
}
