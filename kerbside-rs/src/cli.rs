//! Command lines of the two programs: `kerbside` (the service) and `kerbside-manage` (operator
//! commands). Parsing and dispatch only: each command calls into the module that owns the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser};

use crate::config::{Config, ConfigError, ConfigSources, Loaded};
use crate::manage::{ConfigCommand, ManageCommand};
use crate::service::Component;

/// oslo-style configuration arguments, shared by both programs.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Configuration file; may be repeated, later files win. Default: /etc/kerbside/kerbside.conf
    #[arg(long = "config-file", value_name = "PATH")]
    pub config_file: Vec<PathBuf>,
    /// Directory of *.conf files read in sorted order after the files; may be repeated.
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Vec<PathBuf>,
}

impl ConfigArgs {
    /// The files and directories to read.
    pub fn sources(&self) -> ConfigSources {
        ConfigSources {
            files: self.config_file.clone(),
            dirs: self.config_dir.clone(),
        }
    }
}

/// `kerbside`: the console proxy service.
#[derive(Parser, Debug)]
#[command(
    name = "kerbside",
    version,
    about = "SPICE console proxy for OpenStack"
)]
pub struct ServiceArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Component to run; may be repeated. Default: every configured component.
    #[arg(long = "component", value_enum)]
    pub components: Vec<Component>,
}

/// `kerbside-manage`: operator commands.
#[derive(Parser, Debug)]
#[command(
    name = "kerbside-manage",
    version,
    about = "Manage a kerbside deployment"
)]
pub struct ManageArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The command.
    #[command(subcommand)]
    pub command: ManageCommand,
}

/// Loads the configuration and prints warnings; on failure prints every problem.
///
/// # Errors
/// The configuration problems, already printed.
pub fn load_config(args: &ConfigArgs) -> Result<Loaded, ConfigError> {
    let loaded = Config::load(&args.sources()).inspect_err(|e| eprintln!("{e}"))?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(loaded)
}

/// Runs `kerbside-manage config ...`.
pub fn run_config_command(args: &ConfigArgs, command: &ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Sample => {
            print!("{}", crate::config::sample::render());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check => config_check(args),
    }
}

/// `config check`: every problem of the files, plus what only other modules can check.
fn config_check(args: &ConfigArgs) -> ExitCode {
    let loaded = match Config::load(&args.sources()) {
        Ok(loaded) => loaded,
        Err(e) => {
            for problem in &e.problems {
                println!("error: {problem}");
            }
            for warning in &e.warnings {
                println!("warning: {warning}");
            }
            return ExitCode::FAILURE;
        }
    };
    for warning in &loaded.warnings {
        println!("warning: {warning}");
    }
    let problems = crate::checks::deep_check(&loaded.config);
    for problem in &problems {
        println!("error: {problem}");
    }
    if problems.is_empty() {
        println!("configuration OK ({} file(s))", loaded.config.files.len());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `kerbside`.
pub fn run_service(args: ServiceArgs) -> ExitCode {
    let Ok(loaded) = load_config(&args.config) else {
        return ExitCode::FAILURE;
    };
    let config = std::sync::Arc::new(loaded.config);
    let settings = crate::telemetry::LogSettings::from_config(&config.default, "kerbside");
    if let Err(e) = crate::telemetry::init(&settings) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    // Database calls run on the blocking pool, but at most `max_pool_size` of them can hold a
    // connection: more threads than that only wait, and each idle one keeps its stack for a
    // while after a burst of links.
    let blocking = usize::try_from(config.database.max_pool_size)
        .unwrap_or(10)
        .saturating_mul(2)
        .max(16);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::service::run(config, &args.components)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `kerbside-manage`.
pub fn run_manage(args: ManageArgs) -> ExitCode {
    if let ManageCommand::Config(command) = &args.command {
        return run_config_command(&args.config, command);
    }
    let Ok(loaded) = load_config(&args.config) else {
        return ExitCode::FAILURE;
    };
    // Operator commands print results on stdout; only problems are logged.
    let _ = crate::telemetry::init(&crate::telemetry::LogSettings {
        debug: loaded.config.default.debug,
        json: false,
        file: None,
    })
    .map_err(|e| eprintln!("{e}"));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::manage::run(loaded.config, args.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
