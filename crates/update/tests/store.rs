//! The slot state's two copies on a real FAT ESP (mkfs.vfat and mtools made it; mtools and
//! grub-editenv read it back): every write is one block in place on the older copy and a
//! sync, nothing else on the disk changes, the newest valid copy wins, a damaged copy is
//! outvoted and rewritten, and a lost state can be rebuilt.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use kiln_disk::Slot;
use kiln_update::apply::Disk;
use kiln_update::dev::{FileDev, Op, Recording};
use kiln_update::state::{SlotState, ENV_PATHS, ENV_SIZE};

mod common;
use common::*;

fn recorded(img: &Path) -> (Disk, Arc<Recording<FileDev>>) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let rec = Arc::new(Recording::new(FileDev::new(f).unwrap()));
    let disk = Disk::from_dev(rec.clone(), "test disk").unwrap();
    (disk, rec)
}

/// A copy as mtools reads it (through the FAT, as GRUB does), listed by grub-editenv.
fn editenv_list(dir: &Path, img: &Path, esp_offset: u64, path: &str) -> String {
    let esp = dir.join("esp-copy.img");
    let mut v = vec![0u8; 40 << 20];
    std::fs::File::open(img)
        .unwrap()
        .read_exact_at(&mut v, esp_offset)
        .unwrap();
    std::fs::write(&esp, v).unwrap();
    let out = dir.join("env-copy");
    let _ = std::fs::remove_file(&out);
    let o = std::process::Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::/{path}"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new("grub-editenv")
        .arg(&out)
        .arg("list")
        .output()
        .expect("grub-editenv (grub-common) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn writes_go_to_the_older_copy_one_block_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let before = std::fs::read(&img).unwrap();
    let (disk, rec) = recorded(&img);
    let copies: Vec<u64> = disk
        .store()
        .unwrap()
        .copies()
        .iter()
        .map(|c| c.offset)
        .collect();
    assert_eq!(copies.len(), 2);
    let r = disk.read_store().unwrap();
    assert_eq!(
        (r.current_path(), r.generation()),
        (Some(ENV_PATHS[0]), Some(1))
    );
    assert!(rec.take().is_empty(), "reading wrote something");

    // mark-good's write: the other copy, generation 2, one 1024-byte write, then a sync.
    let mut st = disk.state().unwrap();
    st.b.priority = 1;
    st.b.successful = true;
    st.b.version = "0".into();
    disk.write_state(&st).unwrap();
    let log = rec.take();
    assert_eq!(log.len(), 2, "{log:?}");
    match &log[0] {
        Op::Write { offset, data } => {
            assert_eq!((*offset, data.len()), (copies[1], ENV_SIZE));
            assert!(
                data[512..].iter().all(|&b| b == b'#'),
                "content beyond one sector"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log[1], Op::Sync);
    let r = disk.read_store().unwrap();
    assert_eq!(
        (r.current_path(), r.generation()),
        (Some(ENV_PATHS[1]), Some(2))
    );
    assert_eq!(r.state(), Some(&st));
    // Nothing else on the disk changed: not the FAT, not a directory, not the boot sector.
    let after = std::fs::read(&img).unwrap();
    let changed: Vec<usize> = (0..after.len() / 512)
        .filter(|s| before[s * 512..(s + 1) * 512] != after[s * 512..(s + 1) * 512])
        .collect();
    assert_eq!(changed, vec![copies[1] as usize / 512]);

    // The next write goes back to the first copy.
    st.a.tries = 0;
    st.b.tries = 2;
    disk.write_state(&st).unwrap();
    match &rec.take()[0] {
        Op::Write { offset, .. } => assert_eq!(*offset, copies[0]),
        other => panic!("{other:?}"),
    }
    // GRUB's reader sees both copies, each with its generation.
    let esp = disk.esp.offset;
    let one = editenv_list(dir.path(), &img, esp, ENV_PATHS[0]);
    let two = editenv_list(dir.path(), &img, esp, ENV_PATHS[1]);
    assert!(
        one.contains("kiln_gen=3\n") && one.contains("kiln_check=3\n"),
        "{one}"
    );
    assert!(one.contains("kiln_b_tries=2\n"), "{one}");
    assert!(
        two.contains("kiln_gen=2\n") && two.contains("kiln_b_tries=0\n"),
        "{two}"
    );
}

/// The defect: one damaged block made every command fail and GRUB fall back to USR-A. Now
/// the other copy is the state, and the next write rewrites the damaged one.
#[test]
fn a_damaged_copy_is_outvoted_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let disk = Disk::open(&img, true).unwrap();
    let mut st = disk.state().unwrap();
    st.b.priority = 1;
    st.b.successful = true;
    disk.write_state(&st).unwrap(); // generation 2 in slots-b.env
    let copies: Vec<u64> = disk
        .store()
        .unwrap()
        .copies()
        .iter()
        .map(|c| c.offset)
        .collect();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for (what, damage) in [
        ("garbage", b"\x00\x17 not an env block".to_vec()),
        // A write torn inside the sector: the first half new, the rest what was there.
        ("torn", {
            let mut b = st.to_env(3).unwrap();
            b.truncate(64);
            b
        }),
    ] {
        // Damage the current copy (generation 2): the older one (1) is the state again.
        f.write_all_at(&damage, copies[1]).unwrap();
        let r = disk.read_store().unwrap();
        assert_eq!(r.current_path(), Some(ENV_PATHS[0]), "{what}");
        assert!(r.copies[1].1.is_err(), "{what}");
        assert_eq!(r.state().unwrap().b.priority, 0, "{what}");
        // A write goes to the damaged copy and makes it valid and current.
        disk.write_state(&st).unwrap();
        let r = disk.read_store().unwrap();
        assert!(r.all_valid(), "{what}: {}", r.problems());
        assert_eq!(r.current_path(), Some(ENV_PATHS[1]), "{what}");
        assert_eq!(r.state(), Some(&st), "{what}");
    }
}

#[test]
fn a_lost_state_is_named_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let disk = Disk::open(&img, true).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    for c in disk.store().unwrap().copies() {
        f.write_all_at(&[b'#'; ENV_SIZE], c.offset).unwrap();
    }
    let e = format!("{:#}", disk.state().unwrap_err());
    assert!(
        e.contains("no valid copy") && e.contains("repair-state") && e.contains(ENV_PATHS[1]),
        "{e}"
    );
    let fresh = SlotState::recovered("test-board", Slot::B, "2").unwrap();
    assert_eq!(disk.store().unwrap().rebuild(&fresh).unwrap(), 2);
    let r = disk.read_store().unwrap();
    assert!(r.all_valid());
    assert_eq!(r.state(), Some(&fresh));
    assert_eq!(fresh.next_boot().unwrap().slot, Slot::B);
    assert_eq!(fresh.a.priority, 0);
}

/// An image made before the second copy existed: its one block, without a generation, is
/// read and written in place.
#[test]
fn an_image_with_one_copy_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let esp = {
        let d = Disk::open(&img, false).unwrap();
        d.esp
    };
    let mut v = vec![0u8; esp.len as usize];
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut v, esp.offset)
        .unwrap();
    let esp_img = dir.path().join("esp.img");
    std::fs::write(&esp_img, v).unwrap();
    let mtools = |args: &[&str]| {
        let o = std::process::Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let e = esp_img.to_str().unwrap();
    mtools(&["mdel", "-i", e, &format!("::/{}", ENV_PATHS[1])]);
    // The old format: no kiln_gen, no kiln_check.
    let old = String::from_utf8(
        SlotState::from_env(&std::fs::read(dir.path().join("slots-0.env")).unwrap())
            .unwrap()
            .state
            .to_env(1)
            .unwrap(),
    )
    .unwrap()
    .replace("kiln_gen=1\n", "")
    .replace("kiln_check=1\n", "");
    let mut old = old.into_bytes();
    old.truncate(ENV_SIZE);
    old.resize(ENV_SIZE, b'#');
    let oldf = dir.path().join("old.env");
    std::fs::write(&oldf, &old).unwrap();
    mtools(&[
        "mcopy",
        "-o",
        "-i",
        e,
        oldf.to_str().unwrap(),
        &format!("::/{}", ENV_PATHS[0]),
    ]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&std::fs::read(&esp_img).unwrap(), esp.offset)
        .unwrap();
    let disk = Disk::open(&img, true).unwrap();
    assert_eq!(disk.store().unwrap().copies().len(), 1);
    let r = disk.read_store().unwrap();
    assert_eq!(r.generation(), Some(0));
    let mut st = r.state().unwrap().clone();
    st.a.tries = 1;
    disk.write_state(&st).unwrap();
    let r = disk.read_store().unwrap();
    assert_eq!(
        (r.current_path(), r.generation()),
        (Some(ENV_PATHS[0]), Some(1))
    );
    assert_eq!(r.state(), Some(&st));
}

/// A copy that is not one GRUB environment block is refused, not written.
#[test]
fn a_copy_of_another_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let esp = Disk::open(&img, false).unwrap().esp;
    let mut v = vec![0u8; esp.len as usize];
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut v, esp.offset)
        .unwrap();
    let esp_img = dir.path().join("esp.img");
    std::fs::write(&esp_img, &v).unwrap();
    let e = esp_img.to_str().unwrap();
    let long = dir.path().join("long.env");
    std::fs::write(&long, vec![b'#'; 2000]).unwrap();
    let o = std::process::Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i", e])
        .arg(&long)
        .arg(format!("::/{}", ENV_PATHS[1]))
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .write_all_at(&std::fs::read(&esp_img).unwrap(), esp.offset)
        .unwrap();
    let d = Disk::open(&img, true).unwrap();
    let e = format!("{:#}", d.state().unwrap_err());
    assert!(e.contains("2000 bytes, not 1024"), "{e}");
}

/// A disk whose reads of one byte range fail with EIO (a bad sector under a copy).
struct BadSectors {
    inner: FileDev,
    bad: std::sync::Mutex<Option<(u64, u64)>>,
}

impl kiln_update::dev::BlockDev for BadSectors {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if let Some((s, l)) = *self.bad.lock().unwrap() {
            if offset < s + l && s < offset + buf.len() as u64 {
                return Err(std::io::Error::from_raw_os_error(5));
            }
        }
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
}

/// A copy that cannot be read is one that is not valid: the other is the state (as GRUB
/// boots from it), mark-good works and rewrites the unreadable one, and only with both
/// unreadable is there no state.
#[test]
fn an_unreadable_copy_is_outvoted() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let dev = Arc::new(BadSectors {
        inner: FileDev::new(f).unwrap(),
        bad: std::sync::Mutex::new(None),
    });
    let disk = Disk::from_dev(dev.clone(), "test disk").unwrap();
    let copies: Vec<u64> = disk
        .store()
        .unwrap()
        .copies()
        .iter()
        .map(|c| c.offset)
        .collect();
    let good = disk.state().unwrap();
    // The current copy (generation 1, the first) unreadable.
    *dev.bad.lock().unwrap() = Some((copies[0], ENV_SIZE as u64));
    let r = disk.read_store().unwrap();
    assert_eq!(r.current_path(), Some(ENV_PATHS[1]));
    assert!(r.problems().contains("cannot be read"), "{}", r.problems());
    assert_eq!(r.state().map(|s| s.a.clone()), Some(good.a.clone()));
    let (st, _) = disk.mark_good(Slot::A).unwrap();
    assert_eq!(st.a, good.a);
    // The write went to the unreadable copy (there, the sector is rewritten): readable
    // again, it is the newest.
    *dev.bad.lock().unwrap() = None;
    let r = disk.read_store().unwrap();
    assert!(r.all_valid(), "{}", r.problems());
    assert_eq!(r.current_path(), Some(ENV_PATHS[0]));
    assert_eq!(r.generation(), Some(1), "one past the readable copy's 0");
    // Both unreadable: no state, and the error names why.
    *dev.bad.lock().unwrap() = Some((
        copies[0].min(copies[1]),
        copies[0].abs_diff(copies[1]) + ENV_SIZE as u64,
    ));
    let e = format!("{:#}", disk.state().unwrap_err());
    assert!(
        e.contains("no valid copy") && e.contains("cannot be read"),
        "{e}"
    );
}
