//! `kiln`: build immutable Linux OS images in the CoreOS style from TOML recipes.

mod bench;
mod build;
mod imagelock;
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
    Build(build::BuildArgs),
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
    /// Benchmarks: each prints its figures with their baselines from the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
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
        Cmd::Build(a) => build::build(a),
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

#[cfg(test)]
mod tests {
    /// docs/cli.md is the reference clap makes from the command's own definitions: every
    /// command, argument and default as `kiln --help` has them.
    #[test]
    fn cli_reference_is_current() {
        let md = clap_markdown::help_markdown::<super::Cli>();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        if std::env::var_os("KILN_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &md).unwrap();
            return;
        }
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            doc == md,
            "docs/cli.md is not the reference the command defines: regenerate it with \
             KILN_UPDATE_DOCS=1 cargo test -p kiln-cli cli_reference"
        );
    }
}
