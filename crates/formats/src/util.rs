//! Shared helpers: source checks and small escaping/rounding helpers. Artifacts are staged
//! with kiln_host::atomic, tools run with kiln_host.

use std::path::Path;

use anyhow::{bail, Context, Result};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;

/// The size of a regular file that must exist (the source of a conversion).
pub(crate) fn source_size(src: &Path) -> Result<u64> {
    let m = std::fs::metadata(src)
        .with_context(|| format!("cannot read source image {}", src.display()))?;
    if !m.is_file() {
        bail!("source image {} is not a regular file", src.display());
    }
    Ok(m.len())
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
    fn escaping() {
        assert_eq!(xml_escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(gib_ceil(1), 1);
        assert_eq!(gib_ceil(GIB), 1);
        assert_eq!(gib_ceil(GIB + 1), 2);
        assert!(check_plain_name("name", "kiln-0.1.0_x").is_ok());
        for bad in ["", "a/b", "-x", ".x", "a b", "a(b)", "é"] {
            assert!(check_plain_name("name", bad).is_err(), "{bad}");
        }
    }
}
