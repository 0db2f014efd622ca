//! Applying an update payload to the passive slot of a kiln disk: an image file (the offline
//! tools) or the running system's disk (the agent). The order makes an interruption
//! harmless: the passive slot is made unbootable before its first byte changes, and is
//! marked to be tried only after its USR, kernel and initramfs are all written and synced.
//!
//! Every writer holds the disk's lock ([`crate::lock`]) for as long as its [`Disk`] is open
//! for writing, and reads the state again before each write: apply, mark-good and set-next
//! on one disk happen one after the other, never interleaved.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ed25519_dalek::VerifyingKey;
use kiln_disk::{Gpt, Slot};
use uuid::Uuid;

use crate::dev::{BlockDev, FileDev, Window};
use crate::esp::Esp;
use crate::payload::{self, Header, SectionName};
use crate::state::{self, SlotState, MAX_FIELD};
use crate::store::{self, Store};
use crate::version::Version;

/// EFI system partition type GUID.
const ESP_TYPE: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);

/// The largest ESP kiln reads. A kiln ESP is 128 MiB; a GPT that claims more (a hostile or
/// broken image: a tiny qcow2 can claim a 1 TiB ESP) is refused before anything is read or
/// copied, since the tools would otherwise copy it out whole.
pub const MAX_ESP_BYTES: u64 = 1 << 30;

/// A byte range on the disk.
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// Finds the ESP and the two USR slots in `gpt` of a disk of `size` bytes, and checks that
/// each lies inside the disk and that the ESP is no larger than [`MAX_ESP_BYTES`]: what every
/// reader checks before it reads a byte of them.
pub fn locate(gpt: &Gpt, size: u64, what: &str) -> Result<(Extent, [Extent; 2])> {
    let find = |pred: &dyn Fn(&kiln_disk::PartitionEntry) -> bool, name: &str| {
        let (n, e) = gpt.partitions().find(|(_, e)| pred(e)).with_context(|| {
            format!("{what}: the GPT has no {name}: this is not a kiln A/B image")
        })?;
        let x = e
            .last_lba
            .checked_add(1)
            .and_then(|end| end.checked_sub(e.first_lba))
            .and_then(|sectors| sectors.checked_mul(512))
            .zip(e.first_lba.checked_mul(512))
            .map(|(len, offset)| Extent { offset, len })
            .filter(|x| x.offset.checked_add(x.len).is_some_and(|end| end <= size))
            .with_context(|| {
                format!(
                    "{what}: GPT partition {n} ({name}, LBA {}..={}) does not lie inside the disk of {size} bytes: refused",
                    e.first_lba, e.last_lba
                )
            })?;
        Ok::<_, anyhow::Error>(x)
    };
    let esp = find(&|e| e.type_guid == ESP_TYPE, "EFI system partition")?;
    if esp.len > MAX_ESP_BYTES {
        bail!(
            "{what}: the GPT's EFI system partition is {} bytes ({} MiB), more than the {} MiB kiln reads: this is not a kiln image (kiln's is 128 MiB), refused before reading it",
            esp.len,
            esp.len >> 20,
            MAX_ESP_BYTES >> 20
        );
    }
    let a = find(
        &|e| e.part_guid == Slot::A.part_guid(),
        &format!("USR-A (partition GUID {})", Slot::A.part_guid()),
    )?;
    let b = find(
        &|e| e.part_guid == Slot::B.part_guid(),
        &format!("USR-B (partition GUID {})", Slot::B.part_guid()),
    )?;
    Ok((esp, [a, b]))
}

/// A kiln disk: its GPT, the ESP, the two USR slots and the slot state's copies.
pub struct Disk {
    dev: Arc<dyn BlockDev>,
    pub what: String,
    pub gpt: Gpt,
    pub esp: Extent,
    usr: [Extent; 2],
    /// The state's copies, found on the ESP when the disk is opened; why not, if they are not.
    store: std::result::Result<Store, String>,
}

impl Disk {
    /// Opens a whole disk (image file or block device) and finds kiln's partitions. Opened
    /// `writable`, it holds the disk's exclusive lock until dropped (waiting for the holder),
    /// so every change to the slot state is one writer's read, check and write.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let file = if writable {
            crate::lock::open_locked(path, true)?
        } else {
            OpenOptions::new()
                .read(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?
        };
        Self::from_file(file, path.display().to_string())
    }

    /// A disk already open (and, for writing, locked with [`crate::lock::open_locked`] by the
    /// caller); `what` names it in messages.
    pub fn from_file(file: File, what: String) -> Result<Self> {
        let dev = FileDev::new(file).with_context(|| format!("cannot find the size of {what}"))?;
        Self::from_dev(Arc::new(dev), &what)
    }

    /// A kiln disk on any [`BlockDev`] (the tests record every write through one). A writer
    /// must hold the disk's lock itself, as [`Disk::open`] does.
    pub fn from_dev(dev: Arc<dyn BlockDev>, what: &str) -> Result<Self> {
        let what = what.to_string();
        let size = dev.len();
        let read = Gpt::read(&mut Window::whole(dev.clone()), size)
            .with_context(|| format!("{what}: no valid GPT: this is not a kiln disk image"))?;
        let gpt = read.gpt;
        let (esp, usr) = locate(&gpt, size, &what)?;
        let store =
            Store::open(dev.clone(), esp.offset, esp.len, &what).map_err(|e| format!("{e:#}"));
        Ok(Self {
            dev,
            what,
            gpt,
            esp,
            usr,
            store,
        })
    }

    pub fn usr(&self, s: Slot) -> Extent {
        match s {
            Slot::A => self.usr[0],
            Slot::B => self.usr[1],
        }
    }

    pub fn open_esp(&self) -> Result<Esp> {
        Esp::open(self.dev.clone(), self.esp.offset, self.esp.len, &self.what)
    }

    /// The slot state's copies.
    pub fn store(&self) -> Result<&Store> {
        self.store.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The state: the valid copy with the highest generation.
    pub fn state(&self) -> Result<SlotState> {
        self.store()?.state()
    }

    /// Both copies, valid or not, and which one is the state.
    pub fn read_store(&self) -> Result<store::Read> {
        self.store()?.read()
    }

    /// Writes the state to the older copy (one sector in place, then a sync).
    pub fn write_state(&self, s: &SlotState) -> Result<()> {
        self.store()?.write(s).map(|_| ())
    }

    pub fn sync(&self) -> Result<()> {
        self.dev
            .sync()
            .with_context(|| format!("cannot sync {}", self.what))
    }

    /// `/usr/lib/os-release` of a slot's USR filesystem, read without mounting: from EROFS by
    /// kiln itself. `Ok(None)` for a filesystem kiln cannot read so (ext4: the caller reads it
    /// with debugfs at [`Disk::usr`]'s offset).
    pub fn usr_os_release(&self, s: Slot) -> Result<Option<String>> {
        let x = self.usr(s);
        let fs = crate::erofs::Erofs::open(self.dev.as_ref(), x.offset, x.len)
            .with_context(|| format!("{}: USR-{s}", self.what))?;
        let Some(fs) = fs else {
            return Ok(None);
        };
        let text = fs
            .read_file("lib/os-release", 64 << 10)
            .with_context(|| format!("{}: USR-{s}: cannot read /usr/lib/os-release", self.what))?
            .with_context(|| format!("{}: USR-{s} has no /usr/lib/os-release", self.what))?;
        String::from_utf8(text)
            .with_context(|| format!("{}: USR-{s}: /usr/lib/os-release is not UTF-8", self.what))
            .map(Some)
    }

    /// The Debian architecture of a slot's kernel on the ESP (from its first 4 KiB).
    pub fn kernel_arch(&self, s: Slot) -> Result<&'static str> {
        let esp = self.open_esp()?;
        let head = esp.read_at_most(&state::kernel_path(s), 4096);
        esp.close()?;
        crate::system::kernel_arch(&head?).with_context(|| {
            format!(
                "{}: /{} is not a Linux kernel kiln knows the architecture of (x86 bzImage, arm64 or RISC-V Image)",
                self.what,
                state::kernel_path(s)
            )
        })
    }

    /// Reads both copies of the state again, lets `change` modify the current one, and
    /// writes it (to the older copy, with the next generation) if `change` says it changed
    /// something or a copy is not valid (the write then goes to that copy and restores it).
    /// On a disk opened for writing the lock is held, so nothing else writes between the
    /// read and the write. Refused when no copy is valid.
    pub fn update_state<T>(
        &self,
        change: impl FnOnce(&mut SlotState) -> Result<(bool, T)>,
    ) -> Result<(SlotState, T)> {
        let r = self.read_store()?;
        let mut st = r.require(&self.what)?;
        let (changed, t) = change(&mut st)?;
        if changed || !r.all_valid() {
            self.write_state(&st)?;
        }
        Ok((st, t))
    }

    /// `mark-good`: the slot reached its ready point. Writes only when something changes
    /// (or a copy of the state is damaged, which the write restores); returns the state and
    /// whether the slot's fields changed. Refused when no copy is valid: see
    /// [`Disk::mark_good_with`].
    pub fn mark_good(&self, s: Slot) -> Result<(SlotState, bool)> {
        let m = self.mark_good_with(s, None)?;
        Ok((m.state, m.changed))
    }

    /// `mark-good` as the running system does it: the state is read again (under the lock);
    /// if no copy is valid, `fresh` (when given) makes the state that is written to every copy
    /// instead, from what the running system knows; otherwise the slot is marked good and the
    /// state written if that changed it or a copy is damaged.
    pub fn mark_good_with(
        &self,
        s: Slot,
        fresh: Option<&dyn Fn() -> Result<SlotState>>,
    ) -> Result<MarkedGood> {
        let r = self.read_store()?;
        let current = match (r.state(), fresh) {
            (Some(st), _) => st.clone(),
            (None, Some(fresh)) => {
                let st = fresh()?;
                self.store()?.rebuild(&st)?;
                return Ok(MarkedGood {
                    state: st,
                    changed: true,
                    repaired: None,
                    rebuilt: Some(r.problems()),
                });
            }
            (None, None) => r.require(&self.what)?,
        };
        let mut st = current;
        let changed = st.mark_good(s)?;
        let repaired = (!r.all_valid()).then(|| r.problems());
        if changed || repaired.is_some() {
            self.write_state(&st)?;
        }
        Ok(MarkedGood {
            state: st,
            changed,
            repaired,
            rebuilt: None,
        })
    }

    /// `set-next`: refuses a slot with nothing installed, which GRUB could not boot.
    pub fn set_next(&self, s: Slot, tries: u8) -> Result<SlotState> {
        check_tries(tries)?;
        // Something in the kernel file, not merely a file: a build makes both slots' files,
        // B's all zeros until its first update.
        let esp = self.open_esp()?;
        let head = esp.read_at_most(&state::kernel_path(s), 4096);
        let has_boot =
            head.is_ok_and(|h| h.iter().any(|&b| b != 0)) && esp.exists(&state::initrd_path(s));
        esp.close()?;
        let (st, ()) = self.update_state(|st| {
            let version = st.get(s).version.clone();
            if !has_boot || version.is_empty() {
                bail!(
                    "{}: USR-{s} holds no installed system (no version in the slot state, or no kernel in /{} on the ESP); apply an update payload to it first",
                    self.what,
                    state::kernel_path(s)
                );
            }
            st.set_next(s, tries, &version)?;
            Ok((true, ()))
        })?;
        Ok(st)
    }
}

/// The size of a slot's file on the ESP, if it is there.
fn slot_file_len(disk: &Disk, path: &str) -> Result<Option<u64>> {
    Ok(
        crate::fat::locate(disk.dev.as_ref(), disk.esp.offset, disk.esp.len, path)
            .with_context(|| format!("{}: cannot read the ESP's directory", disk.what))?
            .map(|f| f.len),
    )
}

/// Overwrites `path` on the ESP in place with `data`, padded with zeros to the file's size,
/// if the file is there and large enough (and, for a kernel, GRUB may load it padded): only
/// the file's own data sectors are written, never a FAT sector or a directory entry. Returns
/// why it did not, if it did not.
fn install_in_place(
    disk: &Disk,
    path: &str,
    data: &[u8],
    is_kernel: bool,
) -> Result<std::result::Result<(), String>> {
    let Some(found) = crate::fat::locate(disk.dev.as_ref(), disk.esp.offset, disk.esp.len, path)
        .with_context(|| format!("{}: cannot read the ESP's directory", disk.what))?
    else {
        return Ok(Err("no such file on the ESP".into()));
    };
    if data.len() as u64 > found.len {
        return Ok(Err(format!(
            "its {} bytes do not fit the {} of its fixed-size file",
            data.len(),
            found.len
        )));
    }
    if is_kernel {
        if let Some(why) = crate::system::kernel_padding_problem(data, found.len) {
            return Ok(Err(why));
        }
    }
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0usize;
    for &(offset, len) in &found.extents {
        let mut at = 0u64;
        while at < len {
            let left = (len - at) as usize;
            let chunk = if pos < data.len() {
                &data[pos..pos + left.min(data.len() - pos)]
            } else {
                &zeros[..left.min(zeros.len())]
            };
            disk.dev
                .write_all_at(chunk, offset + at)
                .with_context(|| format!("cannot write /{path} on the ESP of {}", disk.what))?;
            at += chunk.len() as u64;
            pos += chunk.len();
        }
    }
    disk.dev
        .sync()
        .with_context(|| format!("cannot write /{path} on the ESP of {}", disk.what))?;
    Ok(Ok(()))
}

/// What [`Disk::mark_good_with`] did.
#[derive(Debug, Clone)]
pub struct MarkedGood {
    pub state: SlotState,
    /// The slot's fields changed (it was not marked good already).
    pub changed: bool,
    /// A copy of the state was not valid and was rewritten: why it was not.
    pub repaired: Option<String>,
    /// No copy was valid, and a fresh state was written to every copy: why none was.
    pub rebuilt: Option<String>,
}

impl MarkedGood {
    /// Something was written to the disk.
    pub fn wrote(&self) -> bool {
        self.changed || self.repaired.is_some() || self.rebuilt.is_some()
    }
}

/// `--tries`: 1 to 15 boots for the new slot to mark itself good.
fn check_tries(tries: u8) -> Result<()> {
    if tries == 0 || tries > MAX_FIELD {
        bail!("--tries {tries}: a slot needs 1 to {MAX_FIELD} tries to prove itself (0 would never boot it)");
    }
    Ok(())
}

/// The system an update is applied beside and keeps: the running slot in the agent, the best
/// slot that booted successfully offline. A payload must be for its OS and architecture, and
/// not older than it.
#[derive(Debug, Clone)]
pub struct Running {
    pub slot: Slot,
    /// `ID` of its /usr/lib/os-release.
    pub os_id: String,
    /// Its Debian architecture (amd64, arm64, ...).
    pub arch: String,
    /// Its version.
    pub version: String,
}

/// How to apply.
#[derive(Debug, Clone)]
pub struct Options {
    /// Boots the new slot gets to mark itself good (1 to 15).
    pub tries: u8,
    /// Install a payload older than the running system.
    pub allow_downgrade: bool,
    /// The payload file as a channel index names it: its SHA-256 and, when known, its size.
    pub expect: Option<Expected>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tries: 1,
            allow_downgrade: false,
            expect: None,
        }
    }
}

/// A payload file's digest, from a channel index or `--expect-sha256`.
#[derive(Debug, Clone)]
pub struct Expected {
    /// 64 lower-case hex digits.
    pub sha256: String,
    pub size: Option<u64>,
}

/// Refuses a payload version below `running` unless `allow_downgrade`, in kiln's version
/// order ([`Version`]). Versions that are not BUILD.BRANCH.PATCH[+suffix] cannot be ordered,
/// so they are refused too unless allowed. Returns a note for the console when allowed.
pub fn check_version_order(
    offered: &str,
    running: &str,
    allow_downgrade: bool,
) -> Result<Option<String>> {
    let (o, r) = match (Version::parse(offered), Version::parse(running)) {
        (Ok(o), Ok(r)) => (o, r),
        (o, _) => {
            let bad = if o.is_err() { offered } else { running };
            let msg = format!(
                "cannot tell whether version {offered} is older than the running {running}: `{bad}` is not BUILD.BRANCH.PATCH[+suffix]"
            );
            if allow_downgrade {
                return Ok(Some(format!(
                    "{msg}; installing anyway (--allow-downgrade)"
                )));
            }
            bail!("{msg}; give --allow-downgrade to install it anyway");
        }
    };
    if o >= r {
        return Ok(None);
    }
    if allow_downgrade {
        return Ok(Some(format!(
            "version {offered} is older than the running {running}: a downgrade, allowed by --allow-downgrade"
        )));
    }
    bail!(
        "version {offered} is older than the running {running}: a downgrade, refused; give --allow-downgrade to install an older version"
    )
}

/// What [`apply`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub slot: Slot,
    pub header: Header,
    pub state: SlotState,
}

/// Verifies `source` completely, then writes it to the slot that is not `running.slot`.
/// `progress` receives one line per step, for a console that shows what is going on.
///
/// `disk` must be open for writing (so its lock is held for the whole apply). Refused before
/// the first write: a running slot that is not known good (the other slot may be the last
/// good system; overwriting it could leave none), a payload for another board, OS or
/// architecture, an older version (unless allowed), one that differs from what a channel
/// index named, and one whose body needs more memory to decompress than the agent allows.
pub fn apply<R: Read + Seek>(
    disk: &Disk,
    source: &mut R,
    trusted: &[VerifyingKey],
    running: &Running,
    opts: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Applied> {
    let tries = opts.tries;
    check_tries(tries)?;
    if let Some(e) = &opts.expect {
        if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "expected payload sha256 {:?} is not 64 hex digits",
                e.sha256
            );
        }
    }
    let active = running.slot;
    let target = active.other();
    let st = disk.state()?;

    // 1. Everything is checked before the first write.
    let kept = st.get(active);
    if kept.priority == 0 || !kept.successful {
        bail!(
            "USR-{active} is not marked good (priority={} tries={} successful={}): it has not reached its ready point, so USR-{target} may be the last good system and an update would overwrite it; refused. If USR-{active} works, mark it good first (kiln-agent mark-good in the running system, kiln slot mark-good IMAGE {} on an image file)",
            kept.priority,
            kept.tries,
            u8::from(kept.successful),
            active.key()
        );
    }
    source.seek(SeekFrom::Start(0))?;
    let opened = payload::open(source, trusted).context("the payload is refused")?;
    let h = opened.header;
    if h.board != st.board {
        bail!(
            "the payload is for board {}, this disk is {}: refused",
            h.board,
            st.board
        );
    }
    if h.os_id != running.os_id {
        bail!(
            "the payload is for OS {:?}, this system is {:?} (ID in /usr/lib/os-release): refused; payloads of another product are never installed, even for the same board",
            h.os_id,
            running.os_id
        );
    }
    if h.arch != running.arch {
        bail!(
            "the payload is for architecture {}, this system is {}: refused",
            h.arch,
            running.arch
        );
    }
    if let Some(note) = check_version_order(&h.version, &running.version, opts.allow_downgrade)
        .context("the payload is refused")?
    {
        progress(&note);
    }
    let size_of = |n: SectionName| -> u64 {
        h.sections
            .iter()
            .find(|s| s.name == n)
            .map_or(0, |s| s.size)
    };
    let slot = disk.usr(target);
    if size_of(SectionName::Usr) > slot.len {
        bail!(
            "the payload's USR image is {} bytes but USR-{target} holds {}: refused",
            size_of(SectionName::Usr),
            slot.len
        );
    }
    // Room on the ESP for the files that will not fit their fixed-size file (written in place,
    // the others need none).
    let mut through_fat: Vec<(String, u64)> = Vec::new();
    for (path, size) in [
        (state::kernel_path(target), size_of(SectionName::Kernel)),
        (state::initrd_path(target), size_of(SectionName::Initramfs)),
    ] {
        if slot_file_len(disk, &path)?.is_none_or(|len| len < size) {
            through_fat.push((path, size));
        }
    }
    if !through_fat.is_empty() {
        let boot_bytes: u64 = through_fat.iter().map(|(_, s)| s).sum();
        let names: Vec<&str> = through_fat.iter().map(|(p, _)| p.as_str()).collect();
        let esp = disk.open_esp()?;
        let room = esp.room_for(&names)?;
        esp.close()?;
        // Each file also needs up to a cluster of slack; 1 MiB covers any FAT cluster size.
        if boot_bytes.saturating_add(1 << 20) > room {
            bail!(
                "the payload's {} need {boot_bytes} bytes but the ESP has {room} free for USR-{target}: refused",
                names.join(" and ")
            );
        }
    }
    progress(&format!(
        "payload {} for {} signed by {}: checking {} MiB",
        h.version,
        h.board,
        h.key_id,
        h.body_size >> 20
    ));
    let body_start = opened.header_bytes_len;
    match &opts.expect {
        Some(e) => {
            let file_size = body_start + h.body_size;
            if e.size.is_some_and(|s| s != file_size) {
                bail!(
                    "the payload is refused: it is {file_size} bytes, the channel index says {}: not the payload the index names",
                    e.size.unwrap_or(0)
                );
            }
            source.seek(SeekFrom::Start(0))?;
            let sha =
                payload::verify_file(source, body_start, &h).context("the payload is refused")?;
            if !sha.eq_ignore_ascii_case(&e.sha256) {
                bail!(
                    "the payload is refused: its sha256 is {sha}, expected {} (from the channel index or --expect-sha256): not the payload the index names",
                    e.sha256.to_ascii_lowercase()
                );
            }
        }
        None => {
            source.seek(SeekFrom::Start(body_start))?;
            payload::verify_body(source, &h).context("the payload is refused")?;
        }
    }
    payload::check_xz_memory(source, body_start, &h).context("the payload is refused")?;

    // 2. The target stops being bootable before it changes (the state read again).
    disk.update_state(|st| {
        st.invalidate(target);
        Ok((true, ()))
    })?;

    // 3. USR straight to the partition; kernel and initramfs (a few MiB) in memory.
    progress(&format!(
        "writing USR-{target} ({} MiB)",
        size_of(SectionName::Usr) >> 20
    ));
    source.seek(SeekFrom::Start(body_start))?;
    let mut usr_written = 0u64;
    let mut next_report = 64u64 << 20;
    let (mut kernel, mut initrd) = (Vec::new(), Vec::new());
    payload::extract(source, &h, &mut |name, bytes| {
        match name {
            SectionName::Usr => {
                disk.dev
                    .write_all_at(bytes, slot.offset + usr_written)
                    .with_context(|| format!("cannot write USR-{target} on {}", disk.what))?;
                usr_written += bytes.len() as u64;
                if usr_written >= next_report {
                    progress(&format!("wrote {} MiB of USR-{target}", usr_written >> 20));
                    next_report += 64 << 20;
                }
            }
            SectionName::Kernel => kernel.extend_from_slice(bytes),
            SectionName::Initramfs => initrd.extend_from_slice(bytes),
        }
        Ok(())
    })?;
    disk.sync()?;

    // 4. The slot's kernel and initramfs on the ESP.
    progress(&format!(
        "installing /{} and /{}",
        state::kernel_path(target),
        state::initrd_path(target)
    ));
    // Clusters a power cut during an earlier install left marked used are freed first, so
    // cuts do not add up to a full ESP.
    let esp = disk.open_esp()?;
    let lost = esp.reclaim_lost_clusters()?;
    esp.close()?;
    if lost > 0 {
        progress(&format!(
            "freed {lost} clusters of the ESP that an interrupted install left behind"
        ));
    }
    // Into the slot's files of fixed size where they are large enough: no FAT sector or
    // directory entry changes. Otherwise (an image whose layout has no fixed slot files, or a
    // kernel larger than its file) the file is replaced through the FAT.
    let mut replace = Vec::new();
    for (path, data, is_kernel) in [
        (state::kernel_path(target), &kernel, true),
        (state::initrd_path(target), &initrd, false),
    ] {
        if let Err(why) = install_in_place(disk, &path, data, is_kernel)? {
            replace.push((path, data, why));
        }
    }
    if !replace.is_empty() {
        let esp = disk.open_esp()?;
        for (path, data, why) in &replace {
            progress(&format!("/{path}: {why}: replacing it through the FAT"));
            esp.replace(path, data)?;
        }
        esp.close()?;
    }
    disk.sync()?;

    // 5. The commit: one write of the state, read again first.
    let (st, ()) = disk.update_state(|st| {
        st.set_next(target, tries, &h.version)?;
        Ok((true, ()))
    })?;
    progress(&format!(
        "USR-{target} holds {} and is tried at the next boot ({tries} {})",
        h.version,
        if tries == 1 { "try" } else { "tries" }
    ));
    Ok(Applied {
        slot: target,
        header: h,
        state: st,
    })
}
