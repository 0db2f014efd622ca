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

/// One kernel command-line argument, as grub.cfg will carry it.
pub fn check_kernel_arg(arg: &str) -> Result<(), String> {
    if arg.is_empty()
        || arg
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "'\"\\;".contains(c))
    {
        return Err(format!(
            "kernel argument {arg:?} must be one argument without spaces, quotes, backslashes or semicolons"
        ));
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
        assert!(check_descriptor_value("a\"b").is_err());
    }
}
