//! What the image needs of a release channel (see kiln-release for promotion): the signed
//! channel index, read and verified against the image's trusted keys, so the agent can find
//! its update. The index is JSON signed in minisign's format (the signature is checked with
//! minisign-verify, by minisign's author).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const INDEX: &str = "index.json";
pub const INDEX_SIG: &str = "index.json.minisig";
pub const CURRENT: &str = "current";
pub const INDEX_FORMAT: u32 = 1;

/// The update payload as a channel index names it, for the agent to fetch and check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadRef {
    /// Relative to the index: `../../<version>/<file>`.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub sha512: String,
}

/// A channel's index.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub channel: String,
    pub board: String,
    /// Increases by one with every promotion.
    pub seq: u64,
    pub version: String,
    /// The release directory, relative to the index.
    pub release: String,
    pub payload: Option<PayloadRef>,
    /// SHA-256 of the release's (signed) DIGESTS.
    pub digests_sha256: String,
    pub key_id: String,
    /// Earlier current versions, newest first.
    pub history: Vec<String>,
}

/// minisign's key number for a kiln key: the first 8 bytes of the SHA-256 of the public key
/// (the bytes of kiln's key id).
pub fn keynum(pk: &VerifyingKey) -> [u8; 8] {
    let d = Sha256::digest(pk.as_bytes());
    d[..8].try_into().expect("8 bytes")
}

/// Verifies a minisign signature of `data` made by `pk`; returns the trusted comment.
pub fn verify_minisign(pk: &VerifyingKey, data: &[u8], signature: &str) -> Result<String> {
    let mut raw = b"Ed".to_vec();
    raw.extend_from_slice(&keynum(pk));
    raw.extend_from_slice(pk.as_bytes());
    let public = minisign_verify::PublicKey::from_base64(&B64.encode(raw))
        .map_err(|e| anyhow::anyhow!("public key: {e}"))?;
    let sig = minisign_verify::Signature::decode(signature)
        .map_err(|e| anyhow::anyhow!("the signature file is not a minisign signature: {e}"))?;
    public.verify(data, &sig, false).map_err(|e| {
        anyhow::anyhow!(
            "signature does not verify with key {} ({e}): wrong key, or the file was changed",
            crate::keys::key_id(pk)
        )
    })?;
    Ok(sig.trusted_comment().to_string())
}

/// What a channel offers a running system.
#[derive(Debug)]
pub struct Offer {
    pub index: Index,
    /// The payload's path, resolved from the channel directory, when the channel's version
    /// is not the running one.
    pub payload: Option<PathBuf>,
}

/// Reads the channel index in `dir`, checks its signature with one of `trusted` and its board,
/// and says whether it offers something other than `running`.
pub fn check(dir: &Path, trusted: &[VerifyingKey], board: &str, running: &str) -> Result<Offer> {
    let bytes = std::fs::read(dir.join(INDEX))
        .with_context(|| format!("cannot read {}", dir.join(INDEX).display()))?;
    let sig = std::fs::read_to_string(dir.join(INDEX_SIG))
        .with_context(|| format!("the channel index in {} is not signed", dir.display()))?;
    if !trusted
        .iter()
        .any(|k| verify_minisign(k, &bytes, &sig).is_ok())
    {
        bail!(
            "the channel index in {} is not signed by a key this system trusts",
            dir.display()
        );
    }
    let index: Index = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is malformed", dir.join(INDEX).display()))?;
    if index.format != INDEX_FORMAT {
        bail!(
            "channel index format {} (this agent reads {INDEX_FORMAT})",
            index.format
        );
    }
    if index.board != board {
        bail!(
            "the channel is for board {}, this system is {board}",
            index.board
        );
    }
    let payload = match (&index.payload, index.version == running) {
        (Some(p), false) => Some(dir.join(&p.path)),
        _ => None,
    };
    Ok(Offer { index, payload })
}
