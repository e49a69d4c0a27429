//! The operator commands of `kerbside-manage` that work on the database.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cli::{DbCommand, ManageCommand, SessionCommand, TokenCommand};
use crate::config::Config;
use crate::db::models::{self, NewAuditEvent, SessionId};
use crate::db::{Db, DbUrl, PoolOptions};

/// Runs one command.
///
/// # Errors
/// A one-line message for the operator.
pub async fn run(config: Config, command: ManageCommand) -> Result<(), String> {
    match command {
        ManageCommand::Db(DbCommand::Sync) => db_sync(&config).await,
        ManageCommand::Db(DbCommand::Version) => db_version(&config).await,
        ManageCommand::Config(_) => Err("config commands run without a database".to_owned()),
        ManageCommand::Token(TokenCommand::Create {
            source,
            console,
            ttl,
            vv,
        }) => token_create(&config, &source, &console, ttl, vv.as_deref()).await,
        ManageCommand::Session(SessionCommand::List { all }) => session_list(&config, all).await,
        ManageCommand::Session(SessionCommand::Terminate { session_id, reason }) => {
            session_terminate(&config, &session_id, &reason).await
        }
    }
}

async fn connect(config: &Config) -> Result<Db, String> {
    let url = DbUrl::parse(config.database.connection.expose()).map_err(|e| e.to_string())?;
    if let DbUrl::Sqlite { path } = &url
        && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let opts = PoolOptions {
        max_size: 2,
        connect_timeout: Duration::from_secs(config.database.pool_timeout.min(30)),
    };
    Db::connect(&url, &opts).map_err(|e| e.to_string())
}

async fn db_sync(config: &Config) -> Result<(), String> {
    let db = connect(config).await?;
    let applied = db.sync().await.map_err(|e| e.to_string())?;
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

async fn db_version(config: &Config) -> Result<(), String> {
    let db = connect(config).await?;
    let version = db.version().await.map_err(|e| e.to_string())?;
    let pending = db
        .run(|conn| conn.pending_migrations())
        .await
        .map_err(|e| e.to_string())?;
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
async fn ready_db(config: &Config) -> Result<Db, String> {
    crate::service::open_database(config, true).await
}

async fn token_create(
    config: &Config,
    source: &str,
    console_uuid: &str,
    ttl: Option<u64>,
    vv: Option<&std::path::Path>,
) -> Result<(), String> {
    let db = ready_db(config).await?;
    if let Some(path) = &config.console.sources_file {
        // The service may not have loaded the file yet: make sure its consoles exist.
        if let Err(e) = crate::sources::apply_file(&db, path).await {
            eprintln!("warning: {e}");
        }
    }
    let ttl = Duration::from_secs(ttl.unwrap_or(config.console.token_ttl));
    if ttl.is_zero() {
        return Err("--ttl must be at least 1 second".to_owned());
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
                "token.created",
                format!(
                    "token created by kerbside-manage, expires {}",
                    row.expires_at
                ),
            );
            event.console_id = Some(console.id);
            models::record_event(conn, &event)?;
            Ok((console, row))
        })
        .await
        .map_err(|e| e.to_string())?;
    use secrecy::ExposeSecret;
    println!("{}", token.expose_secret());
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

/// Writes a file only its owner can read (it holds a live token).
fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

async fn session_list(config: &Config, all: bool) -> Result<(), String> {
    let db = ready_db(config).await?;
    let sessions = db
        .run(move |conn| models::list_sessions(conn, !all))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = format!(
        "{:<36}  {:>8}  {:<15}  {:<12}  {:<19}  {:<19}  {:>12}  {:>12}  {}\n",
        "SESSION",
        "CONSOLE",
        "CLIENT",
        "NODE",
        "CREATED",
        "ENDED",
        "TO CLIENT",
        "TO SERVER",
        "END REASON"
    );
    for s in &sessions {
        let _ = writeln!(
            out,
            "{:<36}  {:>8}  {:<15}  {:<12}  {:<19}  {:<19}  {:>12}  {:>12}  {}",
            s.id.as_str(),
            s.console_id.0,
            s.client_address,
            s.node,
            s.created_at.format("%Y-%m-%d %H:%M:%S"),
            s.ended_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "live".to_owned()),
            s.bytes_to_client,
            s.bytes_to_server,
            s.end_reason.as_deref().unwrap_or("")
        );
    }
    print!("{out}");
    Ok(())
}

async fn session_terminate(config: &Config, session_id: &str, reason: &str) -> Result<(), String> {
    let db = ready_db(config).await?;
    let (id, reason) = (SessionId(session_id.to_owned()), reason.to_owned());
    let request = db
        .run(move |conn| models::request_termination(conn, &id, &reason, "kerbside-manage"))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "termination of session {} requested; the proxy holding it closes it within {} s",
        request.session_id.as_str(),
        config.proxy.termination_poll_interval
    );
    Ok(())
}
