//! `kerbside-manage`: operator commands for a kerbside deployment.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    kerbside::cli::run_manage(kerbside::cli::ManageArgs::parse())
}
