//! `kiln build --check-reproducible`: the same recipe built a second time, every stage
//! again, compared byte for byte with the first build. The second build has a cache of its
//! own that shares only the downloaded packages: no stage output and no compressed xz chunk
//! of the first build is reused, so everything that could differ is made again.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_pipeline::{BuildOptions, BuildOutput};

fn files(o: &BuildOutput) -> Vec<PathBuf> {
    let mut v = vec![o.image.clone()];
    v.extend(o.artifacts.iter().cloned());
    v.extend(o.payload.iter().cloned());
    v
}

/// The first offset at which two files differ (the shorter one's length if one is a prefix).
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<u64>> {
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    let mut off = 0u64;
    loop {
        ba.clear();
        bb.clear();
        let na = (&mut fa).take(1 << 20).read_to_end(&mut ba)?;
        let nb = (&mut fb).take(1 << 20).read_to_end(&mut bb)?;
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Ok(Some(off + i as u64));
        }
        if na != nb {
            return Ok(Some(off + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        off += n as u64;
    }
}

/// A new cache at `root` holding the downloaded packages of `from` and nothing else: hard
/// links where the filesystems allow (packages are never written in place), copies where not.
pub fn cache_sharing_debs(from: &Path, root: &Path) -> Result<kiln_pipeline::CacheDirs> {
    let cache = kiln_pipeline::CacheDirs::new(root.to_path_buf())?;
    let debs = from.join("debs");
    if debs.is_dir() {
        for e in walkdir::WalkDir::new(&debs).min_depth(1) {
            let e = e.with_context(|| format!("cannot read {}", debs.display()))?;
            let rel = e.path().strip_prefix(&debs).expect("below debs");
            let dest = root.join("debs").join(rel);
            if e.file_type().is_dir() {
                std::fs::create_dir_all(&dest)
                    .with_context(|| format!("cannot create {}", dest.display()))?;
            } else if e.file_type().is_file() && std::fs::hard_link(e.path(), &dest).is_err() {
                std::fs::copy(e.path(), &dest).with_context(|| {
                    format!("cannot copy {} to {}", e.path().display(), dest.display())
                })?;
            }
        }
    }
    Ok(cache)
}

pub fn check(r: &kiln_recipe::Resolved, opts: &BuildOptions, first: &BuildOutput) -> Result<i32> {
    let parent = opts
        .output_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-repro-")
        .tempdir_in(parent)
        .context("cannot make a directory for the second build")?;
    eprintln!(
        "check-reproducible: building again, every stage, with a cache sharing only the \
         downloaded packages, in {}",
        tmp.path().display()
    );
    let second_opts = BuildOptions {
        cache: cache_sharing_debs(&opts.cache.root, &tmp.path().join("cache"))?,
        output_dir: tmp.path().join("out"),
        rebuild: true,
        ..opts.clone()
    };
    let second = kiln_pipeline::build(r, &second_opts).context("the second build")?;
    let (a, b) = (files(first), files(&second));
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut problems = Vec::new();
    let mut bytes = 0u64;
    for fa in &a {
        let n = name(fa).unwrap_or_default();
        match b.iter().find(|fb| name(fb).as_deref() == Some(n.as_str())) {
            None => problems.push(format!("{n}: only the first build made it")),
            Some(fb) => match first_difference(fa, fb)? {
                Some(off) => problems.push(format!(
                    "{n}: differs at byte {off} (0x{off:x}); second copy: {}",
                    fb.display()
                )),
                None => bytes += std::fs::metadata(fa)?.len(),
            },
        }
    }
    for fb in &b {
        let n = name(fb).unwrap_or_default();
        if !a.iter().any(|fa| name(fa).as_deref() == Some(n.as_str())) {
            problems.push(format!("{n}: only the second build made it"));
        }
    }
    if problems.is_empty() {
        println!(
            "reproducible: {} files, {:.1} MiB, identical in both builds",
            a.len(),
            bytes as f64 / 1048576.0
        );
        return Ok(0);
    }
    for p in &problems {
        println!("not reproducible: {p}");
    }
    // Keep the second build's output to look at the difference; its cache can go.
    let kept = tmp.keep();
    let _ = std::fs::remove_dir_all(kept.join("cache"));
    eprintln!("the second build is kept in {}", kept.join("out").display());
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_differing_byte() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut x = vec![5u8; 3 << 20];
        std::fs::write(&a, &x).unwrap();
        std::fs::write(&b, &x).unwrap();
        assert_eq!(first_difference(&a, &b).unwrap(), None);
        x[(2 << 20) + 17] = 6;
        std::fs::write(&b, &x).unwrap();
        assert_eq!(first_difference(&a, &b).unwrap(), Some((2 << 20) + 17));
        std::fs::write(&b, &x[..1000]).unwrap();
        assert_eq!(first_difference(&a, &b).unwrap(), Some(1000));
    }
}
