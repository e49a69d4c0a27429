//! The `kerbside-manage` and `kerbside` programs as operators run them: configuration checks,
//! schema management on MariaDB, tokens and `.vv` files, static sources; and the release notes.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result};
use kerbside::db::models;
use kerbside_tests::app::program;
use kerbside_tests::db::{TestDatabase, mariadb_server_url, with_database};

/// Runs `kerbside-manage --config-file config args...` and waits for it.
async fn manage(config: &Path, args: &[&str]) -> Result<Output> {
    Ok(tokio::process::Command::new(program("kerbside-manage")?)
        .arg("--config-file")
        .arg(config)
        .args(args)
        .output()
        .await?)
}

/// Writes `text` as `k.conf` in `dir` and returns its path.
fn write_config(dir: &Path, text: impl AsRef<str>) -> Result<PathBuf> {
    let conf = dir.join("k.conf");
    std::fs::write(&conf, text.as_ref())?;
    Ok(conf)
}

/// What a program printed: its standard output, then its standard error.
fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn config_check_names_every_bad_option() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = write_config(
        dir.path(),
        "[DEFAULT]\ndebug = maybe\n\n[proxy]\ntls_port = 5\ntls_port = 99999\ncert_file = /nonexistent.pem\n\n[database]\nconnection = postgresql://x@y/z\n\n[proxy]\nfrobnicate = 1\n",
    )?;
    let out = manage(&conf, &["config", "check"]).await?;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = conf.display();
    for line in [
        format!("error: {c}:2: [DEFAULT] debug: invalid boolean 'maybe': expected true or false"),
        format!(
            "error: {c}:6: [proxy] tls_port: set more than once in this file (also at line 5); keep one"
        ),
        format!("error: {c}:6: [proxy] tls_port: invalid port value"),
        format!("warning: {c}:13: [proxy] frobnicate: unknown option (ignored)"),
    ] {
        assert!(report.contains(&line), "missing `{line}` in:\n{report}");
    }
    // The database URL is checked once the file itself is valid.
    std::fs::write(
        &conf,
        "[database]\nconnection = postgresql://kerbside:s3cret@db/kerbside\n",
    )?;
    let out = manage(&conf, &["config", "check"]).await?;
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("[database] connection:"), "{report}");
    assert!(
        !report.contains("s3cret"),
        "a password was printed: {report}"
    );

    std::fs::write(
        &conf,
        format!("[DEFAULT]\nstate_path = {}\n", dir.path().display()),
    )?;
    let out = manage(&conf, &["config", "check"]).await?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("configuration OK"));
    Ok(())
}

#[tokio::test]
async fn config_sample_is_the_committed_file() -> Result<()> {
    let out = tokio::process::Command::new(program("kerbside-manage")?)
        .args(["config", "sample"])
        .output()
        .await?;
    assert!(out.status.success());
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/kerbside/kerbside.conf.sample"),
    )?;
    assert!(
        String::from_utf8(out.stdout)? == committed,
        "etc/kerbside/kerbside.conf.sample is stale: regenerate it with kerbside-manage config sample"
    );
    Ok(())
}

#[tokio::test]
async fn db_sync_creates_every_table_on_mariadb() -> Result<()> {
    let scratch = TestDatabase::unmigrated(kerbside::db::Backend::Mysql).await?;
    let name = scratch.mariadb_name().context("mariadb")?.to_owned();
    // What DevStack and Kolla write: the PyMySQL driver name and a charset parameter.
    let url =
        with_database(&mariadb_server_url(), &name).replacen("mysql://", "mysql+pymysql://", 1)
            + "?charset=utf8";
    let dir = tempfile::tempdir()?;
    let conf = write_config(
        dir.path(),
        format!(
            "[DEFAULT]\nstate_path = {}\n[database]\nconnection = {url}\n",
            dir.path().display()
        ),
    )?;

    let version = manage(&conf, &["db", "version"]).await?;
    assert!(version.status.success(), "{}", text(&version));
    assert!(
        text(&version).contains("pending migrations: 2026-11-22-000001_initial"),
        "{}",
        text(&version)
    );
    // A service refuses to start on a shared database with pending migrations.
    let service = tokio::process::Command::new(program("kerbside")?)
        .arg("--config-file")
        .arg(&conf)
        .output()
        .await?;
    assert!(!service.status.success());
    assert!(
        text(&service).contains("kerbside-manage db sync"),
        "{}",
        text(&service)
    );

    let sync = manage(&conf, &["db", "sync"]).await?;
    assert!(sync.status.success(), "{}", text(&sync));
    assert!(text(&sync).contains("applied 2026-11-22-000001_initial"));
    let again = manage(&conf, &["db", "sync"]).await?;
    assert!(text(&again).contains("up to date"));
    let tables: Vec<String> = scratch
        .run(move |conn| {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct T {
                #[diesel(sql_type = diesel::sql_types::Text)]
                table_name: String,
            }
            let rows: Vec<T> = diesel::sql_query(format!("SELECT table_name AS table_name FROM information_schema.tables WHERE table_schema = '{name}'")).load(conn)?;
            Ok(rows.into_iter().map(|t| t.table_name).collect())
        })
        .await?;
    for table in [
        "sources",
        "consoles",
        "console_tokens",
        "sessions",
        "channels",
        "session_terminations",
        "audit_events",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing: {tables:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unreachable_database_is_one_clear_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = write_config(
        dir.path(),
        "[database]\nconnection = mysql://kerbside:s3cret@127.0.0.1:1/kerbside\npool_timeout = 2\n",
    )?;
    let out = manage(&conf, &["db", "sync"]).await?;
    let report = text(&out);
    assert!(!out.status.success());
    assert!(report.contains("127.0.0.1:1"), "{report}");
    assert!(!report.contains("s3cret"), "{report}");
    assert_eq!(report.trim().lines().count(), 1, "{report}");
    Ok(())
}

#[tokio::test]
async fn token_create_writes_a_vv_and_stores_only_the_hash() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sources = dir.path().join("sources.yaml");
    std::fs::write(
        &sources,
        "- source: lab\n  type: static\n  consoles:\n    - {uuid: 0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01, name: build vm, hypervisor: hv1, insecure_port: 5900, ticket: hv-secret}\n",
    )?;
    let conf = write_config(
        dir.path(),
        format!(
            "[DEFAULT]\nstate_path = {d}\n[proxy]\npublic_host = console.example.com\npublic_tls_port = 443\n[console]\nsources_file = {s}\n",
            d = dir.path().display(),
            s = sources.display()
        ),
    )?;
    let vv = dir.path().join("c.vv");
    let out = manage(
        &conf,
        &[
            "token",
            "create",
            "--source",
            "lab",
            "--console",
            "0D1E7A52-6F4B-4C3E-9A8E-2B7D5C1F9E01",
            "--ttl",
            "60",
            "--vv",
            vv.to_str().context("path")?,
        ],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    assert_eq!(token.len(), 48);
    let file = std::fs::read_to_string(&vv)?;
    for line in [
        "[virt-viewer]",
        "type=spice",
        "host=console.example.com",
        "port=5901",
        "tls-port=443",
        &format!("password={token}"),
        "host-subject=",
        "secure-channels=all",
        "delete-this-file=1",
        "title=build vm",
    ] {
        assert!(
            file.lines()
                .any(|l| l == line || (line.ends_with('=') && l.starts_with(line))),
            "{line} missing:\n{file}"
        );
    }
    assert!(file.contains("ca=-----BEGIN CERTIFICATE-----\\n"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&vv)?.permissions().mode() & 0o777, 0o600);
    // The database holds the hash, never the token.
    let db_bytes = std::fs::read(dir.path().join("kerbside.sqlite"))?;
    assert!(
        !db_bytes.windows(token.len()).any(|w| w == token.as_bytes()),
        "plain token stored"
    );
    let unknown = manage(
        &conf,
        &[
            "token",
            "create",
            "--source",
            "lab",
            "--console",
            "11111111-2222-3333-4444-555555555555",
        ],
    )
    .await?;
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("11111111-2222-3333-4444-555555555555"),
        "{}",
        text(&unknown)
    );
    let list = manage(&conf, &["session", "list", "--all"]).await?;
    assert!(
        list.status.success() && text(&list).starts_with("SESSION"),
        "{}",
        text(&list)
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_sources_file_keeps_what_was_published() -> Result<()> {
    let db = TestDatabase::sqlite().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sources.yaml");
    let good = "- source: a\n  type: static\n  consoles:\n    - {uuid: 0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01, name: one, hypervisor: hv, insecure_port: 5900}\n    - {uuid: 0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e02, name: two, hypervisor: hv, insecure_port: 5901}\n- source: b\n  type: static\n  consoles: []\n";
    std::fs::write(&path, good)?;
    let applied = kerbside::sources::apply_file(db.db(), &path)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(applied.ok, ["a", "b"]);
    let count = |db: kerbside::db::Db| async move {
        db.run(|c| models::list_consoles(c, None))
            .await
            .map(|v| v.len())
    };
    assert_eq!(count(db.db().clone()).await?, 2);

    // One console dropped: it goes.
    std::fs::write(&path, good.replace("    - {uuid: 0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e02, name: two, hypervisor: hv, insecure_port: 5901}\n", ""))?;
    kerbside::sources::apply_file(db.db(), &path)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(count(db.db().clone()).await?, 1);

    // An invalid entry: source a is errored and keeps its console; b is fine.
    std::fs::write(
        &path,
        good.replace("insecure_port: 5900}", "insecure_port: 0}"),
    )?;
    let applied = kerbside::sources::apply_file(db.db(), &path)
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(applied.errored.len(), 1);
    let sources = db.run(models::list_sources).await?;
    let a = sources.iter().find(|s| s.name == "a").context("a")?;
    assert!(
        a.errored
            && a.error_message
                .as_deref()
                .is_some_and(|m| m.contains("ports must be 1-65535")),
        "{a:?}"
    );
    assert!(!sources.iter().find(|s| s.name == "b").context("b")?.errored);
    assert_eq!(count(db.db().clone()).await?, 1);

    // Unparsable YAML: every static source errored, nothing removed.
    std::fs::write(&path, "- source: [\n")?;
    assert!(kerbside::sources::apply_file(db.db(), &path).await.is_err());
    let sources = db.run(models::list_sources).await?;
    assert!(sources.iter().all(|s| s.errored), "{sources:?}");
    assert_eq!(count(db.db().clone()).await?, 1);
    Ok(())
}

#[test]
fn release_notes_use_only_reno_sections() -> Result<()> {
    const SECTIONS: &[&str] = &[
        "prelude",
        "features",
        "issues",
        "upgrade",
        "deprecations",
        "critical",
        "security",
        "fixes",
        "other",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../releasenotes/notes");
    let mut notes = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("name")?
            .to_owned();
        assert!(name.ends_with(".yaml"), "{name}: notes are .yaml files");
        let stem = name.trim_end_matches(".yaml");
        let (_, uid) = stem
            .rsplit_once('-')
            .context("reno names end in -<16 hex>")?;
        assert!(
            uid.len() == 16 && uid.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: reno names end in -<16 hex>"
        );
        let doc: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(&path)?)?;
        let map = doc
            .as_mapping()
            .with_context(|| format!("{name}: a note is a mapping"))?;
        assert!(!map.is_empty(), "{name} is empty");
        for (key, value) in map {
            let key = key.as_str().context("section names are strings")?;
            assert!(
                SECTIONS.contains(&key),
                "{name}: `{key}` is not a reno section"
            );
            if key == "prelude" {
                assert!(value.is_string(), "{name}: prelude is one string");
            } else {
                let items = value
                    .as_sequence()
                    .with_context(|| format!("{name}: {key} is a list"))?;
                assert!(
                    items.iter().all(serde_norway::Value::is_string),
                    "{name}: {key} items are strings"
                );
            }
        }
        notes += 1;
    }
    assert!(notes > 0);
    Ok(())
}

#[tokio::test]
async fn logs_go_to_log_dir_as_json_without_secrets() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("k.conf");
    let logs = dir.path().join("logs");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nstate_path = {d}\nlog_dir = {l}\nuse_json = true\ndebug = true\n[database]\nconnection = mysql://kerbside:s3cret@127.0.0.1:1/kerbside\nmax_retries = 0\npool_timeout = 2\n",
            d = dir.path().display(),
            l = logs.display()
        ),
    )?;
    let out = tokio::process::Command::new(program("kerbside")?)
        .arg("--config-file")
        .arg(&conf)
        .output()
        .await?;
    assert!(
        !out.status.success(),
        "kerbside started without its database"
    );
    let log =
        std::fs::read_to_string(logs.join("kerbside.log")).context("no <log_dir>/kerbside.log")?;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("log lines are JSON")?;
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("127.0.0.1:1"))),
        "{log}"
    );
    assert!(!log.contains("s3cret"), "a password reached the log: {log}");
    Ok(())
}

#[tokio::test]
async fn session_list_shows_console_uuids_and_terminate_revokes_the_token() -> Result<()> {
    use kerbside::spice::{ChannelType, LinkError};
    use kerbside_tests::app::{TestApp, TestConsole};
    use kerbside_tests::spice_client;
    kerbside_tests::require::require_all(&["qemu"])?;
    let server = kerbside_tests::qemu::SpiceServer::with_password("manage").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let token = app
        .mint_token(&console.uuid, std::time::Duration::from_secs(300))
        .await?;
    let _main = app.link_main(&token).await?;
    let session = app.live_session().await?;
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(program("kerbside-manage")?)
            .args(args)
            .output()
            .await
            .map_err(anyhow::Error::from)
    };
    let mut args = app.config_args();
    args.extend(["session".to_owned(), "list".to_owned()]);
    let list = run(args).await?;
    let listing = text(&list);
    assert!(list.status.success(), "{listing}");
    let header = listing.lines().next().unwrap_or_default();
    for column in ["SESSION", "CONSOLE", "TO CLIENT", "TO SERVER"] {
        assert!(header.contains(column), "{listing}");
    }
    let row = listing
        .lines()
        .find(|l| l.starts_with(session.id.as_str()))
        .context("session not listed")?;
    assert!(
        row.split_whitespace().nth(1) == Some(console.uuid.as_str()),
        "the console column is not the console's UUID: {listing}"
    );

    let mut args = app.config_args();
    args.extend(
        [
            "session",
            "terminate",
            session.id.as_str(),
            "--reason",
            "manage test",
        ]
        .map(str::to_owned),
    );
    let out = run(args).await?;
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("1 console token(s) of the session revoked")
            && said.contains("issue a new token"),
        "{said}"
    );
    let again = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(
        again.err(),
        Some(LinkError::PermissionDenied),
        "the terminated session's token still opens the console"
    );
    app.stop().await;
    Ok(())
}
