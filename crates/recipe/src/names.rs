//! The rules for names and text that end up in file names, identifiers and generated files.

/// Names used in file names and identifiers: lower-case letters, digits, `-`, `_`, `.`.
pub fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && !s.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name: use 1-64 lower-case letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Free text that ends up quoted in generated files (os-release, grub.cfg).
pub fn check_text(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_control() || "'\"\\$`".contains(c)) {
        return Err(format!(
            "`{s}` must be 1-64 characters without quotes, backslashes, $, ` or control characters"
        ));
    }
    Ok(())
}

/// What GRUB's script syntax gives a meaning to in an unquoted word: variables (`$`), blocks
/// (`{ }`), comments (`#`), the reserved `| & < > ;`, quotes and escapes, and the wildcards
/// its regexp module expands (`* ? [ ]`).
const GRUB_SPECIAL: &str = "$`{}#|&<>;'\"\\*?[]";

/// One kernel command-line argument, as grub.cfg will carry it: unquoted after `linux`, so
/// printable ASCII without spaces and without anything GRUB's script syntax would act on.
pub fn check_kernel_arg(arg: &str) -> Result<(), String> {
    if arg.is_empty()
        || arg
            .chars()
            .any(|c| !c.is_ascii_graphic() || GRUB_SPECIAL.contains(c))
    {
        return Err(format!(
            "kernel argument {arg:?} must be one argument without spaces, quotes, backslashes, \
             semicolons or GRUB metacharacters ($ ` {{ }} # | & < > * ? [ ]), in printable ASCII"
        ));
    }
    Ok(())
}

/// A Debian mirror, as mmdebstrap and apt take it: an `http://` or `https://` URL with a
/// host, or a `file://` URL with an absolute path, in printable ASCII without spaces or
/// quotes. mmdebstrap also reads a positional mirror as a sources.list line, a file or `-`
/// (stdin), and an argument starting with `-` as an option: a recipe gets none of those.
pub fn check_mirror(m: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "{m:?} is not a mirror URL ({why}); give an http://, https:// or file:/// URL, \
             e.g. \"http://deb.debian.org/debian\""
        ))
    };
    if m.is_empty() {
        return refuse("it is empty");
    }
    if m.starts_with('-') {
        return refuse("mmdebstrap would take it as an option");
    }
    if let Some(c) = m
        .chars()
        .find(|c| !c.is_ascii_graphic() || "'\"\\`<>{}|^".contains(*c))
    {
        return refuse(&format!("it holds {c:?}"));
    }
    let Some((scheme, rest)) = m.split_once("://") else {
        return refuse("no scheme");
    };
    match scheme {
        "http" | "https" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            // The authority's host, without user info and port.
            let host = host.rsplit('@').next().unwrap_or("");
            let host = match host.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => host.split(':').next().unwrap_or(""),
            };
            if host.is_empty() {
                return refuse("no host");
            }
        }
        "file" => {
            if !rest.starts_with('/') {
                return refuse("a file URL needs an absolute path: file:///path");
            }
        }
        _ => return refuse(&format!("scheme {scheme} is not http, https or file")),
    }
    Ok(())
}

/// A value written into a VM description (a .vmx line, an OVF attribute): letters, digits,
/// `-` and `_`.
pub fn check_descriptor_value(s: &str) -> Result<(), String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{s}` must be 1-64 ASCII letters, digits, '-' or '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(check_name("amd64-usr").is_ok());
        for bad in ["", "Upper", ".hidden", "a b", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_text("Kiln OS").is_ok());
        assert!(check_text("a\"b").is_err());
        assert!(check_kernel_arg("console=ttyS0,115200n8").is_ok());
        for bad in ["", "a b", "x;reboot", "q'"] {
            assert!(check_kernel_arg(bad).is_err(), "{bad}");
        }
        assert!(check_descriptor_value("other5xlinux-64").is_ok());
    }

    /// grub.cfg carries the arguments unquoted after `linux`: GRUB's script syntax must not
    /// see a variable, a block, a comment, a redirection, a quote or a wildcard in them.
    #[test]
    fn kernel_args_carry_no_grub_syntax() {
        for good in [
            "console=ttyS0,115200n8",
            "root=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132",
            "mount.usrflags=ro",
            "quiet",
            "dyndbg=+p",
            "kiln.oem.id=qemu",
            "a:b/c@d%e^f~g!h-i_j.k",
        ] {
            assert!(check_kernel_arg(good).is_ok(), "{good}");
        }
        for bad in [
            "x=$root",
            "${kiln_slot}",
            "a{b",
            "a}b",
            "quiet#comment",
            "a|b",
            "a&b",
            "a<b",
            "a>b",
            "a;b",
            "a`b`",
            "a'b",
            "a\"b",
            "a\\b",
            "a\nb",
            "a\rb",
            "a\tb",
            "init=/bin/*",
            "a?b",
            "a[b]",
            "caf\u{e9}",
        ] {
            let e = check_kernel_arg(bad).unwrap_err();
            assert!(e.contains("one argument without spaces"), "{bad}: {e}");
        }
        assert!(check_descriptor_value("a\"b").is_err());
    }
}
