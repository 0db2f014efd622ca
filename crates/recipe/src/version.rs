//! Release versions, as CoreOS numbered them: BUILD.BRANCH.PATCH, where BUILD counts whole
//! days from the project's epoch to the build's date, BRANCH is bumped when a build is
//! branched for release and PATCH for fixes on a branch. Development builds append
//! `+YYYY-MM-DD-HHMM` (the build's date). The build's date is SOURCE_DATE_EPOCH, so a build
//! repeated with the same inputs gets the same version.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

/// The version type and its order are kiln-update's, shared with the agent that refuses
/// downgrades by it.
pub use kiln_update::version::Version;

/// The recipe's `[version]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scheme {
    /// The project's day zero, `YYYY-MM-DD` (UTC).
    pub epoch: String,
    #[serde(default)]
    pub branch: u32,
    #[serde(default)]
    pub patch: u32,
}

fn date_format() -> Vec<time::format_description::FormatItem<'static>> {
    time::format_description::parse_borrowed::<2>("[year]-[month]-[day]").expect("static format")
}

/// Parses a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Result<Date> {
    Date::parse(s, &date_format()).with_context(|| format!("`{s}` is not a date like 2013-07-01"))
}

impl Scheme {
    /// The version of a build made at `unix` seconds; `dev` adds the `+` date suffix.
    pub fn version_at(&self, unix: i64, dev: bool) -> Result<Version> {
        let epoch = parse_date(&self.epoch).context("version.epoch")?;
        let at = OffsetDateTime::from_unix_timestamp(unix)
            .with_context(|| format!("{unix} is not a time"))?;
        let days = (at.date() - epoch).whole_days();
        if days < 0 {
            bail!(
                "the build's date {} is before version.epoch {}: BUILD would be negative",
                at.date(),
                self.epoch
            );
        }
        let suffix =
            time::format_description::parse_borrowed::<2>("[year]-[month]-[day]-[hour][minute]")
                .expect("static format");
        Ok(Version {
            build: u32::try_from(days).context("BUILD out of range")?,
            branch: self.branch,
            patch: self.patch,
            dev: dev.then(|| at.format(&suffix).expect("formattable")),
        })
    }
}

/// The image's version: the recipe's fixed `os.version` or its `[version]` scheme at the
/// build's date (`epoch`); a release has no `+` suffix.
pub(crate) fn resolve(
    r: &crate::recipe::RecipeFile,
    src: &crate::source::SourceFile,
    epoch: i64,
    release: bool,
) -> Result<String> {
    match (&r.os.version, &r.version) {
        (Some(v), None) => {
            if v.get_ref().is_empty() || v.get_ref().chars().any(|c| c.is_whitespace()) {
                return Err(src.error_at(
                    &v.span(),
                    "os.version must be non-empty and contain no whitespace",
                ));
            }
            if release {
                let parsed = Version::parse(v.get_ref()).map_err(|e| src.error_at(&v.span(), e))?;
                if parsed.is_dev() {
                    return Err(src.error_at(&v.span(), "a release version has no + suffix"));
                }
            }
            Ok(v.get_ref().clone())
        }
        (None, Some(scheme)) => Ok(scheme
            .get_ref()
            .version_at(epoch, !release)
            .map_err(|e| src.error_at(&scheme.span(), format!("{e:#}")))?
            .to_string()),
        (Some(v), Some(_)) => Err(src.error_at(
            &v.span(),
            "os.version and a [version] scheme both set the version: keep one",
        )),
        (None, None) => bail!(
            "{}: the recipe has no version: set os.version = \"1.0.0\", or a [version] table \
             with epoch = \"YYYY-MM-DD\" (BUILD counts days since it)",
            src.path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coreos_367_was_day_367_of_its_epoch() {
        // CoreOS: epoch 2013-07-01; 367.1.0 was built on 2014-07-03.
        let s = Scheme {
            epoch: "2013-07-01".into(),
            branch: 1,
            patch: 0,
        };
        let t = OffsetDateTime::new_utc(parse_date("2014-07-03").unwrap(), time::Time::MIDNIGHT)
            .unix_timestamp();
        assert_eq!(s.version_at(t, false).unwrap().to_string(), "367.1.0");
        // 13:45 the same day, a development build.
        let v = s.version_at(t + 13 * 3600 + 45 * 60, true).unwrap();
        assert_eq!(v.to_string(), "367.1.0+2014-07-03-1345");
        assert_eq!(v.id(), "367.1.0");
        // Before the epoch: refused.
        assert!(s.version_at(0, false).is_err());
    }
}
