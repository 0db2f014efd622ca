//! Detached signatures in minisign's format (Ed25519 over the BLAKE2b-512 of the file, plus a
//! signed trusted comment), so `minisign -Vm DIGESTS -p key.pub` verifies a release without
//! kiln. kiln's PKCS#8 Ed25519 keys sign them as they are; the minisign key number is the
//! first 8 bytes of the SHA-256 of the public key, as kiln's key id.

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use blake2::{Blake2b512, Digest};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// The signature file's extension: `DIGESTS.minisig`, where `minisign -V` looks by default.
pub const EXT: &str = "minisig";

use kiln_update::channel::keynum;

/// How minisign prints a key number: the 8 bytes as a little-endian u64, upper-case hex.
fn keynum_text(k: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*k))
}

/// A public key file in minisign's format.
pub fn public_key_text(pk: &VerifyingKey) -> String {
    let k = keynum(pk);
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&k);
    raw.extend_from_slice(pk.as_bytes());
    format!(
        "untrusted comment: minisign public key {}\n{}\n",
        keynum_text(&k),
        B64.encode(raw)
    )
}

/// Reads a public key: minisign's format, or kiln's PEM (`kiln key public`).
pub fn parse_public(text: &str, what: &str) -> Result<VerifyingKey> {
    if text.starts_with("untrusted comment:") {
        let line = text
            .lines()
            .nth(1)
            .with_context(|| format!("{what}: a minisign public key has two lines"))?;
        let raw = B64
            .decode(line.trim())
            .with_context(|| format!("{what}: the key line is not base64"))?;
        if raw.len() != 42 || &raw[..2] != b"Ed" {
            bail!("{what}: not an Ed25519 minisign public key");
        }
        let bytes: [u8; 32] = raw[10..].try_into().expect("32 bytes");
        return VerifyingKey::from_bytes(&bytes)
            .with_context(|| format!("{what}: not a valid Ed25519 public key"));
    }
    kiln_update::keys::parse_public_pem(text, what)
}

/// Signs `data`; `trusted_comment` is signed too (one line, no newline).
pub fn sign(key: &SigningKey, data: &[u8], trusted_comment: &str) -> Result<String> {
    if trusted_comment.contains(['\n', '\r']) {
        bail!("a trusted comment is one line");
    }
    let pk = key.verifying_key();
    let k = keynum(&pk);
    let sig = key.sign(&Blake2b512::digest(data)).to_bytes();
    let mut line = b"ED".to_vec();
    line.extend_from_slice(&k);
    line.extend_from_slice(&sig);
    let mut global = sig.to_vec();
    global.extend_from_slice(trusted_comment.as_bytes());
    let global = key.sign(&global).to_bytes();
    Ok(format!(
        "untrusted comment: signature from kiln key {}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
        kiln_update::keys::key_id(&pk),
        B64.encode(line),
        B64.encode(global)
    ))
}

/// Verifies a minisign signature of `data` made by `pk`; returns the trusted comment.
pub fn verify(pk: &VerifyingKey, data: &[u8], signature: &str) -> Result<String> {
    kiln_update::channel::verify_minisign(pk, data, signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_changes() {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let s = sign(&k, b"DIGESTS bytes", "timestamp:1735689600\tfile:DIGESTS").unwrap();
        assert_eq!(s.lines().count(), 4);
        let tc = verify(&k.verifying_key(), b"DIGESTS bytes", &s).unwrap();
        assert_eq!(tc, "timestamp:1735689600\tfile:DIGESTS");
        assert!(verify(&k.verifying_key(), b"DIGESTS bytez", &s).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(verify(&other, b"DIGESTS bytes", &s).is_err());
        // A changed trusted comment breaks the global signature.
        let forged = s.replace("timestamp:1735689600", "timestamp:1735689601");
        assert!(verify(&k.verifying_key(), b"DIGESTS bytes", &forged).is_err());
        // Deterministic: Ed25519 signs the same bytes the same way.
        assert_eq!(
            s,
            sign(&k, b"DIGESTS bytes", "timestamp:1735689600\tfile:DIGESTS").unwrap()
        );
        // The public key file reads back, and so does kiln's PEM.
        let pk = k.verifying_key();
        assert_eq!(parse_public(&public_key_text(&pk), "t").unwrap(), pk);
        let pem = kiln_update::keys::public_pem(&pk);
        assert_eq!(parse_public(&pem, "t").unwrap(), pk);
    }
}
