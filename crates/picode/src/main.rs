//! The `picode` binary: parse arguments first (so `--version` stays fast),
//! then hand over to [`picode::cli::run`], which loads config, sets up
//! logging and runs the chosen surface.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = picode::cli::Cli::parse();
    picode::cli::run(cli)
}
