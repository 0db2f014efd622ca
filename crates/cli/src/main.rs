//! `kiln`: build immutable Linux OS images in the CoreOS style from TOML recipes.

mod bench;
mod inspect;
mod kernel;
mod release;
mod repro;
mod run;
mod update;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build immutable Linux OS images (A/B /usr, CoreOS layout) from TOML recipes",
    long_about = None
)]
struct Cli {
    /// More output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
pub(crate) struct RecipeArgs {
    /// Board profiles directory [default: the nearest board-profiles/ above the recipe]
    #[arg(long, value_name = "DIR")]
    board_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a recipe into a raw GPT disk image in the output directory.
    ///
    /// Stages (packages, kernel, initramfs, filesystems, GRUB) are cached by the hash of their
    /// inputs under the cache directory; downloaded .deb files are kept there too.
    Build {
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
        /// Build twice (the second time every stage again, into a temporary directory) and
        /// compare every output byte; names the first differing file and offset.
        #[arg(long, conflicts_with = "release")]
        check_reproducible: bool,
        #[command(flatten)]
        signing: update::SigningArgs,
        #[command(flatten)]
        recipe_args: RecipeArgs,
    },
    /// Verify a release directory: the signature over DIGESTS, then every file's SHA-256 and
    /// SHA-512; names each file missing, extra or altered.
    Verify(release::VerifyArgs),
    /// Releases and channels: promote a release, show the channels.
    #[command(subcommand)]
    Release(release::ReleaseCmd),
    /// Check a recipe, its board profile, layout and every file they refer to, without building.
    Validate {
        recipe: PathBuf,
        #[command(flatten)]
        recipe_args: RecipeArgs,
    },
    /// Print an image's partition table, its A/B slot state and the slot that would boot next.
    Inspect {
        image: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Boot an image in QEMU with the serial console on this terminal.
    ///
    /// Exits when the guest powers off (Ctrl-a x quits QEMU). With --until-ready it boots
    /// headless, prints the console, and exits 0 once the image prints its ready line.
    Run(run::RunArgs),
    /// Benchmark a build: cold (empty caches), warm (packages cached) and fully cached, with
    /// the time and peak memory of every stage.
    Bench(bench::BenchArgs),
    /// Kernel configurations: check one against the platforms' requirements.
    #[command(subcommand)]
    Kernel(kernel::KernelCmd),
    /// Signing keys for update payloads.
    #[command(subcommand)]
    Key(update::KeyCmd),
    /// The A/B slot state of an image file (raw or qcow2).
    #[command(subcommand)]
    Slot(update::SlotCmd),
    /// Update payloads: apply one to an image file, make one, show one.
    #[command(subcommand)]
    Update(update::UpdateCmd),
}

fn main() {
    // Output piped into `head` ends quietly, as with other command-line tools.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match dispatch(cli.cmd) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::exit(1);
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Build {
            recipe,
            output,
            cache_dir,
            agent,
            rebuild,
            json,
            keep_raw,
            platform,
            release: is_release,
            channel,
            check_reproducible,
            signing,
            recipe_args,
        } => {
            let recipe = recipe.unwrap_or_else(|| PathBuf::from("recipes/minimal.toml"));
            let resolved = load_opts(&recipe, &recipe_args, platform, is_release, channel)?;
            let agent = find_agent(agent)?;
            let cache = kiln_pipeline::CacheDirs::new(
                cache_dir.unwrap_or_else(kiln_pipeline::CacheDirs::default_root),
            )?;
            let signing = signing.resolve(&cache.root)?;
            let release_key = signing.as_ref().map(|s| s.key.clone());
            if is_release && release_key.is_none() {
                anyhow::bail!(
                    "a release is signed: give --signing-key FILE (or KILN_SIGNING_KEY, or the PEM \
                     text in KILN_SIGNING_KEY_PEM)"
                );
            }
            let (release_dir, output_dir) = if is_release {
                let (d, s) = release::prepare(&output, &resolved)?;
                (Some(d), s)
            } else {
                (None, output.clone())
            };
            let opts = kiln_pipeline::BuildOptions {
                cache,
                output_dir: output_dir.clone(),
                agent,
                rebuild,
                keep_raw,
                signing,
            };
            let built = kiln_pipeline::build(&resolved, &opts);
            if built.is_err() && is_release {
                let _ = std::fs::remove_dir_all(&output_dir);
            }
            let out = built?;
            if check_reproducible {
                return repro::check(&resolved, &opts, &out);
            }
            if let (Some(dir), Some(key)) = (&release_dir, &release_key) {
                let m =
                    release::finish(&resolved, &out, key, &output_dir, dir).inspect_err(|_| {
                        let _ = std::fs::remove_dir_all(&output_dir);
                    })?;
                if json {
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
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for s in &out.stages {
                    eprintln!(
                        "  {:<10} {:>7.2} s  {}{}",
                        s.stage,
                        s.seconds,
                        if s.cached { "cached" } else { "built" },
                        if s.tool_peak_rss_kib > 0 {
                            format!("  peak {} MiB", s.tool_peak_rss_kib / 1024)
                        } else {
                            String::new()
                        }
                    );
                }
                println!("{}", out.image.display());
                for a in &out.artifacts {
                    println!("{}", a.display());
                }
                match &out.payload {
                    Some(p) => println!("{}", p.display()),
                    None => eprintln!("no update payload: no signing key (give --signing-key FILE, or --dev-key for an insecure development key)"),
                }
                eprintln!(
                    "built {} ({} MiB, kernel {}) in {:.1} s",
                    out.image.display(),
                    out.image_size / (1024 * 1024),
                    out.kernel_version,
                    out.seconds
                );
            }
            Ok(0)
        }
        Cmd::Validate {
            recipe,
            recipe_args,
        } => {
            let r = load(&recipe, &recipe_args)?;
            let platforms: Vec<&str> = r.platforms.iter().map(|p| p.name.as_str()).collect();
            let kernel = match &r.kernel.build {
                Some(b) => {
                    // The fragments parse (errors at file:line) and the requirement lists read.
                    let mut c = kiln_boot::kconfig::Config::default();
                    for f in &b.fragments {
                        c.apply_file(f)?;
                    }
                    kiln_boot::kconfig::check_platforms(&c, &r, None)?;
                    format!(
                        "built from {} ({} fragments, {} options, under {})",
                        b.source.display(),
                        b.fragments.len(),
                        c.values.len(),
                        b.base.make_target()
                    )
                }
                None => r.kernel.package.clone(),
            };
            println!(
                "{}: ok — board {}, layout {} ({}), {} partitions, {} overlay(s), OEM {}, kernel {}, platforms: {}",
                recipe.display(),
                r.board.name,
                r.layout.name,
                r.layout.variant,
                r.layout.partitions.len(),
                r.overlays.len(),
                r.oem.id,
                kernel,
                if platforms.is_empty() { "none".to_string() } else { platforms.join(", ") }
            );
            Ok(0)
        }
        Cmd::Inspect { image, json } => inspect::inspect(&image, json).map(|_| 0),
        Cmd::Run(args) => run::run(args),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::Kernel(c) => kernel::kernel(c),
        Cmd::Verify(a) => release::verify_cmd(a),
        Cmd::Release(c) => release::release_cmd(c),
        Cmd::Key(c) => update::key(c),
        Cmd::Slot(c) => update::slot(c),
        Cmd::Update(c) => update::update(c),
    }
}

fn load(recipe: &Path, a: &RecipeArgs) -> Result<kiln_recipe::Resolved> {
    load_with(recipe, a, None)
}

pub(crate) fn load_with(
    recipe: &Path,
    a: &RecipeArgs,
    platforms: Option<kiln_recipe::PlatformSelection>,
) -> Result<kiln_recipe::Resolved> {
    load_opts(recipe, a, platforms, false, None)
}

pub(crate) fn load_opts(
    recipe: &Path,
    a: &RecipeArgs,
    platforms: Option<kiln_recipe::PlatformSelection>,
    release: bool,
    channel: Option<String>,
) -> Result<kiln_recipe::Resolved> {
    if !recipe.exists() {
        anyhow::bail!("recipe {} does not exist", recipe.display());
    }
    kiln_recipe::load(
        recipe,
        &kiln_recipe::LoadOptions {
            board_dir: a.board_dir.clone(),
            platforms,
            release,
            channel,
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        },
    )
}

/// The static agent: --agent, $KILN_AGENT, next to this executable, or where the README's
/// build puts it.
pub(crate) fn find_agent(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("KILN_AGENT").map(PathBuf::from)) {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot find the kiln executable")?;
    let dir = exe.parent().context("kiln executable has no directory")?;
    let candidates = [
        dir.join("kiln-agent"),
        dir.join("../x86_64-unknown-linux-gnu/release/kiln-agent"),
        dir.join("../../x86_64-unknown-linux-gnu/release/kiln-agent"),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        "kiln-agent not found next to kiln; build it with\n  \
         RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p kiln-agent --target x86_64-unknown-linux-gnu\n\
         or pass --agent FILE"
            .to_string()
    })
}
