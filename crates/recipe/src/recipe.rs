//! The recipe file: what image to build. Everything a board already says is optional here;
//! a recipe overrides board values only where that makes sense.

use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::layout::{Filesystem, Layout};
use crate::names::check_name;
use crate::source::SourceFile;
use crate::Slot;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RecipeFile {
    /// Defaults to the file name without `.toml`.
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    /// Board profile name, looked up as `<board-profiles>/<board>.toml`.
    pub board: Spanned<String>,
    /// Timestamp for every file and filesystem of the image (overridden by the
    /// SOURCE_DATE_EPOCH environment variable).
    pub source_date_epoch: Option<i64>,
    pub os: OsDef,
    /// BUILD.BRANCH.PATCH versions (instead of a fixed os.version).
    pub version: Option<Spanned<crate::version::Scheme>>,
    /// Platforms built by default (files in `<board-profiles>/platforms/`).
    #[serde(default)]
    pub platforms: Vec<Spanned<String>>,
    pub packages: PackagesDef,
    #[serde(default)]
    pub rootfs: RootfsDef,
    #[serde(default)]
    pub kernel: KernelOverride,
    #[serde(default)]
    pub layout: LayoutOverride,
    #[serde(default)]
    pub oem: OemOverride,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OsDef {
    /// NAME in os-release.
    pub name: Spanned<String>,
    /// ID in os-release (lower case, no spaces).
    pub id: Spanned<String>,
    /// A fixed version, printed on the console when the image is ready; or none, and the
    /// recipe's `[version]` scheme computes it.
    pub version: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PackagesDef {
    /// Debian suite, e.g. bookworm.
    pub suite: String,
    /// Mirrors, tried in order by apt: http://, https:// or file:// URLs.
    pub mirrors: Vec<Spanned<String>>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// mmdebstrap variant (essential, minbase, apt, ...).
    pub variant: Spanned<String>,
    /// Packages installed on top of the variant.
    #[serde(default)]
    pub include: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RootfsDef {
    /// Directories, relative to the recipe file, copied over the root filesystem in order.
    #[serde(default)]
    pub overlays: Vec<Spanned<String>>,
    /// Overrides the layout's filesystem for USR.
    pub usr_filesystem: Option<Filesystem>,
    /// erofs compressor for USR: lz4, lz4hc or none.
    pub usr_compression: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelOverride {
    /// Replaces the board's kernel package.
    pub package: Option<String>,
    /// `"debian"` (the board's prebuilt package) or a kernel source: a tree or a tarball
    /// (.tar, .tar.gz, .tar.xz), relative to the recipe.
    pub source: Option<Spanned<String>>,
    /// kconfig fragments merged in order (a later line for a symbol wins), relative to the
    /// recipe; only with a kernel source.
    #[serde(default)]
    pub config: Vec<Spanned<String>>,
    /// What symbols no fragment sets become: `olddefconfig` (their Kconfig defaults, as when
    /// carrying a full old config forward), `allnoconfig` (off) or `defconfig` (the
    /// architecture's defconfig under the fragments).
    pub config_base: Option<ConfigBase>,
    /// Appended to the board's command line.
    #[serde(default)]
    pub cmdline: Vec<Spanned<String>>,
    /// Appended to the board's initramfs modules.
    #[serde(default)]
    pub initramfs_modules: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigBase {
    #[default]
    Olddefconfig,
    Allnoconfig,
    Defconfig,
}

impl ConfigBase {
    /// The make target that resolves the merged fragments into a full config.
    pub fn make_target(self) -> &'static str {
        match self {
            ConfigBase::Olddefconfig => "olddefconfig",
            ConfigBase::Allnoconfig => "allnoconfig",
            ConfigBase::Defconfig => "defconfig",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LayoutOverride {
    /// Replaces the board's layout variant.
    pub variant: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OemOverride {
    pub id: Option<String>,
    /// OEM tree relative to the recipe file; replaces the board's.
    pub tree: Option<Spanned<String>>,
}

/// The recipe's name: `name`, else the file name without `.toml`.
pub(crate) fn name(r: &RecipeFile, path: &Path, src: &SourceFile) -> Result<String> {
    match &r.name {
        Some(n) => {
            check_name(n.get_ref()).map_err(|m| src.error_at(&n.span(), m))?;
            Ok(n.get_ref().clone())
        }
        None => {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("image")
                .to_string();
            check_name(&stem).map_err(|m| {
                anyhow::anyhow!("{}: recipe file name: {m}; or set `name`", path.display())
            })?;
            Ok(stem)
        }
    }
}

/// USR's filesystem (the recipe's, else the layout's, else erofs) and its compression.
pub(crate) fn usr_filesystem(
    r: &RecipeFile,
    layout: &Layout,
    path: &Path,
    src: &SourceFile,
) -> Result<(Filesystem, String)> {
    let fs = r
        .rootfs
        .usr_filesystem
        .or(layout.usr(Slot::A).filesystem)
        .unwrap_or(Filesystem::Erofs);
    if fs == Filesystem::Vfat {
        bail!("{}: USR cannot be vfat; use erofs or ext4", path.display());
    }
    let compression = match &r.rootfs.usr_compression {
        Some(c) => {
            if !["lz4", "lz4hc", "none"].contains(&c.get_ref().as_str()) {
                return Err(src.error_at(
                    &c.span(),
                    format!(
                        "unknown usr-compression `{}`; use lz4, lz4hc or none",
                        c.get_ref()
                    ),
                ));
            }
            if fs != Filesystem::Erofs && c.get_ref() != "none" {
                return Err(src.error_at(
                    &c.span(),
                    "usr-compression needs usr-filesystem = \"erofs\"",
                ));
            }
            c.get_ref().clone()
        }
        None if fs == Filesystem::Erofs => "lz4".into(),
        None => "none".into(),
    };
    Ok((fs, compression))
}
