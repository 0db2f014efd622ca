//! DIGESTS files in the CoreOS style, checkable with sha256sum -c and sha512sum -c.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kiln_host::atomic::{parent_dir, write_file_atomic};
use kiln_host::hash::sha256_sha512_file;

/// Writes the DIGESTS file `dest` for `files`, which must be in the same directory as
/// `dest` (lines name them by file name). For each file:
///
/// ```text
/// # SHA256 HASH
/// <sha256 hex>  <file name>
/// # SHA512 HASH
/// <sha512 hex>  <file name>
/// ```
///
/// The `<hex>  <name>` lines under each kind of header verify with `sha256sum -c` and
/// `sha512sum -c` run in that directory.
pub fn digests(files: &[&Path], dest: &Path) -> Result<()> {
    let dir = parent_dir(dest)
        .canonicalize()
        .with_context(|| format!("cannot resolve the directory of {}", dest.display()))?;
    let mut entries = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no UTF-8 file name", file.display()))?;
        if name.contains(['\n', '\r', '\\']) {
            bail!("file name {name:?} cannot be written to a DIGESTS file");
        }
        let file_dir = parent_dir(file)
            .canonicalize()
            .with_context(|| format!("cannot resolve the directory of {}", file.display()))?;
        if file_dir != dir {
            bail!(
                "{} is not in {}: a DIGESTS file names files beside it",
                file.display(),
                dir.display()
            );
        }
        let (sha256, sha512) = sha256_sha512_file(file)?;
        entries.push(Entry {
            name: name.to_string(),
            sha256,
            sha512,
        });
    }
    write_file_atomic(dest, text(&entries)?.as_bytes(), 0o644)
}

/// One file of a DIGESTS file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub sha256: String,
    pub sha512: String,
}

/// The DIGESTS text for hashes already computed, in the order given.
pub fn text(entries: &[Entry]) -> Result<String> {
    let mut out = String::new();
    for e in entries {
        if e.name.is_empty() || e.name.contains(['\n', '\r', '\\', '/']) {
            bail!("file name {:?} cannot be written to a DIGESTS file", e.name);
        }
        out.push_str(&format!(
            "# SHA256 HASH\n{}  {}\n# SHA512 HASH\n{}  {}\n",
            e.sha256, e.name, e.sha512, e.name
        ));
    }
    Ok(out)
}

/// Reads a DIGESTS file's text: every file needs both hashes; anything else is an error
/// naming the line.
pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let mut order: Vec<String> = Vec::new();
    let mut found: std::collections::HashMap<String, (Option<String>, Option<String>)> =
        Default::default();
    let mut kind = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        match line {
            "# SHA256 HASH" => kind = Some(64),
            "# SHA512 HASH" => kind = Some(128),
            _ => {
                let Some(len) = kind else {
                    bail!("DIGESTS line {n}: a hash line before any `# SHA256 HASH` or `# SHA512 HASH` header");
                };
                let Some((hash, name)) = line.split_once("  ") else {
                    bail!("DIGESTS line {n}: expected `<hex>  <file name>`");
                };
                if hash.len() != len || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!(
                        "DIGESTS line {n}: `{hash}` is not a {}-character hex digest",
                        len
                    );
                }
                if name.is_empty() || name.contains('/') {
                    bail!("DIGESTS line {n}: `{name}` is not a file name");
                }
                let slot = found.entry(name.to_string()).or_insert_with(|| {
                    order.push(name.to_string());
                    (None, None)
                });
                let place = if len == 64 { &mut slot.0 } else { &mut slot.1 };
                if place.replace(hash.to_ascii_lowercase()).is_some() {
                    bail!(
                        "DIGESTS line {n}: a second {} hash for {name}",
                        if len == 64 { "SHA-256" } else { "SHA-512" }
                    );
                }
            }
        }
    }
    order
        .into_iter()
        .map(|name| match found.remove(&name) {
            Some((Some(sha256), Some(sha512))) => Ok(Entry {
                name,
                sha256,
                sha512,
            }),
            _ => bail!("DIGESTS: {name} lacks its SHA-256 or its SHA-512"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::MIB;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// The `<hex>  <name>` lines that follow `header` lines.
    fn section(text: &str, header: &str) -> String {
        let mut out = String::new();
        let mut on = false;
        for line in text.lines() {
            if line.starts_with('#') {
                on = line == header;
            } else if on {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn check(tool: &str, dir: &Path, lines: &str) -> (bool, String) {
        let mut c = Command::new(tool)
            .args(["-c", "--strict"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into(),
        )
    }

    #[test]
    fn verifies_with_sha_sum_tools() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("kiln.qcow2");
        let b = dir.path().join("kiln image.raw.xz");
        std::fs::write(&a, vec![7u8; 3 * MIB as usize + 5]).unwrap();
        std::fs::write(&b, b"").unwrap();
        let dest = dir.path().join("kiln.DIGESTS");
        digests(&[&a, &b], &dest).unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        assert_eq!(text.lines().count(), 8);
        assert!(text.starts_with("# SHA256 HASH\n"));
        let s256 = section(&text, "# SHA256 HASH");
        let s512 = section(&text, "# SHA512 HASH");
        assert_eq!(s256.lines().count(), 2);
        assert_eq!(s512.lines().count(), 2);
        assert!(s256.contains(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  kiln image.raw.xz"
        ));
        let (ok, out) = check("sha256sum", dir.path(), &s256);
        assert!(ok, "{out}");
        let (ok, out) = check("sha512sum", dir.path(), &s512);
        assert!(ok, "{out}");

        // A changed file fails.
        std::fs::write(&a, b"changed").unwrap();
        assert!(!check("sha256sum", dir.path(), &s256).0);
        assert!(!check("sha512sum", dir.path(), &s512).0);

        // What was written parses back.
        let e = parse(&text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].name, "kiln image.raw.xz");
        assert_eq!(text, super::text(&e).unwrap());
        assert!(parse("abc  x\n").is_err());
        assert!(parse("# SHA256 HASH\nabc  x\n").is_err());
        assert!(parse(&text.replace("# SHA512 HASH\n", "# SHA256 HASH\n")).is_err());
    }

    #[test]
    fn bad_input_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sub = tempfile::tempdir().unwrap();
        let elsewhere = sub.path().join("x");
        std::fs::write(&elsewhere, b"x").unwrap();
        let dest = dir.path().join("DIGESTS");
        let e = digests(&[&elsewhere], &dest).unwrap_err().to_string();
        assert!(e.contains("beside"), "{e}");
        assert!(digests(&[&dir.path().join("missing")], &dest).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
