//! The fuzz corpus (fuzz/corpus/<target>/, and inputs that once crashed a parser in
//! fuzz/crashes/<target>/) replayed through the same targets AFL++ runs (scripts/fuzz.sh),
//! so a parser that regresses on a saved input fails the suite; and the seeds checked to
//! reach each parser's success path, so the harness is known to fuzz past the first check.

use std::io::Cursor;
use std::path::Path;

#[path = "../../fuzz/src/targets.rs"]
mod targets;

fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_saved_input_runs_through_its_target() {
    for (name, run) in targets::TARGETS {
        let corpus = inputs("corpus", name);
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        for (file, data) in corpus.iter().chain(inputs("crashes", name).iter()) {
            eprintln!("{name}: {file}");
            run(data);
        }
    }
}

#[test]
fn the_seeds_reach_each_parser() {
    let seed = |t: &str, f: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus")
                .join(t)
                .join(f),
        )
        .unwrap()
    };
    let file = targets::signed_payload(&seed("payload", "signed")).unwrap();
    let mut r = Cursor::new(&file);
    let o = kiln_update::payload::open(&mut r, &targets::trusted()).expect("a signed payload");
    kiln_update::payload::extract(&mut r, &o.header, &mut |_, _| Ok(())).expect("its body");
    let disk = seed("gpt", "one-partition");
    kiln_disk::Gpt::read(&mut Cursor::new(&disk), disk.len() as u64).expect("a GPT");
    for f in ["fresh", "updated", "legacy"] {
        kiln_update::state::SlotState::from_env(&seed("env_block", f)).expect("a slot state");
    }
    let ch = seed("channel_index", "signed");
    let nul = ch.iter().position(|&b| b == 0).unwrap();
    let key = targets::trusted()[0];
    kiln_update::channel::verify_minisign(
        &key,
        &ch[..nul],
        &String::from_utf8_lossy(&ch[nul + 1..]),
    )
    .expect("a signed index");
    serde_json::from_slice::<kiln_update::channel::Index>(&ch[..nul]).expect("an index");
    use kiln_formats::ImageFormat;
    for (f, want) in [
        ("qcow2", ImageFormat::Qcow2),
        ("vmdk", ImageFormat::Vmdk),
        ("vhd-dynamic", ImageFormat::Vhd),
        ("vhd-fixed", ImageFormat::Vhd),
        ("xz", ImageFormat::Xz),
    ] {
        let b = seed("image_format", f);
        let tail = (b.len() >= 512).then(|| &b[b.len() - 512..]);
        assert_eq!(
            ImageFormat::from_bytes(&b[..b.len().min(512)], tail),
            want,
            "{f}"
        );
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("elf");
    std::fs::write(&p, seed("elf", "static")).unwrap();
    kiln_boot::initramfs::check_static(&p, "seed", "x86_64").expect("a static ELF");
    std::fs::write(&p, seed("elf", "dynamic-head")).unwrap();
    assert!(kiln_boot::initramfs::check_static(&p, "seed", "x86_64").is_err());
}
