//! Power-cut replay. The real code that writes to a kiln disk, kiln-update's apply, mark-good
//! and set-next (what `kiln update apply`, `kiln slot` and the agent run) and kiln-disk's
//! grow-root table code (what the agent runs at first boot), runs on copies of the minimal
//! image through kiln_update::dev::Recording, which records every write and sync. From that
//! record the test builds every disk a power cut could leave and checks each one:
//!
//! - a GPT reads: kiln-disk finds a valid copy and `sgdisk -v` loads a table (what it reports
//!   on the table it read, such as a backup not yet at the end of a grown disk, is counted);
//! - `fsck.vfat -n` passes on the ESP;
//! - kiln and `grub-editenv` (through mtools, as GRUB reads the ESP) read the state, agree on
//!   the copy that is current and on what it says;
//! - the slot GRUB's rule boots is complete: its USR, kernel and initramfs have the SHA-256s
//!   of the payload of the version the state names for it.
//!
//! A disk is modelled as 512-byte sectors, each written whole or not at all. A crash image is
//! either a prefix of the write log (every write before the cut landed, in order), or a
//! reordering inside one flush epoch (the writes between two syncs): the epochs before it
//! landed, and every sector the epoch changes is, independently, as it was before the epoch
//! or as any write of the epoch left it. Reorderings are enumerated exhaustively when an
//! epoch has at most [`EXHAUSTIVE`] of them, else sampled with a fixed seed. A sample of the
//! crash images is booted in QEMU (TCG) to the ready line. The counts are printed and written
//! to target/kiln-test/replay-report.txt.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_tests::*;
use kiln_update::apply::{self, Disk};
use kiln_update::dev::{FileDev, Op, Recording};
use kiln_update::payload::{self, SectionName};
use kiln_update::state::{Slot, SlotFields, SlotState, ENV_PATHS};

const SECTOR: u64 = 512;
/// Epochs with at most this many reorderings are enumerated completely.
const EXHAUSTIVE: u64 = 4096;
/// Reorderings sampled per larger epoch (the ESP check of each costs about a third of a
/// second; the apply sequence has 17 such epochs).
const SAMPLES: usize = 24;
const SEED: u64 = 0x6b696c6e_7265706c;

/// One step of the recorded sequence and the ops it made.
struct Step {
    name: String,
    ops: std::ops::Range<usize>,
}

/// A sector some write changed, with its contents in order (index 0: before any write).
struct Tracked {
    sector: u64,
    versions: Vec<Arc<[u8]>>,
}

/// The write log as sector versions.
struct History {
    tracked: Vec<Tracked>,
    /// Per write: the tracked sectors it changed and the version it left each at.
    writes: Vec<Vec<(usize, u32)>>,
    /// Per flush epoch: its step, its first write and one past its last.
    epochs: Vec<(usize, usize, usize)>,
    syncs: usize,
}

fn read_sector(f: &File, s: u64) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    f.read_exact_at(&mut b, s * SECTOR).unwrap();
    b
}

impl History {
    fn new(base: &Path, ops: &[Op], steps: &[Step]) -> Self {
        let f = File::open(base).unwrap();
        let mut tracked: Vec<Tracked> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        let mut writes = Vec::new();
        let mut epochs = Vec::new();
        let mut syncs = 0;
        for (si, step) in steps.iter().enumerate() {
            let mut epoch_start = writes.len();
            for op in &ops[step.ops.clone()] {
                match op {
                    Op::Sync => {
                        syncs += 1;
                        if writes.len() > epoch_start {
                            epochs.push((si, epoch_start, writes.len()));
                        }
                        epoch_start = writes.len();
                    }
                    Op::Write { offset, data } => {
                        let mut changes = Vec::new();
                        let first = offset / SECTOR;
                        let last = (offset + data.len() as u64 - 1) / SECTOR;
                        for s in first..=last {
                            let i = *index.entry(s).or_insert_with(|| {
                                tracked.push(Tracked {
                                    sector: s,
                                    versions: vec![read_sector(&f, s).into()],
                                });
                                tracked.len() - 1
                            });
                            let mut content = tracked[i].versions.last().unwrap().to_vec();
                            let lo = (s * SECTOR).max(*offset);
                            let hi = ((s + 1) * SECTOR).min(offset + data.len() as u64);
                            content[(lo - s * SECTOR) as usize..(hi - s * SECTOR) as usize]
                                .copy_from_slice(
                                    &data[(lo - offset) as usize..(hi - offset) as usize],
                                );
                            // A write that leaves a sector as it was is no new version.
                            if *tracked[i].versions.last().unwrap().as_ref() != content[..] {
                                tracked[i].versions.push(content.into());
                                changes.push((i, tracked[i].versions.len() as u32 - 1));
                            }
                        }
                        writes.push(changes);
                    }
                }
            }
            if writes.len() > epoch_start {
                epochs.push((si, epoch_start, writes.len()));
            }
        }
        Self {
            tracked,
            writes,
            epochs,
            syncs,
        }
    }

    /// Versions after the first `n` writes.
    fn after(&self, n: usize) -> Vec<u32> {
        let mut v = vec![0u32; self.tracked.len()];
        for w in &self.writes[..n] {
            for &(i, ver) in w {
                v[i] = ver;
            }
        }
        v
    }

    /// For an epoch: each sector it changes, with the versions it may be found at after a
    /// cut (the one before the epoch and each the epoch wrote).
    fn choices(&self, e: usize) -> Vec<(usize, Vec<u32>)> {
        let (_, a, b) = self.epochs[e];
        let start = self.after(a);
        let mut m: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for w in &self.writes[a..b] {
            for &(i, ver) in w {
                m.entry(i).or_insert_with(|| vec![start[i]]).push(ver);
            }
        }
        m.into_iter().collect()
    }
}

/// A version's sections: their sizes and sha256.
struct Expected {
    usr: (u64, String),
    kernel: (u64, String),
    initrd: (u64, String),
}

fn expected(payload_path: &Path) -> (String, Expected) {
    let h = payload::read_header_unverified(payload_path).unwrap();
    let sec = |n: SectionName| h.sections.iter().find(|s| s.name == n).unwrap();
    (
        h.version.clone(),
        Expected {
            usr: (
                sec(SectionName::Usr).size,
                sec(SectionName::Usr).sha256.clone(),
            ),
            kernel: (
                sec(SectionName::Kernel).size,
                sec(SectionName::Kernel).sha256.clone(),
            ),
            initrd: (
                sec(SectionName::Initramfs).size,
                sec(SectionName::Initramfs).sha256.clone(),
            ),
        },
    )
}

/// What one ESP looks like to the checks.
#[derive(Clone, Debug)]
struct EspVerdict {
    fsck: Result<(), String>,
    /// The slot the boot takes (GRUB's rule on the copy GRUB and kiln agree is current), with
    /// the version the state names for it.
    boot: Slot,
    version: String,
    /// Kernel and initramfs of the boot slot are the version's.
    boot_files: Result<(), String>,
    problems: Vec<String>,
}

/// A crash image in a file, changed sector by sector from one state to the next, with the
/// checks memoised per region (a region's result depends only on its sectors).
struct Checker<'a> {
    h: &'a History,
    work: PathBuf,
    file: File,
    applied: Vec<u32>,
    esp: (u64, u64),
    usr: [(u64, u64); 2],
    /// Byte offsets of the state copies' two sectors each.
    state_sectors: Vec<u64>,
    disk_bytes: u64,
    expected: &'a HashMap<String, Expected>,
    scratch: PathBuf,
    memo_gpt: HashMap<u64, Result<Vec<String>, String>>,
    memo_esp: HashMap<u64, EspVerdict>,
    memo_usr: HashMap<(u64, String, usize), bool>,
    /// Counts: crash images checked, GPT/ESP/USR checks actually run, fsck findings.
    checked: usize,
    fsck_failures: BTreeMap<String, usize>,
    /// What sgdisk -v reported on tables it read, and in how many crash images.
    gpt_findings: BTreeMap<String, usize>,
    failures: Vec<String>,
}

fn part_range(image: &Path, number: u32) -> (u64, u64) {
    let mut f = File::open(image).unwrap();
    let len = f.metadata().unwrap().len();
    let gpt = kiln_disk::Gpt::read(&mut f, len).unwrap().gpt;
    let e = gpt.partition(number).unwrap();
    (e.first_lba * SECTOR, e.sectors() * SECTOR)
}

impl<'a> Checker<'a> {
    fn new(
        h: &'a History,
        base: &Path,
        name: &str,
        expected: &'a HashMap<String, Expected>,
    ) -> Self {
        let work = copy_image(base, &format!("replay-{name}-crash.raw"));
        let scratch = test_dir().join(format!("replay-{name}-scratch"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&work)
            .unwrap();
        let disk_bytes = file.metadata().unwrap().len();
        let state_sectors = Disk::open(&work, false)
            .unwrap()
            .store()
            .unwrap()
            .copies()
            .iter()
            .flat_map(|c| [c.offset, c.offset + SECTOR])
            .collect();
        Self {
            state_sectors,
            h,
            esp: part_range(&work, 1),
            usr: [part_range(&work, 3), part_range(&work, 4)],
            work,
            file,
            applied: vec![0; h.tracked.len()],
            disk_bytes,
            expected,
            scratch,
            memo_gpt: HashMap::new(),
            memo_esp: HashMap::new(),
            memo_usr: HashMap::new(),
            checked: 0,
            fsck_failures: BTreeMap::new(),
            gpt_findings: BTreeMap::new(),
            failures: Vec::new(),
        }
    }

    /// What an epoch writes: `usr` (a slot), `gpt`, `state` (only the state copies' sectors)
    /// or `files` (the ESP through the FAT library); `unchanged` if its writes left every
    /// sector as it was.
    fn kind(&self, e: usize) -> &'static str {
        let (_, a, b) = self.h.epochs[e];
        if self.h.writes[a..b].iter().all(|w| w.is_empty()) {
            return "unchanged";
        }
        let mut kind = "state";
        for w in &self.h.writes[a..b] {
            for &(i, _) in w {
                let o = self.h.tracked[i].sector * SECTOR;
                let (eo, el) = self.esp;
                if self.usr.iter().any(|&(uo, ul)| o >= uo && o < uo + ul) {
                    return "usr";
                } else if o < 34 * SECTOR || o >= self.disk_bytes - 34 * SECTOR {
                    return "gpt";
                } else if o >= eo && o < eo + el && !self.state_sectors.contains(&o) {
                    kind = "files";
                }
            }
        }
        kind
    }

    fn set(&mut self, state: &[u32]) {
        for (i, &v) in state.iter().enumerate() {
            if self.applied[i] != v {
                let t = &self.h.tracked[i];
                self.file
                    .write_all_at(&t.versions[v as usize], t.sector * SECTOR)
                    .unwrap();
                self.applied[i] = v;
            }
        }
    }

    /// A fingerprint of the sectors of `state` inside `[off, off+len)` (and, for the GPT, the
    /// disk's first and last 34 sectors).
    fn fingerprint(&self, state: &[u32], within: &dyn Fn(u64) -> bool) -> u64 {
        let mut hs = std::collections::hash_map::DefaultHasher::new();
        for (i, t) in self.h.tracked.iter().enumerate() {
            if within(t.sector * SECTOR) {
                (t.sector, state[i]).hash(&mut hs);
            }
        }
        hs.finish()
    }

    fn check(&mut self, state: &[u32], what: &str) -> EspVerdict {
        self.set(state);
        self.checked += 1;
        let end = self.disk_bytes;
        let gpt_fp = self.fingerprint(state, &|o| o < 34 * SECTOR || o >= end - 34 * SECTOR);
        if !self.memo_gpt.contains_key(&gpt_fp) {
            let r = self.check_gpt();
            self.memo_gpt.insert(gpt_fp, r);
        }
        match &self.memo_gpt[&gpt_fp] {
            Err(e) => self.failures.push(format!("{what}: GPT: {e}")),
            Ok(findings) => {
                for f in findings {
                    *self.gpt_findings.entry(f.clone()).or_default() += 1;
                }
            }
        }
        let (eo, el) = self.esp;
        let esp_fp = self.fingerprint(state, &|o| o >= eo && o < eo + el);
        if !self.memo_esp.contains_key(&esp_fp) {
            let v = self.check_esp();
            self.memo_esp.insert(esp_fp, v);
        }
        let v = self.memo_esp[&esp_fp].clone();
        if let Err(e) = &v.fsck {
            *self.fsck_failures.entry(e.clone()).or_default() += 1;
            self.failures.push(format!("{what}: fsck.vfat: {e}"));
        }
        for p in &v.problems {
            self.failures.push(format!("{what}: {p}"));
        }
        if let Err(e) = &v.boot_files {
            self.failures.push(format!("{what}: {e}"));
        }
        // The boot slot's USR.
        let si = match v.boot {
            Slot::A => 0,
            Slot::B => 1,
        };
        let (uo, ul) = self.usr[si];
        let usr_fp = self.fingerprint(state, &|o| o >= uo && o < uo + ul);
        let key = (usr_fp, v.version.clone(), si);
        if !self.memo_usr.contains_key(&key) {
            let ok = match self.expected.get(&v.version) {
                Some(x) => kiln_tests::exact::range_sha256(&self.work, uo, x.usr.0) == x.usr.1,
                None => false,
            };
            self.memo_usr.insert(key.clone(), ok);
        }
        if !self.memo_usr[&key] {
            self.failures.push(format!(
                "{what}: USR-{} does not hold {} though the state boots it",
                v.boot, v.version
            ));
        }
        v
    }

    /// A GPT reads: kiln-disk finds a valid copy and sgdisk loads a table (it says
    /// "Creating new GPT entries" when it finds none). What sgdisk -v reports on a table it
    /// read (a backup not at the end of a grown disk, a damaged copy it recovered from) is
    /// returned as findings, counted in the report.
    fn check_gpt(&self) -> Result<Vec<String>, String> {
        let mut f = File::open(&self.work).unwrap();
        kiln_disk::Gpt::read(&mut f, self.disk_bytes).map_err(|e| format!("kiln: {e:#}"))?;
        let o = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(&self.work)
            .output()
            .unwrap();
        let t = text(&o);
        if !o.status.success() || t.contains("Creating new GPT entries") {
            return Err(format!("sgdisk -v: {}", t.trim()));
        }
        if t.contains("No problems found") {
            return Ok(Vec::new());
        }
        // The first line of each message sgdisk gives.
        Ok(t.split("\n\n")
            .map(|p| p.trim().lines().next().unwrap_or("").to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    fn check_esp(&self) -> EspVerdict {
        let (eo, el) = self.esp;
        let esp = self.scratch.join("esp.img");
        let mut v = vec![0u8; el as usize];
        self.file.read_exact_at(&mut v, eo).unwrap();
        std::fs::write(&esp, &v).unwrap();
        drop(v);
        let mut problems = Vec::new();
        let o = std::process::Command::new("fsck.vfat")
            .arg("-n")
            .arg(&esp)
            .output()
            .unwrap();
        let fsck = if o.status.success() {
            Ok(())
        } else {
            // The findings, without the lines that name the file or the version.
            let t = String::from_utf8_lossy(&o.stdout);
            let findings: Vec<&str> = t
                .lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty() && !l.contains(esp.to_str().unwrap()))
                .collect();
            Err(findings.join(" | "))
        };
        // kiln's reading.
        let kiln = Disk::open(&self.work, false)
            .and_then(|d| d.read_store())
            .map_err(|e| format!("{e:#}"));
        // GRUB's: each copy through mtools, listed by grub-editenv, picked by its script's rule.
        let mut grub_pick: Option<(&'static str, u64, HashMap<String, String>)> = None;
        for path in ENV_PATHS {
            let out = self.scratch.join("env");
            let _ = std::fs::remove_file(&out);
            let o = std::process::Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-n", "-i"])
                .arg(&esp)
                .arg(format!("::/{path}"))
                .arg(&out)
                .output()
                .unwrap();
            if !o.status.success() {
                problems.push(format!("mtools cannot read /{path}: {}", text(&o).trim()));
                continue;
            }
            let o = std::process::Command::new("grub-editenv")
                .arg(&out)
                .arg("list")
                .output()
                .unwrap();
            if !o.status.success() {
                // load_env fails on this copy; GRUB skips it.
                continue;
            }
            let vars: HashMap<String, String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let (g, c) = (vars.get("kiln_gen"), vars.get("kiln_check"));
            let Some(gen) = g.filter(|g| !g.is_empty() && Some(*g) == c) else {
                continue;
            };
            let gen: u64 = gen.parse().unwrap_or(0);
            if grub_pick.as_ref().is_none_or(|(_, best, _)| gen > *best) {
                grub_pick = Some((path, gen, vars));
            }
        }
        let num = |vars: &HashMap<String, String>, k: &str| -> u8 {
            vars.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        let grub_state = grub_pick.as_ref().map(|(p, _, vars)| {
            let f = |s: &str| SlotFields {
                priority: num(vars, &format!("kiln_{s}_priority")),
                tries: num(vars, &format!("kiln_{s}_tries")),
                successful: num(vars, &format!("kiln_{s}_successful")) == 1,
                version: vars
                    .get(&format!("kiln_{s}_version"))
                    .cloned()
                    .unwrap_or_default(),
            };
            (
                *p,
                SlotState {
                    board: vars.get("kiln_board").cloned().unwrap_or_default(),
                    a: f("a"),
                    b: f("b"),
                },
            )
        });
        match (&kiln, &grub_state) {
            (Err(e), _) => problems.push(format!("kiln cannot read the state: {e}")),
            (Ok(r), g) => match (r.state(), g) {
                (Some(k), Some((gp, gs))) => {
                    if Some(*gp) != r.current_path() || k != gs {
                        problems.push(format!(
                            "kiln reads /{} {k:?}, GRUB /{gp} {gs:?}",
                            r.current_path().unwrap_or("-")
                        ));
                    }
                }
                (None, None) => problems.push(format!(
                    "no valid copy of the state for kiln or GRUB: {}",
                    r.problems()
                )),
                (k, g) => problems.push(format!("kiln reads {k:?}, GRUB {g:?}")),
            },
        }
        // The boot: GRUB's rule on what GRUB read; USR-A when nothing is bootable.
        let choice = grub_state.as_ref().and_then(|(_, s)| s.next_boot());
        let boot = choice.map_or(Slot::A, |c| c.slot);
        let version = grub_state
            .as_ref()
            .map(|(_, s)| s.get(boot).version.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "0.1.0".into());
        let boot_files = (|| {
            let x = self
                .expected
                .get(&version)
                .ok_or(format!("no payload known for version {version:?}"))?;
            for (file, want) in [
                (kiln_update::state::kernel_path(boot), &x.kernel),
                (kiln_update::state::initrd_path(boot), &x.initrd),
            ] {
                let out = self.scratch.join("boot-file");
                let _ = std::fs::remove_file(&out);
                let o = std::process::Command::new("mcopy")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .args(["-n", "-i"])
                    .arg(&esp)
                    .arg(format!("::/{file}"))
                    .arg(&out)
                    .output()
                    .unwrap();
                if !o.status.success() {
                    return Err(format!(
                        "the boot slot's /{file} cannot be read: {}",
                        text(&o)
                    ));
                }
                // The slot's files have a fixed size: the section, then zeros.
                let (len, sha) = want;
                let bytes = std::fs::read(&out).unwrap();
                let len = *len as usize;
                if bytes.len() < len || bytes[len..].iter().any(|&b| b != 0) {
                    return Err(format!(
                        "the boot slot's /{file} is not {version}'s {len} bytes followed by zeros"
                    ));
                }
                std::fs::write(&out, &bytes[..len]).unwrap();
                if kiln_tests::exact::sha256sum(&out) != *sha {
                    return Err(format!("the boot slot's /{file} is not {version}'s"));
                }
            }
            Ok(())
        })();
        EspVerdict {
            fsck,
            boot,
            version,
            boot_files,
            problems,
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One crash image to boot, and what the boot must show.
struct ToBoot {
    label: String,
    state: Vec<u32>,
    slot: Slot,
    version: String,
}

#[derive(Default)]
struct Counts {
    writes: usize,
    syncs: usize,
    epochs: usize,
    prefixes: usize,
    reorder_exhaustive: usize,
    reorder_sampled: usize,
    epochs_exhaustive: usize,
    epochs_sampled: usize,
}

/// Where a crash image comes from: its step, what the epoch it is cut in writes (`usr`, the
/// ESP's `files` through the FAT, the `state` copies, the `gpt`), and for a prefix, how many
/// writes landed.
struct Cut<'a> {
    step: &'a str,
    kind: &'static str,
    prefix: Option<usize>,
}

/// Checks every prefix and the reorderings of every epoch; returns the counts and a few
/// crash images to boot (those `want_boot` picks).
fn replay(
    c: &mut Checker,
    steps: &[Step],
    report: &mut String,
    boots: &mut Vec<ToBoot>,
    want_boot: &mut dyn FnMut(&Cut, &EspVerdict) -> bool,
) -> Counts {
    let h = c.h;
    let mut n = Counts {
        writes: h.writes.len(),
        syncs: h.syncs,
        epochs: h.epochs.len(),
        ..Default::default()
    };
    let mut rng = Rng(SEED);
    let kinds: Vec<&'static str> = (0..h.epochs.len()).map(|e| c.kind(e)).collect();
    // Prefixes: every write that landed, in order.
    let mut state = vec![0u32; h.tracked.len()];
    let mut epoch_of_write = vec![0usize; h.writes.len()];
    for (e, &(_, a, b)) in h.epochs.iter().enumerate() {
        for w in epoch_of_write.iter_mut().take(b).skip(a) {
            *w = e;
        }
    }
    for j in 0..=h.writes.len() {
        if j > 0 {
            for &(i, v) in &h.writes[j - 1] {
                state[i] = v;
            }
        }
        let e = if j == 0 { 0 } else { epoch_of_write[j - 1] };
        let step = h.epochs.get(e).map_or(0, |x| x.0);
        let what = format!("{}: prefix of {j} writes", steps[step].name);
        let v = c.check(&state, &what);
        n.prefixes += 1;
        let cut = Cut {
            step: &steps[step].name,
            kind: kinds.get(e).copied().unwrap_or("none"),
            prefix: Some(j),
        };
        if want_boot(&cut, &v) {
            boots.push(ToBoot {
                label: what,
                state: state.clone(),
                slot: v.boot,
                version: v.version.clone(),
            });
        }
    }
    // Reorderings inside each epoch.
    for (e, &(si, a, _)) in h.epochs.iter().enumerate() {
        let start = h.after(a);
        let choices = h.choices(e);
        let total = choices
            .iter()
            .try_fold(1u64, |acc, (_, vs)| acc.checked_mul(vs.len() as u64));
        let exhaustive = total.is_some_and(|t| t <= EXHAUSTIVE);
        let mut states: Vec<Vec<u32>> = Vec::new();
        if exhaustive {
            let t = total.unwrap_or(0);
            for mut k in 0..t {
                let mut s = start.clone();
                for (i, vs) in &choices {
                    s[*i] = vs[(k % vs.len() as u64) as usize];
                    k /= vs.len() as u64;
                }
                states.push(s);
            }
            n.epochs_exhaustive += 1;
        } else {
            for k in 0..SAMPLES {
                // Each sector lands with probability 1/8, 1/2 or 7/8 (a third of the samples
                // each), at a version the epoch wrote.
                let p = [1u64, 4, 7][k % 3];
                let mut s = start.clone();
                for (i, vs) in &choices {
                    if rng.next() % 8 < p {
                        s[*i] = vs[1 + (rng.next() % (vs.len() as u64 - 1)) as usize];
                    }
                }
                states.push(s);
            }
            n.epochs_sampled += 1;
        }
        let count = states.len();
        for (k, s) in states.into_iter().enumerate() {
            let what = format!("{}: epoch {e}, reordering {k}", steps[si].name);
            let v = c.check(&s, &what);
            let cut = Cut {
                step: &steps[si].name,
                kind: kinds[e],
                prefix: None,
            };
            if want_boot(&cut, &v) {
                boots.push(ToBoot {
                    label: what,
                    state: s,
                    slot: v.boot,
                    version: v.version.clone(),
                });
            }
        }
        if exhaustive {
            n.reorder_exhaustive += count;
        } else {
            n.reorder_sampled += count;
        }
        report.push_str(&format!(
            "  epoch {e:3} ({}, {}): {} writes, {} sectors changed, {} reorderings {}\n",
            steps[si].name,
            kinds[e],
            h.epochs[e].2 - a,
            choices.len(),
            match total {
                Some(t) => t.to_string(),
                None => "> 2^64".into(),
            },
            if exhaustive {
                "(all checked)".to_string()
            } else {
                format!("({count} sampled)")
            }
        ));
    }
    n
}

fn counts_line(name: &str, n: &Counts, c: &Checker) -> String {
    format!(
        "{name}: {} writes, {} syncs, {} flush epochs; crash images checked: {} ({} prefixes, {} reorderings in {} epochs enumerated completely, {} sampled in {} epochs); checks run: {} GPT, {} ESP, {} USR\n",
        n.writes,
        n.syncs,
        n.epochs,
        c.checked,
        n.prefixes,
        n.reorder_exhaustive,
        n.epochs_exhaustive,
        n.reorder_sampled,
        n.epochs_sampled,
        c.memo_gpt.len(),
        c.memo_esp.len(),
        c.memo_usr.len()
    )
}

fn boot_crash_images(c: &mut Checker, boots: &[ToBoot], report: &mut String) {
    for (k, b) in boots.iter().enumerate() {
        c.set(&b.state);
        c.file.sync_all().unwrap();
        let firmware = if k % 2 == 0 { "bios" } else { "uefi" };
        let r = boot(&c.work, firmware);
        let line = r.ready.clone().unwrap();
        assert_eq!(
            field(&line, "slot"),
            b.slot.to_string(),
            "{}: {line}",
            b.label
        );
        assert_eq!(field(&line, "version"), b.version, "{}: {line}", b.label);
        report.push_str(&format!(
            "  booted ({firmware}): {} -> slot={} version={} next={}\n",
            b.label,
            field(&line, "slot"),
            field(&line, "version"),
            field(&line, "next")
        ));
    }
}

/// apply (v1 → v2 into B), mark-good B, set-next A, mark-good A, apply again (into B), on a
/// copy of the minimal image.
#[test]
fn power_cut_replay_of_apply_mark_good_and_set_next() {
    let (v2, _) = update_payloads();
    let v1 = minimal_out().join("minimal_update.payload");
    let expected: HashMap<String, Expected> = [expected(&v1), expected(v2)].into_iter().collect();
    let base = copy_image(minimal_image(), "replay-base.raw");
    let live = copy_image(&base, "replay-live.raw");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&live)
        .unwrap();
    let rec = Arc::new(Recording::new(FileDev::new(f).unwrap()));
    let disk = Disk::from_dev(rec.clone(), "replay").unwrap();
    let key = std::fs::read_to_string(dev_public_key()).unwrap();
    let trusted = [kiln_update::keys::parse_public_pem(&key, "dev key").unwrap()];
    let mut ops: Vec<Op> = Vec::new();
    let mut steps = Vec::new();
    let mut record = |name: &str, ops: &mut Vec<Op>, f: &mut dyn FnMut()| {
        f();
        let new = rec.take();
        let start = ops.len();
        ops.extend(new);
        steps.push(Step {
            name: name.to_string(),
            ops: start..ops.len(),
        });
    };
    // The system kept, as `kiln update apply` finds it on an image file: the best slot that
    // booted successfully, its version from the state, its OS id from its own os-release
    // (EROFS), its architecture from its kernel.
    let apply_v2 = |disk: &Disk| {
        let st = disk.state().unwrap();
        let slot = st.keeper().unwrap();
        let os_release = disk
            .usr_os_release(slot)
            .unwrap()
            .expect("the minimal image's USR is EROFS");
        let running = apply::Running {
            slot,
            os_id: kiln_update::system::os_release_field(&os_release, "ID").unwrap(),
            arch: disk.kernel_arch(slot).unwrap().to_string(),
            version: st.get(slot).version.clone(),
        };
        let mut lines = Vec::new();
        apply::apply(
            disk,
            &mut File::open(v2).unwrap(),
            &trusted,
            &running,
            &apply::Options::default(),
            &mut |m| lines.push(m.to_string()),
        )
        .unwrap();
        // The replay is of the in-place path: nothing went through the FAT.
        assert!(
            !lines.iter().any(|l| l.contains("through the FAT")),
            "{lines:#?}"
        );
    };
    let mark_good = |disk: &Disk, s: Slot| {
        disk.mark_good(s).unwrap();
    };
    record("apply v2 to USR-B", &mut ops, &mut || apply_v2(&disk));
    record("mark-good USR-B", &mut ops, &mut || {
        mark_good(&disk, Slot::B)
    });
    record("set-next USR-A --tries 2", &mut ops, &mut || {
        disk.set_next(Slot::A, 2).unwrap();
    });
    record("mark-good USR-A", &mut ops, &mut || {
        mark_good(&disk, Slot::A)
    });
    record("apply v2 to USR-B again", &mut ops, &mut || apply_v2(&disk));
    let end = disk.state().unwrap();
    assert_eq!(
        (end.b.priority, end.b.tries, end.b.version.as_str()),
        (2, 1, "0.2.0")
    );
    drop(disk);

    let h = History::new(&base, &ops, &steps);
    let mut report = String::from("power-cut replay: apply, mark-good, set-next\n");
    let mut c = Checker::new(&h, &base, "apply", &expected);
    let mut boots = Vec::new();
    // Boot two (with the two of grow-root, four in all, to keep the test short): the first
    // cut after the apply's commit landed (USR-B, its kernel and initramfs boot), and a cut
    // in the middle of writing slot B's kernel and initramfs files in place, sectors landed in
    // some order (USR-A boots).
    let mut seen: Vec<&str> = Vec::new();
    let mut want = |cut: &Cut, v: &EspVerdict| -> bool {
        let first_apply = cut.step == "apply v2 to USR-B";
        let kind = match (cut.kind, cut.prefix) {
            ("files", None) if first_apply && v.boot == Slot::A => "esp mid-install",
            (_, Some(_)) if first_apply && v.boot == Slot::B => "committed",
            _ => return false,
        };
        if seen.contains(&kind) {
            return false;
        }
        seen.push(kind);
        true
    };
    let n = replay(&mut c, &steps, &mut report, &mut boots, &mut want);
    seen.sort();
    assert_eq!(
        seen,
        ["committed", "esp mid-install"],
        "the crash images to boot were not all found"
    );
    report.push_str(&counts_line("apply/mark-good/set-next", &n, &c));
    for (finding, count) in &c.fsck_failures {
        report.push_str(&format!(
            "  fsck.vfat -n finding in {count} crash images: {finding}\n"
        ));
    }
    let failures = std::mem::take(&mut c.failures);
    boot_crash_images(&mut c, &boots, &mut report);
    // The images go before the verdict, so a failing run leaves none behind.
    for p in [base, live, c.work.clone()] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&c.scratch);
    finish(&report, &failures, "apply");
}

/// grow-root's table code on a copy of the minimal image grown by 2 GiB.
#[test]
fn power_cut_replay_of_grow_root() {
    let v1 = minimal_out().join("minimal_update.payload");
    let expected: HashMap<String, Expected> = [expected(&v1)].into_iter().collect();
    let base = copy_image(minimal_image(), "replay-grow-base.raw");
    let len = std::fs::metadata(&base).unwrap().len();
    File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_len(len + (2 << 30))
        .unwrap();
    let live = copy_image(&base, "replay-grow-live.raw");
    let root_guid = {
        let mut f = File::open(&live).unwrap();
        kiln_disk::Gpt::read(&mut f, len + (2 << 30))
            .unwrap()
            .gpt
            .partition(9)
            .unwrap()
            .part_guid
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&live)
        .unwrap();
    let rec = Arc::new(Recording::new(FileDev::new(f).unwrap()));
    let mut w = kiln_update::dev::Window::whole(rec.clone());
    let g = kiln_disk::gpt::grow::grow(&mut w, len + (2 << 30), root_guid, &mut |w| {
        use std::io::Write;
        w.flush().map_err(anyhow::Error::from)
    })
    .unwrap();
    assert!(g.extended && g.rewritten, "{g:?}");
    let ops = rec.take();
    let steps = [Step {
        name: "grow-root".into(),
        ops: 0..ops.len(),
    }];
    let h = History::new(&base, &ops, &steps);
    let mut report = String::from("power-cut replay: grow-root\n");
    let mut c = Checker::new(&h, &base, "grow", &expected);
    let mut boots = Vec::new();
    // Boot: the new backup durable and the primary old (2 writes: the backup's array and
    // header); the primary's array written but not its header (4).
    let mut want = |cut: &Cut, _: &EspVerdict| matches!(cut.prefix, Some(2) | Some(4));
    let n = replay(&mut c, &steps, &mut report, &mut boots, &mut want);
    assert_eq!(
        boots.len(),
        2,
        "the crash images to boot were not all found"
    );
    report.push_str(&counts_line("grow-root", &n, &c));
    findings(&c, &mut report);
    let failures = std::mem::take(&mut c.failures);
    boot_crash_images(&mut c, &boots, &mut report);
    for p in [base, live, c.work.clone()] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&c.scratch);
    finish(&report, &failures, "grow");
}

fn findings(c: &Checker, report: &mut String) {
    for (finding, count) in &c.fsck_failures {
        report.push_str(&format!(
            "  fsck.vfat -n finding in {count} crash images: {finding}\n"
        ));
    }
    for (finding, count) in &c.gpt_findings {
        report.push_str(&format!(
            "  sgdisk -v (table read) reports in {count} crash images: {finding}\n"
        ));
    }
}

fn finish(report: &str, failures: &[String], name: &str) {
    eprint!("{report}");
    let mut all = report.to_string();
    for f in failures.iter().take(200) {
        all.push_str(&format!("FAIL {f}\n"));
    }
    std::fs::write(test_dir().join(format!("replay-{name}-report.txt")), &all).unwrap();
    assert!(
        failures.is_empty(),
        "{} crash images failed a check; the first:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}
