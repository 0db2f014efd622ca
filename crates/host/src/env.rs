//! The environment a host tool starts with: nothing of kiln's own environment but an
//! allowlist, plus what the call site sets. Secrets kiln is given (KILN_SIGNING_KEY_PEM, a
//! CI's tokens) so never reach mmdebstrap and the maintainer scripts it runs, make, qemu-img
//! or QEMU; and variables that change a tool's output (TAR_OPTIONS, XZ_OPT, GZIP, MAKEFLAGS,
//! MKE2FS_CONFIG...) cannot make one host's build differ from another's.

use std::ffi::{OsStr, OsString};

/// Variables passed through by name. PATH to find helpers, HOME and TMPDIR for where tools
/// keep their files, the locale and time zone the user reads messages in, and the proxies
/// apt needs to reach a mirror (both spellings: programs disagree on which they read).
pub const ALLOWED: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "TZ",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// True if a variable of kiln's environment may reach a child: one of [`ALLOWED`] or a
/// locale category (LC_ALL, LC_CTYPE, ...).
pub fn is_allowed(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    ALLOWED.contains(&name) || name.starts_with("LC_")
}

/// The part of `parent` (kiln's environment) a child inherits.
pub fn scrub<I>(parent: I) -> Vec<(OsString, OsString)>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    parent.into_iter().filter(|(k, _)| is_allowed(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn secrets_go_and_the_allowlist_stays() {
        let parent = env(&[
            ("KILN_SIGNING_KEY_PEM", "-----BEGIN PRIVATE KEY-----"),
            ("KILN_SIGNING_KEY", "/root/key.pem"),
            ("https_proxy", "http://proxy:3128"),
            ("NO_PROXY", "localhost"),
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/root"),
            ("TMPDIR", "/var/tmp"),
            ("LC_ALL", "C.UTF-8"),
            ("LC_MESSAGES", "de_DE.UTF-8"),
            ("TZ", "UTC"),
            ("TAR_OPTIONS", "--verbose"),
            ("MAKEFLAGS", "-j64"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("TERM", "xterm"),
            ("LCX", "not a locale"),
        ]);
        let kept = scrub(parent);
        let names: Vec<&str> = kept.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "https_proxy",
                "NO_PROXY",
                "PATH",
                "HOME",
                "TMPDIR",
                "LC_ALL",
                "LC_MESSAGES",
                "TZ"
            ]
        );
        assert_eq!(kept[0].1, "http://proxy:3128");
    }

    #[test]
    fn non_utf8_names_are_dropped() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(vec![b'P', 0xff]);
        assert!(scrub(vec![(odd, OsString::from("x"))]).is_empty());
    }
}
