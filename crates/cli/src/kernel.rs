//! `kiln kernel check`: a resolved kernel config against what each platform requires.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_boot::kconfig::{self, Config, Requirements};

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
        /// Directory of the requirement lists [default: kernel-config/requirements beside the
        /// board profiles directory]
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
    let dir = requirements.unwrap_or_else(|| {
        r.board_dir
            .parent()
            .unwrap_or(&r.board_dir)
            .join("kernel-config/requirements")
    });
    let c = Config::read(&config)?;
    let mut misses = 0;
    for p in &r.platforms {
        let path = dir.join(format!("{}.toml", p.name));
        let req = Requirements::read(&path).with_context(|| {
            format!(
                "platform {} has no requirement list {}",
                p.name,
                path.display()
            )
        })?;
        let miss = kconfig::check(&c, &req, &r.kernel.board_initramfs_modules);
        if miss.is_empty() {
            println!(
                "{}: ok ({} requirements)",
                p.name,
                req.builtin.len() + req.builtin_or_module.len()
            );
        }
        for m in &miss {
            println!(
                "{}: CONFIG_{} is {}, needs {}",
                p.name, m.option, m.have, m.want
            );
        }
        misses += miss.len();
    }
    if misses > 0 {
        eprintln!("{misses} requirement(s) missed by {}", config.display());
        return Ok(1);
    }
    Ok(0)
}
