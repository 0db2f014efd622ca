//! The image's tree: the package tree, the kernel's modules, the agent, the trusted update
//! key, the version files and the overlays, split into the USR tree and the ROOT tree (with
//! merged-/usr symlinks and an empty /usr mount point). It is not cached itself: USR and
//! every ROOT are, so it is made (once, in the build's scratch directory) only when one of
//! them has to be built.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln_fs::stage as st;
use kiln_recipe::Resolved;

use super::kernel::KernelFiles;
use super::packages::Installed;
use super::Built;
use crate::inputs::Inputs;

/// The tree's halves.
#[derive(Debug, Clone)]
pub struct Split {
    pub usr: PathBuf,
    pub root: PathBuf,
}

pub struct Tree<'a> {
    pub recipe: &'a Resolved,
    pub packages: &'a Built<Installed>,
    pub kernel: &'a Built<KernelFiles>,
    pub agent: &'a Path,
    pub agent_hash: &'a str,
    /// The key updates must be signed with, if the build signs.
    pub update_key: Option<&'a kiln_update::VerifyingKey>,
    /// Where the tree is made. Not an input.
    pub work: &'a Path,
    made: OnceLock<std::result::Result<(Split, f64), String>>,
}

impl<'a> Tree<'a> {
    pub fn new(
        recipe: &'a Resolved,
        packages: &'a Built<Installed>,
        kernel: &'a Built<KernelFiles>,
        agent: &'a Path,
        agent_hash: &'a str,
        update_key: Option<&'a kiln_update::VerifyingKey>,
        work: &'a Path,
    ) -> Self {
        Tree {
            recipe,
            packages,
            kernel,
            agent,
            agent_hash,
            update_key,
            work,
            made: OnceLock::new(),
        }
    }

    /// The tree's key, which USR's and ROOT's inputs name it by.
    pub fn key(&self) -> String {
        Inputs::new()
            .add("packages", &self.packages.key)
            .add("kernel", &self.kernel.key)
            .add("agent", self.agent_hash)
            .add("identity", self.recipe.identity())
            .add(
                "update-key",
                self.update_key
                    .map_or("none".into(), kiln_update::keys::public_pem),
            )
            .key("tree")
    }

    /// The tree, made on first use.
    pub fn get(&self) -> Result<&Split> {
        let made = self.made.get_or_init(|| {
            let start = Instant::now();
            tracing::info!("tree: building");
            assemble(self)
                .map(|s| (s, start.elapsed().as_secs_f64()))
                .map_err(|e| format!("{e:#}"))
        });
        match made {
            Ok((s, _)) => Ok(s),
            Err(e) => bail!("the image tree: {e}"),
        }
    }

    /// Seconds it took, if it was made.
    pub fn seconds(&self) -> Option<f64> {
        self.made.get().and_then(|m| m.as_ref().ok()).map(|m| m.1)
    }
}

const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

fn assemble(t: &Tree) -> Result<Split> {
    let r = t.recipe;
    let image = t.work.join("image");
    std::fs::create_dir_all(&image)?;
    st::link_or_copy_tree(&t.packages.root, &image, Path::new(""))
        .context("cannot copy the package tree")?;
    for d in MERGED {
        let p = image.join(d);
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            bail!("/{d} in the package tree is a directory, not a link into /usr; kiln needs a merged-/usr suite (bookworm or later)");
        }
    }
    st::link_or_copy_tree(
        &t.kernel.modules_base().join("lib/modules"),
        &image,
        Path::new("usr/lib/modules"),
    )
    .context("cannot copy the kernel modules")?;

    for o in &r.overlays {
        st::apply_overlay(o, &image)
            .with_context(|| format!("cannot apply overlay {}", o.display()))?;
    }
    // What kiln writes wins over overlays: the version the system reports must be true.
    st::write_file_in(
        &image,
        Path::new("usr/bin/kiln-agent"),
        &std::fs::read(t.agent)
            .with_context(|| format!("cannot read the agent {}", t.agent.display()))?,
        0o755,
    )?;
    // The key updates must be signed with; the agent trusts every key in this directory.
    if let Some(public) = t.update_key {
        st::write_file_in(
            &image,
            &Path::new(kiln_update::TRUSTED_KEYS_DIR)
                .join(format!("{}.pub", kiln_update::keys::key_id(public))),
            kiln_update::keys::public_pem(public).as_bytes(),
            0o644,
        )?;
    }
    st::write_file_in(
        &image,
        Path::new("usr/lib/kiln/version.txt"),
        r.version_txt().as_bytes(),
        0o644,
    )?;
    st::write_file_in(
        &image,
        Path::new("usr/lib/os-release"),
        os_release(r).as_bytes(),
        0o644,
    )?;
    let etc_os = st::resolve_in_root(&image, Path::new("etc/os-release"), false)?;
    if etc_os.symlink_metadata().is_ok() {
        std::fs::remove_file(&etc_os)?;
    }
    std::os::unix::fs::symlink("../usr/lib/os-release", &etc_os)?;
    st::create_dir_all_in(&image, Path::new("usr/share/oem"))?;
    st::write_file_in(
        &image,
        Path::new("etc/hostname"),
        format!("{}\n", r.name).as_bytes(),
        0o644,
    )?;
    // mmdebstrap copies the host's resolv.conf; it does not belong in an image.
    let resolv = st::resolve_in_root(&image, Path::new("etc/resolv.conf"), false)?;
    if resolv.symlink_metadata().is_ok() {
        std::fs::remove_file(&resolv)?;
    }

    // Split: /usr becomes the USR tree, the rest is ROOT with an empty /usr.
    let usr = t.work.join("usr");
    std::fs::rename(image.join("usr"), &usr)?;
    std::fs::create_dir(image.join("usr"))?;
    for d in MERGED {
        let p = image.join(d);
        if p.symlink_metadata().is_ok() {
            std::fs::remove_file(&p)?;
        }
        if usr.join(d).is_dir() {
            std::os::unix::fs::symlink(format!("usr/{d}"), &p)?;
        }
    }
    st::normalize_times(&image, r.source_date_epoch)?;
    st::normalize_times(&usr, r.source_date_epoch)?;
    Ok(Split { usr, root: image })
}

fn os_release(r: &Resolved) -> String {
    format!(
        "NAME=\"{}\"\nID={}\nVERSION=\"{}\"\nVERSION_ID={}\nPRETTY_NAME=\"{} {}\"\nKILN_CHANNEL={}\nKILN_BOARD={}\nKILN_RECIPE={}\nKILN_RECIPE_HASH={}\n",
        r.os.name,
        r.os.id,
        r.os.version,
        r.os.version_id,
        r.os.name,
        r.os.version,
        r.os.channel,
        r.board.name,
        r.name,
        r.identity()
    )
}
