//! The slot state's two copies at boot (issue 11, defect 5), with the real GRUB and agent:
//! GRUB takes the valid copy with the highest generation and writes the used try to that
//! copy; the agent writes the other one with the next generation; a damaged newest copy is
//! outvoted by the older one and rewritten at the ready point; a state lost altogether is
//! rebuilt there from what the running system knows.

use std::os::unix::fs::FileExt;
use std::path::Path;

use kiln_tests::*;
use kiln_update::apply::Disk;
use kiln_update::state::ENV_PATHS;

/// One copy: its generation and state, or why it is not valid.
type Copy = Result<(u32, kiln_update::state::SlotState), String>;

/// Both copies, in ENV_PATHS order.
fn copies(img: &Path) -> Vec<Copy> {
    Disk::open(img, false)
        .unwrap()
        .read_store()
        .unwrap()
        .copies
        .into_iter()
        .map(|(_, c)| c.map(|c| (c.generation.unwrap(), c.state)))
        .collect()
}

fn damage(img: &Path, copy: usize) {
    let d = Disk::open(img, false).unwrap();
    let off = d.store().unwrap().copies()[copy].offset;
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .write_all_at(
            b"# GRUB Environment Block\nkiln_gen=99\nkiln_a_priority=\x00\x17",
            off,
        )
        .unwrap();
}

#[test]
fn grub_and_the_agent_follow_the_generations() {
    let img = copy_image(minimal_image(), "slot-store.raw");
    let i = img.to_str().unwrap();

    // 1. set-next A (tries 2) offline: written to the second copy as generation 2. GRUB must
    //    take it over generation 1, use a try, and write it to that same copy; the agent marks
    //    A good in the first copy as generation 3.
    let o = kiln(&["slot", "set-next", i, "a", "--tries", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let c = copies(&img);
    assert_eq!(c[1].as_ref().unwrap().0, 2);
    let b = boot_disk(&img, "bios", false);
    assert!(
        b.console
            .iter()
            .any(|l| l.contains("kiln: trying USR-A (tries left: 1)")),
        "GRUB did not take generation 2"
    );
    let c = copies(&img);
    let (g1, s1) = c[1].as_ref().unwrap();
    assert_eq!(
        (*g1, s1.a.tries, s1.a.successful),
        (2, 1, false),
        "GRUB's save_env"
    );
    let (g0, s0) = c[0].as_ref().unwrap();
    assert_eq!(
        (*g0, s0.a.tries, s0.a.successful),
        (3, 0, true),
        "the agent's write"
    );

    // 2. The newest copy (the agent's generation 3) damaged: GRUB falls back to generation 2
    //    (A on its last try), the agent marks A good into the damaged copy, which is valid
    //    again. Before, one damaged block meant "cannot read", USR-A, and an agent that failed.
    damage(&img, 0);
    let b = boot_disk(&img, "uefi", false);
    assert!(
        b.console
            .iter()
            .any(|l| l.contains("kiln: trying USR-A (tries left: 0)")),
        "GRUB did not fall back to the older copy"
    );
    assert!(b
        .console
        .iter()
        .any(|l| l.contains("kiln-agent: marked USR-A good")));
    assert_eq!(b.field("next"), Some("A"));
    let c = copies(&img);
    assert!(c.iter().all(|c| c.is_ok()), "{c:?}");
    assert_eq!(c[0].as_ref().unwrap().0, 3);
    assert!(c[0].as_ref().unwrap().1.a.successful);

    // 3. Both copies damaged: GRUB says so and boots USR-A; the agent writes a fresh state
    //    (A good, B never) at the ready point, in both copies.
    damage(&img, 0);
    damage(&img, 1);
    let o = kiln(&["slot", "status", i]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("repair-state"), "{}", text(&o));
    let b = boot_disk(&img, "bios", false);
    assert!(b.console.iter().any(|l| l.contains(&format!(
        "kiln: cannot read the slot state (/{} or /{})",
        ENV_PATHS[0], ENV_PATHS[1]
    ))));
    assert!(
        b.console
            .iter()
            .any(|l| l.contains("kiln-agent: the slot state was lost")
                && l.contains("wrote a fresh one: USR-A good")),
        "the agent did not rebuild the state"
    );
    assert_eq!(b.field("next"), Some("A"));
    let st = slot_status(&img);
    assert_eq!(st["state"]["a"]["successful"], true);
    assert_eq!(st["state"]["a"]["version"], "0.1.0");
    assert_eq!(st["state"]["b"]["priority"], 0);
    assert!(copies(&img).iter().all(|c| c.is_ok()));
    std::fs::remove_file(&img).unwrap();
}
