//! Kernel configurations as data: kconfig fragments (`CONFIG_FOO=y`, `=m`, `"string"`,
//! numbers, `# CONFIG_FOO is not set`), merged in order with later lines winning, and the
//! per-platform requirement lists of kernel-config/requirements/ checked against the result.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Yes,
    Module,
    No,
    Str(String),
    Num(String),
}

impl Value {
    /// The value as a .config line has it after `=`.
    fn to_config(&self) -> String {
        match self {
            Value::Yes => "y".into(),
            Value::Module => "m".into(),
            Value::No => "n".into(),
            Value::Str(s) => format!("\"{s}\""),
            Value::Num(n) => n.clone(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Yes => f.write_str("y"),
            Value::Module => f.write_str("m"),
            Value::No => f.write_str("not set"),
            Value::Str(s) => write!(f, "\"{s}\""),
            Value::Num(n) => f.write_str(n),
        }
    }
}

/// A merged configuration: option name (without `CONFIG_`) → value and where it was set.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub values: BTreeMap<String, (Value, String)>,
}

/// Kconfig symbols: letters, digits and `_` (a few real ones have lower case, MTD_NETtel).
fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Config {
    /// Applies one fragment on top of what is there. `what` names it in errors (a path).
    pub fn apply(&mut self, text: &str, what: &str) -> Result<()> {
        for (i, raw) in text.lines().enumerate() {
            let at = format!("{what}:{}", i + 1);
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# CONFIG_") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    if !valid_name(name) {
                        bail!(
                            "{at}: `CONFIG_{name}` is not a valid option name (letters, digits, _)"
                        );
                    }
                    self.values.insert(name.to_string(), (Value::No, at));
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Some(rest) = line.strip_prefix("CONFIG_") else {
                bail!("{at}: expected `CONFIG_NAME=value`, `# CONFIG_NAME is not set` or a # comment, found `{line}`");
            };
            let Some((name, v)) = rest.split_once('=') else {
                bail!("{at}: `{line}` has no `=`");
            };
            if !valid_name(name) {
                bail!("{at}: `CONFIG_{name}` is not a valid option name (letters, digits, _)");
            }
            let value = match v {
                "y" => Value::Yes,
                "m" => Value::Module,
                "n" => Value::No,
                _ if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => {
                    Value::Str(v[1..v.len() - 1].to_string())
                }
                _ if v.parse::<i64>().is_ok()
                    || (v.starts_with("0x")
                        && v.len() > 2
                        && v[2..].chars().all(|c| c.is_ascii_hexdigit())) =>
                {
                    Value::Num(v.to_string())
                }
                _ => {
                    bail!("{at}: `{v}` is not a kconfig value (y, m, n, a \"string\" or a number)")
                }
            };
            self.values.insert(name.to_string(), (value, at));
        }
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Self> {
        let mut c = Self::default();
        c.apply_file(path)?;
        Ok(c)
    }

    pub fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read kernel config {}", path.display()))?;
        self.apply(&text, &path.display().to_string())
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name).map(|(v, _)| v)
    }

    /// The merged configuration as one fragment, in name order.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        for (name, (v, _)) in &self.values {
            let line = match v {
                Value::No => format!("# CONFIG_{name} is not set\n"),
                v => format!("CONFIG_{name}={}\n", v.to_config()),
            };
            t.push_str(&line);
        }
        t
    }
}

/// kernel-config/requirements/<platform>.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Requirements {
    #[serde(default)]
    pub builtin: Vec<String>,
    /// `OPTION:module`: =y, or =m with the module in the initramfs.
    #[serde(default)]
    pub builtin_or_module: Vec<String>,
}

impl Requirements {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let r: Self =
            toml::from_str(&text).with_context(|| format!("{} is malformed", path.display()))?;
        for b in &r.builtin {
            if !valid_name(b) {
                bail!("{}: `{b}` is not a valid option name", path.display());
            }
        }
        for m in &r.builtin_or_module {
            match m.split_once(':') {
                Some((o, module)) if valid_name(o) && !module.is_empty() => {}
                _ => bail!(
                    "{}: `{m}` must be OPTION:module, e.g. VIRTIO_BLK:virtio_blk",
                    path.display()
                ),
            }
        }
        Ok(r)
    }
}

/// The result of checking one platform.
#[derive(Debug, Clone)]
pub struct PlatformCheck {
    pub platform: String,
    /// None when the platform declares no requirement list.
    pub requirements: Option<usize>,
    pub misses: Vec<Miss>,
}

impl PlatformCheck {
    /// One line per miss, `<platform>: CONFIG_X is <have>, needs <want>`.
    pub fn lines(&self) -> Vec<String> {
        self.misses
            .iter()
            .map(|m| {
                format!(
                    "{}: CONFIG_{} is {}, needs {}",
                    self.platform, m.option, m.have, m.want
                )
            })
            .collect()
    }
}

/// Checks `c` against the requirement list of each selected platform of `r` (or the lists
/// in `dir`, `<platform>.toml`, when given), with the board's initramfs modules.
pub fn check_platforms(
    c: &Config,
    r: &kiln_recipe::Resolved,
    dir: Option<&Path>,
) -> Result<Vec<PlatformCheck>> {
    let mut out = Vec::new();
    for p in &r.platforms {
        let path = match dir {
            Some(d) => Some(d.join(format!("{}.toml", p.name))),
            None => p.kernel_requirements.clone(),
        };
        let Some(path) = path else {
            out.push(PlatformCheck {
                platform: p.name.clone(),
                requirements: None,
                misses: Vec::new(),
            });
            continue;
        };
        let req = Requirements::read(&path)
            .with_context(|| format!("kernel requirements of platform {}", p.name))?;
        out.push(PlatformCheck {
            platform: p.name.clone(),
            requirements: Some(req.builtin.len() + req.builtin_or_module.len()),
            misses: check(c, &req, &r.kernel.board_initramfs_modules),
        });
    }
    Ok(out)
}

/// One requirement the configuration does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    pub option: String,
    pub want: String,
    pub have: String,
}

/// Every requirement `c` misses; `initramfs` lists the modules the initramfs carries.
pub fn check(c: &Config, req: &Requirements, initramfs: &[String]) -> Vec<Miss> {
    let have = |o: &str| {
        c.get(o)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unset".into())
    };
    let mut out = Vec::new();
    for o in &req.builtin {
        if c.get(o) != Some(&Value::Yes) {
            out.push(Miss {
                option: o.clone(),
                want: "=y".into(),
                have: have(o),
            });
        }
    }
    for spec in &req.builtin_or_module {
        let (o, module) = spec.split_once(':').unwrap_or((spec, ""));
        match c.get(o) {
            Some(Value::Yes) => {}
            Some(Value::Module) if initramfs.iter().any(|m| m == module) => {}
            Some(Value::Module) => out.push(Miss {
                option: o.to_string(),
                want: format!("=y, or =m with {module} in the initramfs"),
                have: format!("m, but {module} is not in the initramfs"),
            }),
            _ => out.push(Miss {
                option: o.to_string(),
                want: format!("=y or =m ({module})"),
                have: have(o),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_later_fragments_win() {
        let mut c = Config::default();
        c.apply(
            "# boot\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_S=\"-kiln\"\nCONFIG_N=64\nCONFIG_H=0x10\n",
            "common",
        )
        .unwrap();
        c.apply(
            "CONFIG_A=m\n# CONFIG_B is not set\nCONFIG_C=y\n",
            "platform",
        )
        .unwrap();
        assert_eq!(c.get("A"), Some(&Value::Module));
        assert_eq!(c.get("B"), Some(&Value::No));
        assert_eq!(c.get("C"), Some(&Value::Yes));
        assert_eq!(c.get("S"), Some(&Value::Str("-kiln".into())));
        assert_eq!(c.get("N"), Some(&Value::Num("64".into())));
        assert_eq!(c.get("H"), Some(&Value::Num("0x10".into())));
        assert_eq!(c.values["C"].1, "platform:3");
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let mut c = Config::default();
        let e = c
            .apply("CONFIG_A=y\nCONFIG_B=maybe\n", "x.config")
            .unwrap_err();
        assert!(e.to_string().starts_with("x.config:2:"), "{e}");
        let e = c.apply("CONFIG_a-b=y\n", "y.config").unwrap_err();
        assert!(
            e.to_string()
                .contains("y.config:1: `CONFIG_a-b` is not a valid"),
            "{e}"
        );
        assert!(c.apply("FOO=y\n", "z").is_err());
        assert!(c.apply("CONFIG_X\n", "z").is_err());
    }

    #[test]
    fn requirements_builtin_module_and_initramfs() {
        let mut c = Config::default();
        c.apply(
            "CONFIG_DEVTMPFS=y\nCONFIG_VIRTIO_BLK=m\nCONFIG_EXT4_FS=m\n# CONFIG_NVME is not set\nCONFIG_KVM_GUEST=m\n",
            "t",
        )
        .unwrap();
        let r = Requirements {
            builtin: vec!["DEVTMPFS".into(), "KVM_GUEST".into(), "EFI_STUB".into()],
            builtin_or_module: vec![
                "VIRTIO_BLK:virtio_blk".into(),
                "EXT4_FS:ext4".into(),
                "NVME_CORE:nvme".into(),
            ],
        };
        let miss = check(&c, &r, &["virtio_blk".to_string()]);
        let names: Vec<&str> = miss.iter().map(|m| m.option.as_str()).collect();
        assert_eq!(names, ["KVM_GUEST", "EFI_STUB", "EXT4_FS", "NVME_CORE"]);
        assert_eq!(miss[0].have, "m");
        assert_eq!(miss[1].have, "unset");
        assert!(miss[2].have.contains("ext4 is not in the initramfs"));
    }

    #[test]
    fn the_repository_fragments_parse_and_requirements_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel-config");
        let mut c = Config::default();
        c.apply_file(&dir.join("common.config")).unwrap();
        c.apply_file(&dir.join("boards/amd64-usr.config")).unwrap();
        let mut n = 0;
        for e in std::fs::read_dir(dir.join("platforms")).unwrap() {
            c.apply_file(&e.unwrap().path()).unwrap();
            n += 1;
        }
        assert_eq!(n, 7);
        for e in std::fs::read_dir(dir.join("requirements")).unwrap() {
            Requirements::read(&e.unwrap().path()).unwrap();
        }
        assert_eq!(c.get("IKCONFIG_PROC"), Some(&Value::Yes));
    }
}
