//! Writing a whole GPT (protective MBR, both headers, both entry arrays).

use std::io::{Read, Seek, Write};

use anyhow::{Context, Result};

use super::header::Header;
use super::io::{read_at, write_at};
use super::mbr::{self, BOOT_CODE_SIZE};
use super::{Gpt, BACKUP_SECTORS, ENTRY_COUNT, ENTRY_SIZE};

impl Gpt {
    /// Writes the protective MBR, primary and backup GPT to `dev`.
    ///
    /// `boot_code` (at most 440 bytes) goes into the MBR boot-code area.
    /// Everything is encoded and validated before the first write, so bad
    /// input leaves `dev` untouched. The device is not resized; writing the
    /// backup header at the last LBA extends a shorter file.
    pub fn write<D: Write + Seek>(&self, dev: &mut D, boot_code: Option<&[u8]>) -> Result<()> {
        let Encoded {
            mbr,
            array,
            primary,
            backup,
            last_lba,
            backup_array_lba,
        } = self.encoded(boot_code)?;

        // Primary array before its header, then the backup: if we are
        // interrupted, one copy is always either old-and-valid or new-and-valid.
        write_at(dev, 0, &mbr).context("writing protective MBR")?;
        write_at(dev, 2, &array).context("writing primary GPT entry array")?;
        write_at(dev, 1, &primary).context("writing primary GPT header")?;
        write_at(dev, backup_array_lba, &array).context("writing backup GPT entry array")?;
        write_at(dev, last_lba, &backup).context("writing backup GPT header")?;
        dev.flush().context("flushing GPT writes")
    }

    /// Rewrites both GPT copies of an existing image (e.g. after changing a
    /// partition's attributes), keeping the 440 bytes of MBR boot code that
    /// are on disk so an installed bootloader survives.
    pub fn update_entries<D: Read + Write + Seek>(&self, dev: &mut D) -> Result<()> {
        let mut boot_code = [0u8; BOOT_CODE_SIZE];
        read_at(dev, 0, &mut boot_code).context("reading existing MBR boot code")?;
        self.write(dev, Some(&boot_code))
    }

    /// Rewrites both copies on a disk where the primary may be the only valid one (a disk
    /// grown under the table: no backup at its new end). The new backup goes first (entry
    /// array, then header) and is made durable with `sync`; only then the protective MBR and
    /// the primary (array, then header), and `sync` again. A power cut anywhere leaves a valid
    /// copy: the old primary until the first sync completes, the new backup after it. The MBR
    /// boot code on disk is kept.
    pub fn rewrite_backup_first<D: Read + Write + Seek>(
        &self,
        dev: &mut D,
        sync: &mut dyn FnMut(&mut D) -> Result<()>,
    ) -> Result<()> {
        let mut boot_code = [0u8; BOOT_CODE_SIZE];
        read_at(dev, 0, &mut boot_code).context("reading existing MBR boot code")?;
        let Encoded {
            mbr,
            array,
            primary,
            backup,
            last_lba,
            backup_array_lba,
        } = self.encoded(Some(&boot_code))?;
        write_at(dev, backup_array_lba, &array).context("writing backup GPT entry array")?;
        write_at(dev, last_lba, &backup).context("writing backup GPT header")?;
        sync(dev).context("syncing the backup GPT")?;
        write_at(dev, 0, &mbr).context("writing protective MBR")?;
        write_at(dev, 2, &array).context("writing primary GPT entry array")?;
        write_at(dev, 1, &primary).context("writing primary GPT header")?;
        sync(dev).context("syncing the primary GPT")
    }

    /// Everything a write puts on the disk, encoded and validated before the first write.
    fn encoded(&self, boot_code: Option<&[u8]>) -> Result<Encoded> {
        self.validate().context("invalid partition table")?;
        let mbr = mbr::encode(self.disk_sectors, boot_code)?;
        let array = self.encode_entries()?;
        let array_crc = crc32fast::hash(&array);
        let last_lba = self.disk_sectors - 1;
        let backup_array_lba = self.disk_sectors - BACKUP_SECTORS;
        let primary = self.header(1, last_lba, 2, array_crc).encode()?;
        let backup = self
            .header(last_lba, 1, backup_array_lba, array_crc)
            .encode()?;
        Ok(Encoded {
            mbr,
            array,
            primary,
            backup,
            last_lba,
            backup_array_lba,
        })
    }

    fn header(
        &self,
        my_lba: u64,
        alternate_lba: u64,
        entries_lba: u64,
        entries_crc: u32,
    ) -> Header {
        Header {
            my_lba,
            alternate_lba,
            first_usable_lba: self.first_usable_lba(),
            last_usable_lba: self.last_usable_lba(),
            disk_guid: self.disk_guid,
            entries_lba,
            num_entries: ENTRY_COUNT as u32,
            entry_size: ENTRY_SIZE as u32,
            entries_crc,
        }
    }

    /// The 16 KiB entry array; unused entries are all zero.
    pub(crate) fn encode_entries(&self) -> Result<Vec<u8>> {
        let mut array = vec![0u8; ENTRY_COUNT * ENTRY_SIZE];
        for ((slot, entry), n) in array
            .chunks_exact_mut(ENTRY_SIZE)
            .zip(&self.entries)
            .zip(1u32..)
        {
            if let Some(e) = entry {
                slot.copy_from_slice(&e.encode().with_context(|| format!("partition {n}"))?);
            }
        }
        Ok(array)
    }
}

/// The protective MBR, the entry array, both headers and where the backup goes.
struct Encoded {
    mbr: [u8; 512],
    array: Vec<u8>,
    primary: [u8; 512],
    backup: [u8; 512],
    last_lba: u64,
    backup_array_lba: u64,
}
