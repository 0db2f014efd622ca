//! `kiln verify` and `kiln release promote|status` (a release build is `kiln build --release`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_release::{channel, sign, verify};

/// A public key for verifying: a public key file (minisign or PEM), or the public half of a
/// signing key (--signing-key, KILN_SIGNING_KEY, KILN_SIGNING_KEY_PEM).
#[derive(clap::Args)]
pub struct KeyArgs {
    /// Public key file: minisign's format or kiln's PEM (`kiln key public`).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    #[command(flatten)]
    signing: crate::update::SigningArgs,
}

impl KeyArgs {
    fn public(&self, cache: &Path) -> Result<kiln_update::VerifyingKey> {
        if let Some(p) = &self.key {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read public key {}", p.display()))?;
            return sign::parse_public(&text, &p.display().to_string());
        }
        match self.signing.resolve(cache)? {
            Some(s) => Ok(s.key.verifying_key()),
            None => bail!(
                "no key to verify with: give --key PUBLIC_KEY (minisign or PEM), or a signing key"
            ),
        }
    }
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A release directory (<out>/<board>/<version>).
    dir: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
}

pub fn verify_cmd(a: VerifyArgs) -> Result<i32> {
    let key = a.key.public(&kiln_pipeline::CacheDirs::default_root())?;
    let start = std::time::Instant::now();
    let r = verify::verify(&a.dir, &key)?;
    for p in &r.problems {
        println!("{p}");
    }
    if !r.ok() {
        eprintln!(
            "{}: {} problem(s); the release does not verify",
            a.dir.display(),
            r.problems.len()
        );
        return Ok(1);
    }
    let m = r
        .manifest
        .as_ref()
        .expect("a verified release has a manifest");
    println!(
        "{}: ok: {} {} for {} ({} files, {:.1} MiB, signed by key {}) in {:.2} s",
        a.dir.display(),
        m.name,
        m.version,
        m.board,
        r.files,
        r.bytes as f64 / 1048576.0,
        m.signing_key_id,
        start.elapsed().as_secs_f64()
    );
    Ok(0)
}

#[derive(clap::Subcommand)]
pub enum ReleaseCmd {
    /// Promote a release to a channel (alpha → beta → stable): verify it, check the channel
    /// order and that it is not a downgrade, then switch the channel's signed index at once.
    Promote {
        version: String,
        /// The channel: alpha, beta or stable.
        #[arg(long, value_name = "CHANNEL")]
        to: String,
        /// Skip a channel, or go back to an older version.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        place: Place,
        #[command(flatten)]
        signing: crate::update::SigningArgs,
    },
    /// Each channel's current version.
    Status {
        #[command(flatten)]
        place: Place,
        #[command(flatten)]
        key: KeyArgs,
    },
}

#[derive(clap::Args)]
pub struct Place {
    /// The release root (what `kiln build --release --output` was given).
    #[arg(short, long, default_value = "out", value_name = "DIR")]
    output: PathBuf,
    /// The board [default: the only board directory in the release root]
    #[arg(long)]
    board: Option<String>,
}

impl Place {
    fn board_dir(&self) -> Result<PathBuf> {
        if let Some(b) = &self.board {
            let d = self.output.join(b);
            if !d.is_dir() {
                bail!("no board {b} in {}", self.output.display());
            }
            return Ok(d);
        }
        let boards: Vec<PathBuf> = std::fs::read_dir(&self.output)
            .with_context(|| format!("cannot read release root {}", self.output.display()))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        match boards.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("no board directory in {}", self.output.display()),
            _ => bail!(
                "several boards in {}: say which with --board",
                self.output.display()
            ),
        }
    }
}

pub fn release_cmd(c: ReleaseCmd) -> Result<i32> {
    let cache = kiln_pipeline::CacheDirs::default_root();
    match c {
        ReleaseCmd::Promote {
            version,
            to,
            force,
            place,
            signing,
        } => {
            let key = signing.resolve(&cache)?.context(
                "promoting signs the channel index: give --signing-key FILE (or \
                 KILN_SIGNING_KEY / KILN_SIGNING_KEY_PEM)",
            )?;
            match channel::promote(&place.board_dir()?, &version, &to, &key.key, force)? {
                channel::Outcome::AlreadyCurrent => {
                    println!("{to} is already at {version}: nothing changed");
                }
                channel::Outcome::Promoted { from, index } => println!(
                    "{to}: {} → {version} (index seq {})",
                    from.as_deref().unwrap_or("(new channel)"),
                    index.seq
                ),
            }
            Ok(0)
        }
        ReleaseCmd::Status { place, key } => {
            let k = key.public(&cache)?;
            for (c, i) in channel::status(&place.board_dir()?, &k)? {
                match i {
                    Some(i) => println!("{c}: {} (seq {})", i.version, i.seq),
                    None => println!("{c}: (empty)"),
                }
            }
            Ok(0)
        }
    }
}
