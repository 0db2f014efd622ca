//! File hashes: SHA-256 for cache keys, SHA-256 and SHA-512 together for DIGESTS files and
//! release manifests (one read of the file for both).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256, Sha512};

/// Read size: large enough that a multi-GiB image is hashed at the speed of the hash.
const CHUNK: usize = 1 << 20;

/// SHA-256 of a file's bytes, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    each_chunk(path, |b| h.update(b))?;
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 and SHA-512 of a file's bytes (lower-case hex), from one read.
pub fn sha256_sha512_file(path: &Path) -> Result<(String, String)> {
    let mut s256 = Sha256::new();
    let mut s512 = Sha512::new();
    each_chunk(path, |b| {
        s256.update(b);
        s512.update(b);
    })?;
    Ok((hex::encode(s256.finalize()), hex::encode(s512.finalize())))
}

fn each_chunk(path: &Path, mut f: impl FnMut(&[u8])) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => f(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(
            sha256_file(&empty).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let abc = d.path().join("abc");
        std::fs::write(&abc, b"abc").unwrap();
        let (a, b) = sha256_sha512_file(&abc).unwrap();
        assert_eq!(
            a,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(b.starts_with("ddaf35a193617aba") && b.len() == 128, "{b}");
        assert_eq!(sha256_file(&abc).unwrap(), a);
    }

    #[test]
    fn large_files_hash_across_chunks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        let bytes: Vec<u8> = (0..CHUNK * 2 + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            hex::encode(Sha256::digest(&bytes))
        );
        assert_eq!(
            sha256_sha512_file(&p).unwrap().1,
            hex::encode(Sha512::digest(&bytes))
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = sha256_file(Path::new("/nonexistent/kiln")).unwrap_err();
        assert_eq!(e.to_string(), "cannot open /nonexistent/kiln");
    }
}
