//! The A/B slot state and the rule that picks the slot to boot.
//!
//! The state is a GRUB environment block on the ESP, the only store that stock GRUB 2.06 can
//! both read (`load_env`) and write (`save_env`), and GRUB must write it: a try is used up
//! *before* the new kernel runs, so a kernel that panics still loses its try. It is kept
//! twice, `/kiln/slots.env` and `/kiln/slots-b.env` ([`ENV_PATHS`]), each carrying a
//! generation (`kiln_gen=N` first, `kiln_check=N` last: a copy is valid when both are there and
//! equal). Readers take the valid copy with the highest generation; writers write the other
//! copy with the next generation, so a write cut short leaves the previous state readable. The
//! GPT attribute bits that ChromeOS and CoreOS used are left zero: GRUB cannot read them.
//!
//! Per slot (`a`, `b`): `kiln_<s>_priority` (0..=15, 0 = never boot), `kiln_<s>_tries`
//! (0..=15), `kiln_<s>_successful` (0|1) and `kiln_<s>_version` (informational, shown in the
//! GRUB menu). `kiln_board` names the board the image was built for. GRUB's half of the rule
//! is [`grub_script`]; this module's [`SlotState::next_boot`] is the same rule in Rust, for
//! the tools and the tests. Reading and writing the copies on a disk is [`crate::store`].

use std::fmt;

use anyhow::{bail, Context, Result};
pub use kiln_disk::Slot;
use serde::Serialize;

/// The two copies of the state on the ESP. An image made before the second copy existed has
/// only the first, which is then read and written alone.
pub const ENV_PATHS: [&str; 2] = ["kiln/slots.env", "kiln/slots-b.env"];
/// The first copy, the one an image always has.
pub const ENV_PATH: &str = ENV_PATHS[0];
/// A GRUB environment block is exactly this long (grub-core/lib/envblk.h, `grub-editenv`).
pub const ENV_SIZE: usize = 1024;
/// kiln's variables fit in the block's first sector, so one sector write (which a disk does
/// whole or not at all) replaces them; the second sector is only padding.
pub const ENV_CONTENT_MAX: usize = 512;
/// Generations stay below 2^31: GRUB on i386-pc compares them (`-gt`) as 32-bit longs.
pub const MAX_GENERATION: u32 = i32::MAX as u32;
const ENV_HEADER: &str = "# GRUB Environment Block\n";
/// Largest value of the 4-bit priority and tries fields (kept from the GPT convention).
pub const MAX_FIELD: u8 = 15;

/// ESP paths of a slot's kernel and initramfs.
pub fn kernel_path(s: Slot) -> String {
    format!("kiln/vmlinuz-{}", s.key())
}
pub fn initrd_path(s: Slot) -> String {
    format!("kiln/initrd-{}", s.key())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SlotFields {
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
    /// The OS version installed in the slot, or empty.
    pub version: String,
}

impl SlotFields {
    /// Bootable at all: the rule's candidate test.
    pub fn bootable(&self) -> bool {
        self.priority > 0 && (self.successful || self.tries > 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotState {
    pub board: String,
    pub a: SlotFields,
    pub b: SlotFields,
}

/// What the next boot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub slot: Slot,
    /// Chosen on tries alone: the boot loader uses one up.
    pub consumes_try: bool,
}

impl SlotState {
    /// A fresh image: slot A as the layout declares it, slot B empty.
    pub fn new(board: &str, a: SlotFields) -> Result<Self> {
        let s = Self {
            board: board.to_string(),
            a,
            b: SlotFields::default(),
        };
        s.check()?;
        Ok(s)
    }

    /// A state rebuilt by the running system when every copy was lost: the running slot
    /// good, the other never to boot (nothing says what it holds).
    pub fn recovered(board: &str, running: Slot, version: &str) -> Result<Self> {
        let mut s = Self {
            board: board.to_string(),
            a: SlotFields::default(),
            b: SlotFields::default(),
        };
        *s.get_mut(running) = SlotFields {
            priority: 1,
            tries: 0,
            successful: true,
            version: version.to_string(),
        };
        s.check()?;
        Ok(s)
    }

    pub fn get(&self, s: Slot) -> &SlotFields {
        match s {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    pub fn get_mut(&mut self, s: Slot) -> &mut SlotFields {
        match s {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// The rule: the bootable slot with the highest priority; on a tie, A (the first in
    /// partition order, as `gptprio.next` did). `None` when neither is bootable.
    pub fn next_boot(&self) -> Option<Choice> {
        let mut best: Option<Slot> = None;
        for s in Slot::ALL {
            let f = self.get(s);
            if !f.bootable() {
                continue;
            }
            if best.is_none_or(|b| f.priority > self.get(b).priority) {
                best = Some(s);
            }
        }
        best.map(|slot| Choice {
            slot,
            consumes_try: !self.get(slot).successful,
        })
    }

    /// The slot to keep when updating an image offline: the highest-priority slot that has
    /// booted successfully (the fallback), else the one the next boot takes.
    pub fn keeper(&self) -> Option<Slot> {
        let mut best: Option<Slot> = None;
        for s in Slot::ALL {
            let f = self.get(s);
            if f.priority > 0
                && f.successful
                && best.is_none_or(|b| f.priority > self.get(b).priority)
            {
                best = Some(s);
            }
        }
        best.or_else(|| self.next_boot().map(|c| c.slot))
    }

    /// What GRUB does at boot: pick, and use up a try if picked on tries.
    pub fn boot(&mut self) -> Option<Slot> {
        let c = self.next_boot()?;
        if c.consumes_try {
            let f = self.get_mut(c.slot);
            f.tries = f.tries.saturating_sub(1);
        }
        Some(c.slot)
    }

    /// The slot will not be booted (its content is about to change).
    pub fn invalidate(&mut self, s: Slot) {
        *self.get_mut(s) = SlotFields::default();
    }

    /// After an update: `s` is tried next with `tries` boots to succeed, above the other slot.
    pub fn set_next(&mut self, s: Slot, tries: u8, version: &str) -> Result<()> {
        if tries == 0 || tries > MAX_FIELD {
            bail!("tries must be 1..={MAX_FIELD}, not {tries}");
        }
        check_version(version)?;
        // Priorities 1 and 2 are enough for two slots; normalising keeps them from creeping
        // up to the 4-bit limit after many updates.
        let o = s.other();
        if self.get(o).priority > 0 {
            self.get_mut(o).priority = 1;
        }
        let f = self.get_mut(s);
        f.priority = 2;
        f.tries = tries;
        f.successful = false;
        f.version = version.to_string();
        Ok(())
    }

    /// The running system reached its ready point. Returns whether anything changed.
    pub fn mark_good(&mut self, s: Slot) -> Result<bool> {
        let f = self.get_mut(s);
        if f.priority == 0 {
            bail!(
                "slot {s} has priority 0 (never boot): it holds no installed system to mark good"
            );
        }
        let changed = !f.successful || f.tries != 0;
        f.successful = true;
        f.tries = 0;
        Ok(changed)
    }

    fn check(&self) -> Result<()> {
        check_value("board", &self.board)?;
        for s in Slot::ALL {
            let f = self.get(s);
            if f.priority > MAX_FIELD || f.tries > MAX_FIELD {
                bail!("slot {s}: priority and tries must be 0..={MAX_FIELD}");
            }
            check_version(&f.version)?;
        }
        Ok(())
    }

    fn vars(&self) -> Vec<(String, String)> {
        let mut v = vec![("kiln_board".to_string(), self.board.clone())];
        for s in Slot::ALL {
            let (k, f) = (s.key(), self.get(s));
            v.push((format!("kiln_{k}_priority"), f.priority.to_string()));
            v.push((format!("kiln_{k}_tries"), f.tries.to_string()));
            v.push((
                format!("kiln_{k}_successful"),
                u8::from(f.successful).to_string(),
            ));
            v.push((format!("kiln_{k}_version"), f.version.clone()));
        }
        v
    }

    /// The 1024-byte GRUB environment block of one copy: `kiln_gen=<generation>`, the
    /// variables, `kiln_check=<generation>`, all within the first 512 bytes.
    pub fn to_env(&self, generation: u32) -> Result<Vec<u8>> {
        self.check()?;
        if generation > MAX_GENERATION {
            bail!("slot state generation {generation} is above {MAX_GENERATION}, the largest GRUB compares");
        }
        let mut s = String::from(ENV_HEADER);
        s.push_str(&format!("kiln_gen={generation}\n"));
        for (k, v) in self.vars() {
            s.push_str(&format!("{k}={v}\n"));
        }
        s.push_str(&format!("kiln_check={generation}\n"));
        // The alphabet and 64-character limits of check() keep this far below 512 bytes; the
        // check stays in case variables are added.
        if s.len() > ENV_CONTENT_MAX {
            bail!(
                "slot state needs {} bytes, more than the one sector ({ENV_CONTENT_MAX} bytes) a state write may change",
                s.len()
            );
        }
        let mut b = s.into_bytes();
        b.resize(ENV_SIZE, b'#');
        Ok(b)
    }

    /// Parses a GRUB environment block holding kiln's variables. Other variables are ignored
    /// (GRUB or a person may add some); a missing or malformed kiln variable is an error, and
    /// so is a generation whose two ends disagree (a torn or damaged copy).
    pub fn from_env(block: &[u8]) -> Result<Parsed> {
        if block.len() != ENV_SIZE || !block.starts_with(ENV_HEADER.as_bytes()) {
            bail!(
                "not a GRUB environment block ({} bytes; one is {ENV_SIZE} bytes starting with {:?})",
                block.len(),
                ENV_HEADER.trim_end()
            );
        }
        let text = std::str::from_utf8(&block[ENV_HEADER.len()..])
            .context("the slot state is not UTF-8")?;
        let mut vars = std::collections::HashMap::new();
        for line in text.split('\n') {
            // Padding: GRUB fills the rest of the block with '#'.
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .with_context(|| format!("malformed line {line:?} in the slot state"))?;
            vars.insert(k, v);
        }
        let get = |k: &str| -> Result<&str> {
            vars.get(k)
                .copied()
                .with_context(|| format!("the slot state has no {k}"))
        };
        let generation = match (vars.get("kiln_gen"), vars.get("kiln_check")) {
            (None, None) => None,
            (Some(g), Some(c)) if g == c => Some(parse_generation(g)?),
            (g, c) => bail!(
                "the slot state is torn or damaged: kiln_gen={} but kiln_check={}",
                g.unwrap_or(&"(none)"),
                c.unwrap_or(&"(none)")
            ),
        };
        let num = |k: &str| -> Result<u8> {
            let v = get(k)?;
            match v.parse::<u8>() {
                Ok(n) if n <= MAX_FIELD => Ok(n),
                _ => bail!("{k}={v:?} in the slot state: expected 0..={MAX_FIELD}"),
            }
        };
        let slot = |s: Slot| -> Result<SlotFields> {
            let k = s.key();
            let succ = get(&format!("kiln_{k}_successful"))?;
            Ok(SlotFields {
                priority: num(&format!("kiln_{k}_priority"))?,
                tries: num(&format!("kiln_{k}_tries"))?,
                successful: match succ {
                    "1" => true,
                    "0" => false,
                    _ => bail!("kiln_{k}_successful={succ:?} in the slot state: expected 0 or 1"),
                },
                version: get(&format!("kiln_{k}_version")).unwrap_or("").to_string(),
            })
        };
        let state = Self {
            a: slot(Slot::A)?,
            b: slot(Slot::B)?,
            board: get("kiln_board")?.to_string(),
        };
        state.check()?;
        Ok(Parsed { state, generation })
    }
}

/// A parsed copy of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub state: SlotState,
    /// `None` for a block written before generations existed.
    pub generation: Option<u32>,
}

/// A generation as kiln writes it: decimal without leading zeros (GRUB would read those as
/// octal), at most [`MAX_GENERATION`].
fn parse_generation(g: &str) -> Result<u32> {
    let ok =
        !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) && (g == "0" || !g.starts_with('0'));
    match g.parse::<u32>() {
        Ok(n) if ok && n <= MAX_GENERATION => Ok(n),
        _ => bail!("kiln_gen={g:?} in the slot state: expected 0..={MAX_GENERATION}"),
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "board: {}", self.board)?;
        for s in Slot::ALL {
            let x = self.get(s);
            writeln!(
                f,
                "USR-{s}: priority={} tries={} successful={} version={}",
                x.priority,
                x.tries,
                u8::from(x.successful),
                if x.version.is_empty() {
                    "-"
                } else {
                    &x.version
                }
            )?;
        }
        match self.next_boot() {
            Some(c) if c.consumes_try => writeln!(f, "next boot: USR-{} (uses a try)", c.slot),
            Some(c) => writeln!(f, "next boot: USR-{}", c.slot),
            None => writeln!(f, "next boot: none bootable (GRUB falls back to USR-A)"),
        }
    }
}

/// Values reach GRUB's script and menu titles: keep them to a safe alphabet.
fn check_value(what: &str, v: &str) -> Result<()> {
    if v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c))
    {
        bail!(
            "{what} {v:?} cannot go into the slot state: use at most 64 of A-Z a-z 0-9 . _ + ~ -"
        );
    }
    Ok(())
}

fn check_version(v: &str) -> Result<()> {
    check_value("version", v)
}

/// One boot entry: the slot, and the kernel command line that mounts it.
pub struct GrubEntry {
    pub slot: Slot,
    pub title: String,
    pub cmdline: String,
}

/// The kernel argument that names the disk GRUB booted from: the partition GUID of the ESP
/// it read grub.cfg from, as GRUB's `probe --part-uuid` found it at boot. The initramfs takes
/// every partition from the one disk holding that GUID, and refuses two.
pub const BOOT_DISK_ARG: &str = "kiln.disk";

/// GRUB's half of the rule, for grub.cfg: find the valid copy of the state with the highest
/// generation, load it, pick the slot as [`SlotState::next_boot`] does, write back the used
/// try with `save_env` to that same copy, and boot the chosen slot's kernel and initramfs
/// with the boot disk's identity on the command line. GRUB 2.06 has no arithmetic, so the
/// decrement is a table. Only string tests and `-gt` on values kiln wrote are used; defaults
/// set before `load_env` mean a missing or damaged block still leaves every variable a number,
/// and only kiln's own variables are loaded (a block cannot set `root` or `prefix`).
pub fn grub_script(entries: &[GrubEntry]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "# A/B slot selection. The state is kept twice, /{} and /{}, each with a generation\n\
         # (kiln_gen first, kiln_check last; a copy is valid when they are equal): the valid copy\n\
         # with the highest generation is the state, and a used try is written back to it.\n",
        ENV_PATHS[0], ENV_PATHS[1]
    ));
    // The disk GRUB booted from: the partition GUID of the ESP holding this grub.cfg.
    s.push_str(
        "set kiln_disk=\n\
         if probe --set=kiln_disk --part-uuid \"$root\"; then set kiln_disk_found=1; else echo \"kiln: cannot read the partition GUID of $root; the initramfs will refuse to boot\"; fi\n",
    );
    let mut vars = vec!["kiln_board".to_string()];
    for slot in Slot::ALL {
        let k = slot.key();
        s.push_str(&format!(
            "set kiln_{k}_priority=0\nset kiln_{k}_tries=0\nset kiln_{k}_successful=0\nset kiln_{k}_version=\n"
        ));
        for f in ["priority", "tries", "successful", "version"] {
            vars.push(format!("kiln_{k}_{f}"));
        }
    }
    s.push_str("set kiln_state=\nset kiln_state_gen=0\n");
    for (i, path) in ENV_PATHS.iter().enumerate() {
        // The first valid copy is taken; the second only if its generation is higher.
        let newer = if i == 0 {
            String::new()
        } else {
            "-z \"$kiln_state\" -o \"$kiln_gen\" -gt \"$kiln_state_gen\"".to_string()
        };
        s.push_str(&format!(
            "set kiln_gen=\nset kiln_check=\n\
             if load_env -f /{path} kiln_gen kiln_check; then\n\
             \x20   if [ -n \"$kiln_gen\" -a \"$kiln_gen\" = \"$kiln_check\" ]; then\n"
        ));
        if newer.is_empty() {
            s.push_str(&format!(
                "        set kiln_state=/{path}\n        set kiln_state_gen=\"$kiln_gen\"\n"
            ));
        } else {
            s.push_str(&format!(
                "        if [ {newer} ]; then\n\
                 \x20           set kiln_state=/{path}\n\
                 \x20           set kiln_state_gen=\"$kiln_gen\"\n\
                 \x20       fi\n"
            ));
        }
        s.push_str("    fi\nfi\n");
    }
    s.push_str(&format!(
        "if [ -n \"$kiln_state\" ]; then\n\
         \x20   load_env -f \"$kiln_state\" {}\n\
         else\n\
         \x20   echo 'kiln: cannot read the slot state (/{} or /{})'\n\
         fi\n\
         set kiln_slot=\nset kiln_best=0\n",
        vars.join(" "),
        ENV_PATHS[0],
        ENV_PATHS[1]
    ));
    for slot in Slot::ALL {
        let k = slot.key();
        s.push_str(&format!(
            "if [ \"$kiln_{k}_priority\" != 0 ]; then\n\
             \x20   if [ \"$kiln_{k}_successful\" = 1 -o \"$kiln_{k}_tries\" != 0 ]; then\n\
             \x20       if [ -z \"$kiln_slot\" -o \"$kiln_{k}_priority\" -gt \"$kiln_best\" ]; then\n\
             \x20           set kiln_slot={k}\n\
             \x20           set kiln_best=\"$kiln_{k}_priority\"\n\
             \x20       fi\n\
             \x20   fi\n\
             fi\n"
        ));
    }
    s.push_str(
        "if [ -z \"$kiln_slot\" ]; then\n    echo 'kiln: no bootable USR slot in the state; trying USR-A'\n    set kiln_slot=a\n",
    );
    for slot in Slot::ALL {
        let k = slot.key();
        s.push_str(&format!(
            "elif [ \"$kiln_slot\" = {k} -a \"$kiln_{k}_successful\" != 1 ]; then\n"
        ));
        for t in 1..=MAX_FIELD {
            let kw = if t == 1 { "    if" } else { "    elif" };
            s.push_str(&format!(
                "{kw} [ \"$kiln_{k}_tries\" = {t} ]; then set kiln_{k}_tries={}\n",
                t - 1
            ));
        }
        s.push_str("    fi\n");
        // save_env rewrites the copy's sectors in place: the copy the state came from, so
        // its generation stays the highest.
        s.push_str(&format!(
            "    if save_env -f \"$kiln_state\" kiln_{k}_tries; then\n\
             \x20       echo \"kiln: trying USR-{} (tries left: $kiln_{k}_tries)\"\n\
             \x20   else\n\
             \x20       echo \"kiln: cannot record the try in $kiln_state; not booting an unproven slot\"\n\
             \x20       set kiln_slot={}\n\
             \x20   fi\n",
            slot,
            slot.other().key()
        ));
    }
    // If the chosen entry cannot be loaded (a missing kernel), GRUB boots the other one.
    s.push_str(
        "fi\nset default=\"usr-$kiln_slot\"\n\
         if [ \"$kiln_slot\" = a ]; then set fallback=usr-b; else set fallback=usr-a; fi\n",
    );
    for e in entries {
        let k = e.slot.key();
        s.push_str(&format!(
            "\nmenuentry \"{} $kiln_{k}_version (USR-{})\" --id usr-{k} {{\n\
             \x20   echo 'kiln: loading /{}'\n\
             \x20   linux /{} {} {BOOT_DISK_ARG}=PARTUUID=$kiln_disk\n\
             \x20   initrd /{}\n\
             }}\n",
            e.title,
            e.slot,
            kernel_path(e.slot),
            kernel_path(e.slot),
            e.cmdline,
            initrd_path(e.slot)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> SlotState {
        SlotState::new(
            "amd64-usr",
            SlotFields {
                priority: 1,
                tries: 0,
                successful: true,
                version: "1.0.0".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn env_block_round_trip_and_format() {
        let s = fresh();
        let b = s.to_env(7).unwrap();
        assert_eq!(b.len(), 1024);
        assert!(b.starts_with(b"# GRUB Environment Block\nkiln_gen=7\nkiln_board=amd64-usr\n"));
        assert_eq!(*b.last().unwrap(), b'#');
        let p = SlotState::from_env(&b).unwrap();
        assert_eq!((p.state, p.generation), (s, Some(7)));
        // The content ends with the check, inside the first sector; the second is padding.
        let text = String::from_utf8(b[..512].to_vec()).unwrap();
        assert!(text.contains("kiln_check=7\n#"), "{text}");
        assert!(b[512..].iter().all(|&c| c == b'#'));
    }

    /// The largest state kiln can write (the longest board and versions, the highest
    /// generation) still fits in one sector.
    #[test]
    fn the_largest_state_fits_in_one_sector() {
        let long = "x".repeat(64);
        let mut s = fresh();
        s.board = long.clone();
        for slot in Slot::ALL {
            *s.get_mut(slot) = SlotFields {
                priority: 15,
                tries: 15,
                successful: true,
                version: long.clone(),
            };
        }
        let b = s.to_env(MAX_GENERATION).unwrap();
        let end = b.windows(11).position(|w| w == b"kiln_check=").unwrap();
        assert!(end + 22 <= ENV_CONTENT_MAX, "content ends at {end}");
        assert!(s.to_env(MAX_GENERATION + 1).is_err());
    }

    #[test]
    fn grub_editenv_reads_and_writes_our_block() {
        let editenv = std::path::Path::new("/usr/bin/grub-editenv");
        assert!(
            editenv.exists(),
            "grub-common is not installed: /usr/bin/grub-editenv is missing"
        );
        let dir = tempfile::tempdir().unwrap();
        // Both copies, as the build writes them (generations 1 and 0).
        for (i, path) in ENV_PATHS.iter().enumerate() {
            let f = dir.path().join(path.replace('/', "_"));
            std::fs::write(&f, fresh().to_env(1 - i as u32).unwrap()).unwrap();
            let out = std::process::Command::new(editenv)
                .arg(&f)
                .arg("list")
                .output()
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            assert!(text.contains("kiln_a_priority=1\n"), "{text}");
            assert!(text.contains(&format!("kiln_gen={}\n", 1 - i)), "{text}");
            assert!(text.contains(&format!("kiln_check={}\n", 1 - i)), "{text}");
            // GRUB's own writer, as save_env would: our parser reads the result.
            let st = std::process::Command::new(editenv)
                .arg(&f)
                .args(["set", "kiln_a_tries=3", "extra=x"])
                .status()
                .unwrap();
            assert!(st.success());
            let p = SlotState::from_env(&std::fs::read(&f).unwrap()).unwrap();
            assert_eq!(p.state.a.tries, 3);
            assert_eq!(p.generation, Some(1 - i as u32));
        }
    }

    #[test]
    fn bad_blocks_are_refused() {
        assert!(SlotState::from_env(&[b'#'; 1024]).is_err());
        assert!(SlotState::from_env(b"# GRUB Environment Block\n").is_err());
        let edit = |from: &str, to: &str| {
            let t = String::from_utf8(fresh().to_env(3).unwrap())
                .unwrap()
                .replacen(from, to, 1);
            let mut b = t.into_bytes();
            b.resize(1024, b'#');
            SlotState::from_env(&b).map(|p| p.generation)
        };
        let e = edit("kiln_a_tries=0", "kiln_a_tries=X")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kiln_a_tries"), "{e}");
        let e = edit("kiln_b_priority=0\n", "").unwrap_err().to_string();
        assert!(e.contains("kiln_b_priority"), "{e}");
        // A torn copy: its two ends disagree, or one is gone.
        let e = edit("kiln_check=3", "kiln_check=2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("torn or damaged"), "{e}");
        assert!(edit("kiln_check=3\n", "").is_err());
        assert!(edit("kiln_gen=3\n", "").is_err());
        // Generations as GRUB compares them: no leading zeros (octal to GRUB), no sign.
        for g in ["03", "-1", "+3", "", "2147483648", "x"] {
            let t = String::from_utf8(fresh().to_env(3).unwrap())
                .unwrap()
                .replace("=3\n", &format!("={g}\n"));
            let mut b = t.into_bytes();
            b.resize(1024, b'#');
            assert!(SlotState::from_env(&b).is_err(), "generation {g:?}");
        }
        // A block from before generations: read, with no generation.
        let t = String::from_utf8(fresh().to_env(3).unwrap())
            .unwrap()
            .replace("kiln_gen=3\n", "")
            .replace("kiln_check=3\n", "");
        let mut b = t.into_bytes();
        b.resize(1024, b'#');
        assert_eq!(SlotState::from_env(&b).unwrap().generation, None);
        let mut s = fresh();
        s.a.version = "1.0 $(x)".into();
        assert!(s.to_env(1).is_err());
    }

    #[test]
    fn update_try_and_rollback() {
        let mut s = fresh();
        assert_eq!(s.next_boot().unwrap().slot, Slot::A);
        // v2 into B: tried once, marks itself good.
        s.invalidate(Slot::B);
        s.set_next(Slot::B, 1, "2.0.0").unwrap();
        assert_eq!(
            s.next_boot(),
            Some(Choice {
                slot: Slot::B,
                consumes_try: true
            })
        );
        // Offline, the untried B is not what an update may overwrite: A is the fallback.
        assert_eq!(s.keeper(), Some(Slot::A));
        assert_eq!(s.boot(), Some(Slot::B));
        assert_eq!(s.b.tries, 0);
        assert!(s.mark_good(Slot::B).unwrap());
        assert!(!s.mark_good(Slot::B).unwrap());
        assert_eq!(s.keeper(), Some(Slot::B));
        assert_eq!(s.boot(), Some(Slot::B));
        // v3 into A never marks itself good: one try, then B again, and again.
        s.invalidate(Slot::A);
        assert_eq!(s.boot(), Some(Slot::B));
        s.set_next(Slot::A, 1, "3.0.0").unwrap();
        assert_eq!((s.a.priority, s.b.priority), (2, 1));
        assert_eq!(s.boot(), Some(Slot::A));
        assert_eq!(s.boot(), Some(Slot::B));
        assert_eq!(s.boot(), Some(Slot::B));
        assert!(!s.a.bootable());
    }

    #[test]
    fn rule_edges() {
        let mut s = fresh();
        s.b = SlotFields {
            priority: 1,
            tries: 0,
            successful: true,
            version: String::new(),
        };
        // A tie goes to A.
        assert_eq!(s.next_boot().unwrap().slot, Slot::A);
        s.a.priority = 0;
        assert_eq!(s.next_boot().unwrap().slot, Slot::B);
        s.b.successful = false;
        assert_eq!(s.next_boot(), None);
        assert!(s.set_next(Slot::A, 0, "x").is_err());
        assert!(s.set_next(Slot::A, 16, "x").is_err());
        assert!(s.mark_good(Slot::A).is_err());
    }

    #[test]
    fn grub_script_has_both_halves() {
        let g = grub_script(&[GrubEntry {
            slot: Slot::B,
            title: "Kiln".into(),
            cmdline: "mount.usr=PARTUUID=x".into(),
        }]);
        assert!(g.contains("load_env -f /kiln/slots.env kiln_gen kiln_check"));
        assert!(g.contains("load_env -f /kiln/slots-b.env kiln_gen kiln_check"));
        assert!(g.contains("-o \"$kiln_gen\" -gt \"$kiln_state_gen\" ]"));
        assert!(g.contains("load_env -f \"$kiln_state\" kiln_board kiln_a_priority"));
        assert!(g.contains("set fallback=usr-b; else set fallback=usr-a"));
        assert!(g.contains("save_env -f \"$kiln_state\" kiln_b_tries"));
        assert!(g.contains("elif [ \"$kiln_a_tries\" = 15 ]; then set kiln_a_tries=14\n"));
        assert!(g.contains("probe --set=kiln_disk --part-uuid \"$root\""));
        assert!(g.contains(
            "linux /kiln/vmlinuz-b mount.usr=PARTUUID=x kiln.disk=PARTUUID=$kiln_disk\n"
        ));
        assert!(g.contains("menuentry \"Kiln $kiln_b_version (USR-B)\" --id usr-b"));
    }
}
