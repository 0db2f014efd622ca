//! TOML files with their text kept, so any value can be reported as `file:line:column`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// A TOML file read from disk. Keeps the text so spans can be turned into positions.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// A position in a source file, printed as `path:line:column` (both 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

impl SourceFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Line and column (1-based, column counted in characters) of a byte offset.
    pub fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..floor_char_boundary(&self.text, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            path: self.path.clone(),
            line,
            column,
        }
    }

    /// An error message anchored at a span of this file.
    pub fn error_at(&self, span: &Range<usize>, message: impl fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {}", self.location(span.start), message)
    }

    /// Deserialize the whole file; TOML syntax errors, unknown keys and wrong types are
    /// reported with the position toml gives us.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(&self.text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            match e.span() {
                Some(span) => self.error_at(&span, message),
                None => anyhow::anyhow!("{}: {}", self.path.display(), message),
            }
        })
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_one_based() {
        let f = SourceFile {
            path: "r.toml".into(),
            text: "a = 1\nbé = 2\n".into(),
        };
        assert_eq!(f.location(0).to_string(), "r.toml:1:1");
        assert_eq!(f.location(6).to_string(), "r.toml:2:1");
        // 'é' is two bytes but one column.
        assert_eq!(f.location(9).to_string(), "r.toml:2:3");
    }

    #[test]
    fn parse_errors_carry_position() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let f = SourceFile {
            path: "r.toml".into(),
            text: "a = 1\nb = 2\n".into(),
        };
        let err = f.parse::<T>().unwrap_err().to_string();
        assert!(err.starts_with("r.toml:2:1: unknown field `b`"), "{err}");
        let f = SourceFile {
            path: "r.toml".into(),
            text: "a = \"x\"\n".into(),
        };
        let err = f.parse::<T>().unwrap_err().to_string();
        assert!(err.starts_with("r.toml:1:5: invalid type"), "{err}");
    }
}
