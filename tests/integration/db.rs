//! Database layer tests, run against a real MariaDB and a SQLite file.
//!
//! Each `async fn name(t: &TestDatabase)` below is one test body; `on_both_backends!`
//! turns it into `db::name::sqlite` and `db::name::mariadb`. MariaDB is required (see
//! `kerbside_tests::db`): an unreachable server fails the `mariadb` variants.

// The test bodies are plain async fns (one per backend pair), not `#[test]` fns; marking
// the module test-only lets clippy's allow-*-in-tests settings apply to them.
#![cfg(test)]

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::{NaiveDate, TimeDelta};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use kerbside::db::models::*;
use kerbside::db::{Backend, Db, DbConnection, DbError, DbUrl, PoolOptions, migrate, now};
use kerbside_tests::db::{
    TestDatabase, insert_source, live_sessions_on_node, pending_terminations_for_node,
    update_session_counters,
};
use secrecy::ExposeSecret;

/// The one migration this release ships.
const INITIAL: &str = "2026-11-22-000001_initial";
const FIREWALL: &str = "2026-12-03-000001_firewall_profile";
const WEB_SESSIONS: &str = "2026-12-03-000002_web_sessions";
/// The migration that records each session's transport (tls, websocket).
const TRANSPORT: &str = "2026-12-03-000003_session_transport";
/// Every migration, oldest first.
const ALL: [&str; 4] = [INITIAL, FIREWALL, WEB_SESSIONS, TRANSPORT];
/// The newest migration.
const LATEST: &str = TRANSPORT;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> anyhow::Result<()> {
                let t = kerbside_tests::db::TestDatabase::sqlite().await?;
                super::$name(&t).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mariadb() -> anyhow::Result<()> {
                let t = kerbside_tests::db::TestDatabase::mariadb().await?;
                super::$name(&t).await
            }
        }
    )*};
}

on_both_backends!(
    schema_matches_tables,
    sources,
    consoles,
    token_storage,
    token_expiry_and_revocation,
    bind_token_once,
    sessions,
    channels,
    terminations,
    audit_events,
    exact_match,
    microseconds_and_big_counters,
    foreign_keys_enforced,
);

// ---------------------------------------------------------------------------------------
// Fixtures

fn new_console(source_id: SourceId, uuid: &str) -> NewConsole {
    NewConsole {
        source_id,
        uuid: uuid.to_owned(),
        name: format!("vm-{uuid}"),
        hypervisor: "hv1.example.com".to_owned(),
        hypervisor_ip: "192.0.2.10".to_owned(),
        insecure_port: Some(5900),
        secure_port: Some(5901),
        host_subject: Some("CN=hv1.example.com".to_owned()),
        ticket: Some(Ticket::new("hypervisor-ticket")),
        firewall_profile: None,
    }
}

/// A source `src` with console `uuid`.
fn console(c: &mut DbConnection, uuid: &str) -> anyhow::Result<Console> {
    let source = upsert_source(c, "src", "static")?;
    Ok(upsert_console(c, &new_console(source.id, uuid))?)
}

fn new_session(console_id: ConsoleId, connection_id: i64, node: &str) -> NewSession {
    NewSession {
        id: SessionId::generate(),
        console_id,
        token_id: None,
        client_address: "198.51.100.7:40000".to_owned(),
        node: node.to_owned(),
        proxy_connection_id: connection_id,
        upstream_session_id: None,
        firewall_profile: None,
        transport: "tls".to_owned(),
    }
}

const UUID_A: &str = "6f1c9a40-0d8b-4e5c-9a77-2b1f3c4d5e6f";
const UUID_B: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Every (table, column) of the database, from the catalog.
fn catalog_columns(c: &mut DbConnection) -> anyhow::Result<Vec<(String, String)>> {
    let cols: Vec<Column> = match c {
        DbConnection::Mysql(m) => diesel::sql_query(
            "SELECT TABLE_NAME AS table_name, COLUMN_NAME AS column_name \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             ORDER BY TABLE_NAME, ORDINAL_POSITION",
        )
        .load(m)?,
        DbConnection::Sqlite(s) => diesel::sql_query(
            "SELECT m.name AS table_name, p.name AS column_name \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY m.name, p.cid",
        )
        .load(s)?,
    };
    Ok(cols
        .into_iter()
        .map(|c| (c.table_name, c.column_name))
        .collect())
}

/// How many cells anywhere in the database contain `needle`.
fn cells_containing(c: &mut DbConnection, needle: &str) -> anyhow::Result<i64> {
    let mut total = 0;
    for (table, column) in catalog_columns(c)? {
        let pattern = format!("%{needle}%");
        let rows: Vec<Count> = match c {
            DbConnection::Mysql(m) => diesel::sql_query(format!(
                "SELECT COUNT(*) AS n FROM `{table}` WHERE CAST(`{column}` AS CHAR) LIKE ?"
            ))
            .bind::<Text, _>(&pattern)
            .load(m)?,
            DbConnection::Sqlite(s) => diesel::sql_query(format!(
                "SELECT COUNT(*) AS n FROM \"{table}\" WHERE CAST(\"{column}\" AS TEXT) LIKE ?"
            ))
            .bind::<Text, _>(&pattern)
            .load(s)?,
        };
        total += rows.iter().map(|r| r.n).sum::<i64>();
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------
// Migrations

#[tokio::test]
async fn migration_trees_have_the_same_names() -> anyhow::Result<()> {
    let mysql = migrate::mysql_migration_names()?;
    let sqlite = migrate::sqlite_migration_names()?;
    assert_eq!(mysql, sqlite);
    assert_eq!(mysql, ALL.map(str::to_owned).to_vec());
    Ok(())
}

async fn check_migrations(backend: Backend) -> anyhow::Result<()> {
    let t = TestDatabase::unmigrated(backend).await?;
    let db = t.db();
    match db.check_current().await {
        Err(DbError::PendingMigrations { pending }) => assert_eq!(pending, ALL.to_vec()),
        other => panic!("expected PendingMigrations, got {other:?}"),
    }
    let err = db.check_current().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "the database schema is out of date (4 pending migration(s): \
         2026-11-22-000001_initial, 2026-12-03-000001_firewall_profile, \
         2026-12-03-000002_web_sessions, 2026-12-03-000003_session_transport); run \
         `kerbside-manage db sync`"
    );
    assert_eq!(db.version().await?, None);
    assert_eq!(db.sync().await?, ALL.to_vec());
    assert_eq!(
        db.run(|c| c.pending_migrations()).await?,
        Vec::<String>::new()
    );
    assert_eq!(db.version().await?.as_deref(), Some(LATEST));
    db.check_current().await?;
    assert!(db.sync().await?.is_empty(), "second sync applies nothing");
    assert!(db.ensure_schema().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn migrations_sqlite() -> anyhow::Result<()> {
    check_migrations(Backend::Sqlite).await
}

#[tokio::test]
async fn migrations_mariadb() -> anyhow::Result<()> {
    check_migrations(Backend::Mysql).await
}

#[tokio::test]
async fn sqlite_migrates_itself_mariadb_does_not() -> anyhow::Result<()> {
    let sqlite = TestDatabase::unmigrated(Backend::Sqlite).await?;
    assert_eq!(sqlite.db().ensure_schema().await?, ALL.to_vec());
    let mariadb = TestDatabase::unmigrated(Backend::Mysql).await?;
    assert!(matches!(
        mariadb.db().ensure_schema().await,
        Err(DbError::PendingMigrations { .. })
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Schema

/// Inserts and loads every model with every nullable column filled, then compares the
/// catalog's column list with the Diesel schema's, so a drift in either migration tree or in
/// schema.rs fails here.
async fn schema_matches_tables(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let source = upsert_source(&mut c, "full", "nova")?;
    set_source_error(&mut c, "full", Some("boom"))?;
    set_source_ca_cert(&mut c, "full", Some("-----BEGIN CERTIFICATE-----"))?;
    let source = get_source(&mut c, source.id)?;
    assert!(source.errored);
    assert_eq!(source.error_message.as_deref(), Some("boom"));
    assert_eq!(
        source.ca_cert.as_deref(),
        Some("-----BEGIN CERTIFICATE-----")
    );

    let console = upsert_console(
        &mut c,
        &NewConsole {
            firewall_profile: Some("no-usb".to_owned()),
            ..new_console(source.id, UUID_A)
        },
    )?;
    let console = get_console(&mut c, console.id)?;
    assert_eq!(console.uuid, UUID_A);
    assert_eq!(console.firewall_profile.as_deref(), Some("no-usb"));
    assert_eq!(console.insecure_port, Some(5900));
    assert_eq!(console.secure_port, Some(5901));
    assert_eq!(console.host_subject.as_deref(), Some("CN=hv1.example.com"));
    assert_eq!(
        console
            .ticket
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        Some("hypervisor-ticket".to_owned())
    );
    assert!(!console.stale);

    let hash = hash_token("schema-token");
    let token = insert_token(&mut c, console.id, &hash, Duration::from_secs(60))?;
    let session = create_session(
        &mut c,
        &NewSession {
            token_id: Some(token.id),
            upstream_session_id: Some(77),
            firewall_profile: Some("most-restrictive".to_owned()),
            ..new_session(console.id, 42, "node-a")
        },
    )?;
    assert_eq!(
        bind_token(&mut c, token.id, &session.id, "198.51.100.7:40000")?,
        TokenBinding::Bound
    );
    let token = get_token(&mut c, token.id)?;
    assert_eq!(token.session_id.as_ref(), Some(&session.id));
    assert_eq!(token.client_address.as_deref(), Some("198.51.100.7:40000"));
    revoke_token(&mut c, token.id, "test")?;
    let token = get_token(&mut c, token.id)?;
    assert!(token.revoked_at.is_some());
    assert_eq!(token.revoke_reason.as_deref(), Some("test"));

    let session = get_session(&mut c, &session.id)?;
    assert_eq!(session.token_id, Some(token.id));
    assert_eq!(session.upstream_session_id, Some(77));
    assert_eq!(
        session.firewall_profile.as_deref(),
        Some("most-restrictive")
    );

    let channel = create_channel(
        &mut c,
        &NewChannel {
            session_id: session.id.clone(),
            node: "node-a".to_owned(),
            channel_type: 2,
            channel_id: 1,
            client_address: "198.51.100.7:40001".to_owned(),
        },
    )?;
    end_channel(&mut c, channel.id, 1, 2)?;
    let channel = get_channel(&mut c, channel.id)?;
    assert_eq!((channel.channel_type, channel.channel_id), (2, 1));
    assert!(channel.ended_at.is_some());

    let term = request_termination(&mut c, &session.id, "admin said so", "admin")?;
    mark_termination_handled(&mut c, term.id, "node-a")?;

    let event = record_event(
        &mut c,
        &NewAuditEvent::new("node-a", AuditKind::SessionCreated, "started")
            .source(source.id)
            .console(console.id)
            .session(session.id.clone())
            .channel(channel.id),
    )?;
    assert_eq!(event.source_id, Some(source.id));
    assert_eq!(event.console_id, Some(console.id));
    assert_eq!(event.session_id.as_ref(), Some(&session.id));
    assert_eq!(event.channel_id, Some(channel.id));

    end_session(&mut c, &session.id, "done", 3, 4)?;
    let session = get_session(&mut c, &session.id)?;
    assert_eq!(session.end_reason.as_deref(), Some("done"));

    let web_hash = hash_token("schema-web-cookie");
    let expires = now() + TimeDelta::hours(1);
    let web = insert_web_session(
        &mut c,
        &NewWebSession {
            session_hash: web_hash.clone(),
            user_id: "u-1".to_owned(),
            user_name: "alice".to_owned(),
            project_id: Some("p-1".to_owned()),
            project_name: Some("demo".to_owned()),
            scoped: true,
            keystone_token: Some("00ff".repeat(40)),
            expires_at: expires,
        },
    )?;
    assert_eq!(find_web_session(&mut c, &web_hash)?, Some(web.clone()));
    assert_eq!(web.expires_at, expires);
    assert!(web.scoped && web.is_valid_at(now()));
    assert!(
        insert_web_session(
            &mut c,
            &NewWebSession {
                session_hash: "not-a-hash".to_owned(),
                ..NewWebSession {
                    session_hash: String::new(),
                    user_id: "u".to_owned(),
                    user_name: "u".to_owned(),
                    project_id: None,
                    project_name: None,
                    scoped: false,
                    keystone_token: None,
                    expires_at: expires,
                }
            }
        )
        .is_err(),
        "a cookie itself is never stored"
    );
    set_web_session_expiry(&mut c, &web_hash, now() - TimeDelta::seconds(1))?;
    assert_eq!(delete_expired_web_sessions(&mut c, now())?, 1);
    assert!(find_web_session(&mut c, &web_hash)?.is_none());
    assert!(!delete_web_session(&mut c, &web_hash)?);

    // Now the catalog: the same columns, in any order, on both backends.
    let expected: &[(&str, &[&str])] = &[
        (
            "sources",
            &[
                "id",
                "name",
                "source_type",
                "errored",
                "error_message",
                "ca_cert",
                "created_at",
                "updated_at",
            ],
        ),
        (
            "consoles",
            &[
                "id",
                "source_id",
                "uuid",
                "name",
                "hypervisor",
                "hypervisor_ip",
                "insecure_port",
                "secure_port",
                "host_subject",
                "ticket",
                "stale",
                "discovered_at",
                "updated_at",
                "firewall_profile",
            ],
        ),
        (
            "console_tokens",
            &[
                "id",
                "token_hash",
                "console_id",
                "session_id",
                "client_address",
                "created_at",
                "expires_at",
                "revoked_at",
                "revoke_reason",
            ],
        ),
        (
            "sessions",
            &[
                "id",
                "console_id",
                "token_id",
                "client_address",
                "node",
                "proxy_connection_id",
                "upstream_session_id",
                "created_at",
                "ended_at",
                "end_reason",
                "bytes_to_client",
                "bytes_to_server",
                "firewall_profile",
                "transport",
            ],
        ),
        (
            "channels",
            &[
                "id",
                "session_id",
                "node",
                "channel_type",
                "channel_id",
                "client_address",
                "created_at",
                "ended_at",
                "bytes_to_client",
                "bytes_to_server",
            ],
        ),
        (
            "session_terminations",
            &[
                "id",
                "session_id",
                "requested_at",
                "reason",
                "requested_by",
                "handled_at",
                "handled_by",
            ],
        ),
        (
            "audit_events",
            &[
                "id",
                "event_time",
                "node",
                "event_type",
                "source_id",
                "console_id",
                "session_id",
                "channel_id",
                "message",
            ],
        ),
        (
            "web_sessions",
            &[
                "id",
                "session_hash",
                "user_id",
                "user_name",
                "project_id",
                "project_name",
                "scoped",
                "keystone_token",
                "created_at",
                "expires_at",
            ],
        ),
    ];
    let catalog = catalog_columns(&mut c)?;
    for (table, columns) in expected {
        let mut actual: Vec<&str> = catalog
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, c)| c.as_str())
            // The MySQL-only generated column behind the live-session unique key.
            .filter(|c| !(*table == "sessions" && *c == "live_connection_id"))
            .collect();
        let mut wanted = columns.to_vec();
        actual.sort_unstable();
        wanted.sort_unstable();
        assert_eq!(actual, wanted, "columns of {table} on {}", t.backend());
    }
    let tables: HashSet<&str> = catalog.iter().map(|(t, _)| t.as_str()).collect();
    let mut tables: Vec<&str> = tables
        .into_iter()
        .filter(|t| !t.starts_with("__diesel"))
        .collect();
    tables.sort_unstable();
    let mut wanted: Vec<&str> = expected.iter().map(|(t, _)| *t).collect();
    wanted.sort_unstable();
    assert_eq!(tables, wanted);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sources and consoles

async fn sources(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let a = upsert_source(&mut c, "b-static", "static")?;
    assert_eq!(a.source_type, "static");
    assert!(!a.errored);
    let again = upsert_source(&mut c, "b-static", "nova")?;
    assert_eq!(again.id, a.id, "upsert keeps the row");
    assert_eq!(again.source_type, "nova");
    assert_eq!(again.created_at, a.created_at);
    assert!(again.updated_at >= a.updated_at);
    upsert_source(&mut c, "a-nova", "nova")?;

    set_source_error(&mut c, "b-static", Some("cannot read sources.yaml"))?;
    let errored = get_source_by_name(&mut c, "b-static")?;
    assert!(errored.errored);
    assert_eq!(
        errored.error_message.as_deref(),
        Some("cannot read sources.yaml")
    );
    set_source_error(&mut c, "b-static", None)?;
    let cleared = get_source_by_name(&mut c, "b-static")?;
    assert!(!cleared.errored);
    assert_eq!(cleared.error_message, None);

    let names: Vec<String> = list_sources(&mut c)?.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["a-nova", "b-static"]);

    let missing = get_source_by_name(&mut c, "nope").unwrap_err();
    assert!(matches!(missing, DbError::NotFound { what: "source", .. }));
    assert_eq!(missing.to_string(), "source nope not found");
    assert!(matches!(
        set_source_error(&mut c, "nope", None),
        Err(DbError::NotFound { .. })
    ));
    assert!(matches!(
        insert_source(
            &mut c,
            &NewSource {
                name: "a-nova".into(),
                source_type: "nova".into(),
                ca_cert: None
            }
        ),
        Err(DbError::Conflict { what: "source", .. })
    ));

    // Deleting a source takes its consoles with it.
    upsert_console(&mut c, &new_console(a.id, UUID_A))?;
    assert!(delete_source(&mut c, "b-static")?);
    assert!(!delete_source(&mut c, "b-static")?);
    assert!(list_consoles(&mut c, None)?.is_empty());
    Ok(())
}

async fn consoles(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let s1 = upsert_source(&mut c, "one", "static")?;
    let s2 = upsert_source(&mut c, "two", "nova")?;

    let first = upsert_console(&mut c, &new_console(s1.id, UUID_A))?;
    assert_eq!(first.discovered_at, first.updated_at);
    assert_eq!(mark_instance_stale(&mut c, UUID_A)?, 1);
    assert!(get_console(&mut c, first.id)?.stale);

    // An upsert overwrites every field, writes NULL for None, and clears `stale`.
    let changed = NewConsole {
        name: "renamed".into(),
        hypervisor: "hv2".into(),
        hypervisor_ip: "192.0.2.20".into(),
        insecure_port: None,
        secure_port: Some(61000),
        host_subject: None,
        ticket: None,
        ..new_console(s1.id, UUID_A)
    };
    let updated = upsert_console(&mut c, &changed)?;
    assert_eq!(updated.id, first.id);
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.hypervisor, "hv2");
    assert_eq!(updated.insecure_port, None);
    assert_eq!(updated.secure_port, Some(61000));
    assert_eq!(updated.host_subject, None);
    assert!(updated.ticket.is_none());
    assert!(!updated.stale);
    assert_eq!(updated.discovered_at, first.discovered_at);

    // The same instance through another source is another console.
    let other = upsert_console(&mut c, &new_console(s2.id, UUID_A))?;
    assert_ne!(other.id, first.id);
    let b = upsert_console(&mut c, &new_console(s1.id, UUID_B))?;

    assert_eq!(
        find_console(&mut c, s1.id, UUID_A)?.map(|x| x.id),
        Some(first.id)
    );
    assert!(find_console(&mut c, s2.id, UUID_B)?.is_none());
    assert_eq!(
        get_console_by_source_name(&mut c, "two", UUID_A)?.id,
        other.id
    );
    let err = get_console_by_source_name(&mut c, "two", UUID_B).unwrap_err();
    assert_eq!(err.to_string(), format!("console two/{UUID_B} not found"));
    assert!(matches!(
        get_console(&mut c, ConsoleId(999_999)),
        Err(DbError::NotFound {
            what: "console",
            ..
        })
    ));

    let all: Vec<ConsoleId> = list_consoles(&mut c, None)?.iter().map(|x| x.id).collect();
    assert_eq!(all, vec![first.id, other.id, b.id]);
    let in_s1: Vec<ConsoleId> = list_consoles(&mut c, Some(s1.id))?
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(in_s1, vec![first.id, b.id]);

    assert_eq!(mark_instance_stale(&mut c, UUID_A)?, 2);
    assert_eq!(mark_instance_stale(&mut c, "no-such-instance")?, 0);
    let for_a: Vec<(ConsoleId, bool)> = consoles_for_instance(&mut c, UUID_A)?
        .iter()
        .map(|x| (x.id, x.stale))
        .collect();
    assert_eq!(for_a, vec![(first.id, true), (other.id, true)]);

    // A re-read static source keeps only what it still lists.
    let removed = delete_consoles_not_in(&mut c, s1.id, &[UUID_A.to_owned()])?;
    assert_eq!(removed.iter().map(|x| x.id).collect::<Vec<_>>(), vec![b.id]);
    assert!(delete_consoles_not_in(&mut c, s1.id, &[UUID_A.to_owned()])?.is_empty());
    assert_eq!(
        list_consoles(&mut c, None)?.len(),
        2,
        "other sources untouched"
    );
    let removed = delete_consoles_not_in(&mut c, s1.id, &[])?;
    assert_eq!(
        removed.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![first.id]
    );
    assert_eq!(
        list_consoles(&mut c, None)?
            .iter()
            .map(|x| x.id)
            .collect::<Vec<_>>(),
        vec![other.id]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tokens

#[test]
fn tokens_are_48_alphanumerics_and_unique() {
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let token = generate_token();
        let token = token.expose_secret();
        assert_eq!(token.len(), 48);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()), "{token}");
        assert!(seen.insert(token.to_owned()), "duplicate token");
    }
    // All 62 symbols turn up: the alphabet is really [A-Za-z0-9].
    let symbols: HashSet<char> = seen.iter().flat_map(|t| t.chars()).collect();
    assert_eq!(symbols.len(), 62);
}

async fn token_storage(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let token = generate_token();
    let plain = token.expose_secret();
    let hash = hash_token(plain);
    assert_eq!(hash.len(), 64);
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );

    let row = insert_token(&mut c, console.id, &hash, Duration::from_secs(300))?;
    assert_eq!(row.token_hash, hash);
    assert_eq!(row.expires_at - row.created_at, TimeDelta::seconds(300));
    let session = create_session(&mut c, &new_session(console.id, 5, "node-a"))?;
    bind_token(&mut c, row.id, &session.id, "198.51.100.7:40000")?;

    // The plain token is nowhere in the database, the hash is exactly once.
    assert_eq!(cells_containing(&mut c, plain)?, 0);
    assert_eq!(cells_containing(&mut c, &hash)?, 1);
    if let DbUrl::Sqlite { path } = t.url() {
        for file in [path.clone(), path.with_extension("sqlite-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                let found = bytes.windows(plain.len()).any(|w| w == plain.as_bytes());
                assert!(!found, "plain token found in {}", file.display());
            }
        }
    }

    // Only a digest can be stored.
    for bad in [plain, &hash.to_uppercase(), "abc"] {
        let err = insert_token(&mut c, console.id, bad, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(
                err,
                DbError::Invalid {
                    what: "token hash",
                    ..
                }
            ),
            "{err}"
        );
    }
    let dup = insert_token(&mut c, console.id, &hash, Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(dup, DbError::Conflict { what: "token", .. }),
        "{dup}"
    );
    Ok(())
}

async fn token_expiry_and_revocation(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let hash = hash_token("expiring");
    let token = insert_token(&mut c, console.id, &hash, Duration::from_secs(60))?;

    let (found, found_console) = find_valid_token(&mut c, &hash, now())?.context("valid now")?;
    assert_eq!(found.id, token.id);
    assert_eq!(found_console.id, console.id);
    assert!(found.is_valid_at(now()));
    // Expiry is exclusive: at expires_at it is no longer valid.
    assert!(
        find_valid_token(&mut c, &hash, token.expires_at - TimeDelta::microseconds(1))?.is_some()
    );
    assert!(find_valid_token(&mut c, &hash, token.expires_at)?.is_none());
    assert!(find_valid_token(&mut c, &hash, now() + TimeDelta::seconds(61))?.is_none());
    assert!(find_valid_token(&mut c, &hash_token("unknown"), now())?.is_none());

    // An already-expired token cannot be bound.
    let dead = insert_token(&mut c, console.id, &hash_token("dead"), Duration::ZERO)?;
    assert!(find_valid_token(&mut c, &dead.token_hash, now())?.is_none());
    let sid = SessionId::generate();
    assert_eq!(
        bind_token(&mut c, dead.id, &sid, "x")?,
        TokenBinding::NotValid
    );

    // Revocation by instance covers every console of the instance, once.
    let other_source = upsert_source(&mut c, "other", "nova")?;
    let other = upsert_console(&mut c, &new_console(other_source.id, UUID_A))?;
    let other_token = insert_token(
        &mut c,
        other.id,
        &hash_token("other"),
        Duration::from_secs(60),
    )?;
    let unrelated = console_for(&mut c, UUID_B)?;
    let unrelated_token = insert_token(
        &mut c,
        unrelated.id,
        &hash_token("unrelated"),
        Duration::from_secs(60),
    )?;

    // `dead` is expired but unrevoked, so it is revoked too: 3 tokens.
    assert_eq!(
        revoke_tokens_for_instance(&mut c, UUID_A, "instance deleted")?,
        3
    );
    assert_eq!(
        revoke_tokens_for_instance(&mut c, UUID_A, "instance deleted")?,
        0
    );
    assert!(find_valid_token(&mut c, &hash, now())?.is_none());
    assert!(find_valid_token(&mut c, &other_token.token_hash, now())?.is_none());
    assert!(find_valid_token(&mut c, &unrelated_token.token_hash, now())?.is_some());
    let revoked = get_token(&mut c, token.id)?;
    assert_eq!(revoked.revoke_reason.as_deref(), Some("instance deleted"));
    assert!(!revoked.is_valid_at(now()));
    assert_eq!(
        bind_token(&mut c, token.id, &sid, "x")?,
        TokenBinding::NotValid
    );
    assert!(!revoke_token(&mut c, token.id, "again")?);
    assert!(matches!(
        bind_token(&mut c, ConsoleTokenId(987_654), &sid, "x"),
        Err(DbError::NotFound { what: "token", .. })
    ));

    // Clean-up: expired tokens go, except one bound to a live session.
    let bound = insert_token(&mut c, unrelated.id, &hash_token("bound"), Duration::ZERO)?;
    let live = create_session(&mut c, &new_session(unrelated.id, 9, "node-a"))?;
    diesel::update(kerbside::db::schema::console_tokens::table.find(bound.id))
        .set(kerbside::db::schema::console_tokens::session_id.eq(&live.id))
        .execute(&mut *c)?;
    let later = now() + TimeDelta::seconds(120);
    // token, dead, other_token and unrelated_token expired by `later`; `bound` is kept.
    assert_eq!(delete_expired_tokens(&mut c, later)?, 4);
    assert!(find_token_by_hash(&mut c, &bound.token_hash)?.is_some());
    end_session(&mut c, &live.id, "done", 0, 0)?;
    assert_eq!(delete_expired_tokens(&mut c, later)?, 1);
    assert!(find_token_by_hash(&mut c, &bound.token_hash)?.is_none());
    Ok(())
}

fn console_for(c: &mut DbConnection, uuid: &str) -> anyhow::Result<Console> {
    let source = upsert_source(c, "src", "static")?;
    Ok(upsert_console(c, &new_console(source.id, uuid))?)
}

async fn bind_token_once(t: &TestDatabase) -> anyhow::Result<()> {
    let console = {
        let mut c = t.db().get()?;
        console(&mut c, UUID_A)?
    };
    for round in 0..20 {
        let hash = hash_token(&format!("race-{round}"));
        let token = {
            let mut c = t.db().get()?;
            insert_token(&mut c, console.id, &hash, Duration::from_secs(60))?
        };
        let barrier = Arc::new(Barrier::new(2));
        let contender = |n: u8| {
            let barrier = Arc::clone(&barrier);
            let db: Db = t.db().clone();
            let sid = SessionId::generate();
            async move {
                let mine = sid.clone();
                let outcome = db
                    .run(move |c| {
                        // Both connections are checked out before either writes.
                        barrier.wait();
                        bind_token(c, token.id, &sid, &format!("198.51.100.{n}:1"))
                    })
                    .await?;
                Ok::<_, DbError>((mine, outcome))
            }
        };
        let (a, b) = tokio::join!(contender(1), contender(2));
        let (a, b) = (a?, b?);
        let (winner, loser) = match (&a.1, &b.1) {
            (TokenBinding::Bound, _) => (&a, &b),
            (_, TokenBinding::Bound) => (&b, &a),
            _ => panic!("round {round}: nobody bound the token: {a:?} {b:?}"),
        };
        match &loser.1 {
            TokenBinding::AlreadyBound { session_id, .. } => {
                assert_eq!(session_id, &winner.0, "round {round}");
            }
            other => panic!("round {round}: both bound, or worse: {other:?}"),
        }
        let stored = t.run(move |c| get_token(c, token.id)).await?;
        assert_eq!(stored.session_id.as_ref(), Some(&winner.0));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Sessions, channels, terminations

async fn sessions(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let other = console_for(&mut c, UUID_B)?;

    let cid = allocate_connection_id(&mut c)?;
    assert!((1..=i64::from(u32::MAX)).contains(&cid));
    let s1 = create_session(&mut c, &new_session(console.id, cid, "node-a"))?;
    assert!(s1.is_live());
    assert_eq!(s1.proxy_connection_id, cid);
    assert_eq!((s1.bytes_to_client, s1.bytes_to_server), (0, 0));
    assert_eq!(get_session(&mut c, &s1.id)?, s1);

    // Connection ids are unique among live sessions...
    let clash = create_session(&mut c, &new_session(other.id, cid, "node-b")).unwrap_err();
    assert!(
        matches!(
            clash,
            DbError::Conflict {
                what: "session",
                ..
            }
        ),
        "{clash}"
    );
    let dup_id = create_session(
        &mut c,
        &NewSession {
            id: s1.id.clone(),
            ..new_session(console.id, cid + 1, "node-a")
        },
    )
    .unwrap_err();
    assert!(matches!(dup_id, DbError::Conflict { .. }), "{dup_id}");
    for _ in 0..50 {
        assert_ne!(allocate_connection_id(&mut c)?, 0);
    }

    let s2 = create_session(&mut c, &new_session(other.id, 7, "node-b"))?;
    assert_eq!(
        find_live_session_by_connection_id(&mut c, cid)?.map(|s| s.id),
        Some(s1.id.clone())
    );
    assert_eq!(find_live_session_by_connection_id(&mut c, 8)?, None);

    set_upstream_session_id(&mut c, &s1.id, 1234)?;
    update_session_counters(&mut c, &s1.id, 10, 20)?;
    let s1_now = get_session(&mut c, &s1.id)?;
    assert_eq!(s1_now.upstream_session_id, Some(1234));
    assert_eq!((s1_now.bytes_to_client, s1_now.bytes_to_server), (10, 20));

    let live: Vec<SessionId> = list_sessions(&mut c, true)?
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(live.len(), 2);
    assert_eq!(
        sessions_for_instance(&mut c, UUID_A, true)?
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        vec![s1.id.clone()]
    );
    assert_eq!(live_sessions_on_node(&mut c, "node-b")?.len(), 1);

    assert!(end_session(&mut c, &s1.id, "client closed", 100, 200)?);
    assert!(
        !end_session(&mut c, &s1.id, "again", 1, 1)?,
        "first end wins"
    );
    let ended = get_session(&mut c, &s1.id)?;
    assert!(!ended.is_live());
    assert_eq!(ended.end_reason.as_deref(), Some("client closed"));
    assert_eq!((ended.bytes_to_client, ended.bytes_to_server), (100, 200));
    assert!(ended.ended_at >= Some(ended.created_at));
    update_session_counters(&mut c, &s1.id, 5, 5)?;
    assert_eq!(
        get_session(&mut c, &s1.id)?.bytes_to_client,
        100,
        "ended sessions are frozen"
    );
    assert!(matches!(
        end_session(&mut c, &SessionId::generate(), "x", 0, 0),
        Err(DbError::NotFound {
            what: "session",
            ..
        })
    ));

    // ...so an ended session's id can be reused.
    assert_eq!(find_live_session_by_connection_id(&mut c, cid)?, None);
    let s3 = create_session(&mut c, &new_session(console.id, cid, "node-a"))?;
    assert_eq!(
        find_live_session_by_connection_id(&mut c, cid)?.map(|s| s.id),
        Some(s3.id.clone())
    );

    assert_eq!(list_sessions(&mut c, false)?.len(), 3);
    assert_eq!(list_sessions(&mut c, true)?.len(), 2);
    assert_eq!(sessions_for_instance(&mut c, UUID_A, false)?.len(), 2);
    assert_eq!(sessions_for_instance(&mut c, UUID_A, true)?.len(), 1);

    // A proxy restarting on node-b ends what it left behind.
    let ch = create_channel(
        &mut c,
        &NewChannel {
            session_id: s2.id.clone(),
            node: "node-b".into(),
            channel_type: 1,
            channel_id: 0,
            client_address: "198.51.100.7:1".into(),
        },
    )?;
    assert_eq!(
        end_sessions_on_node(&mut c, "node-b", "proxy restarted")?,
        1
    );
    assert!(!get_session(&mut c, &s2.id)?.is_live());
    assert!(get_channel(&mut c, ch.id)?.ended_at.is_some());
    assert_eq!(
        end_sessions_on_node(&mut c, "node-b", "proxy restarted")?,
        0
    );
    Ok(())
}

async fn channels(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let session = create_session(&mut c, &new_session(console.id, 1, "node-a"))?;
    let mut ids = Vec::new();
    for (kind, index) in [(1, 0), (2, 0), (3, 0), (2, 1)] {
        let ch = create_channel(
            &mut c,
            &NewChannel {
                session_id: session.id.clone(),
                node: "node-a".into(),
                channel_type: kind,
                channel_id: index,
                client_address: "198.51.100.7:2".into(),
            },
        )?;
        assert_eq!((ch.channel_type, ch.channel_id), (kind, index));
        assert!(ch.ended_at.is_none());
        ids.push(ch.id);
    }
    let listed: Vec<ChannelId> = list_channels(&mut c, &session.id)?
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, ids);
    let first = ids[0];
    assert!(end_channel(&mut c, first, 6_000_000_000, 7_000_000_000)?);
    assert!(!end_channel(&mut c, first, 1, 1)?);
    let ended = get_channel(&mut c, first)?;
    assert_eq!(
        (ended.bytes_to_client, ended.bytes_to_server),
        (6_000_000_000, 7_000_000_000)
    );
    assert!(matches!(
        end_channel(&mut c, ChannelId(424_242), 0, 0),
        Err(DbError::NotFound {
            what: "channel",
            ..
        })
    ));
    Ok(())
}

async fn terminations(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let on_a = create_session(&mut c, &new_session(console.id, 1, "node-a"))?;
    let on_b = create_session(&mut c, &new_session(console.id, 2, "node-b"))?;

    let req = request_termination(&mut c, &on_a.id, "policy", "admin")?;
    assert_eq!(req.session_id, on_a.id);
    assert_eq!(
        (req.reason.as_str(), req.requested_by.as_str()),
        ("policy", "admin")
    );
    assert!(req.handled_at.is_none());
    let pending = pending_terminations_for_node(&mut c, "node-a")?;
    assert_eq!(
        pending.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![req.id]
    );
    assert!(pending_terminations_for_node(&mut c, "node-b")?.is_empty());

    assert!(mark_termination_handled(&mut c, req.id, "node-a")?);
    assert!(!mark_termination_handled(&mut c, req.id, "node-a")?);
    assert!(pending_terminations_for_node(&mut c, "node-a")?.is_empty());

    // A request for a session that ends before it is handled is no longer pending.
    request_termination(&mut c, &on_b.id, "policy", "admin")?;
    assert_eq!(pending_terminations_for_node(&mut c, "node-b")?.len(), 1);
    end_session(&mut c, &on_b.id, "client closed", 0, 0)?;
    assert!(pending_terminations_for_node(&mut c, "node-b")?.is_empty());

    let err = request_termination(&mut c, &on_b.id, "policy", "admin").unwrap_err();
    assert!(
        matches!(
            err,
            DbError::Conflict {
                what: "session",
                ..
            }
        ),
        "{err}"
    );
    let err = request_termination(&mut c, &SessionId::generate(), "x", "y").unwrap_err();
    assert!(
        matches!(
            err,
            DbError::NotFound {
                what: "session",
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Audit

async fn audit_events(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let other = console_for(&mut c, UUID_B)?;

    // Same timestamp, two events: both kept, ordered by id.
    let at = now();
    let e1 = record_event_at(
        &mut c,
        &NewAuditEvent::new("n", AuditKind::TokenCreated, "one").console(console.id),
        at,
    )?;
    let e2 = record_event_at(
        &mut c,
        &NewAuditEvent::new("n", AuditKind::TokenCreated, "two").console(console.id),
        at,
    )?;
    assert_ne!(e1.id, e2.id);
    assert_eq!(e1.event_time, e2.event_time);
    let both = list_events_for_console(&mut c, console.id, None, 10)?;
    assert_eq!(
        both.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        vec!["one", "two"]
    );

    // A batch keeps each event's own time and its order.
    let earlier = at - TimeDelta::seconds(5);
    record_events_at(
        &mut c,
        &[
            (
                NewAuditEvent::new("n", AuditKind::ChannelEnded, "three").console(console.id),
                earlier,
            ),
            (
                NewAuditEvent::new("n", AuditKind::ChannelEnded, "four").console(console.id),
                at,
            ),
        ],
    )?;
    let all = list_events_for_console(&mut c, console.id, None, 10)?;
    let batch: Vec<_> = all
        .iter()
        .filter(|e| e.event_type == "channel.ended")
        .collect();
    assert_eq!(
        batch
            .iter()
            .map(|e| (e.message.as_str(), e.event_time))
            .collect::<Vec<_>>(),
        vec![("three", earlier), ("four", at)]
    );
    // Take them out again so the pagination below counts only its own events.
    diesel::delete(
        kerbside::db::schema::audit_events::table
            .filter(kerbside::db::schema::audit_events::event_type.eq("channel.ended")),
    )
    .execute(&mut c)?;

    // Keyset pagination over 25 events interleaved with another console's.
    for i in 0..23 {
        record_event(
            &mut c,
            &NewAuditEvent::new("n", AuditKind::ChannelCreated, format!("p{i}"))
                .console(console.id),
        )?;
        record_event(
            &mut c,
            &NewAuditEvent::new("m", AuditKind::HypervisorFailed, "x").console(other.id),
        )?;
    }
    let mut pages = Vec::new();
    let mut marker = None;
    loop {
        let page = list_events_for_console(&mut c, console.id, marker, 10)?;
        if page.is_empty() {
            break;
        }
        marker = page.last().map(|e| e.id.0);
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let ids: Vec<i64> = pages.iter().flatten().map(|e| e.id.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(
        pages
            .iter()
            .flatten()
            .all(|e| e.console_id == Some(console.id))
    );

    // Filters and newest-first.
    let newest = list_events(
        &mut c,
        &AuditFilter {
            node: Some("m".into()),
            newest_first: true,
            ..AuditFilter::default()
        },
        None,
        5,
    )?;
    assert_eq!(newest.len(), 5);
    assert!(newest.windows(2).all(|w| w[0].id > w[1].id));
    let older = list_events(
        &mut c,
        &AuditFilter {
            node: Some("m".into()),
            newest_first: true,
            ..AuditFilter::default()
        },
        newest.last().map(|e| e.id.0),
        100,
    )?;
    assert_eq!(older.len(), 18);
    let by_type = list_events(
        &mut c,
        &AuditFilter {
            event_type: Some("token.created".into()),
            ..AuditFilter::default()
        },
        None,
        100,
    )?;
    assert_eq!(by_type.len(), 2);
    let window = list_events(
        &mut c,
        &AuditFilter {
            since: Some(at),
            until: Some(at + TimeDelta::microseconds(1)),
            ..AuditFilter::default()
        },
        None,
        100,
    )?;
    assert_eq!(
        window.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![e1.id, e2.id]
    );
    assert_eq!(
        list_events(&mut c, &AuditFilter::default(), None, 0)?.len(),
        1,
        "limit clamps to 1"
    );

    let session = create_session(&mut c, &new_session(console.id, 3, "n"))?;
    record_event(
        &mut c,
        &NewAuditEvent::new("n", AuditKind::SessionCreated, "s").session(session.id.clone()),
    )?;
    let by_session = list_events(
        &mut c,
        &AuditFilter {
            session_id: Some(session.id.clone()),
            ..AuditFilter::default()
        },
        None,
        100,
    )?;
    assert_eq!(by_session.len(), 1);

    // The trail outlives what it names.
    delete_consoles_not_in(&mut c, console.source_id, &[])?;
    assert_eq!(
        list_events_for_console(&mut c, console.id, None, 100)?.len(),
        25
    );

    assert_eq!(delete_events_before(&mut c, at)?, 0);
    let total = list_events(&mut c, &AuditFilter::default(), None, 1000)?.len();
    assert_eq!(
        delete_events_before(&mut c, now() + TimeDelta::seconds(1))?,
        total
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Backend semantics

/// String matches are exact on both backends (MariaDB's default collation would not be).
async fn exact_match(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let hash = hash_token("case");
    insert_token(&mut c, console.id, &hash, Duration::from_secs(60))?;
    let upper = hash.to_uppercase();
    assert_ne!(upper, hash);
    assert!(find_valid_token(&mut c, &upper, now())?.is_none());
    assert!(find_token_by_hash(&mut c, &upper)?.is_none());
    assert!(find_token_by_hash(&mut c, &format!("{hash} "))?.is_none());
    // The functions above refuse malformed digests before querying; check the column's
    // collation itself too.
    {
        use kerbside::db::schema::console_tokens::dsl::*;
        let exact: i64 = console_tokens
            .filter(token_hash.eq(&hash))
            .count()
            .get_result(&mut *c)?;
        let folded: i64 = console_tokens
            .filter(token_hash.eq(&upper))
            .count()
            .get_result(&mut *c)?;
        assert_eq!(
            (exact, folded),
            (1, 0),
            "token_hash comparison on {}",
            t.backend()
        );
    }

    let uuid_upper = UUID_A.to_uppercase();
    assert!(find_console(&mut c, console.source_id, &uuid_upper)?.is_none());
    assert!(consoles_for_instance(&mut c, &uuid_upper)?.is_empty());
    assert_eq!(mark_instance_stale(&mut c, &uuid_upper)?, 0);
    assert!(get_source_by_name(&mut c, "SRC").is_err());
    // ...and the unique keys are case-sensitive too: these are different rows.
    let shouting = upsert_console(&mut c, &new_console(console.source_id, &uuid_upper))?;
    assert_ne!(shouting.id, console.id);
    let loud = upsert_source(&mut c, "SRC", "static")?;
    assert_ne!(loud.id, console.source_id);
    let name = "Ünïcode-名前";
    upsert_source(&mut c, name, "static")?;
    assert_eq!(get_source_by_name(&mut c, name)?.name, name);
    Ok(())
}

async fn microseconds_and_big_counters(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let console = console(&mut c, UUID_A)?;
    let precise = NaiveDate::from_ymd_opt(2026, 11, 22)
        .and_then(|d| d.and_hms_micro_opt(13, 14, 15, 123_456))
        .context("date")?;
    let event = record_event_at(
        &mut c,
        &NewAuditEvent::new("n", AuditKind::TokenCreated, "m"),
        precise,
    )?;
    assert_eq!(event.event_time, precise);
    let listed = list_events(&mut c, &AuditFilter::default(), None, 1)?;
    assert_eq!(
        listed[0].event_time.and_utc().timestamp_subsec_micros(),
        123_456
    );
    // now() is truncated to microseconds, so it round-trips exactly.
    let token = insert_token(
        &mut c,
        console.id,
        &hash_token("t"),
        Duration::from_micros(1_500_001),
    )?;
    let again = get_token(&mut c, token.id)?;
    assert_eq!(again.created_at, token.created_at);
    assert_eq!(
        again.expires_at - again.created_at,
        TimeDelta::microseconds(1_500_001)
    );

    // Byte counters are signed BIGINT: beyond 2^32 they round-trip, u64::MAX saturates.
    let session = create_session(&mut c, &new_session(console.id, 1, "n"))?;
    let big: u64 = (1 << 32) + 12_345;
    update_session_counters(&mut c, &session.id, big, 3 * big)?;
    let s = get_session(&mut c, &session.id)?;
    assert_eq!(
        (s.bytes_to_client, s.bytes_to_server),
        (4_294_979_641, 12_884_938_923)
    );
    end_session(&mut c, &session.id, "done", u64::MAX, 1 << 62)?;
    let s = get_session(&mut c, &session.id)?;
    assert_eq!((s.bytes_to_client, s.bytes_to_server), (i64::MAX, 1 << 62));
    Ok(())
}

async fn foreign_keys_enforced(t: &TestDatabase) -> anyhow::Result<()> {
    let mut c = t.db().get()?;
    let err = upsert_console(&mut c, &new_console(SourceId(31_337), UUID_A)).unwrap_err();
    assert!(err.is_foreign_key_violation(), "{err}");
    let err = insert_token(
        &mut c,
        ConsoleId(31_337),
        &hash_token("x"),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(err.is_foreign_key_violation(), "{err}");
    let err = create_channel(
        &mut c,
        &NewChannel {
            session_id: SessionId::generate(),
            node: "n".into(),
            channel_type: 1,
            channel_id: 0,
            client_address: "x".into(),
        },
    )
    .unwrap_err();
    assert!(err.is_foreign_key_violation(), "{err}");
    assert!(!err.is_transient());

    // Cascades: deleting a console removes its tokens, sessions and their channels.
    let console = console(&mut c, UUID_A)?;
    let token = insert_token(
        &mut c,
        console.id,
        &hash_token("y"),
        Duration::from_secs(60),
    )?;
    let session = create_session(
        &mut c,
        &NewSession {
            token_id: Some(token.id),
            ..new_session(console.id, 1, "n")
        },
    )?;
    delete_consoles_not_in(&mut c, console.source_id, &[])?;
    assert!(matches!(
        get_token(&mut c, token.id),
        Err(DbError::NotFound { .. })
    ));
    assert!(matches!(
        get_session(&mut c, &session.id),
        Err(DbError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn sqlite_connections_have_the_pragmas() -> anyhow::Result<()> {
    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = Text)]
        v: String,
    }
    let t = TestDatabase::sqlite().await?;
    let mut c = t.db().get()?;
    let DbConnection::Sqlite(s) = &mut *c else {
        panic!("not sqlite");
    };
    let mut get = |pragma: &str, column: &str| -> anyhow::Result<String> {
        let rows: Vec<Value> = diesel::sql_query(format!(
            "SELECT CAST({column} AS TEXT) AS v FROM pragma_{pragma}()"
        ))
        .load(s)?;
        Ok(rows.into_iter().next().context("no row")?.v)
    };
    assert_eq!(get("foreign_keys", "foreign_keys")?, "1");
    assert_eq!(get("journal_mode", "journal_mode")?, "wal");
    assert_eq!(get("busy_timeout", "timeout")?, "5000");
    assert_eq!(get("synchronous", "synchronous")?, "1", "NORMAL");
    Ok(())
}

#[tokio::test]
async fn sqlite_in_a_missing_directory_is_a_clear_error() {
    let url = DbUrl::Sqlite {
        path: "/nonexistent-kerbside-dir/db.sqlite".into(),
    };
    let err = Db::connect(&url, &PoolOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot reach the database at sqlite:////nonexistent-kerbside-dir/db.sqlite: \
         directory /nonexistent-kerbside-dir does not exist"
    );
}

// ---------------------------------------------------------------------------------------
// URLs and outages

#[test]
fn db_url_parse() {
    use std::path::PathBuf;
    let mysql = |diesel: &str, display: &str| DbUrl::Mysql {
        diesel_url: diesel.to_owned(),
        display: display.to_owned(),
    };
    let good: &[(&str, DbUrl)] = &[
        (
            "mysql+pymysql://kerbside:pw@db.example.com/kerbside?charset=utf8",
            mysql(
                "mysql://kerbside:pw@db.example.com/kerbside",
                "mysql://kerbside:***@db.example.com/kerbside",
            ),
        ),
        (
            "mysql://kerbside:pw@127.0.0.1:3306/kerbside",
            mysql(
                "mysql://kerbside:pw@127.0.0.1:3306/kerbside",
                "mysql://kerbside:***@127.0.0.1:3306/kerbside",
            ),
        ),
        (
            "mysql+mysqldb://u:p%40ss@10.0.0.1:3307/kb?charset=utf8mb4&plugin=dbcounter&read_default_file=/etc/my.cnf&ssl_mode=REQUIRED&ssl_ca=/etc/ca.pem",
            mysql(
                "mysql://u:p%40ss@10.0.0.1:3307/kb?ssl_mode=REQUIRED&ssl_ca=%2Fetc%2Fca.pem",
                "mysql://u:***@10.0.0.1:3307/kb?ssl_mode=REQUIRED&ssl_ca=%2Fetc%2Fca.pem",
            ),
        ),
        (
            "MySQL://root@localhost/kerbside",
            mysql(
                "mysql://root@127.0.0.1/kerbside",
                "mysql://root@127.0.0.1/kerbside",
            ),
        ),
        (
            "mysql://u:p@localhost/kerbside?unix_socket=/run/mysqld/mysqld.sock",
            mysql(
                "mysql://u:p@localhost/kerbside?unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock",
                "mysql://u:***@localhost/kerbside?unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock",
            ),
        ),
        (
            "mysql+pymysql://u:p@/kerbside?unix_socket=/run/mysqld/mysqld.sock&charset=utf8",
            mysql(
                "mysql://u:p@localhost/kerbside?unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock",
                "mysql://u:***@localhost/kerbside?unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock",
            ),
        ),
        (
            "mariadb+pymysql://u:p@[::1]:3306/k",
            mysql("mysql://u:p@[::1]:3306/k", "mysql://u:***@[::1]:3306/k"),
        ),
        (
            "sqlite:////var/lib/kerbside/kerbside.sqlite",
            DbUrl::Sqlite {
                path: PathBuf::from("/var/lib/kerbside/kerbside.sqlite"),
            },
        ),
        (
            "sqlite:///kerbside.sqlite",
            DbUrl::Sqlite {
                path: PathBuf::from("kerbside.sqlite"),
            },
        ),
        (
            "sqlite:///state/kerbside.sqlite?timeout=5",
            DbUrl::Sqlite {
                path: PathBuf::from("state/kerbside.sqlite"),
            },
        ),
        (
            "  sqlite+pysqlite:////tmp/k.db  ",
            DbUrl::Sqlite {
                path: PathBuf::from("/tmp/k.db"),
            },
        ),
    ];
    for (raw, want) in good {
        let got = DbUrl::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        assert_eq!(&got, want, "{raw}");
        assert!(
            !got.to_string().contains(":pw@") && !got.to_string().contains("p%40ss"),
            "{got}"
        );
    }
    assert_eq!(
        DbUrl::parse("sqlite:////var/lib/kerbside/kerbside.sqlite")
            .map(|u| u.to_string())
            .ok()
            .as_deref(),
        Some("sqlite:////var/lib/kerbside/kerbside.sqlite")
    );
    assert_eq!(
        DbUrl::parse("sqlite:///k.db").map(|u| u.backend()).ok(),
        Some(Backend::Sqlite)
    );
    assert_eq!(
        format!("{:?}", DbUrl::parse("mysql://u:pw@h/d").unwrap()),
        "DbUrl(\"mysql://u:***@h/d\")"
    );

    let memory = "in-memory SQLite databases are not supported (each connection would see its own \
                  empty database); give a file path such as sqlite:////var/lib/kerbside/kerbside.sqlite";
    let schemes = "mysql://, mysql+pymysql://, mysql+mysqldb://, mariadb:// or sqlite:///";
    let bad: &[(&str, String)] = &[
        ("", "invalid database URL \"\": the database URL is empty".to_owned()),
        ("   ", "invalid database URL \"\": the database URL is empty".to_owned()),
        ("sqlite://", format!("invalid database URL \"sqlite://\": {memory}")),
        ("sqlite:///:memory:", format!("invalid database URL \"sqlite:///:memory:\": {memory}")),
        ("sqlite:///", format!("invalid database URL \"sqlite:///\": {memory}")),
        (
            "sqlite:///file:kb?mode=memory&cache=shared",
            format!("invalid database URL \"sqlite:///file:kb?mode=memory&cache=shared\": {memory}"),
        ),
        (
            "sqlite://host/db.sqlite",
            "invalid database URL \"sqlite://host/db.sqlite\": SQLite URLs have no host part \
             (\"host/db.sqlite\"); use sqlite:///relative/path or sqlite:////absolute/path"
                .to_owned(),
        ),
        (
            "postgresql://u:secret@h/db",
            format!("invalid database URL \"postgresql://u:***@h/db\": unsupported scheme \"postgresql\"; use {schemes}"),
        ),
        (
            "/var/lib/kerbside.sqlite",
            format!("invalid database URL \"/var/lib/kerbside.sqlite\": no scheme; expected one of {schemes}"),
        ),
        (
            "mysql://u:secret@h",
            "invalid database URL \"mysql://u:***@h\": no database name (expected \
             mysql://user:password@host/database)"
                .to_owned(),
        ),
        (
            "mysql://u:secret@h/a/b",
            "invalid database URL \"mysql://u:***@h/a/b\": the path must be only the database name".to_owned(),
        ),
        (
            "mysql://u:secret@/kerbside",
            "invalid database URL \"mysql://u:***@/kerbside\": no host (expected \
             mysql://user:password@host/database)"
                .to_owned(),
        ),
        (
            "mysql://u:secret@h:99999/kerbside",
            "invalid database URL \"mysql://u:***@h:99999/kerbside\": invalid port number".to_owned(),
        ),
        (
            "mysql://u:secret@h/kerbside?ssl_mode=sometimes",
            "invalid database URL \"mysql://u:***@h/kerbside?ssl_mode=sometimes\": unknown ssl_mode \
             \"sometimes\" (use disabled, preferred, required, verify_ca, verify_identity)"
                .to_owned(),
        ),
    ];
    for (raw, want) in bad {
        let err = DbError::from(DbUrl::parse(raw).expect_err(raw));
        assert!(matches!(err, DbError::InvalidUrl(_)), "{raw}: {err:?}");
        assert_eq!(&err.to_string(), want, "{raw}");
        assert!(!err.to_string().contains("secret"), "{raw}");
    }
}

#[tokio::test]
async fn unreachable_mariadb_is_a_one_line_unavailable_error() {
    let url = DbUrl::parse("mysql://kerbside:s3cr3t-Pw@127.0.0.1:1/kerbside").unwrap();
    let opts = PoolOptions {
        max_size: 2,
        connect_timeout: Duration::from_secs(3),
    };
    let check = |err: &DbError| {
        let text = err.to_string();
        assert!(matches!(err, DbError::Unavailable { .. }), "{err:?}");
        assert!(err.is_transient());
        assert!(!text.contains('\n'), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!format!("{err:?}").contains("s3cr3t"));
        assert!(
            text.starts_with(
                "cannot reach the database at mysql://kerbside:***@127.0.0.1:1/kerbside: "
            ),
            "{text}"
        );
        assert!(
            text.contains("Can't connect") && text.contains("127.0.0.1"),
            "{text}"
        );
        text
    };
    let started = std::time::Instant::now();
    let err = Db::connect(&url, &opts).unwrap_err();
    let text = check(&err);
    // libmariadb reports ECONNREFUSED (111) or, connecting non-blocking, EINPROGRESS (115).
    assert!(
        text.contains("Can't connect to server on '127.0.0.1' (11"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused connects fail fast"
    );

    // A lazily built pool reports the same cause when it times out.
    let db = Db::connect_lazy(&url, &opts);
    let err = db.run(|c| Ok(c.backend())).await.unwrap_err();
    let text = check(&err);
    assert!(text.contains("timed out"), "{text}");
}

#[tokio::test]
async fn lost_mariadb_connection_is_unavailable() -> anyhow::Result<()> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Unsigned<BigInt>)]
        id: u64,
    }
    let t = TestDatabase::mariadb().await?;
    let kill_url = match t.url() {
        DbUrl::Mysql { diesel_url, .. } => diesel_url.clone(),
        DbUrl::Sqlite { .. } => unreachable!(),
    };
    let err = t
        .run(move |c| {
            let DbConnection::Mysql(m) = c else {
                unreachable!()
            };
            let me: Vec<Id> = diesel::sql_query("SELECT CONNECTION_ID() AS id").load(m)?;
            let mut killer = MysqlConnection::establish(&kill_url)
                .map_err(|e| DbError::Migration(e.to_string()))?;
            diesel::sql_query(format!("KILL {}", me[0].id)).execute(&mut killer)?;
            get_source_by_name(c, "anything").map(|_| ())
        })
        .await
        .unwrap_err();
    ensure!(matches!(err, DbError::Unavailable { .. }), "{err:?}");
    ensure!(err.is_transient());
    let text = err.to_string();
    ensure!(
        text.starts_with(&format!("cannot reach the database at {}: ", t.url())),
        "{text}"
    );
    // The pool throws the dead connection away and carries on.
    t.run(list_sources).await?;
    Ok(())
}
