//! `kiln_update::channel::check`, what `kiln-agent update check` runs: a channel laid out as
//! `kiln release promote` lays it out (a state directory per seq, the channel a symlink to
//! one), signed by kiln-release's minisign signer.

use std::path::{Path, PathBuf};

use kiln_update::channel::{check, ChannelDir, Index, PayloadRef, SeqStore, INDEX, INDEX_SIG};
use kiln_update::SigningKey;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

fn index(seq: u64, version: &str) -> Index {
    Index {
        format: 1,
        channel: "alpha".into(),
        board: "amd64-usr".into(),
        seq,
        version: version.into(),
        release: format!("../../{version}"),
        payload: Some(PayloadRef {
            path: format!("../../{version}/kiln_update.payload"),
            size: 4,
            sha256: "ab".repeat(32),
            sha512: "cd".repeat(64),
        }),
        digests_sha256: "ef".repeat(32),
        key_id: kiln_update::keys::key_id(&key().verifying_key()),
        history: vec![],
    }
}

fn comment(i: &Index) -> String {
    format!(
        "channel:{}\tboard:{}\tversion:{}\tseq:{}",
        i.channel, i.board, i.version, i.seq
    )
}

/// Writes state directory `channels/alpha.<seq>` holding `bytes` signed with `comment`, and
/// points `channels/alpha` at it. Returns the channel directory.
fn publish(board: &Path, seq: u64, bytes: &[u8], comment: &str) -> PathBuf {
    let channels = board.join("channels");
    let state = channels.join(format!("alpha.{seq}"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join(INDEX), bytes).unwrap();
    let sig = kiln_release::sign::sign(&key(), bytes, comment).unwrap();
    std::fs::write(state.join(INDEX_SIG), sig).unwrap();
    let link = channels.join("alpha");
    let tmp = channels.join(".alpha.new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("alpha.{seq}"), &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    link
}

fn publish_index(board: &Path, i: &Index) -> PathBuf {
    publish(board, i.seq, &serde_json::to_vec(i).unwrap(), &comment(i))
}

fn run(dir: &Path, store: &SeqStore, running: &str, allow: bool) -> anyhow::Result<Option<String>> {
    let d = ChannelDir::open(dir)?;
    let offer = check(
        &d,
        &[key().verifying_key()],
        "amd64-usr",
        running,
        store,
        allow,
    )?;
    Ok(offer.payload)
}

fn err(r: anyhow::Result<Option<String>>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn offers_updates_and_records_the_seq() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let store = SeqStore::new(&root);
    let dir = publish_index(t.path(), &index(5, "2.0.0"));
    assert_eq!(
        run(&dir, &store, "1.0.0", false).unwrap().as_deref(),
        Some("../../2.0.0/kiln_update.payload")
    );
    assert_eq!(store.get("alpha").unwrap(), Some(5));
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/kiln/channels/alpha.seq")).unwrap(),
        "5\n"
    );
    // The same index again is fine; the running version is up to date.
    assert_eq!(run(&dir, &store, "2.0.0", false).unwrap(), None);
}

/// Defect 3: an index with a lower seq than one seen before is an old index replayed.
#[test]
fn a_replayed_index_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = SeqStore::new(&t.path().join("root"));
    let dir = publish_index(t.path(), &index(5, "2.0.0"));
    run(&dir, &store, "1.0.0", false).unwrap();
    // A mirror serves seq 3, correctly signed, even offering something newer.
    let dir = publish_index(t.path(), &index(3, "3.0.0"));
    let e = err(run(&dir, &store, "1.0.0", false));
    assert!(
        e.contains("the index has seq 3, but this system has seen seq 5")
            && e.contains("replayed, refused"),
        "{e}"
    );
    assert_eq!(store.get("alpha").unwrap(), Some(5));
    // A newer seq moves the record on.
    let dir = publish_index(t.path(), &index(6, "3.0.0"));
    run(&dir, &store, "1.0.0", false).unwrap();
    assert_eq!(store.get("alpha").unwrap(), Some(6));
    // A record that is not a number is not silently reset.
    std::fs::write(t.path().join("root/var/lib/kiln/channels/alpha.seq"), "x").unwrap();
    let e = err(run(&dir, &store, "1.0.0", false));
    assert!(e.contains("alpha.seq is not a seq number"), "{e}");
}

/// Defect 3: a channel below the running version is a downgrade offer.
#[test]
fn a_channel_older_than_the_running_system_is_refused_unless_allowed() {
    let t = tempfile::tempdir().unwrap();
    let store = SeqStore::new(&t.path().join("root"));
    let dir = publish_index(t.path(), &index(2, "1.0.0"));
    let e = err(run(&dir, &store, "2.0.0", false));
    assert!(
        e.contains("channel alpha offers 1.0.0")
            && e.contains("version 1.0.0 is older than the running 2.0.0")
            && e.contains("--allow-downgrade"),
        "{e}"
    );
    assert!(run(&dir, &store, "2.0.0", true).unwrap().is_some());
}

/// Defect 12: the index is a regular file read with a bound, never through a symlink, and
/// only bytes its signature covers (with a trusted comment that describes them) are used.
#[test]
fn symlinked_oversized_or_mismatched_indexes_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let store = SeqStore::new(&t.path().join("root"));
    let dir = publish_index(t.path(), &index(5, "2.0.0"));
    let state = t.path().join("channels/alpha.5");

    // index.json a symlink to a signed index elsewhere.
    let elsewhere = t.path().join("elsewhere.json");
    std::fs::rename(state.join(INDEX), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, state.join(INDEX)).unwrap();
    let e = err(run(&dir, &store, "1.0.0", false));
    assert!(e.contains("index.json is a symlink: refused"), "{e}");
    std::fs::remove_file(state.join(INDEX)).unwrap();
    std::fs::rename(&elsewhere, state.join(INDEX)).unwrap();
    run(&dir, &store, "1.0.0", false).unwrap();

    // A FIFO where the index should be is not waited on.
    std::fs::rename(state.join(INDEX_SIG), t.path().join("sig")).unwrap();
    let fifo = std::ffi::CString::new(state.join(INDEX_SIG).to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let e = err(run(&dir, &store, "1.0.0", false));
    assert!(
        e.contains("index.json.minisig is not a regular file"),
        "{e}"
    );

    // More than 1 MiB (a long history), signed: refused before it is parsed.
    let mut big = index(7, "2.0.0");
    big.history = vec!["1.0.0".to_string(); 150_000];
    let dir = publish_index(t.path(), &big);
    let e = err(run(&dir, &store, "1.0.0", false));
    assert!(
        e.contains("larger than the 1048576 bytes kiln reads"),
        "{e}"
    );

    // A signature whose trusted comment names another seq than the index it signs.
    let i = index(8, "2.0.0");
    let dir = publish(
        t.path(),
        8,
        &serde_json::to_vec(&i).unwrap(),
        &comment(&index(9, "2.0.0")),
    );
    let e = err(run(&dir, &store, "1.0.0", false));
    assert!(e.contains("does not describe the index it signs"), "{e}");

    // Bytes changed after signing.
    let dir = publish_index(t.path(), &index(10, "2.0.0"));
    let p = t.path().join("channels/alpha.10").join(INDEX);
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len() - 3;
    b[n] ^= 1;
    std::fs::write(&p, b).unwrap();
    let e = err(run(&dir, &store, "1.0.0", false));
    assert!(e.contains("not signed by a key this system trusts"), "{e}");
    assert_eq!(store.get("alpha").unwrap(), Some(5));
}
