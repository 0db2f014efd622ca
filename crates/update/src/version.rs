//! OS versions as kiln numbers them, BUILD.BRANCH.PATCH with an optional `+` suffix, and
//! their order. It lives here, in the crate the agent links, because the agent refuses
//! downgrades by this order; kiln-recipe, which makes versions, uses the same type.

use std::cmp::Ordering;
use std::fmt;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// A parsed version: BUILD.BRANCH.PATCH and an optional `+` suffix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub build: u32,
    pub branch: u32,
    pub patch: u32,
    /// After `+`: the build date of a development build.
    pub dev: Option<String>,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version> {
        let (core, dev) = match s.split_once('+') {
            Some((c, d)) => (c, Some(d.to_string())),
            None => (s, None),
        };
        let nums: Vec<&str> = core.split('.').collect();
        let num = |t: &str| -> Result<u32> {
            if t.is_empty()
                || !t.chars().all(|c| c.is_ascii_digit())
                || (t.len() > 1 && t.starts_with('0'))
            {
                bail!("`{s}` is not a version BUILD.BRANCH.PATCH[+suffix]");
            }
            t.parse()
                .with_context(|| format!("`{s}`: number out of range"))
        };
        if nums.len() != 3 {
            bail!("`{s}` is not a version BUILD.BRANCH.PATCH[+suffix]");
        }
        if let Some(d) = &dev {
            if d.is_empty()
                || !d
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                bail!("`{s}`: the part after + must be letters, digits, - and .");
            }
        }
        Ok(Version {
            build: num(nums[0])?,
            branch: num(nums[1])?,
            patch: num(nums[2])?,
            dev,
        })
    }

    /// BUILD.BRANCH.PATCH without the suffix (os-release's VERSION_ID).
    pub fn id(&self) -> String {
        format!("{}.{}.{}", self.build, self.branch, self.patch)
    }

    pub fn is_dev(&self) -> bool {
        self.dev.is_some()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())?;
        if let Some(d) = &self.dev {
            write!(f, "+{d}")?;
        }
        Ok(())
    }
}

/// Release order: by BUILD, BRANCH, PATCH; a development build of the same numbers sorts
/// before the release, and development builds among themselves by their date.
impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.build, self.branch, self.patch)
            .cmp(&(o.build, o.branch, o.patch))
            .then_with(|| match (&self.dev, &o.dev) {
                (None, None) => Ordering::Equal,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => a.cmp(b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert!(v("367.1.0") < v("367.1.1"));
        assert!(v("367.1.9") < v("367.2.0"));
        assert!(v("367.2.0") < v("368.0.0"));
        assert!(v("10.0.0") > v("9.9.9"));
        assert!(v("367.1.0+2014-07-03-1345") < v("367.1.0"));
        assert!(v("367.1.0+2014-07-03-1345") < v("367.1.0+2014-07-04-0000"));
        assert_eq!(v("0.1.0").to_string(), "0.1.0");
        for bad in [
            "1.2",
            "1.2.3.4",
            "a.b.c",
            "01.2.3",
            "1.2.3+",
            "1.2.3+x y",
            "",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }
}
