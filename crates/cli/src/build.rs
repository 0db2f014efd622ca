//! `kiln build`: a recipe into images and artifacts, or a signed release, or twice to check
//! that it is reproducible.

use std::path::PathBuf;

use anyhow::{bail, Result};
use kiln_pipeline::{BuildOptions, BuildOutput, CacheDirs};
use kiln_release::stage::Staging;

use crate::{find_agent, load_opts, repro, update, RecipeArgs};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Recipe file [default: recipes/minimal.toml]
    recipe: Option<PathBuf>,
    /// Where the image is written.
    #[arg(short, long, default_value = "out", value_name = "DIR")]
    output: PathBuf,
    /// Cache for packages and stage outputs [default: $KILN_CACHE_DIR, else
    /// $XDG_CACHE_HOME/kiln, else ~/.cache/kiln]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The static kiln-agent binary [default: $KILN_AGENT, else next to kiln]
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
    /// Rebuild every stage even if cached (downloaded packages are still reused).
    #[arg(long)]
    rebuild: bool,
    /// Print the build result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Say for every stage whether it was cached or built, and why: the first build of the
    /// stage, --rebuild, or which of its inputs changed since its last output.
    #[arg(long)]
    explain: bool,
    /// Also keep each platform's raw disk as <recipe>_<platform>_image.raw (for checks).
    #[arg(long)]
    keep_raw: bool,
    /// Platforms to build: comma-separated names, `all` or `none` (only the board image)
    /// [default: the recipe's list]
    #[arg(long, value_name = "NAMES")]
    platform: Option<kiln_recipe::PlatformSelection>,
    /// An official release: the version has no + suffix, and the artifacts, payload,
    /// version.txt, packages.txt, manifest.json, DIGESTS and its signature go to
    /// <output>/<board>/<version>/ (needs a signing key).
    #[arg(long)]
    release: bool,
    /// The update channel the image is built for [default: alpha with --release, else
    /// developer]
    #[arg(long, value_name = "NAME")]
    channel: Option<String>,
    /// Build twice (the second time every stage again, with a temporary cache that shares
    /// only the downloaded packages, into a temporary directory) and compare every output
    /// byte; names the first differing file and offset.
    #[arg(long, conflicts_with = "release")]
    check_reproducible: bool,
    #[command(flatten)]
    signing: update::SigningArgs,
    #[command(flatten)]
    recipe_args: RecipeArgs,
}

pub fn build(a: BuildArgs) -> Result<i32> {
    let recipe = a
        .recipe
        .unwrap_or_else(|| PathBuf::from("recipes/minimal.toml"));
    let r = load_opts(&recipe, &a.recipe_args, a.platform, a.release, a.channel)?;
    let cache = CacheDirs::new(a.cache_dir.unwrap_or_else(CacheDirs::default_root))?;
    let signing = a.signing.resolve(&cache.root)?;
    let release = match (&signing, a.release) {
        (None, true) => bail!(
            "a release is signed: give --signing-key FILE (or KILN_SIGNING_KEY, or the PEM \
             text in KILN_SIGNING_KEY_PEM)"
        ),
        (Some(s), true) => Some((Staging::prepare(&a.output, &r)?, s.key.clone())),
        _ => None,
    };
    let opts = BuildOptions {
        cache,
        output_dir: match &release {
            Some((st, _)) => st.staging.clone(),
            None => a.output.clone(),
        },
        agent: find_agent(a.agent)?,
        rebuild: a.rebuild,
        keep_raw: a.keep_raw,
        signing,
    };
    let out = kiln_pipeline::build(&r, &opts)?;
    if a.check_reproducible {
        return repro::check(&r, &opts, &out);
    }
    if let Some((staging, key)) = release {
        let dir = staging.dir.clone();
        let m = staging.publish(&r, &out, &key)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&m)?);
        } else {
            println!("{}", dir.display());
            eprintln!(
                "release {} of {} for {} (channel {}): {} files, signed by key {}",
                m.version,
                m.name,
                m.board,
                m.channel,
                m.artifacts.len() + 1,
                m.signing_key_id
            );
        }
        return Ok(0);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&out, a.explain);
    }
    Ok(0)
}

/// The stages (and with `explain`, why each was built), then the files on stdout.
fn print_report(out: &BuildOutput, explain: bool) {
    let width = out.stages.iter().map(|s| s.stage.len()).max().unwrap_or(10);
    for s in &out.stages {
        let peak = if s.tool_peak_rss_kib > 0 {
            format!("  peak {} MiB", s.tool_peak_rss_kib / 1024)
        } else {
            String::new()
        };
        let what = if explain {
            s.explain.clone()
        } else if s.cached {
            "cached".into()
        } else {
            "built".into()
        };
        eprintln!("  {:<width$} {:>7.2} s  {what}{peak}", s.stage, s.seconds);
    }
    println!("{}", out.image.display());
    for a in &out.artifacts {
        println!("{}", a.display());
    }
    if let Some(p) = &out.payload {
        println!("{}", p.display());
    }
    eprintln!(
        "built {} ({} MiB, kernel {}) in {:.1} s",
        out.image.display(),
        out.image_size / (1024 * 1024),
        out.kernel_version,
        out.seconds
    );
}
