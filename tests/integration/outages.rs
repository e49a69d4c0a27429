//! Hardening against operational failures: database outages (through a chaos proxy in front
//! of MariaDB), live byte counts, the open-file limit, and private state files.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use kerbside::config::{Config, ConfigSources};
use kerbside::spice::{ChannelType, LinkError};
use kerbside_tests::app::{TestApp, TestConsole, program};
use kerbside_tests::chaos::ChaosProxy;
use kerbside_tests::clients::spice_probe;
use kerbside_tests::db::{TestDatabase, mariadb_server_url, with_database};
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::spice_client;
use kerbside_tests::wait::eventually;

const TTL: Duration = Duration::from_secs(300);

/// A MariaDB test database reached through a chaos proxy: (database, proxy, URL via the proxy).
async fn mariadb_behind_chaos() -> Result<(TestDatabase, ChaosProxy, String)> {
    let database = TestDatabase::mariadb().await?;
    let server = reqwest::Url::parse(&mariadb_server_url())?;
    let upstream = format!(
        "{}:{}",
        server.host_str().context("MariaDB URL without a host")?,
        server.port().unwrap_or(3306)
    );
    let chaos = ChaosProxy::start(&upstream).await?;
    let mut via = server.clone();
    via.set_host(Some("127.0.0.1"))?;
    via.set_port(Some(chaos.addr().port()))
        .map_err(|()| anyhow::anyhow!("cannot set the port"))?;
    let url = with_database(via.as_str(), database.mariadb_name().context("mariadb")?);
    Ok((database, chaos, url))
}

// Multi-threaded: kerbside opens its database with blocking calls, and the chaos proxy
// relaying them runs on the test's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_links_fast_and_loses_no_records() -> Result<()> {
    require_all(&["qemu", "mariadb", "spice-probe"])?;
    let (database, chaos, url) = mariadb_behind_chaos().await?;
    let server = SpiceServer::with_password("outage").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::builder()
        .console(console.clone())
        .database(&url)
        // Checkouts give up after 2 s, so the writer meets the outage and retries.
        .ini("[database]\nsession_counters_interval = 1\npool_timeout = 2\n")
        .start()
        .await?;
    let token = app.mint_token(&console.uuid, TTL).await?;

    // A real client holds a session for a while, then exits.
    let mut args = app.probe_args(&token, "main,display");
    args.extra = vec!["--hold".into(), "8".into()];
    args.timeout = Duration::from_secs(30);
    let probe = tokio::spawn(async move { spice_probe(&args).await });
    let live = eventually(Duration::from_secs(20), || async {
        Ok(!app.sessions(true).await?.is_empty())
    })
    .await?;
    assert!(live, "no live session");
    let session = app.sessions(true).await?.remove(0);

    // Live byte counts: written while the session lives.
    let counted = eventually(Duration::from_secs(5), || async {
        Ok(app
            .sessions(true)
            .await?
            .iter()
            .any(|s| s.id == session.id && s.bytes_to_client > 0 && s.bytes_to_server > 0))
    })
    .await?;
    assert!(
        counted,
        "no live byte counts: {:?}",
        app.sessions(false).await?
    );

    // Both channels linked (their links need the database) before it goes away.
    let linked = eventually(Duration::from_secs(10), || async {
        let id = session.id.clone();
        let channels = app
            .db()
            .run(move |conn| kerbside::db::models::list_channels(conn, &id))
            .await?;
        Ok(channels.len() >= 2)
    })
    .await?;
    assert!(linked, "the display channel did not link");

    // The database goes away while the session lives.
    let severed_at = Utc::now().naive_utc();
    chaos.sever();

    // A link during the outage is refused with a server error, for the reason "database",
    // not as a client that timed out.
    let metrics = app.running.metrics.clone();
    let failures = |reason: &str| {
        metrics
            .proxy
            .link_failures
            .with_label_values(&[reason])
            .get()
    };
    let timeouts_before = failures("handshake_timeout");
    let refused = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert!(
        matches!(refused, Err(LinkError::Error)),
        "a link during the outage was not refused with a server error"
    );
    assert_eq!(
        failures("database"),
        1,
        "link failure not counted as database"
    );
    assert_eq!(failures("handshake_timeout"), timeouts_before);

    // The client exits during the outage: the session's end waits in the queue.
    let result = probe.await??;
    assert_eq!(result.exit_code, Some(0), "probe: {}", result.stderr);
    let queued = eventually(Duration::from_secs(10), || async {
        Ok(metrics.db_writes.queue_length.get() >= 3)
    })
    .await?;
    assert!(
        queued,
        "session and channel ends not queued: {}",
        metrics.db_writes.queue_length.get()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restored_at = Utc::now().naive_utc();
    chaos.restore();

    // Once the database is back, the queued records are written with their original times.
    let written = eventually(Duration::from_secs(30), || async {
        Ok(metrics.db_writes.queue_length.get() == 0
            && app
                .sessions(false)
                .await
                .is_ok_and(|all| all.iter().any(|s| s.id == session.id && !s.is_live())))
    })
    .await?;
    assert!(written, "queued records were not written after the outage");
    let ended = app
        .sessions(false)
        .await?
        .into_iter()
        .find(|s| s.id == session.id)
        .context("session gone")?;
    let ended_at = ended.ended_at.context("not ended")?;
    assert!(
        severed_at < ended_at && ended_at < restored_at,
        "ended_at {ended_at} is not the time the session ended (outage {severed_at} .. {restored_at})"
    );
    assert!(ended.bytes_to_client > 0, "final byte counts lost");
    let audited = app.audit_events("session.ended").await?;
    let event = audited
        .iter()
        .find(|e| e.session_id.as_ref() == Some(&session.id))
        .context("the session.ended audit event was lost")?;
    assert!(
        severed_at < event.event_time && event.event_time < restored_at,
        "audit event time {} is not its original time",
        event.event_time
    );
    let channels = {
        let id = session.id.clone();
        app.db()
            .run(move |conn| kerbside::db::models::list_channels(conn, &id))
            .await?
    };
    assert!(
        !channels.is_empty() && channels.iter().all(|c| c.ended_at.is_some()),
        "channel ends lost: {channels:?}"
    );
    assert_eq!(metrics.db_writes.dropped.get(), 0);
    app.stop().await;
    drop(database);
    Ok(())
}

/// The log of a `kerbside` process started under `prlimit --nofile=SOFT:HARD`.
async fn log_under_limit(app: &TestApp, soft: u64, hard: u64) -> Result<String> {
    let [tls, plain] = kerbside_tests::ports::free_ports(2)?[..] else {
        anyhow::bail!("ports")
    };
    let conf = app.dir().join("limited.conf");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nnode_name = limited\n[proxy]\ntls_port = {tls}\ninsecure_port = {plain}\n[metrics]\nenabled = false\n"
        ),
    )?;
    let log = app.dir().join("limited.log");
    let mut args = app.config_args();
    args.truncate(4);
    let mut child = tokio::process::Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg(program("kerbside")?)
        .args(&args)
        .arg("--config-file")
        .arg(&conf)
        .args(["--component", "proxy"])
        .env("RUST_LOG", "")
        .kill_on_drop(true)
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{tls}").parse()?;
    let up = eventually(Duration::from_secs(20), || async {
        Ok(tokio::net::TcpStream::connect(addr).await.is_ok())
    })
    .await?;
    child.start_kill()?;
    let _ = child.wait().await;
    let text = std::fs::read_to_string(&log)?;
    anyhow::ensure!(up, "kerbside did not start:\n{text}");
    Ok(text)
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() -> Result<()> {
    let app = TestApp::builder().start().await?;
    // An empty RUST_LOG (set by log_under_limit) must not silence the log either.
    let log = log_under_limit(&app, 256, 4096).await?;
    let line = log
        .lines()
        .find(|l| l.contains("open-file limit") && !l.contains("cannot hold"))
        .with_context(|| format!("no open-file limit line in:\n{log}"))?;
    assert!(
        line.contains("before=256") && line.contains("soft=4096") && line.contains("hard=4096"),
        "{line}"
    );
    // 4096 cannot hold the default max_sessions = 1000 (two sockets per channel).
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("cannot hold")),
        "no warning about max_sessions:\n{log}"
    );
    app.stop().await;
    Ok(())
}

fn mode(path: &std::path::Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o777)
}

fn sqlite_config(state: &std::path::Path) -> Result<Config> {
    let dir = state.parent().context("state path without a parent")?;
    let file = dir.join(format!(
        "{}.conf",
        state.file_name().and_then(|n| n.to_str()).unwrap_or("k")
    ));
    std::fs::write(
        &file,
        format!("[DEFAULT]\nstate_path = {}\n", state.display()),
    )?;
    let loaded = Config::load(&ConfigSources {
        files: vec![file],
        dirs: Vec::new(),
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(loaded.config)
}

#[tokio::test]
async fn the_state_directory_and_sqlite_file_are_private() -> Result<()> {
    let root = tempfile::tempdir()?;

    // Created fresh: 0700 and 0600.
    let fresh = root.path().join("fresh");
    kerbside::service::open_database(&sqlite_config(&fresh)?, true)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(mode(&fresh)?, 0o700);
    assert_eq!(mode(&fresh.join("kerbside.sqlite"))?, 0o600);

    // Already there with loose modes (as earlier versions left them): tightened.
    let old = root.path().join("old");
    std::fs::create_dir(&old)?;
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755))?;
    let db = old.join("kerbside.sqlite");
    kerbside::service::open_database(&sqlite_config(&old)?, true)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let wal = old.join("kerbside.sqlite-wal");
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644))?;
    kerbside::service::open_database(&sqlite_config(&old)?, true)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(mode(&old)?, 0o700);
    assert_eq!(mode(&db)?, 0o600);
    // SQLite removes its write-ahead log when the last connection closes: check the file
    // step on its own.
    std::fs::write(&wal, b"")?;
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644))?;
    kerbside::db::secure_sqlite_file(&db).map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(mode(&wal)?, 0o600);
    Ok(())
}
