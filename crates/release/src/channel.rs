//! Channels: alpha, beta, stable. A release is promoted from one to the next unchanged. Each
//! channel of a board is a signed index naming its current release, with a `current` pointer:
//!
//! ```text
//! <out>/<board>/<version>/...                  releases
//! <out>/<board>/channels/<channel>             symlink to the channel's state directory
//! <out>/<board>/channels/<channel>.<n>/index.json, index.json.minisig, current -> ../../<version>
//! ```
//!
//! A promotion writes a new state directory, then swaps the channel's symlink by rename: a
//! reader of `channels/<channel>/` sees the old state or the new one, never a mix.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::{SigningKey, VerifyingKey};
use kiln_recipe::version::Version;

use crate::release::DIGESTS;
pub use kiln_update::channel::{Index, PayloadRef, CURRENT, INDEX, INDEX_SIG};

/// In promotion order.
pub const CHANNELS: &[&str] = &["alpha", "beta", "stable"];
pub const INDEX_FORMAT: u32 = kiln_update::channel::INDEX_FORMAT;

fn channel_index(name: &str) -> Result<usize> {
    CHANNELS.iter().position(|c| *c == name).with_context(|| {
        format!(
            "unknown channel `{name}`; channels are {} (in promotion order)",
            CHANNELS.join(", ")
        )
    })
}

/// Reads a channel's index through its symlink and checks its signature: None if the channel
/// has never been promoted to.
pub fn read(board_dir: &Path, channel: &str, key: &VerifyingKey) -> Result<Option<Index>> {
    let dir = board_dir.join("channels").join(channel);
    if std::fs::symlink_metadata(&dir).is_err() {
        return Ok(None);
    }
    // Bounded, no symlinked files, both from the one state the channel's symlink names.
    let (text, sig) = kiln_update::channel::ChannelDir::open(&dir)
        .and_then(|d| d.read_signed_index())
        .with_context(|| format!("channel {channel}: cannot read its index"))?;
    let index: Index = serde_json::from_slice(&text)
        .with_context(|| format!("channel {channel}: {INDEX} is malformed"))?;
    let mine = kiln_update::keys::key_id(key);
    if index.key_id != mine {
        bail!(
            "this key (id {mine}) does not match channel {channel}'s public key (id {}): \
             promote with the channel's key",
            index.key_id
        );
    }
    crate::sign::verify(key, &text, &sig)
        .with_context(|| format!("channel {channel}: {INDEX} does not verify"))?;
    Ok(Some(index))
}

/// What a promotion did.
#[derive(Debug)]
pub enum Outcome {
    Promoted {
        from: Option<String>,
        index: Box<Index>,
    },
    AlreadyCurrent,
}

struct Lock(#[allow(dead_code)] std::fs::File);

fn lock(dir: &Path) -> Result<Lock> {
    let f = std::fs::File::create(dir.join(".lock"))?;
    // SAFETY: flock on a descriptor we own; released when the file closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot lock the channels");
    }
    Ok(Lock(f))
}

fn fsync_dir(p: &Path) -> Result<()> {
    std::fs::File::open(p)?.sync_all()?;
    Ok(())
}

/// Promotes release `version` of `board_dir` (`<out>/<board>`) to channel `to`: verifies the
/// release, checks the order of channels and of versions (`force` overrides both), then
/// swaps in the new signed index atomically.
pub fn promote(
    board_dir: &Path,
    version: &str,
    to: &str,
    key: &SigningKey,
    force: bool,
) -> Result<Outcome> {
    let pos = channel_index(to)?;
    let board = board_dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no board name", board_dir.display()))?
        .to_string();
    let wanted = Version::parse(version).context("the version to promote")?;
    let rel_dir = board_dir.join(version);
    if !rel_dir.is_dir() {
        let mut known: Vec<String> = std::fs::read_dir(board_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(DIGESTS).is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        known.sort();
        bail!(
            "no release {version} in {} (releases there: {})",
            board_dir.display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    }
    let public = key.verifying_key();
    let channels = board_dir.join("channels");
    std::fs::create_dir_all(&channels)?;
    let _lock = lock(&channels)?;
    // The channel's key first: a wrong key is named as such, not as a bad release.
    let current = read(board_dir, to, &public)?;
    let report = crate::verify::verify(&rel_dir, &public)?;
    if !report.ok() {
        bail!(
            "release {version} does not verify, so it is not promoted:\n  {}",
            report.problems.join("\n  ")
        );
    }
    let manifest = report
        .manifest
        .context("a verified release has a manifest")?;
    if manifest.board != board {
        bail!(
            "{} holds a release for board {}, not {board}: nothing promoted",
            rel_dir.display(),
            manifest.board
        );
    }
    if manifest.version != version {
        bail!(
            "{} holds release {}, not {version}: nothing promoted",
            rel_dir.display(),
            manifest.version
        );
    }
    if pos > 0 {
        let prev = CHANNELS[pos - 1];
        let was_there = read(board_dir, prev, &public)?
            .is_some_and(|i| i.version == version || i.history.iter().any(|h| h == version));
        if !was_there && !force {
            bail!(
                "{version} has never been in {prev}: promote it to {prev} first \
                 (channels go {}), or skip with --force",
                CHANNELS.join(" → ")
            );
        }
    }
    if let Some(cur) = &current {
        if cur.version == version {
            return Ok(Outcome::AlreadyCurrent);
        }
        let cur_v = Version::parse(&cur.version)?;
        if wanted < cur_v && !force {
            bail!(
                "{to} is at {}, newer than {version}: a downgrade needs --force",
                cur.version
            );
        }
    }

    let payload = match &manifest.payload {
        Some(p) => {
            let a = manifest
                .artifacts
                .iter()
                .find(|a| &a.file == p)
                .with_context(|| {
                    format!("the manifest names payload {p} but lists no such file")
                })?;
            Some(PayloadRef {
                path: format!("../../{version}/{p}"),
                size: a.size,
                sha256: a.sha256.clone(),
                sha512: a.sha512.clone(),
            })
        }
        None => None,
    };
    let digests_sha256 = kiln_host::hash::sha256_file(&rel_dir.join(DIGESTS))?;
    let seq = current.as_ref().map_or(1, |c| c.seq + 1);
    let mut history = Vec::new();
    if let Some(c) = &current {
        history.push(c.version.clone());
        history.extend(c.history.iter().cloned());
    }
    let index = Index {
        format: INDEX_FORMAT,
        channel: to.to_string(),
        board: board.clone(),
        seq,
        version: version.to_string(),
        release: format!("../../{version}"),
        payload,
        digests_sha256,
        key_id: kiln_update::keys::key_id(&public),
        history,
    };

    // The new state, complete and on disk, under a name no reader follows yet.
    let state_name = format!("{to}.{seq}");
    let state = channels.join(&state_name);
    let tmp = channels.join(format!(".{state_name}.tmp-{}", std::process::id()));
    remove_leftovers(&channels, to)?;
    std::fs::create_dir(&tmp)?;
    let json = serde_json::to_string_pretty(&index)? + "\n";
    let sig = crate::sign::sign(
        key,
        json.as_bytes(),
        &format!("channel:{to}\tboard:{board}\tversion:{version}\tseq:{seq}"),
    )?;
    write_synced(&tmp.join(INDEX), json.as_bytes())?;
    write_synced(&tmp.join(INDEX_SIG), sig.as_bytes())?;
    std::os::unix::fs::symlink(format!("../../{version}"), tmp.join(CURRENT))?;
    fsync_dir(&tmp)?;
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    std::fs::rename(&tmp, &state)?;
    fsync_dir(&channels)?;
    failpoint("promote-before-switch");
    // The switch: one rename of a symlink.
    let link_tmp = channels.join(format!(".{to}.link-{}", std::process::id()));
    let _ = std::fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(&state_name, &link_tmp)?;
    std::fs::rename(&link_tmp, channels.join(to))
        .with_context(|| format!("cannot switch channel {to}"))?;
    fsync_dir(&channels)?;
    // States older than the previous one: no reader can be starting on them any more.
    for e in std::fs::read_dir(&channels)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(s) = n
            .strip_prefix(&format!("{to}."))
            .and_then(|s| s.parse::<u64>().ok())
        {
            if s + 1 < seq {
                std::fs::remove_dir_all(e.path())?;
            }
        }
    }
    Ok(Outcome::Promoted {
        from: current.map(|c| c.version),
        index: Box::new(index),
    })
}

/// What an interrupted promotion left: temporary states and links, and state directories
/// newer than the one the channel points to.
fn remove_leftovers(channels: &Path, to: &str) -> Result<()> {
    let live = std::fs::read_link(channels.join(to))
        .ok()
        .and_then(|t| t.to_str().map(String::from));
    let live_seq = live
        .as_deref()
        .and_then(|l| l.strip_prefix(&format!("{to}.")))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    for e in std::fs::read_dir(channels)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let tmp = n.starts_with(&format!(".{to}."));
        let newer = n
            .strip_prefix(&format!("{to}."))
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s > live_seq);
        if tmp || newer {
            let p: PathBuf = e.path();
            if p.symlink_metadata()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

fn write_synced(p: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(p)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Test hook: `KILN_FAILPOINT=<name>` kills the process at that point, as a power cut would.
fn failpoint(name: &str) {
    if std::env::var("KILN_FAILPOINT").as_deref() == Ok(name) {
        eprintln!("kiln: failpoint {name}: stopping here");
        std::process::abort();
    }
}

/// The releases of a board directory and the channels pointing at them.
pub fn status(board_dir: &Path, key: &VerifyingKey) -> Result<Vec<(String, Option<Index>)>> {
    CHANNELS
        .iter()
        .map(|c| Ok((c.to_string(), read(board_dir, c, key)?)))
        .collect()
}
