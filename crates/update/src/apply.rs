//! Applying an update payload to the passive slot of a kiln disk: an image file (the offline
//! tools) or the running system's disk (the agent). The order makes an interruption
//! harmless: the passive slot is made unbootable before its first byte changes, and is
//! marked to be tried only after its USR, kernel and initramfs are all written and synced.

use std::fs::OpenOptions;
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
use crate::state::{self, SlotState};
use crate::store::{self, Store};

/// EFI system partition type GUID.
const ESP_TYPE: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);

/// A byte range on the disk.
#[derive(Debug, Clone, Copy)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
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
    /// Opens a whole disk (image file or block device) and finds kiln's partitions.
    pub fn open(path: &Path, writable: bool) -> Result<Self> {
        let what = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .with_context(|| format!("cannot open {what}"))?;
        let dev = FileDev::new(file).with_context(|| format!("cannot find the size of {what}"))?;
        Self::from_dev(Arc::new(dev), &what)
    }

    /// A kiln disk on any [`BlockDev`] (the tests record every write through one).
    pub fn from_dev(dev: Arc<dyn BlockDev>, what: &str) -> Result<Self> {
        let what = what.to_string();
        let size = dev.len();
        let read = Gpt::read(&mut Window::whole(dev.clone()), size)
            .with_context(|| format!("{what}: no valid GPT: this is not a kiln disk image"))?;
        let gpt = read.gpt;
        let find = |pred: &dyn Fn(&kiln_disk::PartitionEntry) -> bool, name: &str| {
            gpt.partitions()
                .find(|(_, e)| pred(e))
                .map(|(_, e)| Extent {
                    offset: e.first_lba * 512,
                    len: (e.last_lba + 1 - e.first_lba) * 512,
                })
                .with_context(|| {
                    format!("{what}: the GPT has no {name}: this is not a kiln A/B image")
                })
        };
        let esp = find(&|e| e.type_guid == ESP_TYPE, "EFI system partition")?;
        let a = find(
            &|e| e.part_guid == Slot::A.part_guid(),
            &format!("USR-A (partition GUID {})", Slot::A.part_guid()),
        )?;
        let b = find(
            &|e| e.part_guid == Slot::B.part_guid(),
            &format!("USR-B (partition GUID {})", Slot::B.part_guid()),
        )?;
        for x in [esp, a, b] {
            if x.offset.checked_add(x.len).is_none_or(|end| end > size) {
                bail!("{what}: a partition ends past the end of the disk");
            }
        }
        let store =
            Store::open(dev.clone(), esp.offset, esp.len, &what).map_err(|e| format!("{e:#}"));
        Ok(Self {
            dev,
            what,
            gpt,
            esp,
            usr: [a, b],
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

    /// `set-next`: refuses a slot with nothing installed, which GRUB could not boot.
    pub fn set_next(&self, s: Slot, tries: u8) -> Result<SlotState> {
        let mut st = self.state()?;
        let esp = self.open_esp()?;
        let has_boot = esp.exists(&state::kernel_path(s)) && esp.exists(&state::initrd_path(s));
        esp.close()?;
        let version = st.get(s).version.clone();
        if !has_boot || version.is_empty() {
            bail!(
                "{}: USR-{s} holds no installed system (no version in the slot state, or no /{} on the ESP); apply an update payload to it first",
                self.what,
                state::kernel_path(s)
            );
        }
        st.set_next(s, tries, &version)?;
        self.write_state(&st)?;
        Ok(st)
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub slot: Slot,
    pub header: Header,
    pub state: SlotState,
}

/// Verifies `source` completely, then writes it to the slot that is not `active`.
/// `progress` receives one line per step, for a console that shows what is going on.
pub fn apply<R: Read + Seek>(
    disk: &Disk,
    source: &mut R,
    trusted: &[VerifyingKey],
    active: Slot,
    tries: u8,
    progress: &mut dyn FnMut(&str),
) -> Result<Applied> {
    let target = active.other();
    let mut st = disk.state()?;

    // 1. Everything is checked before the first write.
    let opened = payload::open(source, trusted).context("the payload is refused")?;
    let h = opened.header;
    if h.board != st.board {
        bail!(
            "the payload is for board {}, this disk is {}: refused",
            h.board,
            st.board
        );
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
    let boot_bytes = size_of(SectionName::Kernel) + size_of(SectionName::Initramfs);
    {
        let esp = disk.open_esp()?;
        let room = esp.room_for(&[&state::kernel_path(target), &state::initrd_path(target)])?;
        esp.close()?;
        // Each file also needs up to a cluster of slack; 1 MiB covers any FAT cluster size.
        if boot_bytes + (1 << 20) > room {
            bail!(
                "the payload's kernel and initramfs need {boot_bytes} bytes but the ESP has {room} free for USR-{target}: refused"
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
    source.seek(SeekFrom::Start(body_start))?;
    payload::verify_body(source, &h).context("the payload is refused")?;

    // 2. The target stops being bootable before it changes.
    st.invalidate(target);
    disk.write_state(&st)?;

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
    let esp = disk.open_esp()?;
    esp.replace(&state::kernel_path(target), &kernel)?;
    esp.replace(&state::initrd_path(target), &initrd)?;
    esp.close()?;
    disk.sync()?;

    // 5. The commit: one write of the state.
    st.set_next(target, tries, &h.version)?;
    disk.write_state(&st)?;
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
