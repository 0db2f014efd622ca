//! What the image needs of a release channel (see kiln-release for promotion): the signed
//! channel index, read and verified against the image's trusted keys, so the agent can find
//! its update. The index is JSON signed in minisign's format (the signature is checked with
//! minisign-verify, by minisign's author).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
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
/// The most of `index.json` read: its history grows by a version a promotion, and a
/// megabyte holds tens of thousands of them.
pub const MAX_INDEX_BYTES: u64 = 1 << 20;
/// The most of `index.json.minisig` read (one is a few hundred bytes).
pub const MAX_SIG_BYTES: u64 = 16 << 10;
/// Where `kiln-agent update check` keeps the highest `seq` seen per channel, under the
/// system's root (ROOT, which survives updates).
pub const SEQ_DIR: &str = "var/lib/kiln/channels";

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

/// A channel directory opened once: its symlink (how a promotion switches the channel) is
/// followed when it is opened, and everything after is read relative to what it named then,
/// so the index, its signature and the payload all come from one state of the channel.
pub struct ChannelDir {
    dir: File,
    path: PathBuf,
}

impl ChannelDir {
    pub fn open(path: &Path) -> Result<Self> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open the channel directory {}", path.display()))?;
        Ok(Self {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// Opens `rel` (relative to the channel directory) for reading. The last component must
    /// be a regular file, not a symlink (O_NOFOLLOW), a FIFO or a device.
    pub fn open_file(&self, rel: &str) -> Result<File> {
        let shown = self.path.join(rel);
        let c = std::ffi::CString::new(Path::new(rel).as_os_str().as_bytes())
            .with_context(|| format!("{}: a path with a NUL byte", shown.display()))?;
        // SAFETY: openat on a directory descriptor we own with a valid C string; the new
        // descriptor is owned by the File.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                bail!(
                    "{} is a symlink: refused (a channel's files are regular files)",
                    shown.display()
                );
            }
            return Err(e).with_context(|| format!("cannot open {}", shown.display()));
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        let meta = f
            .metadata()
            .with_context(|| format!("cannot stat {}", shown.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file: refused", shown.display());
        }
        Ok(f)
    }

    /// The bytes of `rel`, refused when longer than `max`.
    pub fn read_bounded(&self, rel: &str, max: u64) -> Result<Vec<u8>> {
        let f = self.open_file(rel)?;
        let mut v = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut v)
            .with_context(|| format!("cannot read {}", self.path.join(rel).display()))?;
        if v.len() as u64 > max {
            bail!(
                "{} is larger than the {max} bytes kiln reads of it: refused",
                self.path.join(rel).display()
            );
        }
        Ok(v)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `index.json` and its signature, read bounded; nothing is parsed.
    pub fn read_signed_index(&self) -> Result<(Vec<u8>, String)> {
        let bytes = self.read_bounded(INDEX, MAX_INDEX_BYTES)?;
        let sig = self
            .read_bounded(INDEX_SIG, MAX_SIG_BYTES)
            .with_context(|| {
                format!("the channel index in {} is not signed", self.path.display())
            })?;
        let sig = String::from_utf8(sig)
            .with_context(|| format!("{} is not text", self.path.join(INDEX_SIG).display()))?;
        Ok((bytes, sig))
    }
}

/// The highest `seq` seen per channel, kept in `<root>/var/lib/kiln/channels/<channel>.seq`:
/// an index with a lower one is an old index replayed (a mirror serving a stale channel to
/// hold a machine on a version it has left).
pub struct SeqStore {
    dir: PathBuf,
}

impl SeqStore {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join(SEQ_DIR),
        }
    }

    fn file(&self, channel: &str) -> Result<PathBuf> {
        let ok = !channel.is_empty()
            && channel.len() <= 64
            && channel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            bail!("channel name {channel:?} is not a plain name (letters, digits, - and _)");
        }
        Ok(self.dir.join(format!("{channel}.seq")))
    }

    /// The highest seq recorded for `channel`, if any.
    pub fn get(&self, channel: &str) -> Result<Option<u64>> {
        let p = self.file(channel)?;
        let text = match std::fs::read(&p) {
            Ok(t) if t.len() <= 32 => t,
            Ok(_) => bail!(
                "{} is not a seq number: remove it if it was not written by kiln-agent",
                p.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        let n = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.trim_end_matches('\n').parse::<u64>().ok())
            .with_context(|| {
                format!(
                    "{} is not a seq number: remove it if it was not written by kiln-agent (the next check then trusts any seq)",
                    p.display()
                )
            })?;
        Ok(Some(n))
    }

    /// Refuses `seq` below the recorded one, and records it when higher. Locked, so two
    /// checks at once never record the lower of their two.
    pub fn check_and_record(&self, channel: &str, seq: u64) -> Result<()> {
        let p = self.file(channel)?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let lock =
            File::open(&self.dir).with_context(|| format!("cannot open {}", self.dir.display()))?;
        crate::lock::flock_exclusive(&lock, &self.dir)?;
        match self.get(channel)? {
            Some(seen) if seq < seen => bail!(
                "channel {channel}: the index has seq {seq}, but this system has seen seq {seen} ({}): an older index replayed, refused",
                p.display()
            ),
            Some(seen) if seq == seen => return Ok(()),
            _ => {}
        }
        // Atomically: a new file, synced, renamed over the old, the directory synced.
        let tmp = self
            .dir
            .join(format!(".{channel}.seq.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(format!("{seq}\n").as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)?;
            lock.sync_all()
        };
        write()
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .with_context(|| format!("cannot record seq {seq} in {}", p.display()))
    }
}

/// What a channel offers a running system.
#[derive(Debug)]
pub struct Offer {
    pub index: Index,
    /// The payload's path, relative to the channel directory, when the channel's version is
    /// newer than the running one (or older, with `allow_downgrade`).
    pub payload: Option<String>,
    /// A note for the console (an allowed downgrade).
    pub note: Option<String>,
}

/// Reads the channel index in `dir`, checks its signature with one of `trusted` (parsing
/// only the bytes the signature covers, and checking that the signed trusted comment says the
/// same), its format and board, refuses an index older than one `seen` before (and records
/// a newer one), and says whether it offers something other than `running`. A version below
/// the running one is refused as a downgrade unless `allow_downgrade`.
pub fn check(
    dir: &ChannelDir,
    trusted: &[VerifyingKey],
    board: &str,
    running: &str,
    seen: &SeqStore,
    allow_downgrade: bool,
) -> Result<Offer> {
    let shown = dir.path().display();
    let (bytes, sig) = dir.read_signed_index()?;
    let comment = trusted
        .iter()
        .find_map(|k| verify_minisign(k, &bytes, &sig).ok())
        .with_context(|| {
            format!("the channel index in {shown} is not signed by a key this system trusts")
        })?;
    let index: Index = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}/{INDEX} is malformed", shown))?;
    if index.format != INDEX_FORMAT {
        bail!(
            "channel index format {} (this agent reads {INDEX_FORMAT})",
            index.format
        );
    }
    let want = format!(
        "channel:{}\tboard:{}\tversion:{}\tseq:{}",
        index.channel, index.board, index.version, index.seq
    );
    if comment != want {
        bail!(
            "{shown}: the signature's trusted comment {comment:?} does not describe the index it signs ({want:?}): refused"
        );
    }
    if index.board != board {
        bail!(
            "the channel is for board {}, this system is {board}",
            index.board
        );
    }
    seen.check_and_record(&index.channel, index.seq)?;
    if index.version == running {
        return Ok(Offer {
            index,
            payload: None,
            note: None,
        });
    }
    let note = crate::apply::check_version_order(&index.version, running, allow_downgrade)
        .with_context(|| format!("channel {} offers {}", index.channel, index.version))?;
    let payload = index.payload.as_ref().map(|p| p.path.clone());
    Ok(Offer {
        index,
        payload,
        note,
    })
}
