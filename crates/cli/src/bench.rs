//! `kiln bench`: build a recipe cold (empty caches), warm (downloaded packages kept, stages
//! dropped) and fully cached, and print the time and peak memory of every stage.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_build::{BuildOptions, BuildOutput, CacheDirs};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Recipe to build [default: recipes/minimal.toml]
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

fn max_rss_kib(who: i32) -> u64 {
    // SAFETY: getrusage fills a plain struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    ru.ru_maxrss.max(0) as u64
}

pub fn bench(a: BenchArgs) -> Result<i32> {
    let recipe = a
        .recipe
        .unwrap_or_else(|| PathBuf::from("recipes/minimal.toml"));
    let resolved = crate::load(&recipe, &a.recipe_args)?;
    let agent = crate::find_agent(a.agent)?;
    let work = match a.work_dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            tempfile::tempdir_in(d)?
        }
        None => tempfile::tempdir()?,
    };
    let tmp = work.path().to_path_buf();
    let cache_root = tmp.join("cache");
    let opts = |out: &str| -> Result<BuildOptions> {
        Ok(BuildOptions {
            cache: CacheDirs::new(cache_root.clone())?,
            output_dir: tmp.join(out),
            agent: agent.clone(),
            rebuild: false,
            keep_raw: false,
        })
    };
    eprintln!("kiln bench: {} in {}", recipe.display(), tmp.display());
    let cold = kiln_build::build(&resolved, &opts("cold")?).context("cold build")?;
    std::fs::remove_file(&cold.image)?;
    // Warm: keep the downloaded packages, drop every stage.
    std::fs::remove_dir_all(cache_root.join("stages"))?;
    let warm = kiln_build::build(&resolved, &opts("warm")?).context("warm build")?;
    std::fs::remove_file(&warm.image)?;
    let cached = kiln_build::build(&resolved, &opts("cached")?).context("cached build")?;

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
