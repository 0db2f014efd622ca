//! `kiln bench`: figures measured with their baselines in the same run. `build`: a recipe
//! cold (empty caches), warm (downloaded packages kept, stages dropped) and fully cached, with
//! the time and peak memory of every stage; `platforms`, `update`, `kernel` and `verify`: see
//! each.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_host::tools::{CP, SHA256SUM, XZ};
use kiln_host::Cmd;
use kiln_pipeline::{BuildOptions, BuildOutput, CacheDirs};

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// The board image cold (empty caches), warm (downloaded packages kept, every stage
    /// dropped) and fully cached, with the time and peak memory of every stage.
    Build(Common),
    /// One platform against all of the recipe's, each from a cache holding only the
    /// downloaded packages.
    Platforms {
        #[command(flatten)]
        common: Common,
        /// The single platform.
        #[arg(long, default_value = "qemu", value_name = "NAME")]
        one: String,
    },
    /// The update payload: its creation (cold xz), its size against the USR image, and an
    /// offline apply to the board image against `xz -dc` of the same body.
    Update(Common),
    /// A kernel built from source (the recipe must have kernel.source; default
    /// recipes/source-kernel.toml): a full build of the kernel stage, then an unchanged
    /// rebuild straight from the cache.
    Kernel(Common),
    /// `kiln verify` of a release directory against `sha256sum` of the same files (best of
    /// three each).
    Verify {
        /// A release directory (<out>/<board>/<version>).
        dir: PathBuf,
        /// The public key to verify with.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
}

/// What every benchmark that builds takes.
#[derive(clap::Args)]
pub struct Common {
    /// Recipe to build [default: recipes/minimal.toml; recipes/source-kernel.toml for kernel]
    recipe: Option<PathBuf>,
    /// Directory for the benchmark's own caches and images [default: a temporary directory]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The static kiln-agent binary [default: $KILN_AGENT, else next to kiln]
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    #[command(flatten)]
    recipe_args: crate::RecipeArgs,
}

impl Common {
    fn recipe(&self, default: &str) -> PathBuf {
        self.recipe
            .clone()
            .unwrap_or_else(|| PathBuf::from(default))
    }
}

fn max_rss_kib(who: i32) -> u64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    ru.ru_maxrss.max(0) as u64
}

pub fn bench(cmd: BenchCmd) -> Result<i32> {
    let minimal = "recipes/minimal.toml";
    match cmd {
        BenchCmd::Verify { dir, key } => bench_verify(&dir, &key),
        BenchCmd::Kernel(c) => {
            let agent = crate::find_agent(c.agent.clone())?;
            let recipe = c.recipe("recipes/source-kernel.toml");
            bench_kernel(&recipe, &c.recipe_args, &agent, c.work_dir)
        }
        BenchCmd::Platforms { common: c, one } => {
            let agent = crate::find_agent(c.agent.clone())?;
            bench_platforms(&c.recipe(minimal), &c.recipe_args, &agent, c.work_dir, &one)
        }
        BenchCmd::Update(c) => {
            let agent = crate::find_agent(c.agent.clone())?;
            bench_update(&c.recipe(minimal), &c.recipe_args, &agent, c.work_dir)
        }
        BenchCmd::Build(c) => {
            let agent = crate::find_agent(c.agent.clone())?;
            bench_build(&c.recipe(minimal), &c.recipe_args, &agent, c.work_dir)
        }
    }
}

/// Cold, warm and fully cached builds of the board image.
fn bench_build(
    recipe: &std::path::Path,
    args: &crate::RecipeArgs,
    agent: &std::path::Path,
    work_dir: Option<PathBuf>,
) -> Result<i32> {
    // The board image alone: the first bootable image, without platform artifacts.
    let resolved = board_only(recipe, args)?;
    let work = scratch(work_dir)?;
    let tmp = work.path().to_path_buf();
    let cache_root = tmp.join("cache");
    let opts = |out: &str| -> Result<BuildOptions> {
        Ok(BuildOptions {
            cache: CacheDirs::new(cache_root.clone())?,
            output_dir: tmp.join(out),
            agent: agent.to_path_buf(),
            rebuild: false,
            keep_raw: false,
            signing: None,
        })
    };
    eprintln!("kiln bench: {} in {}", recipe.display(), tmp.display());
    let cold = kiln_pipeline::build(&resolved, &opts("cold")?).context("cold build")?;
    std::fs::remove_file(&cold.image)?;
    // Warm: keep the downloaded packages, drop every stage.
    std::fs::remove_dir_all(cache_root.join("stages"))?;
    let warm = kiln_pipeline::build(&resolved, &opts("warm")?).context("warm build")?;
    std::fs::remove_file(&warm.image)?;
    let cached = kiln_pipeline::build(&resolved, &opts("cached")?).context("cached build")?;

    // A tool's peak RSS as Linux counts it includes the memory it shared with kiln at fork,
    // so each figure is at most kiln's own RSS (printed below) above the tool's real peak.
    println!(
        "stage          cold s  cold peak MiB   warm s  warm peak MiB   (peak: largest tool RSS)"
    );
    for (c, w) in cold.stages.iter().zip(&warm.stages) {
        println!(
            "{:<12} {:>8.2} {:>14} {:>8.2} {:>14}",
            c.stage,
            c.seconds,
            c.tool_peak_rss_kib / 1024,
            w.seconds,
            w.tool_peak_rss_kib / 1024
        );
    }
    let line = |name: &str, o: &BuildOutput, goal: f64| {
        println!(
            "{name:<7} total {:>7.2} s  (goal < {goal} s: {})",
            o.seconds,
            if o.seconds < goal { "met" } else { "missed" }
        )
    };
    line("cold", &cold, 60.0);
    line("warm", &warm, 20.0);
    println!(
        "cached  total {:>7.2} s  (every stage from the cache)",
        cached.seconds
    );
    println!(
        "peak memory: kiln {} MiB, largest tool {} MiB",
        max_rss_kib(libc::RUSAGE_SELF) / 1024,
        max_rss_kib(libc::RUSAGE_CHILDREN) / 1024
    );
    drop(work);
    Ok(0)
}

/// Verifying a release against hashing its files once with sha256sum.
fn bench_verify(dir: &std::path::Path, key: &std::path::Path) -> Result<i32> {
    use std::time::Instant;
    let text =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    let public = kiln_release::sign::parse_public(&text, &key.display().to_string())?;
    let mut files: Vec<PathBuf> = kiln_release::release::release_files(dir)?
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    files.push(dir.join(kiln_release::release::DIGESTS));
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let best = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut b = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            f()?;
            b = b.min(t.elapsed().as_secs_f64());
        }
        Ok(b)
    };
    let v = best(&mut || {
        let r = kiln_release::verify::verify(dir, &public)?;
        anyhow::ensure!(r.ok(), "the release does not verify: {:?}", r.problems);
        Ok(())
    })?;
    let s = best(&mut || {
        Cmd::new(SHA256SUM).args(&files).discard_stdout().run()?;
        Ok(())
    })?;
    let mib = bytes as f64 / 1048576.0;
    println!(
        "release: {} files, {mib:.1} MiB (page cache warm: best of 3)",
        files.len()
    );
    println!(
        "kiln verify (signature, SHA-256 and SHA-512 of every file): {v:.2} s, {:.0} MiB/s",
        mib / v
    );
    println!(
        "sha256sum of the same files:                               {s:.2} s, {:.0} MiB/s",
        mib / s
    );
    println!(
        "ratio {:.2} (goal <= 1.2: {})",
        v / s,
        if v / s <= 1.2 { "met" } else { "missed" }
    );
    Ok(0)
}

/// A kernel from source: the kernel stage built from scratch (its source unpacked, configured,
/// compiled), then the same build again with nothing changed.
fn bench_kernel(
    recipe: &std::path::Path,
    args: &crate::RecipeArgs,
    agent: &std::path::Path,
    work_dir: Option<PathBuf>,
) -> Result<i32> {
    let r = board_only(recipe, args)?;
    if r.kernel.build.is_none() {
        anyhow::bail!(
            "{}: kiln bench kernel needs a recipe that builds its kernel from source (kernel.source), \
             such as recipes/source-kernel.toml",
            recipe.display()
        );
    }
    // A given work directory keeps its cache (downloaded packages, the unpacked source)
    // between runs; the kernel stage itself is always rebuilt.
    let (_tmp, dir) = match work_dir {
        Some(d) => (None, d),
        None => {
            let t = tempfile::tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let cache_root = dir.join("cache");
    let cache = CacheDirs::new(cache_root.clone())?;
    for e in std::fs::read_dir(cache_root.join("stages"))?.flatten() {
        if e.file_name().to_string_lossy().starts_with("kernel-") {
            std::fs::remove_dir_all(e.path())?;
        }
    }
    let opts = BuildOptions {
        cache,
        output_dir: dir.join("out"),
        agent: agent.to_path_buf(),
        rebuild: false,
        keep_raw: false,
        signing: None,
    };
    eprintln!(
        "kiln bench kernel: {} in {}",
        recipe.display(),
        dir.display()
    );
    let full = kiln_pipeline::build(&r, &opts).context("build with the kernel stage")?;
    let again = kiln_pipeline::build(&r, &opts).context("unchanged rebuild")?;
    let kernel_s = |o: &BuildOutput| {
        o.stages
            .iter()
            .find(|s| s.stage == "kernel")
            .map_or(0.0, |s| s.seconds)
    };
    println!("kernel {} from source", full.kernel_version);
    println!(
        "full build:        kernel stage {:>8.1} s, whole build {:>8.1} s",
        kernel_s(&full),
        full.seconds
    );
    println!(
        "unchanged rebuild: kernel stage {:>8.2} s, whole build {:>8.2} s (goal < 2 s: {})",
        kernel_s(&again),
        again.seconds,
        if again.seconds < 2.0 { "met" } else { "missed" }
    );
    Ok(0)
}

/// One platform against all of them, each from a cache holding only the downloaded packages.
fn bench_platforms(
    recipe: &std::path::Path,
    args: &crate::RecipeArgs,
    agent: &std::path::Path,
    work_dir: Option<PathBuf>,
    one: &str,
) -> Result<i32> {
    use kiln_recipe::PlatformSelection;
    let all = crate::load_with(recipe, args, None)?;
    let single = crate::load_with(
        recipe,
        args,
        Some(PlatformSelection::Names(vec![one.to_string()])),
    )?;
    let work = scratch(work_dir)?;
    let root = work.path().join("cache");
    let run = |r: &kiln_recipe::Resolved, name: &str| -> Result<BuildOutput> {
        // Warm: packages kept; stages and compressed chunks dropped.
        for d in ["stages", "xz-chunks"] {
            let p = root.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p)?;
            }
        }
        let out = work.path().join(name);
        let o = kiln_pipeline::build(
            r,
            &BuildOptions {
                cache: CacheDirs::new(root.clone())?,
                output_dir: out.clone(),
                agent: agent.to_path_buf(),
                rebuild: false,
                keep_raw: false,
                signing: None,
            },
        )
        .with_context(|| format!("{name} build"))?;
        std::fs::remove_dir_all(&out)?;
        Ok(o)
    };
    eprintln!(
        "kiln bench platforms: {} in {}",
        recipe.display(),
        work.path().display()
    );
    run(&all, "prime").context("priming the package cache")?;
    let one_out = run(&single, "one")?;
    let all_out = run(&all, "all")?;
    println!("stage                     one s    all s");
    for s in &all_out.stages {
        let o = one_out
            .stages
            .iter()
            .find(|x| x.stage == s.stage)
            .map(|x| format!("{:8.2}", x.seconds));
        println!(
            "{:<24} {:>8} {:>8.2}",
            s.stage,
            o.unwrap_or_else(|| "-".into()),
            s.seconds
        );
    }
    let ratio = all_out.seconds / one_out.seconds;
    println!("one platform ({one}): {:.1} s", one_out.seconds);
    println!(
        "all {} platforms: {:.1} s",
        all.platforms.len(),
        all_out.seconds
    );
    println!(
        "ratio {ratio:.2} (goal <= 1.5: {})",
        if ratio <= 1.5 { "met" } else { "missed" }
    );
    Ok(0)
}

/// The benchmark's own directory for caches and images: a temporary one, inside `work_dir`
/// if given.
fn scratch(work_dir: Option<PathBuf>) -> Result<tempfile::TempDir> {
    Ok(match work_dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            tempfile::tempdir_in(d)?
        }
        None => tempfile::tempdir()?,
    })
}

/// The recipe with no platforms: the board image alone.
fn board_only(recipe: &std::path::Path, args: &crate::RecipeArgs) -> Result<kiln_recipe::Resolved> {
    let none = Some(kiln_recipe::PlatformSelection::Names(Vec::new()));
    crate::load_with(recipe, args, none)
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let t = std::time::Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

/// Payload creation and offline apply, against `xz -dc` of the same compressed bytes.
fn bench_update(
    recipe: &std::path::Path,
    args: &crate::RecipeArgs,
    agent: &std::path::Path,
    work_dir: Option<PathBuf>,
) -> Result<i32> {
    use kiln_update::{apply, keys, payload};
    let resolved = board_only(recipe, args)?;
    let work = scratch(work_dir)?;
    let tmp = work.path().to_path_buf();
    eprintln!(
        "kiln bench update: {} in {}",
        recipe.display(),
        tmp.display()
    );
    let key = keys::generate_signing_key(&tmp.join("bench-key.pem"))?;
    let public = key.verifying_key();
    let out = kiln_pipeline::build(
        &resolved,
        &BuildOptions {
            cache: CacheDirs::new(tmp.join("cache"))?,
            output_dir: tmp.join("out"),
            agent: agent.to_path_buf(),
            rebuild: false,
            keep_raw: false,
            signing: Some(kiln_pipeline::Signing {
                key,
                insecure: true,
            }),
        },
    )
    .context("build")?;
    let pfile = out.payload.context("the build made no payload")?;
    let made = out
        .stages
        .iter()
        .find(|s| s.stage == "payload")
        .map_or(0.0, |s| s.seconds);
    let mut f = std::fs::File::open(&pfile)?;
    let opened = payload::open(&mut f, &[public])?;
    let h = &opened.header;
    let usr = h.sections[0].size;
    let total = std::fs::metadata(&pfile)?.len();

    // The body alone, for xz.
    let body = tmp.join("body.xz");
    {
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(opened.header_bytes_len))?;
        std::io::copy(&mut f, &mut std::fs::File::create(&body)?)?;
    }
    let (_, xz_s) = timed(|| {
        Cmd::new(XZ).arg("-dc").arg(&body).discard_stdout().run()?;
        Ok(())
    })?;

    let image = tmp.join("apply.bin");
    Cmd::new(CP)
        .arg("--sparse=always")
        .arg(&out.image)
        .arg(&image)
        .run()?;
    let (_, apply_s) = timed(|| {
        let disk = apply::Disk::open(&image, true)?;
        let running = crate::update::offline_running(&disk, &image)?;
        let mut src = std::fs::File::open(&pfile)?;
        apply::apply(
            &disk,
            &mut src,
            &[public],
            &running,
            &apply::Options::default(),
            &mut |_| {},
        )
    })?;

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("payload {}: {:.1} MiB", pfile.display(), mib(total));
    println!(
        "  USR image {:.1} MiB, kernel {:.1} MiB, initramfs {:.1} MiB; payload / USR = {:.2}",
        mib(usr),
        mib(h.sections[1].size),
        mib(h.sections[2].size),
        total as f64 / usr as f64
    );
    println!("  made in {made:.1} s (xz chunk cache cold)");
    println!(
        "offline apply to the board image: {apply_s:.2} s; xz -dc of the same body to /dev/null: {xz_s:.2} s; ratio {:.2} (goal <= 1.3)",
        apply_s / xz_s
    );
    Ok(0)
}
