//! `kiln key`, `kiln slot` and `kiln update`: signing keys, the A/B state of image files, and
//! update payloads, for release engineers and tests. Raw images are changed in place (the
//! A/B protocol keeps every step safe to interrupt); qcow2 images go through a raw copy
//! that replaces the original by rename only when the whole operation succeeded.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kiln_formats::{ImageFormat, SparseView, WorkingCopy};
use kiln_host::{tools::DEBUGFS, Cmd};
use kiln_update::apply::{self, Disk, Running};
use kiln_update::payload::{self, Meta};
use kiln_update::state::Slot;
use kiln_update::{keys, system, SigningKey, VerifyingKey};

#[derive(Args, Clone, Default)]
pub struct SigningArgs {
    /// Ed25519 key (PKCS#8 PEM, mode 0600) that signs the update payload; its public half is
    /// installed in the image as the key updates must carry [env: KILN_SIGNING_KEY]. The PEM
    /// text itself may come in KILN_SIGNING_KEY_PEM instead (a CI secret; never an argument,
    /// where other users could read it)
    #[arg(long, value_name = "FILE", env = "KILN_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,

    /// Sign with kiln's INSECURE development key, generated once into the cache directory.
    /// For development and tests only: anyone with the cache can sign updates.
    #[arg(long, conflicts_with = "signing_key")]
    pub dev_key: bool,
}

impl SigningArgs {
    pub fn resolve(&self, cache: &Path) -> Result<Option<kiln_pipeline::Signing>> {
        if let Ok(text) = std::env::var("KILN_SIGNING_KEY_PEM") {
            if self.signing_key.is_some() || self.dev_key {
                anyhow::bail!(
                    "KILN_SIGNING_KEY_PEM and --signing-key/--dev-key both give a key: keep one"
                );
            }
            let key = keys::parse_signing_pem(&text, "KILN_SIGNING_KEY_PEM")?;
            eprintln!(
                "signing with the key in KILN_SIGNING_KEY_PEM (key id {})",
                keys::key_id(&key.verifying_key())
            );
            return Ok(Some(kiln_pipeline::Signing {
                key,
                insecure: false,
            }));
        }
        if let Some(p) = &self.signing_key {
            let key = keys::load_signing_key(p)?;
            eprintln!(
                "signing the update payload with {} (key id {})",
                p.display(),
                keys::key_id(&key.verifying_key())
            );
            return Ok(Some(kiln_pipeline::Signing {
                key,
                insecure: false,
            }));
        }
        if !self.dev_key {
            return Ok(None);
        }
        let dir = cache.join("keys");
        // Two builds starting on one cache must not both generate a key (the second would
        // fail, or sign with a key whose public half the first overwrote): one at a time
        // looks, generates and writes the public half.
        let _one = kiln_host::lock::DirLock::acquire(&dir, "build generating the key in")?;
        let path = dir.join("INSECURE-kiln-development-key.pem");
        let key = if path.exists() {
            keys::load_signing_key(&path)?
        } else {
            keys::generate_signing_key(&path)?
        };
        // Beside it, the public key tests and `kiln update apply --key` need.
        let public = PathBuf::from(format!("{}.pub", path.display()));
        if !public.exists() {
            kiln_host::atomic::write_file_atomic(
                &public,
                keys::public_pem(&key.verifying_key()).as_bytes(),
                0o644,
            )?;
        }
        eprintln!(
            "warning: signing with the INSECURE development key {} (key id {}): images built so trust updates signed by anyone who has this cache",
            path.display(),
            keys::key_id(&key.verifying_key())
        );
        Ok(Some(kiln_pipeline::Signing {
            key,
            insecure: true,
        }))
    }
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Generate an Ed25519 signing key (PKCS#8 PEM, mode 0600) and its public key (FILE.pub).
    Generate { file: PathBuf },
    /// Print the public key (SPKI PEM) of a signing key.
    Public {
        file: PathBuf,
        /// In minisign's format instead, for `minisign -V` on a release's DIGESTS.
        #[arg(long)]
        minisign: bool,
    },
}

#[derive(Subcommand)]
pub enum SlotCmd {
    /// The A/B state of an image: each slot's priority, tries, success and version, and the
    /// slot the next boot takes.
    Status {
        image: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make a slot the one tried at the next boot, with N tries to mark itself good.
    SetNext {
        image: PathBuf,
        #[arg(value_parser = parse_slot)]
        slot: Slot,
        #[arg(long, default_value_t = 1)]
        tries: u8,
    },
    /// Mark a slot good (successful, no tries left) [default: the slot the next boot takes].
    MarkGood {
        image: PathBuf,
        #[arg(value_parser = parse_slot)]
        slot: Option<Slot>,
    },
}

#[derive(Subcommand)]
pub enum UpdateCmd {
    /// Apply a signed payload to the passive slot of an image (the slot other than the best
    /// one that booted successfully), then mark it to be tried at the next boot.
    Apply {
        image: PathBuf,
        payload: PathBuf,
        /// Public key (SPKI PEM) the payload must be signed with; repeat for several
        /// [env: KILN_UPDATE_KEY]
        #[arg(
            long = "key",
            value_name = "FILE",
            env = "KILN_UPDATE_KEY",
            required = true
        )]
        keys: Vec<PathBuf>,
        /// Boots the new slot gets to mark itself good (1 to 15).
        #[arg(long, default_value_t = 1)]
        tries: u8,
        /// Install a payload older than the slot kept.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Make a payload from a USR image, a kernel and an initramfs (as `kiln build` does).
    Create(Box<CreateArgs>),
    /// Print a payload's header; with --key, also verify its signature and every byte.
    Show {
        payload: PathBuf,
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<PathBuf>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    #[arg(long, value_name = "FILE")]
    usr: PathBuf,
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    #[arg(long, value_name = "FILE")]
    initramfs: PathBuf,
    #[arg(long)]
    board: String,
    #[arg(long, default_value = "amd64")]
    arch: String,
    #[arg(long = "os-version")]
    version: String,
    #[arg(long = "os-id", default_value = "kiln")]
    os_id: String,
    #[arg(long = "os-name", default_value = "Kiln")]
    os_name: String,
    /// Seconds since 1970 recorded as the payload's creation time [env: SOURCE_DATE_EPOCH]
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 315532800)]
    created: i64,
    /// Signing key (PKCS#8 PEM, mode 0600) [env: KILN_SIGNING_KEY]
    #[arg(long, value_name = "FILE", env = "KILN_SIGNING_KEY")]
    signing_key: PathBuf,
    /// The USR image's filesystem, recorded in the header (as `kiln build` records it)
    #[arg(long, value_name = "FS", default_value = "")]
    usr_fs: String,
    /// The kernel's version, recorded in the header
    #[arg(long, value_name = "VERSION", default_value = "")]
    kernel_version: String,
}

fn parse_slot(s: &str) -> Result<Slot, String> {
    s.parse()
}

pub fn key(cmd: KeyCmd) -> Result<i32> {
    match cmd {
        KeyCmd::Generate { file } => {
            let k = keys::generate_signing_key(&file)?;
            let public = keys::public_pem(&k.verifying_key());
            let pub_path = PathBuf::from(format!("{}.pub", file.display()));
            kiln_host::atomic::write_file_atomic(&pub_path, public.as_bytes(), 0o644)?;
            println!(
                "{} (key id {}), public key {}",
                file.display(),
                keys::key_id(&k.verifying_key()),
                pub_path.display()
            );
            Ok(0)
        }
        KeyCmd::Public { file, minisign } => {
            let k = keys::load_signing_key(&file)?;
            if minisign {
                print!(
                    "{}",
                    kiln_release::sign::public_key_text(&k.verifying_key())
                );
            } else {
                print!("{}", keys::public_pem(&k.verifying_key()));
            }
            Ok(0)
        }
    }
}

const WHAT: &str = "kiln slot and kiln update";

/// An image file opened as a raw disk for `kiln slot` and `kiln update`. For writing it holds
/// the image's locks (kiln's flock, and QEMU's write lock: see [`crate::imagelock`]) until
/// dropped, so these commands on one image run one after the other, and never while a VM
/// runs it. A qcow2's GPT is checked before the image is converted to its raw working copy.
pub struct Image {
    pub disk: Disk,
    copy: WorkingCopy,
    _locks: Vec<File>,
}

impl Image {
    pub fn open(image: &Path, writable: bool) -> Result<Self> {
        let format = ImageFormat::detect(image)?;
        let mut locks = Vec::new();
        let raw_lock = match (format, writable) {
            (ImageFormat::Raw, true) => Some(kiln_update::lock::open_locked(image, true)?),
            (ImageFormat::Qcow2, true) => {
                locks.push(kiln_update::lock::open_locked(image, false)?);
                None
            }
            _ => None,
        };
        if writable {
            locks.push(crate::imagelock::refuse_if_in_use_by_qemu(image)?);
        }
        if format == ImageFormat::Qcow2 {
            check_gpt_before_copying(image, format)?;
        }
        let copy = WorkingCopy::open(image, WHAT)?;
        let disk = match raw_lock {
            Some(f) => Disk::from_file(f, image.display().to_string())?,
            None => Disk::open(copy.raw(), writable)?,
        };
        Ok(Self {
            disk,
            copy,
            _locks: locks,
        })
    }

    /// Writes a changed qcow2 back; a raw image was changed in place.
    pub fn finish(self, changed: bool) -> Result<()> {
        let Self { disk, copy, _locks } = self;
        drop(disk);
        copy.finish(changed)
    }
}

/// The GPT sectors of a qcow2, read alone: a GPT whose ESP or slots are out of bounds (a
/// tiny file can claim a 1 TiB ESP) is refused before the whole disk is converted.
fn check_gpt_before_copying(image: &Path, format: ImageFormat) -> Result<()> {
    let tmp = tempfile::tempdir().context("cannot make a temporary directory")?;
    let view = SparseView::gpt(image, format, tmp.path())?;
    let mut f = File::open(view.path())?;
    let size = f.metadata()?.len();
    let gpt = kiln_disk::Gpt::read(&mut f, size)
        .with_context(|| {
            format!(
                "{}: no valid GPT: this is not a kiln disk image",
                image.display()
            )
        })?
        .gpt;
    apply::locate(&gpt, size, &image.display().to_string())?;
    Ok(())
}

/// The slot an offline update keeps, and what it is: the best slot that booted successfully
/// (refused when there is none: an untried slot may not be the fallback), its version from
/// the slot state, its OS id from its own /usr/lib/os-release, its architecture from its
/// kernel on the ESP.
pub fn offline_running(disk: &Disk, image: &Path) -> Result<Running> {
    let st = disk.state()?;
    let slot = st
        .keeper()
        .filter(|&s| st.get(s).successful)
        .with_context(|| {
            format!(
                "no slot of {} has booted successfully, so none can be kept as the fallback: mark the working one good first (kiln slot mark-good {} a|b)",
                image.display(),
                image.display()
            )
        })?;
    let text = match disk.usr_os_release(slot)? {
        Some(t) => t,
        None => {
            // Not EROFS: ext4, read with debugfs at the partition's offset (read-only).
            let x = disk.usr(slot);
            let dev = format!("{}?offset={}", disk.what, x.offset);
            let out = Cmd::new(DEBUGFS)
                .args(["-R", "cat /lib/os-release"])
                .arg(&dev)
                .what(format!(
                    "read /usr/lib/os-release from USR-{slot} of {}",
                    image.display()
                ))
                .run()?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let os_id = system::os_release_field(&text, "ID").with_context(|| {
        format!(
            "{}: USR-{slot} has no ID in /usr/lib/os-release, so the payload's os-id cannot be checked",
            image.display()
        )
    })?;
    Ok(Running {
        slot,
        os_id,
        arch: disk.kernel_arch(slot)?.to_string(),
        version: st.get(slot).version.clone(),
    })
}

/// A warning on stderr for each copy of the slot state that is not valid (the state is the
/// other copy; the next write rewrites the damaged one).
fn warn_invalid_copies(disk: &Disk) -> Result<()> {
    let r = disk.read_store()?;
    for (path, c) in &r.copies {
        if let Err(e) = c {
            eprintln!("warning: the slot state's copy /{path} is not valid: {e}");
        }
    }
    Ok(())
}

pub fn slot(cmd: SlotCmd) -> Result<i32> {
    match cmd {
        SlotCmd::Status { image, json } => {
            let img = Image::open(&image, false)?;
            warn_invalid_copies(&img.disk)?;
            let st = img.disk.state()?;
            if json {
                let v = serde_json::json!({
                    "image": image.display().to_string(),
                    "state": st,
                    "next_boot": st.next_boot(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{st}");
            }
            img.finish(false)?;
        }
        SlotCmd::SetNext { image, slot, tries } => {
            let img = Image::open(&image, true)?;
            warn_invalid_copies(&img.disk)?;
            let st = img.disk.set_next(slot, tries)?;
            img.finish(true)?;
            print!("{st}");
        }
        SlotCmd::MarkGood { image, slot } => {
            let img = Image::open(&image, true)?;
            let slot = match slot {
                Some(s) => s,
                None => {
                    img.disk
                        .state()?
                        .next_boot()
                        .context("no slot is bootable; name the slot to mark good")?
                        .slot
                }
            };
            warn_invalid_copies(&img.disk)?;
            let m = img.disk.mark_good_with(slot, None)?;
            if let Some(why) = &m.repaired {
                eprintln!("rewrote the damaged copy of the slot state ({why})");
            }
            img.finish(m.wrote())?;
            print!("{}", m.state);
        }
    }
    Ok(0)
}

fn trusted(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the public key {}", p.display()))?;
            keys::parse_public_pem(&text, &p.display().to_string())
        })
        .collect()
}

pub fn update(cmd: UpdateCmd) -> Result<i32> {
    match cmd {
        UpdateCmd::Apply {
            image,
            payload: pfile,
            keys: key_files,
            tries,
            allow_downgrade,
        } => {
            let trusted = trusted(&key_files)?;
            let mut src = File::open(&pfile)
                .with_context(|| format!("cannot open the payload {}", pfile.display()))?;
            let img = Image::open(&image, true)?;
            warn_invalid_copies(&img.disk)?;
            // The slot kept is the fallback (the best slot that booted successfully), so an
            // untried update is what gets replaced, never the last known-good system.
            let running = offline_running(&img.disk, &image)?;
            let opts = apply::Options {
                tries,
                allow_downgrade,
                expect: None,
            };
            let applied = apply::apply(&img.disk, &mut src, &trusted, &running, &opts, &mut |m| {
                eprintln!("{m}")
            })?;
            img.finish(true)?;
            println!(
                "applied {} {} to USR-{} of {}",
                applied.header.os_name,
                applied.header.version,
                applied.slot,
                image.display()
            );
            print!("{}", applied.state);
        }
        UpdateCmd::Create(c) => {
            let CreateArgs {
                output,
                usr,
                kernel,
                initramfs,
                board,
                arch,
                version,
                os_id,
                os_name,
                created,
                signing_key,
                usr_fs,
                kernel_version,
            } = *c;
            let key: SigningKey = keys::load_signing_key(&signing_key)?;
            let meta = Meta {
                os_id,
                os_name,
                version,
                board,
                arch,
                created,
            };
            // The build's own payload writer: the same files give the same bytes.
            let h = kiln_pipeline::stages::payload::create(
                &output,
                &meta,
                &usr,
                (&kernel, &kernel_version),
                &initramfs,
                &usr_fs,
                &key,
                None,
            )?;
            println!(
                "{}: {} {} for {}, {} bytes compressed",
                output.display(),
                h.os_name,
                h.version,
                h.board,
                h.body_size
            );
        }
        UpdateCmd::Show {
            payload: pfile,
            keys: key_files,
        } => {
            if key_files.is_empty() {
                let h = payload::read_header_unverified(&pfile)?;
                println!("{}", serde_json::to_string_pretty(&h)?);
                eprintln!("(not verified: give --key FILE to check the signature and the body)");
            } else {
                let trusted = trusted(&key_files)?;
                let mut f = File::open(&pfile)
                    .with_context(|| format!("cannot open {}", pfile.display()))?;
                let o = payload::open(&mut f, &trusted)?;
                payload::verify_body(&mut f, &o.header)?;
                println!("{}", serde_json::to_string_pretty(&o.header)?);
                eprintln!(
                    "verified: signed by key {}, body sha256 matches",
                    o.header.key_id
                );
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds starting together on one cache all sign with the one development key: none
    /// fails because another generated it first, and the public half is that key's.
    #[test]
    fn concurrent_builds_share_one_generated_dev_key() {
        for _ in 0..5 {
            let d = tempfile::tempdir().unwrap();
            let args = SigningArgs {
                signing_key: None,
                dev_key: true,
            };
            let barrier = std::sync::Barrier::new(8);
            let ids: Vec<String> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let k = args.resolve(d.path()).expect("dev key").expect("a key");
                            keys::key_id(&k.key.verifying_key())
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
            let public = d.path().join("keys/INSECURE-kiln-development-key.pem.pub");
            let text = std::fs::read_to_string(public).unwrap();
            assert!(text.contains("PUBLIC KEY"), "{text}");
        }
    }
}
