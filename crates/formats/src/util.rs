//! Shared helpers: artifacts staged under a temporary name beside their destination, host
//! tools with the Debian package that provides them, and small escaping/rounding helpers.

use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

/// An artifact being written: a file with the destination's own name inside a hidden
/// temporary directory beside the destination (tools such as qemu-img record the name they
/// wrote in the file), removed when dropped, unless [`Staged::commit`] renames it into place.
pub(crate) struct Staged {
    dir: tempfile::TempDir,
    path: PathBuf,
    dest: PathBuf,
}

impl Staged {
    pub(crate) fn new(dest: &Path) -> Result<Self> {
        let name = dest
            .file_name()
            .with_context(|| format!("destination {} has no file name", dest.display()))?;
        let parent = parent_dir(dest);
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".part")
            .tempdir_in(parent)
            .with_context(|| {
                format!(
                    "cannot create a temporary directory in {} for {}",
                    parent.display(),
                    dest.display()
                )
            })?;
        let path = dir.path().join(name);
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Staged {
            dir,
            path,
            dest: dest.to_path_buf(),
        })
    }

    /// The temporary file to write (it exists, empty).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the mode, flushes the data to disk and renames the file to its destination.
    pub(crate) fn commit(self, mode: u32) -> Result<()> {
        let tmp_shown = self.path.display().to_string();
        std::fs::set_permissions(&self.path, Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {tmp_shown}"))?;
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot flush {tmp_shown} to disk"))?;
        std::fs::rename(&self.path, &self.dest)
            .with_context(|| format!("cannot rename {tmp_shown} to {}", self.dest.display()))?;
        // Make the rename itself durable; failing that is not worth failing the build.
        if let Ok(d) = File::open(parent_dir(&self.dest)) {
            let _ = d.sync_all();
        }
        self.dir
            .close()
            .with_context(|| format!("cannot remove the staging directory of {tmp_shown}"))
    }
}

/// The directory a path is in ("." for a bare file name).
pub(crate) fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `dest` atomically with the given mode.
pub fn write_file_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let staged = Staged::new(dest)?;
    std::fs::write(staged.path(), bytes)
        .with_context(|| format!("cannot write {}", staged.path().display()))?;
    staged.commit(mode)
}

/// The size of a regular file that must exist (the source of a conversion).
pub(crate) fn source_size(src: &Path) -> Result<u64> {
    let m = std::fs::metadata(src)
        .with_context(|| format!("cannot read source image {}", src.display()))?;
    if !m.is_file() {
        bail!("source image {} is not a regular file", src.display());
    }
    Ok(m.len())
}

/// Finds a host tool or fails naming the Debian package that provides it.
pub(crate) fn tool(name: &str, package: &str) -> Result<PathBuf> {
    kiln_fs::tools::find(name).with_context(|| {
        format!("missing host tool {name}: install it with apt-get install {package}")
    })
}

/// A path as qemu-img should see it: a relative path gets a leading `./` so that a `:` in it
/// is never read as a protocol prefix (`nbd:`, `http:`...).
pub(crate) fn qemu_path(p: &Path) -> PathBuf {
    if p.is_absolute() || p.starts_with(".") {
        p.to_path_buf()
    } else {
        Path::new(".").join(p)
    }
}

/// Escapes text for XML character data and attribute values.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline/CR are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Quotes a string for POSIX sh (single quotes; an embedded `'` becomes `'\''`).
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whole GiB needed to hold `bytes` (at least 1).
pub(crate) fn gib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

/// A plain file name for an artifact member: no directory part, nothing a tar, a manifest
/// line or a shell would read specially.
pub(crate) fn check_plain_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 90
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if !ok {
        bail!(
            "{what} {name:?} is not a plain file name: use 1-90 characters from A-Z a-z 0-9 . _ - +, \
             not starting with . or -"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_file_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        {
            let s = Staged::new(&dest).unwrap();
            std::fs::write(s.path(), b"half").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_file_atomic(&dest, b"whole", 0o644).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn escaping() {
        assert_eq!(xml_escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(qemu_path(Path::new("a:b.img")), Path::new("./a:b.img"));
        assert_eq!(gib_ceil(1), 1);
        assert_eq!(gib_ceil(GIB), 1);
        assert_eq!(gib_ceil(GIB + 1), 2);
        assert!(check_plain_name("name", "kiln-0.1.0_x").is_ok());
        for bad in ["", "a/b", "-x", ".x", "a b", "a(b)", "é"] {
            assert!(check_plain_name("name", bad).is_err(), "{bad}");
        }
    }
}
