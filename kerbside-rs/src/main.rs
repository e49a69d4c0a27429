//! `kerbside`: the console proxy service. See the crate documentation.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    kerbside::cli::run_service(kerbside::cli::ServiceArgs::parse())
}
