//! The recipe's identity seeds every derived identifier of an image (disk GUID, filesystem
//! UUIDs, serials), so it must not depend on where the checkout lives.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The recipes, board profiles and kernel configs of the repository, copied under `dir`.
fn checkout_copy(dir: &Path) -> PathBuf {
    for d in ["recipes", "board-profiles", "kernel-config"] {
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo().join(d))
            .arg(dir.join(d))
            .status()
            .unwrap();
        assert!(st.success());
    }
    dir.join("recipes/minimal.toml")
}

fn identities(recipe: &Path) -> Vec<String> {
    let r = kiln_recipe::load(
        recipe,
        &kiln_recipe::LoadOptions {
            platforms: Some(kiln_recipe::PlatformSelection::All),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.platforms.len(), 7);
    let mut v = vec![r.identity().to_string()];
    v.extend(r.platforms.iter().map(|p| p.identity.clone()));
    v
}

#[test]
fn identities_do_not_depend_on_the_checkout_path() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let deeper = b.path().join("some/deeper/place");
    std::fs::create_dir_all(&deeper).unwrap();
    let ia = identities(&checkout_copy(a.path()));
    let ib = identities(&checkout_copy(&deeper));
    assert_eq!(ia, ib);
    // Every platform has an identity of its own.
    let mut unique = ia.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ia.len());
}

/// The identities of recipes/minimal.toml, as `tests/data/golden/minimal.identity` records
/// them beside the hashes of its artifacts (both written by scripts/golden-hashes.sh): a fast
/// check that the identity, which seeds every derived id, is unchanged.
#[test]
fn minimal_identities_are_the_recorded_ones() {
    let r = kiln_recipe::load(
        &repo().join("recipes/minimal.toml"),
        &kiln_recipe::LoadOptions {
            platforms: Some(kiln_recipe::PlatformSelection::All),
            ..Default::default()
        },
    )
    .unwrap();
    let mut text = format!("board {}\n", r.identity());
    for p in &r.platforms {
        text.push_str(&format!("{} {}\n", p.name, p.identity));
    }
    let list = repo().join("tests/data/golden/minimal.identity");
    if std::env::var_os("KILN_GOLDEN_UPDATE").is_some() {
        std::fs::write(&list, &text).unwrap();
        return;
    }
    let recorded = std::fs::read_to_string(&list).unwrap();
    assert_eq!(
        text, recorded,
        "the identities of recipes/minimal.toml changed: every derived id of its images \
         changes with them; if that is meant, refresh with scripts/golden-hashes.sh"
    );
}
