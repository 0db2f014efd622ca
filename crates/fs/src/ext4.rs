//! ext4 images from a directory with `mke2fs -d`, made repeatable: UUID and hash seed passed in,
//! E2FSPROGS_FAKE_TIME for filesystem times, and a debugfs pass that sets every inode's ctime
//! and atime (mke2fs 1.47.0 copies the host's ctime, which no one can set, and atime, which
//! reading the tree may change).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_host::tools::{self, DEBUGFS, MKE2FS};
use kiln_host::Cmd;
use uuid::Uuid;
use walkdir::WalkDir;

use crate::{mib, tree_footprint};

pub struct Ext4<'a> {
    pub label: &'a str,
    pub uuid: Uuid,
    pub hash_seed: Uuid,
    pub epoch: i64,
    pub size: u64,
    /// Name of the partition, for error messages.
    pub what: &'a str,
    /// Where the content comes from, for error messages (the tree may be a build copy).
    pub origin: &'a str,
}

impl Ext4<'_> {
    /// Builds the filesystem image at `out` (a new file of `self.size` bytes) from `tree`.
    pub fn build(&self, tree: &Path, out: &Path) -> Result<()> {
        tools::check_all(&[MKE2FS, DEBUGFS])?;
        // Leave room for the journal and metadata: mke2fs needs ~5% plus the journal.
        let need = tree_footprint(tree)?;
        let usable = self
            .size
            .saturating_sub(self.size / 20 + journal_bytes(self.size));
        if need > usable {
            bail!(
                "{}: content of {} needs about {} but the {} partition is {} ({} usable for files); \
                 remove content or give the partition more space in the layout",
                self.what,
                self.origin,
                mib(need),
                self.what,
                mib(self.size),
                mib(usable)
            );
        }
        let f = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        f.set_len(self.size)?;
        drop(f);
        let epoch = self.epoch.to_string();
        Cmd::new(MKE2FS)
            .env("E2FSPROGS_FAKE_TIME", &epoch)
            .env("MKE2FS_DEVICE_SECTSIZE", "512")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", self.label])
            .arg("-U")
            .arg(self.uuid.to_string())
            .arg("-E")
            .arg(format!(
                "hash_seed={},root_owner=0:0,nodiscard",
                self.hash_seed
            ))
            .arg("-d")
            .arg(tree)
            .arg(out)
            .what(format!("make the {} filesystem", self.what))
            .run()?;

        // ctime of every inode mke2fs copied from the host.
        let script = out.with_extension("debugfs");
        let mut s = std::io::BufWriter::new(File::create(&script)?);
        for e in WalkDir::new(tree).min_depth(1).follow_links(false) {
            let e = e?;
            let rel = e.path().strip_prefix(tree)?;
            let p = rel.to_str().context("non-UTF-8 path in tree")?;
            if p.contains('"') || p.contains('\n') {
                bail!("{}: path {p:?} has a quote or newline, which kiln cannot put into ext4 repeatably", self.what);
            }
            // atime too: reading the tree (relatime) may have moved it since it was set.
            writeln!(s, "sif \"/{p}\" ctime @{epoch}")?;
            writeln!(s, "sif \"/{p}\" atime @{epoch}")?;
        }
        s.flush()?;
        drop(s);
        let out_dbg = Cmd::new(DEBUGFS)
            .env("E2FSPROGS_FAKE_TIME", &epoch)
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(out)
            .what(format!(
                "set the inode times of the {} filesystem",
                self.what
            ))
            .run()?;
        std::fs::remove_file(&script).ok();
        // debugfs reports per-command failures on stderr but exits 0.
        let err = String::from_utf8_lossy(&out_dbg.stderr);
        if let Some(line) = err
            .lines()
            .find(|l| l.contains("sif:") || l.contains("File not found"))
        {
            bail!("{}: setting inode times failed: {line}", self.what);
        }
        Ok(())
    }
}

fn journal_bytes(size: u64) -> u64 {
    // mke2fs's default journal sizes (ext2fs_default_journal_size), by filesystem blocks.
    let blocks = size / 4096;
    let jblocks = match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        _ => 32768,
    };
    jblocks * 4096
}
