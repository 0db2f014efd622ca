//! Exact checks: a digest is 64 hex digits and equal, never a prefix that an empty expected
//! value would pass.

use std::path::Path;

/// The SHA-256 of `path` as `sha256sum` computes it: its first field, checked to be 64
/// lower-case hex digits.
pub fn sha256sum(path: &Path) -> String {
    let out = crate::tool("sha256sum", &[path.to_str().unwrap()]);
    let hex = out.split_whitespace().next().unwrap_or("").to_string();
    assert!(is_sha256(&hex), "sha256sum printed {out:?} for {path:?}");
    hex
}

/// The SHA-256 of `len` bytes of `path` from `offset` (a partition of a disk image), read by
/// dd and hashed by `sha256sum`, checked to be 64 lower-case hex digits.
pub fn range_sha256(path: &Path, offset: u64, len: u64) -> String {
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if='{}' bs=1M iflag=skip_bytes,count_bytes skip={offset} count={len} status=none | sha256sum",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "dd | sha256sum of {path:?} failed");
    let out = String::from_utf8_lossy(&o.stdout);
    let hex = out.split_whitespace().next().unwrap_or("").to_string();
    assert!(is_sha256(&hex), "sha256sum printed {out:?} for {path:?}");
    hex
}

/// 64 lower-case hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `expected` is a SHA-256 (64 hex digits) and `path` has it, as `sha256sum` says.
pub fn assert_sha256(path: &Path, expected: &str) {
    assert!(
        is_sha256(expected),
        "{path:?}: the expected digest {expected:?} is not 64 hex digits"
    );
    assert_eq!(sha256sum(path), expected, "{path:?}");
}
