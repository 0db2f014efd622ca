//! Writing a payload: the sections concatenated and compressed into the body, the header that
//! pins them, the signature over the header, all into a temporary file renamed onto `out`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::{Signer, SigningKey};

use super::read::check_sections;
use super::*;
use crate::keys::{create_temp_beside, key_id, sync_parent_dir};

/// Writes a signed payload to `out` from the section files, which must be usr, kernel,
/// initramfs in that order, each with its detail string.
///
/// `compress(raw, body)` turns the raw concatenation of the sections into the xz body; `body`
/// is an existing empty file it may overwrite (kiln's is `kiln_formats::xz_compress`, which
/// `kiln-pipeline`'s payload stage calls). Temporary files
/// live next to `out`; `out` is replaced atomically and never left half-written.
pub fn create(
    out: &Path,
    meta: &Meta,
    sections: &[(SectionName, &Path, String)],
    key: &SigningKey,
    compress: &dyn Fn(&Path, &Path) -> Result<()>,
) -> Result<Header> {
    check_sections(sections.iter().map(|s| s.0))
        .context("cannot create the update payload: wrong sections")?;
    let (raw_file, raw) = create_temp_beside(out)?;
    let sections = concatenate_sections(raw_file, sections)?;
    let (_, body) = create_temp_beside(out)?;
    compress(raw.path(), body.path()).context("cannot compress the update payload body")?;
    drop(raw);
    let (body_size, body_sha256) = hash_body(body.path())?;
    let header = Header {
        format: FORMAT_VERSION,
        os_id: meta.os_id.clone(),
        os_name: meta.os_name.clone(),
        version: meta.version.clone(),
        board: meta.board.clone(),
        arch: meta.arch.clone(),
        created: meta.created,
        key_id: key_id(&key.verifying_key()),
        body_size,
        body_sha256,
        sections,
    };
    write_payload(out, &header, key, body.path())?;
    Ok(header)
}

/// Copies each section file into `raw`, hashing it on the way.
fn concatenate_sections(
    raw: File,
    sections: &[(SectionName, &Path, String)],
) -> Result<Vec<Section>> {
    let mut w = BufWriter::with_capacity(CHUNK, raw);
    let mut out = Vec::with_capacity(sections.len());
    for (name, path, detail) in sections {
        let mut src = File::open(path)
            .with_context(|| format!("cannot open the {name} section {}", path.display()))?;
        let (size, sha256) = copy_hashing(&mut src, &mut w)
            .with_context(|| format!("cannot copy the {name} section {}", path.display()))?;
        out.push(Section {
            name: *name,
            size,
            sha256,
            detail: detail.clone(),
        });
    }
    w.flush()
        .context("cannot write the uncompressed payload body")?;
    Ok(out)
}

/// Size and sha256 of the compressed body, after checking it is xz data at all.
fn hash_body(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path)
        .with_context(|| format!("cannot open the compressed body {}", path.display()))?;
    let mut magic = [0u8; XZ_MAGIC.len()];
    let n = read_full(&mut f, &mut magic)
        .with_context(|| format!("cannot read the compressed body {}", path.display()))?;
    if n < magic.len() || magic != XZ_MAGIC {
        bail!(
            "the compressor did not write xz data; the payload body must be .xz \
             (check the compress step)"
        );
    }
    f.seek(SeekFrom::Start(0))
        .with_context(|| format!("cannot rewind {}", path.display()))?;
    copy_hashing(&mut f, &mut io::sink())
        .with_context(|| format!("cannot read the compressed body {}", path.display()))
}

/// Writes magic, header, signature and body to a temporary file and renames it onto `out`.
fn write_payload(out: &Path, header: &Header, key: &SigningKey, body: &Path) -> Result<()> {
    let signed = signed_part(header)?;
    let signature = key.sign(&signed);
    let mut src = File::open(body)
        .with_context(|| format!("cannot open the compressed body {}", body.display()))?;
    let (file, tmp) = create_temp_beside(out)?;
    let mut w = BufWriter::with_capacity(CHUNK, file);
    w.write_all(&signed)
        .and_then(|()| w.write_all(&signature.to_bytes()))
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    // Hash again while copying: the body must be exactly what the header signed.
    let (size, sha256) = copy_hashing(&mut src, &mut w)
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    if size != header.body_size || sha256 != header.body_sha256 {
        bail!(
            "the compressed body changed while the payload was written; \
             is the compressor still running?"
        );
    }
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    // A payload is not secret: readable by all, like any other build output.
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    fs::rename(tmp.path(), out).with_context(|| format!("cannot create {}", out.display()))?;
    sync_parent_dir(out)
}

/// Bytes [0, 16+H): magic, version, header length and header JSON.
fn signed_part(header: &Header) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(header).context("cannot encode the payload header")?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n <= MAX_HEADER_LEN)
        .ok_or_else(|| {
            anyhow!(
                "the payload header is {} bytes, more than the {MAX_HEADER_LEN} the format allows; \
                 shorten the OS metadata or section details",
                json.len()
            )
        })?;
    let mut out = Vec::with_capacity(PREAMBLE_LEN + json.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}
