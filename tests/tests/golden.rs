//! The bytes kiln builds, pinned: recipes/minimal.toml for the board and every platform, with a
//! fixed signing key and a fixed stand-in for kiln-agent, must give the SHA-256 of every
//! file that `tests/data/golden/minimal.sha256` records. A change to kiln that is meant to
//! leave the bytes alone (a refactoring) is proven to by this test; a change meant to alter
//! them refreshes the list with `scripts/golden-hashes.sh` and says why in its commit.
//!
//! The list also records what the bytes depend on besides kiln: the Debian packages the build
//! installed and the versions of the host tools. When those differ on this machine (the
//! mirror or the host moved on), the test fails naming them, since it can no longer tell
//! kiln's changes from theirs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_tests::{root, run_kiln, test_dir, text};

const LIST: &str = "tests/data/golden/minimal.sha256";
const KEY: &str = "tests/data/golden/INSECURE-golden-signing-key.pem";

/// A static x86-64 ELF executable that exits 0: the image's /usr/bin/kiln-agent and the
/// initramfs's, in place of the real agent, whose bytes change with any change to its code
/// or its dependencies. The list pins the builder, not the agent.
fn stand_in_agent() -> Vec<u8> {
    // mov eax, 60 (exit); xor edi, edi; syscall
    let code = [0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
    let base: u64 = 0x40_0000;
    let size = (64 + 56 + code.len()) as u64;
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(base + 120).to_le_bytes()); // entry: the code after the headers
    e.extend_from_slice(&64u64.to_le_bytes()); // program headers
    e.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    e.extend_from_slice(&0u32.to_le_bytes());
    for h in [64u16, 56, 1, 0, 0, 0] {
        e.extend_from_slice(&h.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&0u64.to_le_bytes());
    e.extend_from_slice(&base.to_le_bytes());
    e.extend_from_slice(&base.to_le_bytes());
    e.extend_from_slice(&size.to_le_bytes());
    e.extend_from_slice(&size.to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(&code);
    assert_eq!(e.len() as u64, size);
    e
}

fn sha256(path: &Path) -> String {
    let out = kiln_tests::tool("sha256sum", &[path.to_str().unwrap()]);
    out.split_whitespace().next().unwrap().to_string()
}

/// The build's inputs besides kiln, as `# input ...` lines: installed packages and host tools.
fn inputs(build: &serde_json::Value) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for p in build["packages"].as_array().expect("packages") {
        set.insert(format!(
            "package {} {} {}",
            p["name"].as_str().unwrap(),
            p["version"].as_str().unwrap(),
            p["arch"].as_str().unwrap()
        ));
    }
    for (tool, version) in build["tools"].as_object().expect("tools") {
        set.insert(format!("tool {tool} {}", version.as_str().unwrap()));
    }
    set
}

#[test]
fn the_minimal_build_gives_the_recorded_bytes() {
    let dir = test_dir().join("golden");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let agent = dir.join("stand-in-agent");
    std::fs::write(&agent, stand_in_agent()).unwrap();
    let out = dir.join("out");
    let key = std::fs::read_to_string(root().join(KEY)).unwrap();
    let (kiln, _) = kiln_tests::binaries();
    let mut c = std::process::Command::new(kiln);
    c.args([
        "build",
        "recipes/minimal.toml",
        "--platform",
        "all",
        "--json",
    ])
    .arg("--output")
    .arg(&out);
    // run_kiln sets the shared test cache and the real agent; --agent overrides the latter.
    c.arg("--agent").arg(&agent);
    c.env("KILN_SIGNING_KEY_PEM", key);
    let o = run_kiln(c);
    assert!(o.status.success(), "kiln build failed:\n{}", text(&o));
    let build: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();

    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"minimal_update.payload".to_string()));
    assert!(names.contains(&"minimal_image.bin".to_string()));
    let now: Vec<(String, String)> = files
        .iter()
        .zip(&names)
        .map(|(f, n)| (sha256(f), n.clone()))
        .collect();
    let now_inputs = inputs(&build);

    let list = root().join(LIST);
    if std::env::var_os("KILN_GOLDEN_UPDATE").is_some() {
        let mut t = String::from(
            "# SHA-256 of every file `kiln build recipes/minimal.toml --platform all` writes, signed\n\
             # with tests/data/golden/INSECURE-golden-signing-key.pem, with the stand-in agent of\n\
             # tests/tests/golden.rs. Checked by that test; written by scripts/golden-hashes.sh.\n\
             # What the bytes depend on besides kiln:\n",
        );
        for i in &now_inputs {
            t.push_str(&format!("# input {i}\n"));
        }
        for (h, n) in &now {
            t.push_str(&format!("{h}  {n}\n"));
        }
        std::fs::write(&list, t).unwrap();
        eprintln!("wrote {} ({} files)", list.display(), now.len());
        return;
    }

    let recorded = std::fs::read_to_string(&list).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; make it with scripts/golden-hashes.sh",
            list.display()
        )
    });
    let rec_inputs: BTreeSet<String> = recorded
        .lines()
        .filter_map(|l| l.strip_prefix("# input "))
        .map(String::from)
        .collect();
    let rec_files: Vec<(String, String)> = recorded
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (h, n) = l.split_once("  ").expect("`<sha256>  <file>` lines");
            (h.to_string(), n.to_string())
        })
        .collect();
    if rec_inputs != now_inputs {
        let gone: Vec<&String> = rec_inputs.difference(&now_inputs).collect();
        let new: Vec<&String> = now_inputs.difference(&rec_inputs).collect();
        panic!(
            "the build's inputs differ from those {LIST} was made with, so its hashes cannot \
             judge kiln's bytes:\n  recorded, not here: {gone:?}\n  here, not recorded: {new:?}\n\
             if this machine is right, refresh the list with scripts/golden-hashes.sh"
        );
    }
    let mut problems = Vec::new();
    for (h, n) in &rec_files {
        match now.iter().find(|(_, m)| m == n) {
            None => problems.push(format!("{n}: recorded, not built")),
            Some((g, _)) if g != h => problems.push(format!("{n}: {g}, recorded {h}")),
            Some(_) => {}
        }
    }
    for (_, n) in &now {
        if !rec_files.iter().any(|(_, m)| m == n) {
            problems.push(format!("{n}: built, not recorded"));
        }
    }
    assert!(
        problems.is_empty(),
        "the build's bytes differ from {LIST}:\n  {}\n\
         a change meant to alter them refreshes the list (scripts/golden-hashes.sh) and says why",
        problems.join("\n  ")
    );
    // The board image, the payload and at least three platforms are pinned.
    assert!(rec_files.len() >= 2 + 3, "{rec_files:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
