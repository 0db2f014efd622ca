//! Resolving the initramfs modules: names to files, with hard dependencies from modules.dep,
//! `pre:` soft dependencies from modules.softdep (through modules.alias), built-ins skipped,
//! in an order where every module comes after what it needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// module name -> (relative path, dependency paths)
    by_name: BTreeMap<String, (String, Vec<String>)>,
    path_to_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    softdeps: BTreeMap<String, Vec<String>>,
    aliases: BTreeMap<String, Vec<String>>,
}

/// Module names use `-` and `_` interchangeably.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

impl ModuleIndex {
    /// Reads modules.dep (required), modules.builtin, modules.softdep and modules.alias.
    pub fn load(dir: &Path) -> Result<Self> {
        let dep = std::fs::read_to_string(dir.join("modules.dep")).with_context(|| {
            format!(
                "cannot read {}/modules.dep (was depmod run?)",
                dir.display()
            )
        })?;
        let mut idx = ModuleIndex::default();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps: Vec<String> = deps.split_whitespace().map(String::from).collect();
            let name = name_of(path);
            idx.path_to_name.insert(path.to_string(), name.clone());
            idx.by_name.insert(name, (path.to_string(), deps));
        }
        if let Ok(b) = std::fs::read_to_string(dir.join("modules.builtin")) {
            idx.builtin = b.lines().map(name_of).collect();
        }
        if let Ok(s) = std::fs::read_to_string(dir.join("modules.softdep")) {
            for line in s.lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("softdep") {
                    continue;
                }
                let Some(m) = w.next() else { continue };
                let mut pre = Vec::new();
                let mut in_pre = false;
                for t in w {
                    match t {
                        "pre:" => in_pre = true,
                        "post:" => in_pre = false,
                        dep if in_pre => pre.push(dep.to_string()),
                        _ => {}
                    }
                }
                idx.softdeps.entry(normalize(m)).or_default().extend(pre);
            }
        }
        if let Ok(a) = std::fs::read_to_string(dir.join("modules.alias")) {
            for line in a.lines() {
                let mut w = line.split_whitespace();
                if let (Some("alias"), Some(alias), Some(m)) = (w.next(), w.next(), w.next()) {
                    // Only plain aliases: the wildcard device aliases are for hotplug.
                    if !alias.contains('*') && !alias.contains('?') {
                        idx.aliases
                            .entry(alias.to_string())
                            .or_default()
                            .push(normalize(m));
                    }
                }
            }
        }
        Ok(idx)
    }

    /// Module files (relative to the module directory) to load, dependencies first.
    pub fn resolve(&self, wanted: &[String], kernel_version: &str) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            let n = normalize(w);
            if self.builtin.contains(&n) {
                continue;
            }
            if !self.by_name.contains_key(&n) {
                bail!(
                    "kernel module `{w}` is neither a module nor built into kernel {kernel_version}; \
                     fix initramfs-modules in the board profile or recipe"
                );
            }
            self.visit(&n, &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if depth > 64 {
            bail!("module dependency loop at {name}");
        }
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        // Soft pre-dependencies may name aliases (crypto-crc32c); missing ones are optional.
        for pre in self.softdeps.get(name).into_iter().flatten() {
            let targets = self
                .aliases
                .get(pre)
                .cloned()
                .unwrap_or_else(|| vec![normalize(pre)]);
            for t in targets {
                if self.by_name.contains_key(&t) {
                    self.visit(&t, seen, order, depth + 1)?;
                }
            }
        }
        let (path, deps) = &self.by_name[name];
        // modules.dep lists dependencies so that the last must be loaded first.
        for d in deps.iter().rev() {
            let dn = self
                .path_to_name
                .get(d)
                .cloned()
                .unwrap_or_else(|| name_of(d));
            if self.by_name.contains_key(&dn) {
                self.visit(&dn, seen, order, depth + 1)?;
            }
        }
        order.push(path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> (tempfile::TempDir, ModuleIndex) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko\n\
             kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\n\
             kernel/crypto/crc32c_generic.ko:\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\nkernel/drivers/virtio/virtio.ko:\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/fs/vfat/vfat.ko\n").unwrap();
        std::fs::write(
            d.path().join("modules.softdep"),
            "softdep ext4 pre: crypto-crc32c\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("modules.alias"),
            "alias crypto-crc32c crc32c_generic\nalias pci:v*d* virtio_blk\n",
        )
        .unwrap();
        let idx = ModuleIndex::load(d.path()).unwrap();
        (d, idx)
    }

    #[test]
    fn dependencies_come_first() {
        let (_d, idx) = index();
        let order = idx
            .resolve(&["ext4".into(), "virtio-blk".into(), "vfat".into()], "6.1")
            .unwrap();
        let pos = |s: &str| order.iter().position(|p| p.ends_with(s)).unwrap();
        assert!(pos("crc32c_generic.ko") < pos("ext4.ko"));
        assert!(pos("jbd2.ko") < pos("ext4.ko"));
        assert!(pos("virtio.ko") < pos("virtio_blk.ko"));
        assert!(
            !order.iter().any(|p| p.contains("vfat")),
            "built-ins are not loaded"
        );
        assert_eq!(order.len(), 8);
    }

    #[test]
    fn unknown_module_is_an_error() {
        let (_d, idx) = index();
        let err = idx
            .resolve(&["nosuch".into()], "6.1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nosuch") && err.contains("6.1"), "{err}");
    }
}
