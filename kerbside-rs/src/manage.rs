//! The `kerbside-manage` commands: their definitions ([`ManageCommand`] and its subcommands,
//! which clap parses) and the work of those that use the database (schema, tokens, sessions).
//!
//! It does not parse the program's arguments or run the `config` commands, which need no
//! database: [`crate::cli`] does both and hands the rest to [`run`]. Opening the database and
//! reading the proxy's TLS identity are shared with the service ([`crate::service`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::config::Config;
use crate::db::models::{self, AuditKind, NewAuditEvent, SessionId};
use crate::db::{Db, DbError, DbUrl, PoolOptions};
use crate::service::ServiceError;

/// `kerbside-manage` commands.
#[derive(Subcommand, Debug)]
pub enum ManageCommand {
    /// Database schema.
    #[command(subcommand)]
    Db(DbCommand),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Console tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Proxy sessions.
    #[command(subcommand)]
    Session(SessionCommand),
}

/// `kerbside-manage db ...`
#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// Apply every pending migration.
    Sync,
    /// Print the schema version and any pending migrations.
    Version,
}

/// `kerbside-manage config ...`
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the annotated sample configuration.
    Sample,
    /// Validate the configuration; exit 1 listing every problem.
    Check,
}

/// `kerbside-manage token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a console token and print it once.
    Create {
        /// Source the console belongs to.
        #[arg(long)]
        source: String,
        /// Console (instance) UUID.
        #[arg(long)]
        console: String,
        /// Seconds the token is valid (default: `[console] token_ttl`).
        #[arg(long)]
        ttl: Option<u64>,
        /// Also write a virt-viewer .vv file here.
        #[arg(long)]
        vv: Option<PathBuf>,
        /// Also print a browser link that opens the console in spice-html5
        /// (`[api] public_url` + `/spice_auto.html?token=...`; needs `[html5] enabled`).
        #[arg(long)]
        html5: bool,
    },
}

/// `kerbside-manage session ...`
#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// List sessions (live ones unless --all).
    List {
        /// Include ended sessions.
        #[arg(long)]
        all: bool,
    },
    /// End a live session on whichever node holds it.
    Terminate {
        /// The session id.
        session_id: String,
        /// Why (recorded in the audit trail).
        #[arg(long, default_value = "terminated by operator")]
        reason: String,
    },
}

/// Why an operator command failed. The words are for the operator; each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The database.
    #[error(transparent)]
    Database(#[from] DbError),
    /// Opening the database or the proxy's TLS identity, as the service does.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A `config` command reached the database commands.
    #[error("config commands run without a database")]
    NotADatabaseCommand,
    /// `--html5` while browser consoles are off.
    #[error("--html5: browser consoles are not enabled ([html5] enabled = true)")]
    Html5Disabled,
    /// `--html5` without a URL for the API.
    #[error("--html5: set [api] public_url, the URL browsers reach the API at")]
    NoPublicUrl,
    /// `--ttl 0`.
    #[error("--ttl must be at least 1 second")]
    ZeroTtl,
    /// The `.vv` file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Runs one command.
///
/// # Errors
/// [`ManageError`], in words for the operator.
pub async fn run(config: Config, command: ManageCommand) -> Result<(), ManageError> {
    match command {
        ManageCommand::Db(DbCommand::Sync) => db_sync(&config).await,
        ManageCommand::Db(DbCommand::Version) => db_version(&config).await,
        ManageCommand::Config(_) => Err(ManageError::NotADatabaseCommand),
        ManageCommand::Token(TokenCommand::Create {
            source,
            console,
            ttl,
            vv,
            html5,
        }) => token_create(&config, &source, &console, ttl, vv.as_deref(), html5).await,
        ManageCommand::Session(SessionCommand::List { all }) => session_list(&config, all).await,
        ManageCommand::Session(SessionCommand::Terminate { session_id, reason }) => {
            session_terminate(&config, &session_id, &reason).await
        }
    }
}

async fn connect(config: &Config) -> Result<Db, ManageError> {
    let url = DbUrl::parse(config.database.connection.expose()).map_err(DbError::from)?;
    if let DbUrl::Sqlite { path } = &url {
        crate::service::secure_state_dir(&config.default.state_path);
        crate::db::secure_sqlite_file(path)?;
    }
    let opts = PoolOptions {
        max_size: 2,
        connect_timeout: Duration::from_secs(config.database.pool_timeout.min(30)),
    };
    Ok(Db::connect(&url, &opts)?)
}

async fn db_sync(config: &Config) -> Result<(), ManageError> {
    let db = connect(config).await?;
    let applied = db.sync().await?;
    if applied.is_empty() {
        println!("database {} is up to date", db.redacted_url());
    } else {
        for name in &applied {
            println!("applied {name}");
        }
        println!("database {} is up to date", db.redacted_url());
    }
    Ok(())
}

async fn db_version(config: &Config) -> Result<(), ManageError> {
    let db = connect(config).await?;
    let version = db.version().await?;
    let pending = db.run(|conn| conn.pending_migrations()).await?;
    println!(
        "schema version: {}",
        version.as_deref().unwrap_or("none (empty database)")
    );
    if pending.is_empty() {
        println!("pending migrations: none");
    } else {
        println!(
            "pending migrations: {} (run `kerbside-manage db sync`)",
            pending.join(", ")
        );
    }
    Ok(())
}

/// The database ready for use by an operator command: the embedded SQLite database is migrated
/// on the spot; a shared database must be current.
async fn ready_db(config: &Config) -> Result<Db, ManageError> {
    Ok(crate::service::open_database(config, true).await?)
}

async fn token_create(
    config: &Config,
    source: &str,
    console_uuid: &str,
    ttl: Option<u64>,
    vv: Option<&std::path::Path>,
    html5: bool,
) -> Result<(), ManageError> {
    let link_base = if html5 {
        Some(html5_link_base(config)?)
    } else {
        None
    };
    let db = ready_db(config).await?;
    if let Some(path) = &config.console.sources_file {
        // The service may not have loaded the file yet: make sure its consoles exist.
        if let Err(e) = crate::sources::apply_file(&db, path).await {
            eprintln!("warning: {e}");
        }
    }
    let ttl = Duration::from_secs(ttl.unwrap_or(config.console.token_ttl));
    if ttl.is_zero() {
        return Err(ManageError::ZeroTtl);
    }
    let identity = if vv.is_some() {
        Some(crate::service::proxy_identity(config)?)
    } else {
        None
    };
    let token = crate::token::generate_token();
    let hash = {
        use secrecy::ExposeSecret;
        crate::token::hash_token(token.expose_secret())
    };
    let (source_name, uuid, node) = (
        source.to_owned(),
        console_uuid.to_lowercase(),
        config.node_name(),
    );
    let (console, row) = db
        .run(move |conn| {
            let console = models::get_console_by_source_name(conn, &source_name, &uuid)?;
            let row = models::insert_token(conn, console.id, &hash, ttl)?;
            let mut event = NewAuditEvent::new(
                node,
                AuditKind::TokenCreated,
                format!(
                    "token created by kerbside-manage, expires {}",
                    row.expires_at
                ),
            );
            event.console_id = Some(console.id);
            models::record_event(conn, &event)?;
            Ok((console, row))
        })
        .await?;
    use secrecy::ExposeSecret;
    println!("{}", token.expose_secret());
    if let Some(base) = link_base {
        println!("{base}?token={}", token.expose_secret());
    }
    if let (Some(path), Some(identity)) = (vv, identity) {
        let text = crate::vv::VvFile {
            host: &config.public_host(),
            port: config.public_insecure_port(),
            tls_port: config.public_tls_port(),
            password: token.expose_secret(),
            ca_pem: identity.ca_pem.as_deref(),
            host_subject: identity.host_subject.as_deref(),
            title: &console.name,
        }
        .render();
        write_private(path, &text)?;
        eprintln!(
            "wrote {} (valid until {} UTC)",
            path.display(),
            row.expires_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(())
}

/// Where browser links point: `[api] public_url` + `/spice_auto.html`.
///
/// # Errors
/// Browser consoles are off, or the API's public URL is unknown.
fn html5_link_base(config: &Config) -> Result<String, ManageError> {
    if !config.html5.enabled {
        return Err(ManageError::Html5Disabled);
    }
    let url = config
        .api
        .public_url
        .as_ref()
        .ok_or(ManageError::NoPublicUrl)?;
    Ok(format!(
        "{}{}",
        url.as_str().trim_end_matches('/'),
        crate::api::html5::PAGE_PATH
    ))
}

/// Writes a file only its owner can read (it holds a live token).
fn write_private(path: &std::path::Path, text: &str) -> Result<(), ManageError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| ManageError::Write {
            path: path.to_path_buf(),
            source,
        })
}

async fn session_list(config: &Config, all: bool) -> Result<(), ManageError> {
    let db = ready_db(config).await?;
    let sessions = db
        .run(move |conn| models::list_session_listings(conn, !all))
        .await?;
    let mut out = format!(
        "{:<36}  {:<36}  {:<15}  {:<12}  {:<9}  {:<19}  {:<19}  {:>12}  {:>12}  {:<20}  {}\n",
        "SESSION",
        "CONSOLE",
        "CLIENT",
        "NODE",
        "TRANSPORT",
        "CREATED",
        "ENDED",
        "TO CLIENT",
        "TO SERVER",
        "FIREWALL PROFILE",
        "END REASON"
    );
    for listing in &sessions {
        let s = &listing.session;
        let console = listing
            .console_uuid
            .clone()
            .unwrap_or_else(|| format!("(deleted console {})", s.console_id.0));
        let _ = writeln!(
            out,
            "{:<36}  {:<36}  {:<15}  {:<12}  {:<9}  {:<19}  {:<19}  {:>12}  {:>12}  {:<20}  {}",
            s.id.as_str(),
            console,
            s.client_address,
            s.node,
            s.transport,
            s.created_at.format("%Y-%m-%d %H:%M:%S"),
            s.ended_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "live".to_owned()),
            s.bytes_to_client,
            s.bytes_to_server,
            s.firewall_profile.as_deref().unwrap_or("-"),
            s.end_reason.as_deref().unwrap_or("")
        );
    }
    print!("{out}");
    Ok(())
}

async fn session_terminate(
    config: &Config,
    session_id: &str,
    reason: &str,
) -> Result<(), ManageError> {
    let db = ready_db(config).await?;
    let (id, reason) = (SessionId(session_id.to_owned()), reason.to_owned());
    let node = config.node_name();
    let (request, revoked) = db
        .run(move |conn| {
            models::terminate_session_audited(conn, &node, &id, &reason, "kerbside-manage")
        })
        .await?;
    println!(
        "termination of session {} requested; the proxy holding it closes it within {} s",
        request.session_id.as_str(),
        config.proxy.termination_poll_interval
    );
    println!(
        "{revoked} console token(s) of the session revoked: the same .vv file no longer opens \
         the console; to let the user back in, issue a new token"
    );
    Ok(())
}
