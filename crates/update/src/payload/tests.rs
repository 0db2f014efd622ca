use super::*;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Result};
use ed25519_dalek::{Signature, Signer, SigningKey};

use super::read::read_signed_part;
use crate::keys::key_id;

/// The compressor `kiln build` uses (kiln-formats' chunked xz), at `level`.
fn xz(level: u32) -> impl Fn(&Path, &Path) -> Result<()> {
    move |raw: &Path, out: &Path| kiln_formats::xz_compress(raw, out, 2, level, None)
}
use rand_core::{OsRng, RngCore};
use std::io::Cursor;
use std::path::PathBuf;

const MIB: usize = 1 << 20;

fn test_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[8u8; 32])
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    OsRng.fill_bytes(&mut v);
    v
}

fn meta() -> Meta {
    Meta {
        os_id: "kiln-test".into(),
        os_name: "Kiln Test".into(),
        version: "1.2.3".into(),
        board: "generic".into(),
        arch: "x86_64".into(),
        created: 1_700_000_000,
    }
}

/// Section contents: usr is a few MiB so the xz body has several blocks.
fn contents() -> Vec<(SectionName, Vec<u8>)> {
    contents_with_usr(4 * MIB + 12345)
}

/// Smaller, for the tests about refusing things (debug-build hashing is slow).
fn small_contents() -> Vec<(SectionName, Vec<u8>)> {
    contents_with_usr(300_000)
}

fn contents_with_usr(usr_size: usize) -> Vec<(SectionName, Vec<u8>)> {
    vec![
        (SectionName::Usr, random_bytes(usr_size)),
        (SectionName::Kernel, random_bytes(100_000)),
        (SectionName::Initramfs, random_bytes(50_001)),
    ]
}

/// Writes the section files and a payload made from them into `dir`.
fn make_payload(
    dir: &Path,
    contents: &[(SectionName, Vec<u8>)],
    compress: &dyn Fn(&Path, &Path) -> Result<()>,
) -> Result<(PathBuf, Header)> {
    let mut files = Vec::new();
    for (name, bytes) in contents {
        let p = dir.join(name.as_str());
        fs::write(&p, bytes).unwrap();
        files.push(p);
    }
    let sections: Vec<(SectionName, &Path, String)> = contents
        .iter()
        .zip(&files)
        .map(|((n, _), p)| (*n, p.as_path(), format!("{n}-detail")))
        .collect();
    let out = dir.join("update.kupd");
    let header = create(&out, &meta(), &sections, &test_key(), compress)?;
    Ok((out, header))
}

/// Extracts into one Vec per section, checking the sink is called in section order.
fn extract_all(r: &mut impl Read, header: &Header) -> Result<Vec<(SectionName, Vec<u8>)>> {
    let mut got: Vec<(SectionName, Vec<u8>)> = Vec::new();
    extract(r, header, &mut |name, bytes| {
        assert!(bytes.len() <= CHUNK);
        match got.last_mut() {
            Some((n, v)) if *n == name => v.extend_from_slice(bytes),
            _ => got.push((name, bytes.to_vec())),
        }
        Ok(())
    })?;
    Ok(got)
}

/// A payload from the given preamble version and header JSON, signed by `key`, with `body`.
fn craft(version: u32, header_json: &[u8], key: &SigningKey, body: &[u8]) -> Vec<u8> {
    let mut v = b"KILNUPD\0".to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
    v.extend_from_slice(header_json);
    let sig = key.sign(&v);
    v.extend_from_slice(&sig.to_bytes());
    v.extend_from_slice(body);
    v
}

fn sample_header() -> Header {
    let sha = "ab".repeat(32);
    Header {
        format: 1,
        os_id: "kiln-test".into(),
        os_name: "Kiln Test".into(),
        version: "1".into(),
        board: "generic".into(),
        arch: "x86_64".into(),
        created: 0,
        key_id: key_id(&test_key().verifying_key()),
        body_size: 0,
        body_sha256: sha.clone(),
        sections: SectionName::ALL
            .iter()
            .map(|&name| Section {
                name,
                size: 1,
                sha256: sha.clone(),
                detail: String::new(),
            })
            .collect(),
    }
}

/// The number of blocks in a single-stream .xz file, from its index (xz file format 1.0.4,
/// sections 2.1.2 and 4): the footer's backward size locates the index, which starts with
/// a 0x00 indicator and the record count as a variable-length integer.
/// A compressor writing `n` xz streams one after the other, each of an `n`th of the input.
fn xz_in_streams(n: usize) -> impl Fn(&Path, &Path) -> Result<()> {
    move |raw: &Path, out: &Path| {
        let data = fs::read(raw)?;
        let mut body = Vec::new();
        for part in data.chunks(data.len().div_ceil(n)) {
            let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
            enc.write_all(part)?;
            body.extend(enc.finish()?);
        }
        fs::write(out, body)?;
        Ok(())
    }
}

fn open_err(bytes: &[u8], trusted: &[VerifyingKey]) -> String {
    format!("{:#}", open(&mut Cursor::new(bytes), trusted).unwrap_err())
}

fn trusted() -> Vec<VerifyingKey> {
    vec![other_key().verifying_key(), test_key().verifying_key()]
}

#[test]
fn round_trip_create_open_verify_extract() {
    let dir = tempfile::tempdir().unwrap();
    let contents = contents();
    // Three concatenated xz streams, as kiln's chunked compressor writes (one per 16 MiB):
    // the reader crosses stream boundaries inside a section.
    let (out, made) = make_payload(dir.path(), &contents, &xz_in_streams(3)).unwrap();
    // Only the inputs and the payload: no temporaries left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 4);
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o644
    );

    let mut f = File::open(&out).unwrap();
    let opened = open(&mut f, &trusted()).unwrap();
    assert_eq!(opened.header, made);
    assert_eq!(opened.signer, test_key().verifying_key());
    assert_eq!(opened.header.sections[0].detail, "usr-detail");
    assert_eq!(opened.header.sections[0].size, contents[0].1.len() as u64);
    assert_eq!(f.stream_position().unwrap(), opened.header_bytes_len);
    verify_body(&mut f, &opened.header).unwrap();
    assert_eq!(
        f.stream_position().unwrap(),
        fs::metadata(&out).unwrap().len()
    );
    f.seek(SeekFrom::Start(opened.header_bytes_len)).unwrap();
    assert_eq!(extract_all(&mut f, &opened.header).unwrap(), contents);
    assert_eq!(read_header_unverified(&out).unwrap(), made);
}

#[test]
fn layout_is_the_documented_one() {
    let dir = tempfile::tempdir().unwrap();
    let contents = contents();
    let (out, made) = make_payload(dir.path(), &contents, &xz(0)).unwrap();
    let bytes = fs::read(&out).unwrap();
    assert_eq!(&bytes[..8], b"KILNUPD\0");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    let h = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[16..16 + h]).unwrap();
    assert_eq!(json["format"], 1);
    assert_eq!(json["key-id"], key_id(&test_key().verifying_key()).as_str());
    assert_eq!(json["body-size"], made.body_size);
    assert_eq!(json["sections"][1]["name"], "kernel");
    let sig = Signature::from_slice(&bytes[16 + h..80 + h]).unwrap();
    test_key()
        .verifying_key()
        .verify_strict(&bytes[..16 + h], &sig)
        .unwrap();
    let body = &bytes[80 + h..];
    assert_eq!(body.len() as u64, made.body_size);
    assert_eq!(hex::encode(Sha256::digest(body)), made.body_sha256);
    let mut raw = Vec::new();
    xz2::read::XzDecoder::new_multi_decoder(body)
        .read_to_end(&mut raw)
        .unwrap();
    let want: Vec<u8> = contents.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(raw, want);
}

#[test]
fn several_concatenated_xz_streams_extract() {
    // A compressor that writes each half of the input as its own .xz stream.
    let two_streams = |raw: &Path, out: &Path| -> Result<()> {
        let data = fs::read(raw)?;
        let (a, b) = data.split_at(data.len() / 2);
        let mut w = xz2::write::XzEncoder::new(Vec::new(), 0);
        w.write_all(a)?;
        let mut body = w.finish()?;
        let mut w = xz2::write::XzEncoder::new(Vec::new(), 0);
        w.write_all(b)?;
        body.extend(w.finish()?);
        fs::write(out, body)?;
        Ok(())
    };
    let dir = tempfile::tempdir().unwrap();
    let contents = contents();
    let (out, _) = make_payload(dir.path(), &contents, &two_streams).unwrap();
    let mut f = File::open(&out).unwrap();
    let opened = open(&mut f, &trusted()).unwrap();
    // extract checks the body itself, so one pass without verify_body works.
    assert_eq!(extract_all(&mut f, &opened.header).unwrap(), contents);
}

#[test]
fn create_refuses_wrong_sections_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut contents = small_contents();
    contents.swap(1, 2);
    let err = format!(
        "{:#}",
        make_payload(dir.path(), &contents, &xz(0)).unwrap_err()
    );
    assert!(
        err.contains("initramfs") && err.contains("out of order"),
        "{err}"
    );

    let failing = |_: &Path, _: &Path| -> Result<()> { bail!("compressor broke") };
    contents.swap(1, 2);
    let err = format!(
        "{:#}",
        make_payload(dir.path(), &contents, &failing).unwrap_err()
    );
    assert!(err.contains("compressor broke"), "{err}");
    let not_xz = |raw: &Path, out: &Path| -> Result<()> { Ok(fs::copy(raw, out).map(|_| ())?) };
    let err = format!(
        "{:#}",
        make_payload(dir.path(), &contents, &not_xz).unwrap_err()
    );
    assert!(err.contains("did not write xz data"), "{err}");
    // Only the three section inputs remain.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn wrong_key_and_no_keys_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (out, made) = make_payload(dir.path(), &small_contents(), &xz(0)).unwrap();
    let bytes = fs::read(&out).unwrap();
    let other = other_key().verifying_key();
    let err = open_err(&bytes, &[other]);
    assert!(err.contains("wrong key or tampered payload"), "{err}");
    assert!(err.contains(&made.key_id), "{err}");
    assert!(err.contains(&key_id(&other)), "{err}");
    let err = open_err(&bytes, &[]);
    assert!(err.contains("no trusted keys"), "{err}");
    assert!(err.contains(&made.key_id), "{err}");
}

#[test]
fn flipped_bytes_refused_by_the_right_step() {
    let dir = tempfile::tempdir().unwrap();
    let (out, made) = make_payload(dir.path(), &small_contents(), &xz(0)).unwrap();
    let bytes = fs::read(&out).unwrap();
    let h = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;

    // In the header and in the signature: open refuses.
    for at in [16 + 5, 16 + h / 2, 16 + h - 1, 16 + h, 16 + h + 40, 79 + h] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let err = open_err(&bad, &trusted());
        assert!(err.contains("does not verify"), "byte {at}: {err}");
    }

    // In the body: open accepts, verify_body (and extract) refuse.
    let mut bad = bytes.clone();
    bad[80 + h + made.body_size as usize / 2] ^= 0x01;
    let mut r = Cursor::new(&bad);
    let opened = open(&mut r, &trusted()).unwrap();
    let err = format!("{:#}", verify_body(&mut r, &opened.header).unwrap_err());
    assert!(err.contains("corrupt: body sha256 is"), "{err}");
    assert!(err.contains(&made.body_sha256), "{err}");
    r.set_position(opened.header_bytes_len);
    assert!(extract_all(&mut r, &opened.header).is_err());
}

#[test]
fn truncated_body_refused_and_trailing_bytes_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let contents = contents();
    let (out, made) = make_payload(dir.path(), &contents, &xz(0)).unwrap();
    let bytes = fs::read(&out).unwrap();

    let short = &bytes[..bytes.len() - 10];
    let mut r = Cursor::new(short);
    let opened = open(&mut r, &trusted()).unwrap();
    let err = format!("{:#}", verify_body(&mut r, &opened.header).unwrap_err());
    let want = format!(
        "truncated: the body has {} of {} bytes",
        made.body_size - 10,
        made.body_size
    );
    assert!(err.contains(&want), "{err}");
    r.set_position(opened.header_bytes_len);
    assert!(extract_all(&mut r, &opened.header).is_err());

    // A block device: the payload followed by whatever the device held before.
    let mut device = bytes.clone();
    device.extend(random_bytes(3 * MIB));
    let mut r = Cursor::new(&device);
    let opened = open(&mut r, &trusted()).unwrap();
    verify_body(&mut r, &opened.header).unwrap();
    assert_eq!(r.position(), bytes.len() as u64);
    r.set_position(opened.header_bytes_len);
    assert_eq!(extract_all(&mut r, &opened.header).unwrap(), contents);
    assert_eq!(r.position(), bytes.len() as u64);
}

#[test]
fn bad_magic_and_other_versions_refused() {
    let json = serde_json::to_vec(&sample_header()).unwrap();
    let good = craft(1, &json, &test_key(), b"");
    open(&mut Cursor::new(&good), &trusted()).unwrap();

    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(open_err(&bad, &trusted()).contains("not a kiln update payload"));
    assert!(open_err(b"KILN", &trusted()).contains("not a kiln update payload"));
    assert!(open_err(b"", &trusted()).contains("not a kiln update payload"));

    let v2 = craft(2, &json, &test_key(), b"");
    let err = open_err(&v2, &trusted());
    assert!(
        err.contains("unsupported payload format version 2"),
        "{err}"
    );
    assert!(err.contains("reads format version 1"), "{err}");
    assert!(
        format!("{:#}", read_signed_part(&mut Cursor::new(&v2)).unwrap_err()).contains("version 2")
    );
}

#[test]
fn header_length_out_of_range_refused_without_reading_it() {
    for len in [0u32, MAX_HEADER_LEN + 1, u32::MAX] {
        let mut preamble = b"KILNUPD\0".to_vec();
        preamble.extend_from_slice(&1u32.to_le_bytes());
        preamble.extend_from_slice(&len.to_le_bytes());
        // Only the preamble is there: reading further would be a "truncated" error.
        let err = open_err(&preamble, &trusted());
        assert!(
            err.contains(&format!("header length {len} is outside 1..=65536")),
            "{err}"
        );
    }
}

#[test]
fn largest_header_accepted() {
    let mut json = serde_json::to_vec(&sample_header()).unwrap();
    json.resize(MAX_HEADER_LEN as usize, b' ');
    let bytes = craft(1, &json, &test_key(), b"");
    let opened = open(&mut Cursor::new(&bytes), &trusted()).unwrap();
    assert_eq!(opened.header_bytes_len, 80 + 65536);
    let mut too_big = json.clone();
    too_big.push(b' ');
    let err = open_err(&craft(1, &too_big, &test_key(), b""), &trusted());
    assert!(err.contains("header length 65537"), "{err}");
}

#[test]
fn truncated_header_or_signature_refused() {
    let json = serde_json::to_vec(&sample_header()).unwrap();
    let bytes = craft(1, &json, &test_key(), b"");
    let err = open_err(&bytes[..100], &trusted());
    assert!(err.contains("truncated") && err.contains("header"), "{err}");
    let err = open_err(&bytes[..bytes.len() - 1], &trusted());
    assert!(
        err.contains("truncated") && err.contains("signature"),
        "{err}"
    );
    let err = open_err(&bytes[..12], &trusted());
    assert!(err.contains("truncated"), "{err}");
}

/// Signs `json` with the trusted test key and returns what open says.
fn open_signed_json(json: &str) -> String {
    open_err(&craft(1, json.as_bytes(), &test_key(), b""), &trusted())
}

#[test]
fn bad_header_json_refused() {
    let err = open_signed_json("not json");
    assert!(err.contains("header is not a valid kiln header"), "{err}");

    let mut v = serde_json::to_value(sample_header()).unwrap();
    v.as_object_mut().unwrap().remove("body-sha256");
    let err = open_signed_json(&v.to_string());
    assert!(err.contains("missing field `body-sha256`"), "{err}");

    let mut v = serde_json::to_value(sample_header()).unwrap();
    v["surprise"] = 1.into();
    let err = open_signed_json(&v.to_string());
    assert!(err.contains("unknown field `surprise`"), "{err}");

    let mut v = serde_json::to_value(sample_header()).unwrap();
    v["format"] = 2.into();
    let err = open_signed_json(&v.to_string());
    assert!(err.contains("signed header says format 2"), "{err}");

    let mut v = serde_json::to_value(sample_header()).unwrap();
    v["sections"][0]["name"] = "boot".into();
    let err = open_signed_json(&v.to_string());
    assert!(err.contains("unknown variant `boot`"), "{err}");

    let mut v = serde_json::to_value(sample_header()).unwrap();
    v["body-sha256"] = "AB".repeat(32).into();
    let err = open_signed_json(&v.to_string());
    assert!(
        err.contains("body-sha256 is not 64 lowercase hex digits"),
        "{err}"
    );

    let mut v = serde_json::to_value(sample_header()).unwrap();
    v["key-id"] = "0123456789abcdef".into();
    let err = open_signed_json(&v.to_string());
    assert!(err.contains("names signing key 0123456789abcdef"), "{err}");
}

#[test]
fn wrong_section_lists_refused() {
    let with_names = |names: &[SectionName]| {
        let mut h = sample_header();
        let template = h.sections[0].clone();
        h.sections = names
            .iter()
            .map(|&name| Section {
                name,
                ..template.clone()
            })
            .collect();
        open_signed_json(&serde_json::to_string(&h).unwrap())
    };
    use SectionName::*;
    let err = with_names(&[Kernel, Usr, Initramfs]);
    assert!(
        err.contains("[kernel, usr, initramfs]: they are out of order"),
        "{err}"
    );
    let err = with_names(&[Usr, Kernel]);
    assert!(err.contains("initramfs is missing"), "{err}");
    let err = with_names(&[Usr, Kernel, Initramfs, Usr]);
    assert!(err.contains("usr appears 2 times"), "{err}");
    let err = with_names(&[]);
    assert!(err.contains("usr is missing"), "{err}");
}

#[test]
fn extract_refuses_sections_that_do_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let contents = small_contents();
    let (out, made) = make_payload(dir.path(), &contents, &xz(0)).unwrap();
    let bytes = fs::read(&out).unwrap();
    let body = &bytes[bytes.len() - made.body_size as usize..];

    // Re-sign headers with altered sections over the same, genuine body.
    let extract_with = |h: &Header| {
        let payload = craft(1, &serde_json::to_vec(h).unwrap(), &test_key(), body);
        let mut r = Cursor::new(payload);
        let opened = open(&mut r, &trusted()).unwrap();
        let pos = r.position();
        verify_body(&mut r, &opened.header).unwrap();
        r.set_position(pos);
        format!("{:#}", extract_all(&mut r, &opened.header).unwrap_err())
    };

    let mut h = made.clone();
    h.sections[1].sha256 = "00".repeat(32);
    let err = extract_with(&h);
    assert!(
        err.contains("corrupt: the kernel section's sha256 is"),
        "{err}"
    );

    let mut h = made.clone();
    h.sections[2].size += 1;
    let err = extract_with(&h);
    assert!(
        err.contains("body ends inside the initramfs section"),
        "{err}"
    );

    let mut h = made.clone();
    h.sections[2].size -= 1;
    let err = extract_with(&h);
    assert!(err.contains("initramfs section's sha256"), "{err}");

    let mut h = made.clone();
    h.sections[0].size -= 1;
    h.sections[2].size -= 1;
    let err = extract_with(&h);
    assert!(err.contains("usr section's sha256"), "{err}");
}

#[test]
fn extract_refuses_a_body_longer_than_the_sections() {
    let dir = tempfile::tempdir().unwrap();
    let contents = small_contents();
    let (out, made) = make_payload(dir.path(), &contents, &xz(0)).unwrap();
    let bytes = fs::read(&out).unwrap();
    let body = &bytes[bytes.len() - made.body_size as usize..];
    // Header sections describe all but the last byte of initramfs.
    let mut h = made.clone();
    let last = &contents[2].1;
    h.sections[2].size -= 1;
    h.sections[2].sha256 = hex::encode(Sha256::digest(&last[..last.len() - 1]));
    let payload = craft(1, &serde_json::to_vec(&h).unwrap(), &test_key(), body);
    let mut r = Cursor::new(payload);
    let opened = open(&mut r, &trusted()).unwrap();
    let err = format!("{:#}", extract_all(&mut r, &opened.header).unwrap_err());
    assert!(err.contains("decompresses to more than"), "{err}");
}

/// The build's level (1), through the compressor kiln builds payloads with.
#[test]
fn a_payload_at_the_build_level_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let contents = small_contents();
    let (out, made) = make_payload(dir.path(), &contents, &xz(1)).unwrap();
    let mut f = File::open(&out).unwrap();
    open(&mut f, &trusted()).unwrap();
    assert_eq!(extract_all(&mut f, &made).unwrap(), contents);
}

/// A compressor writing one xz stream whose LZMA2 dictionary is `dict` bytes (what `xz -9`
/// or `--lzma2=dict=` would write), with stream padding after it.
fn xz_with_dictionary(dict: u32) -> impl Fn(&Path, &Path) -> Result<()> {
    move |raw: &Path, out: &Path| {
        let mut opts = xz2::stream::LzmaOptions::new_preset(0)?;
        opts.dict_size(dict);
        let mut filters = xz2::stream::Filters::new();
        filters.lzma2(&opts);
        let stream = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc64)?;
        let mut enc = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        enc.write_all(&fs::read(raw)?)?;
        let mut body = enc.finish()?;
        body.extend_from_slice(&[0; 8]);
        fs::write(out, body)?;
        Ok(())
    }
}

#[test]
fn xz_memory_is_bounded_before_and_while_decoding() {
    let dir = tempfile::tempdir().unwrap();
    // What kiln writes: level 1 in chunks, several streams: about 1 MiB per block.
    let (p, h) = make_payload(dir.path(), &small_contents(), &xz(1)).unwrap();
    let mut f = File::open(&p).unwrap();
    let o = open(&mut f, &trusted()).unwrap();
    let need = check_xz_memory(&mut f, o.header_bytes_len, &h).unwrap();
    assert!(need <= 3 << 20, "{need}");
    // Several streams of level 0, and padding between streams, are walked too.
    let d2 = tempfile::tempdir().unwrap();
    let (p2, h2) = make_payload(d2.path(), &small_contents(), &xz_in_streams(3)).unwrap();
    let mut f2 = File::open(&p2).unwrap();
    let o2 = open(&mut f2, &trusted()).unwrap();
    check_xz_memory(&mut f2, o2.header_bytes_len, &h2).unwrap();

    // A 64 MiB dictionary (xz -9): refused before decoding, and by the decoder itself.
    let d3 = tempfile::tempdir().unwrap();
    let (big, hb) =
        make_payload(d3.path(), &small_contents(), &xz_with_dictionary(64 << 20)).unwrap();
    let mut f3 = File::open(&big).unwrap();
    let o3 = open(&mut f3, &trusted()).unwrap();
    verify_body(&mut f3, &hb).unwrap();
    let e = format!(
        "{:#}",
        check_xz_memory(&mut f3, o3.header_bytes_len, &hb).unwrap_err()
    );
    assert!(
        e.contains("needs 65 MiB of memory")
            && e.contains("dictionary of 64 MiB")
            && e.contains("16 MiB"),
        "{e}"
    );
    f3.seek(SeekFrom::Start(o3.header_bytes_len)).unwrap();
    let e = format!("{:#}", extract_all(&mut f3, &hb).unwrap_err());
    assert!(e.contains("more than the 16 MiB of memory"), "{e}");
    // 8 MiB (xz's default level 6) is within the limit.
    let d4 = tempfile::tempdir().unwrap();
    let (ok, ho) =
        make_payload(d4.path(), &small_contents(), &xz_with_dictionary(8 << 20)).unwrap();
    let mut f4 = File::open(&ok).unwrap();
    let o4 = open(&mut f4, &trusted()).unwrap();
    check_xz_memory(&mut f4, o4.header_bytes_len, &ho).unwrap();
    f4.seek(SeekFrom::Start(o4.header_bytes_len)).unwrap();
    extract_all(&mut f4, &ho).unwrap();
}

#[test]
fn verify_file_hashes_the_payload_file() {
    let dir = tempfile::tempdir().unwrap();
    let (p, h) = make_payload(dir.path(), &small_contents(), &xz(1)).unwrap();
    let mut f = File::open(&p).unwrap();
    let o = open(&mut f, &trusted()).unwrap();
    // Trailing bytes (a device larger than the payload) are not part of the file's digest.
    let mut bytes = fs::read(&p).unwrap();
    let want = hex::encode(sha2::Sha256::digest(&bytes));
    bytes.extend_from_slice(&[0xee; 4096]);
    let got = verify_file(&mut Cursor::new(&bytes), o.header_bytes_len, &h).unwrap();
    assert_eq!(got, want);
}
