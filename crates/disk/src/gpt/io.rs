//! Sector-addressed reads and writes on a seekable device.

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{Context, Result};

use super::SECTOR_SIZE;

fn offset(lba: u64) -> Result<u64> {
    lba.checked_mul(SECTOR_SIZE)
        .with_context(|| format!("LBA {lba} is beyond any addressable byte offset"))
}

pub(crate) fn read_at<D: Read + Seek>(dev: &mut D, lba: u64, buf: &mut [u8]) -> Result<()> {
    let off = offset(lba)?;
    dev.seek(SeekFrom::Start(off))
        .with_context(|| format!("seeking to byte {off}"))?;
    dev.read_exact(buf)
        .with_context(|| format!("reading {} bytes at byte {off}", buf.len()))
}

pub(crate) fn write_at<D: Write + Seek>(dev: &mut D, lba: u64, buf: &[u8]) -> Result<()> {
    let off = offset(lba)?;
    dev.seek(SeekFrom::Start(off))
        .with_context(|| format!("seeking to byte {off}"))?;
    dev.write_all(buf)
        .with_context(|| format!("writing {} bytes at byte {off}", buf.len()))
}
