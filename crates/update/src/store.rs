//! The slot state on a disk: two copies of a GRUB environment block on the ESP
//! ([`ENV_PATHS`]), each with a generation. The copies' sectors are found once through the
//! FAT ([`crate::fat`]) and then read and written directly, as GRUB's `save_env` writes them:
//! a state write changes one sector of one file and never the FAT, a directory or the boot
//! sector. The reader takes the valid copy with the highest generation (the rule GRUB's script
//! follows); the writer writes the other copy with the next generation and syncs, so a write
//! cut short leaves the state as it was before.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::dev::BlockDev;
use crate::fat;
use crate::state::{Parsed, SlotState, ENV_PATHS, ENV_SIZE};

/// One copy: its ESP path and its place on the disk.
#[derive(Debug, Clone)]
pub struct Copy {
    pub path: &'static str,
    pub offset: u64,
}

/// What the copies hold.
#[derive(Debug, Clone)]
pub struct Read {
    /// Per copy, in [`ENV_PATHS`] order: its contents, or why it is not valid.
    pub copies: Vec<(&'static str, std::result::Result<Parsed, String>)>,
    /// The copy that is the state: the valid one with the highest generation (the first on
    /// a tie, as GRUB's script does).
    pub current: Option<usize>,
}

impl Read {
    pub fn state(&self) -> Option<&SlotState> {
        let i = self.current?;
        self.copies[i].1.as_ref().ok().map(|p| &p.state)
    }

    /// The current copy's generation (0 for a block written before generations existed).
    pub fn generation(&self) -> Option<u32> {
        let i = self.current?;
        self.copies[i]
            .1
            .as_ref()
            .ok()
            .map(|p| p.generation.unwrap_or(0))
    }

    /// The current copy's ESP path.
    pub fn current_path(&self) -> Option<&'static str> {
        self.current.map(|i| self.copies[i].0)
    }

    /// Every copy there is is valid.
    pub fn all_valid(&self) -> bool {
        self.copies.iter().all(|(_, c)| c.is_ok())
    }

    /// The state, or an error naming why each copy is not valid (on `what`).
    pub fn require(&self, what: &str) -> Result<SlotState> {
        match self.state() {
            Some(s) => Ok(s.clone()),
            None => bail!(
                "{what}: no valid copy of the slot state ({}); on the running system `kiln-agent repair-state` writes a fresh one",
                self.problems()
            ),
        }
    }

    /// Why no copy is valid, naming each.
    pub fn problems(&self) -> String {
        self.copies
            .iter()
            .filter_map(|(p, c)| c.as_ref().err().map(|e| format!("/{p}: {e}")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The state's copies on one disk.
pub struct Store {
    dev: Arc<dyn BlockDev>,
    what: String,
    copies: Vec<Copy>,
}

impl Store {
    /// Finds the copies on the FAT filesystem of the ESP (`esp_offset`, `esp_len` on `dev`).
    /// Each must be exactly one GRUB environment block in contiguous clusters. The second copy
    /// may be missing (an image made before it existed): the first is then the only one.
    pub fn open(dev: Arc<dyn BlockDev>, esp_offset: u64, esp_len: u64, what: &str) -> Result<Self> {
        let mut copies = Vec::new();
        for (i, path) in ENV_PATHS.iter().enumerate() {
            let not_kiln = || {
                format!(
                    "{what}: this is not a kiln A/B image (kiln keeps the slot state in /{path} on the ESP)"
                )
            };
            let found = match fat::locate(dev.as_ref(), esp_offset, esp_len, path)
                .with_context(|| format!("{what}: the EFI system partition"))
                .with_context(not_kiln)?
            {
                Some(f) => f,
                None if i > 0 => break,
                None => bail!("{}: no /{path} on the ESP", not_kiln()),
            };
            if found.len != ENV_SIZE as u64 {
                bail!(
                    "{what}: /{path} is {} bytes, not {ENV_SIZE}: it is not a GRUB environment block",
                    found.len
                );
            }
            let offset = found.contiguous().with_context(|| {
                format!(
                    "{what}: /{path} is fragmented on the ESP, so kiln cannot write it in place as one block; copy it out and back (mcopy) to make it contiguous"
                )
            })?;
            copies.push(Copy { path, offset });
        }
        Ok(Self {
            dev,
            what: what.to_string(),
            copies,
        })
    }

    pub fn copies(&self) -> &[Copy] {
        &self.copies
    }

    /// Reads every copy. A copy that cannot be read (an I/O error: a bad sector) or is damaged
    /// is reported in [`Read`] as not valid: the other one is still the state, as for GRUB.
    pub fn read(&self) -> Result<Read> {
        let mut copies = Vec::new();
        let mut current: Option<(usize, u32)> = None;
        for (i, c) in self.copies.iter().enumerate() {
            let mut b = vec![0u8; ENV_SIZE];
            let parsed = match self.dev.read_exact_at(&mut b, c.offset) {
                Ok(()) => SlotState::from_env(&b).map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("cannot be read: {e}")),
            };
            // With two copies, only a block with a generation counts: GRUB's script needs it.
            let parsed = match parsed {
                Ok(p) if p.generation.is_none() && self.copies.len() > 1 => {
                    Err("no kiln_gen (written before the state had two copies)".to_string())
                }
                other => other,
            };
            if let Ok(p) = &parsed {
                let g = p.generation.unwrap_or(0);
                if current.is_none_or(|(_, best)| g > best) {
                    current = Some((i, g));
                }
            }
            copies.push((c.path, parsed));
        }
        Ok(Read {
            copies,
            current: current.map(|(i, _)| i),
        })
    }

    /// The state: the valid copy with the highest generation.
    pub fn state(&self) -> Result<SlotState> {
        self.read()?.require(&self.what)
    }

    /// Writes `st` to the copy that is not the current one, with the next generation, and
    /// syncs. Returns the copy's path and generation.
    pub fn write(&self, st: &SlotState) -> Result<(&'static str, u32)> {
        let r = self.read()?;
        let target = match r.current {
            Some(i) => (i + 1) % self.copies.len(),
            None => 0,
        };
        let generation = match r.generation() {
            Some(g) => g
                .checked_add(1)
                .context("the slot state generation overflowed")?,
            None => 1,
        };
        self.write_copy(target, st, generation)?;
        Ok((self.copies[target].path, generation))
    }

    /// Writes `st` to every copy, one after the other with a sync between, each with a
    /// newer generation than any valid copy: for a state that was lost or damaged.
    pub fn rebuild(&self, st: &SlotState) -> Result<u32> {
        let r = self.read()?;
        let mut generation = r.generation().unwrap_or(0);
        // Write the copy that is not current first, so the current one survives a cut.
        let first = r.current.map_or(0, |i| (i + 1) % self.copies.len());
        for k in 0..self.copies.len() {
            generation = generation
                .checked_add(1)
                .context("the slot state generation overflowed")?;
            self.write_copy((first + k) % self.copies.len(), st, generation)?;
        }
        Ok(generation)
    }

    fn write_copy(&self, i: usize, st: &SlotState, generation: u32) -> Result<()> {
        let c = &self.copies[i];
        let block = st.to_env(generation)?;
        self.dev
            .write_all_at(&block, c.offset)
            .with_context(|| format!("{}: cannot write /{}", self.what, c.path))?;
        self.dev
            .sync()
            .with_context(|| format!("cannot sync {}", self.what))
    }
}
