//! `kiln kernel check`: a resolved kernel config against what each platform requires.

use std::path::PathBuf;

use anyhow::Result;
use kiln_boot::kconfig::{self, Config};

#[derive(clap::Subcommand)]
pub enum KernelCmd {
    /// Check a resolved kernel config (a build's, or the config-* file of a kernel package)
    /// against the requirements of each platform: every option missing, or present only as a
    /// module the initramfs does not carry. Exits 1 on a miss.
    Check {
        /// Recipe whose board, platforms and initramfs modules apply [default: recipes/minimal.toml]
        recipe: Option<PathBuf>,
        /// The resolved kernel config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Platforms: comma-separated names or `all` [default: the recipe's]
        #[arg(long, value_name = "NAMES")]
        platform: Option<kiln_recipe::PlatformSelection>,
        /// Directory of requirement lists, `<platform>.toml` [default: each platform profile's
        /// kernel-requirements]
        #[arg(long, value_name = "DIR")]
        requirements: Option<PathBuf>,
        #[command(flatten)]
        recipe_args: crate::RecipeArgs,
    },
}

pub fn kernel(cmd: KernelCmd) -> Result<i32> {
    let KernelCmd::Check {
        recipe,
        config,
        platform,
        requirements,
        recipe_args,
    } = cmd;
    let recipe = recipe.unwrap_or_else(|| PathBuf::from("recipes/minimal.toml"));
    let r = crate::load_with(&recipe, &recipe_args, platform)?;
    let c = Config::read(&config)?;
    let mut misses = 0;
    for pc in kconfig::check_platforms(&c, &r, requirements.as_deref())? {
        match pc.requirements {
            None => println!("{}: no kernel requirements declared", pc.platform),
            Some(n) if pc.misses.is_empty() => println!("{}: ok ({n} requirements)", pc.platform),
            Some(_) => {}
        }
        for l in pc.lines() {
            println!("{l}");
        }
        misses += pc.misses.len();
    }
    if misses > 0 {
        eprintln!("{misses} requirement(s) missed by {}", config.display());
        return Ok(1);
    }
    Ok(0)
}
