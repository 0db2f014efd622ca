//! The fuzz targets: each takes arbitrary bytes and hands them to one of kiln's parsers of
//! untrusted input the way kiln does. A target returns normally whatever the bytes; a panic,
//! an abort or a hang is a bug. Shared by the AFL++ binaries (fuzz/src/bin) and the replay
//! test of the corpus in the suite (tests/tests/fuzz_corpus.rs).

use std::io::Cursor;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// A target: bytes in, nothing out (a panic is the finding).
pub type Target = fn(&[u8]);

/// Every target, by name: the name is the binary's and the corpus directory's.
pub const TARGETS: &[(&str, Target)] = &[
    ("payload", payload),
    ("gpt", gpt),
    ("env_block", env_block),
    ("channel_index", channel_index),
    ("image_format", image_format),
    ("elf", elf),
];

/// A fixed key, so the fuzzer can reach the header parser: bytes it finds are signed here
/// as a build would sign them.
fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// An update payload: the first two bytes give the header's length, then the header JSON,
/// then the body. The preamble and the signature are made here, so the parser sees a payload
/// signed by a trusted key and the header and body are what is fuzzed.
pub fn payload(data: &[u8]) {
    use kiln_update::payload;
    let Some(file) = signed_payload(data) else {
        return;
    };
    let trusted = trusted();
    // Unsigned bytes as they come, too: the preamble and length checks.
    let _ = payload::open(&mut Cursor::new(data), &trusted);
    let mut r = Cursor::new(&file);
    if let Ok(o) = payload::open(&mut r, &trusted) {
        let _ = payload::verify_body(&mut r.clone(), &o.header);
        let _ = payload::extract(&mut r, &o.header, &mut |_, _| Ok(()));
    }
}

/// The payload file the `payload` target makes of its input: the preamble, the header and
/// its signature by the fixed key, the body.
pub fn signed_payload(data: &[u8]) -> Option<Vec<u8>> {
    use kiln_update::payload::{FORMAT_VERSION, MAGIC};
    if data.len() < 2 {
        return None;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (header, body) = data[2..].split_at(n);
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(header.len() as u32).to_le_bytes());
    file.extend_from_slice(header);
    let sig = key().sign(&file);
    file.extend_from_slice(&sig.to_bytes());
    file.extend_from_slice(body);
    Some(file)
}

/// The keys the targets trust: the fixed key's public half.
pub fn trusted() -> [VerifyingKey; 1] {
    [key().verifying_key()]
}

/// A disk's GPT (protective MBR, both headers and entry arrays): the bytes are the disk.
pub fn gpt(data: &[u8]) {
    let _ = kiln_disk::Gpt::read(&mut Cursor::new(data), data.len() as u64);
}

/// The A/B slot state, a GRUB environment block.
pub fn env_block(data: &[u8]) {
    if let Ok(p) = kiln_update::state::SlotState::from_env(data) {
        // What reads must write back, with its generation (0 for a block from before them).
        let _ = p.state.to_env(p.generation.unwrap_or(0));
        let _ = p.state.next_boot();
    }
}

/// A channel index and its minisign signature, split at the first NUL byte: the signature
/// text is decoded and checked, the index parsed as the agent parses a verified one.
pub fn channel_index(data: &[u8]) {
    let (json, sig) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let sig = String::from_utf8_lossy(sig);
    let _ = kiln_update::channel::verify_minisign(&key().verifying_key(), json, &sig);
    let _ = serde_json::from_slice::<kiln_update::channel::Index>(json);
}

/// An image file's format from its first bytes and its footer, and the header checks that
/// refuse images naming other files (qcow2 backing and data files, VMDK descriptors and
/// parents, differencing VHDs).
pub fn image_format(data: &[u8]) {
    use kiln_formats::ImageFormat;
    let head = &data[..data.len().min(512)];
    let tail = (data.len() >= 512).then(|| &data[data.len() - 512..]);
    let format = ImageFormat::from_bytes(head, tail);
    let read_at = |offset: u64, n: usize| -> anyhow::Result<Vec<u8>> {
        let start = usize::try_from(offset)?;
        let end = start
            .checked_add(n)
            .ok_or_else(|| anyhow::anyhow!("overflow"))?;
        data.get(start..end)
            .map(|b| b.to_vec())
            .ok_or_else(|| anyhow::anyhow!("past the end"))
    };
    for f in [
        format,
        ImageFormat::Qcow2,
        ImageFormat::Vmdk,
        ImageFormat::Vhd,
    ] {
        let _ = kiln_formats::image::header_refusal(f, data.len() as u64, &read_at);
    }
}

/// The static-ELF check of the agent and busybox, on a file holding the bytes.
pub fn elf(data: &[u8]) {
    thread_local! {
        static FILE: std::path::PathBuf = {
            let dir = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
            std::path::Path::new(dir).join(format!("kiln-fuzz-elf-{}", std::process::id()))
        };
    }
    FILE.with(|p| {
        if std::fs::write(p, data).is_ok() {
            let _ = kiln_boot::initramfs::check_static(p, "fuzz input", "x86_64");
        }
    });
}
