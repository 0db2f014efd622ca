//! Ed25519 signing keys for update payloads.
//!
//! Private keys are PKCS#8 PEM files (`-----BEGIN PRIVATE KEY-----`), byte for byte what
//! `openssl genpkey -algorithm ed25519` writes; public keys are SPKI PEM
//! (`-----BEGIN PUBLIC KEY-----`), what `openssl pkey -pubout` writes. So keys can be made,
//! inspected and used with openssl as well as with kiln.
//!
//! A key is named by its key id: the first 16 hex digits of the SHA-256 of the 32 raw public
//! key bytes. Payload headers carry it so a verifier can say which key signed a payload.
//!
//! Error messages never contain key material: they name files, modes and key ids only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// Key files are a few hundred bytes; anything much larger is not a key file, and reading it
/// whole would be pointless.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The key id of a public key: the first 16 hex digits of SHA-256 of its 32 raw bytes.
pub fn key_id(k: &VerifyingKey) -> String {
    let digest = Sha256::digest(k.as_bytes());
    hex::encode(&digest[..8])
}

/// Loads a private key from a PKCS#8 PEM file, refusing files that others could read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey> {
    // Check the type before opening: opening a FIFO or device could block or have effects.
    let meta = fs::metadata(path)
        .with_context(|| format!("cannot read signing key {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "signing key {} is not a regular file; give the path of a PKCS#8 PEM key file",
            path.display()
        );
    }
    let mut file =
        File::open(path).with_context(|| format!("cannot open signing key {}", path.display()))?;
    // Check the mode of the file actually opened, so a swap after the check above is caught.
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat signing key {}", path.display()))?;
    check_private_mode(path, &meta)?;
    let text = read_key_text(&mut file, path)?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        // The pkcs8 error describes the problem, never the key bytes.
        anyhow::anyhow!(
            "signing key {} is not an Ed25519 private key in PKCS#8 PEM form \
             (\"-----BEGIN PRIVATE KEY-----\", as `openssl genpkey -algorithm ed25519` \
             writes): {e}",
            path.display()
        )
    })
}

/// A private key given as PEM text (from an environment variable, as CI systems pass
/// secrets). `what` names its origin in errors; the text itself never appears in one.
pub fn parse_signing_pem(text: &str, what: &str) -> Result<SigningKey> {
    SigningKey::from_pkcs8_pem(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "{what} is not an Ed25519 private key in PKCS#8 PEM form \
             (\"-----BEGIN PRIVATE KEY-----\"): {e}"
        )
    })
}

/// A private key readable or writable by group or others is a leaked key waiting to happen.
fn check_private_mode(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if !meta.is_file() {
        bail!("signing key {} is not a regular file", path.display());
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "signing key {} has mode {mode:04o}, so other users may read it; \
             make it private with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Reads a key file into memory that is wiped when dropped.
fn read_key_text(file: &mut File, path: &Path) -> Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read signing key {}", path.display()))?;
    if buf.len() as u64 > MAX_KEY_FILE {
        bail!(
            "signing key {} is larger than {MAX_KEY_FILE} bytes, so it is not a key file",
            path.display()
        );
    }
    let text = std::str::from_utf8(&buf).map_err(|_| {
        anyhow::anyhow!(
            "signing key {} is not text; expected a PKCS#8 PEM file",
            path.display()
        )
    })?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// Makes a new random key and writes it to `path` as PKCS#8 PEM with mode 0600.
///
/// The file appears complete or not at all, and an existing file is never overwritten.
pub fn generate_signing_key(path: &Path) -> Result<SigningKey> {
    if fs::symlink_metadata(path).is_ok() {
        return Err(already_exists(path));
    }
    let key = SigningKey::generate(&mut OsRng);
    let pem = private_pem(&key)?;
    let (mut file, tmp) = create_temp_beside(path)?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    drop(file);
    // A hard link fails if `path` exists, even if it appeared since the check above.
    fs::hard_link(tmp.path(), path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            already_exists(path)
        } else {
            anyhow::Error::new(e).context(format!("cannot create {}", path.display()))
        }
    })?;
    drop(tmp);
    sync_parent_dir(path)?;
    Ok(key)
}

fn already_exists(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} already exists; refusing to overwrite a key (remove it first, or choose another path)",
        path.display()
    )
}

/// PKCS#8 v1 without the optional public key: the exact form `openssl genpkey` writes.
fn private_pem(key: &SigningKey) -> Result<Zeroizing<String>> {
    let bytes = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    bytes
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("cannot encode the new key as PKCS#8 PEM: {e}"))
}

/// The public key as SPKI PEM, as `openssl pkey -pubout` writes it.
pub fn public_pem(k: &VerifyingKey) -> String {
    // Encoding a fixed-size Ed25519 key into a fixed-size SPKI structure has no failure case;
    // the Result only exists because the encoder is generic over key types.
    k.to_public_key_pem(LineEnding::LF)
        .expect("SPKI encoding of a 32-byte Ed25519 key cannot fail")
}

/// Parses an SPKI PEM public key; `what` names its source (a file name) for error messages.
pub fn parse_public_pem(text: &str, what: &str) -> Result<VerifyingKey> {
    if text.contains("PRIVATE KEY-----") {
        bail!(
            "{what} holds a private key, not a public key; never distribute private keys — \
             write the public one with `openssl pkey -in KEY -pubout`"
        );
    }
    let key = VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "{what} is not an Ed25519 public key in PEM form \
             (\"-----BEGIN PUBLIC KEY-----\", as `openssl pkey -pubout` writes): {e}"
        )
    })?;
    // A small-order key would accept forged signatures; no honest key is one.
    if key.is_weak() {
        bail!("{what} is a weak (small-order) Ed25519 public key; it cannot be trusted");
    }
    Ok(key)
}

/// Loads every `*.pub` file in `dir`, sorted by file name. A missing directory has no keys.
pub fn load_verifying_keys(dir: &Path) -> Result<Vec<VerifyingKey>> {
    let mut paths = match public_key_paths(dir) {
        Ok(paths) => paths,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot list trusted keys directory {}", dir.display()))
        }
    };
    paths.sort();
    paths.iter().map(|p| load_verifying_key(p)).collect()
}

/// The `*.pub` entries of a directory, unsorted.
fn public_key_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "pub") {
            paths.push(path);
        }
    }
    Ok(paths)
}

fn load_verifying_key(path: &Path) -> Result<VerifyingKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read public key {}", path.display()))?;
    parse_public_pem(&text, &path.display().to_string())
}

/// A temporary file removed on drop unless it has been linked or renamed into place (after
/// which removing the temporary name is still right).
pub(crate) struct TempPath(PathBuf);

impl TempPath {
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        // Nothing useful can be done if this fails; a NotFound after a rename is expected.
        let _ = fs::remove_file(&self.0);
    }
}

/// Creates a new, empty mode-0600 file next to `path` (same directory, so it can be renamed or
/// linked onto `path` atomically).
pub(crate) fn create_temp_beside(path: &Path) -> Result<(File, TempPath)> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        OsRng.next_u64()
    ));
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    Ok((file, TempPath(tmp)))
}

/// Makes a rename or link in `path`'s directory durable.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    const OPENSSL: &str = "/usr/bin/openssl";

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn key_id_is_16_hex_of_sha256() {
        let k = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
        let id = key_id(&k);
        assert_eq!(id.len(), 16);
        assert_eq!(id, hex::encode(&Sha256::digest(k.as_bytes())[..8]));
    }

    #[test]
    fn generate_then_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let made = generate_signing_key(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let loaded = load_signing_key(&path).unwrap();
        assert_eq!(loaded.to_bytes(), made.to_bytes());
        // Only the key file is left: the temporary is gone.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn generate_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        generate_signing_key(&path).unwrap();
        let before = fs::read(&path).unwrap();
        let err = format!("{:#}", generate_signing_key(&path).unwrap_err());
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn group_readable_key_refused_without_leaking_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        generate_signing_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", load_signing_key(&path).unwrap_err());
        assert!(err.contains("0644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        let text = fs::read_to_string(&path).unwrap();
        let body = text.lines().nth(1).unwrap();
        assert!(!err.contains(body), "error leaks key material: {err}");
    }

    #[test]
    fn non_regular_key_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", load_signing_key(dir.path()).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn malformed_private_key_refused_without_leaking_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n";
        fs::write(&path, secret).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = format!("{:#}", load_signing_key(&path).unwrap_err());
        assert!(err.contains("PKCS#8"), "{err}");
        assert!(!err.contains("U0VDUkVU"), "{err}");
    }

    #[test]
    fn public_pem_round_trip_and_private_key_refused() {
        let k = SigningKey::from_bytes(&[2u8; 32]);
        let vk = k.verifying_key();
        let pem = public_pem(&vk);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(parse_public_pem(&pem, "test").unwrap(), vk);

        let private = private_pem(&k).unwrap();
        let err = format!("{:#}", parse_public_pem(&private, "x.pub").unwrap_err());
        assert!(err.contains("x.pub holds a private key"), "{err}");
        let body = private.lines().nth(1).unwrap();
        assert!(!err.contains(body), "{err}");
    }

    #[test]
    fn verifying_keys_loaded_sorted_and_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_verifying_keys(&dir.path().join("nope"))
            .unwrap()
            .is_empty());
        let a = SigningKey::from_bytes(&[3u8; 32]).verifying_key();
        let b = SigningKey::from_bytes(&[4u8; 32]).verifying_key();
        fs::write(dir.path().join("b.pub"), public_pem(&b)).unwrap();
        fs::write(dir.path().join("a.pub"), public_pem(&a)).unwrap();
        fs::write(dir.path().join("README"), "not a key").unwrap();
        assert_eq!(load_verifying_keys(dir.path()).unwrap(), vec![a, b]);

        fs::write(dir.path().join("c.pub"), "garbage").unwrap();
        let err = format!("{:#}", load_verifying_keys(dir.path()).unwrap_err());
        assert!(err.contains("c.pub"), "{err}");
    }

    /// Runs openssl, failing loudly (not skipping) if it is missing or fails.
    fn openssl(args: &[&str]) -> Vec<u8> {
        assert!(
            Path::new(OPENSSL).exists(),
            "{OPENSSL} is missing: the openssl interop test needs it (install openssl)"
        );
        let out = Command::new(OPENSSL).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn openssl_key_loads_and_public_keys_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("openssl.pem");
        let p = path.to_str().unwrap();
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let key = load_signing_key(&path).unwrap();
        let theirs = String::from_utf8(openssl(&["pkey", "-in", p, "-pubout"])).unwrap();
        assert_eq!(theirs, public_pem(&key.verifying_key()));
        assert_eq!(
            parse_public_pem(&theirs, "openssl").unwrap(),
            key.verifying_key()
        );
    }

    #[test]
    fn our_key_file_is_what_openssl_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.pem");
        let p = path.to_str().unwrap();
        let key = generate_signing_key(&path).unwrap();
        // openssl re-encoding our file gives the same bytes: the same PKCS#8 form.
        assert_eq!(openssl(&["pkey", "-in", p]), fs::read(&path).unwrap());
        let theirs = String::from_utf8(openssl(&["pkey", "-in", p, "-pubout"])).unwrap();
        assert_eq!(theirs, public_pem(&key.verifying_key()));

        // Signatures are pure Ed25519 both ways.
        let msg = dir.path().join("msg");
        fs::write(&msg, b"kiln interop").unwrap();
        let m = msg.to_str().unwrap();
        let sig = dir.path().join("sig");
        fs::write(&sig, key.sign(b"kiln interop").to_bytes()).unwrap();
        let pubf = dir.path().join("kiln.pub");
        fs::write(&pubf, &theirs).unwrap();
        openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            pubf.to_str().unwrap(),
            "-rawin",
            "-in",
            m,
            "-sigfile",
            sig.to_str().unwrap(),
        ]);
        let theirs_sig = openssl(&["pkeyutl", "-sign", "-inkey", p, "-rawin", "-in", m]);
        let theirs_sig = ed25519_dalek::Signature::from_slice(&theirs_sig).unwrap();
        key.verifying_key()
            .verify(b"kiln interop", &theirs_sig)
            .unwrap();
    }
}
