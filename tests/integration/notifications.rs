//! Nova notifications end console access, against a real RabbitMQ, the real proxy, QEMU as
//! the SPICE server and spice-gtk (the probe) as the client.
//!
//! Every test uses its own exchange and pool (`TestRabbit`), its own SQLite file and its own
//! ports, so tests run in parallel; the broker objects are deleted at the end. Nothing is
//! asserted on timing: waits poll for the effect with generous upper bounds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use kerbside::config::{Config, ConfigSources};
use kerbside::db::Db;
use kerbside::db::models::{self, AuditFilter};
use kerbside::service::Component;
use kerbside::service::{self, Running};
use kerbside_tests::chaos::ChaosProxy;
use kerbside_tests::clients::{ProbeArgs, ProbeResult, probe_exit, spice_probe};
use kerbside_tests::pki::{LOOPBACK_SANS, TestPki};
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::rabbit::{TOPIC, TestRabbit};
use kerbside_tests::require::require_all;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::task::JoinHandle;

/// Upper bound for effects that normally take about a second (the proxy polls terminations
/// every second).
const EFFECT_DEADLINE: Duration = Duration::from_secs(15);
/// Upper bound for a reconnect (capped backoff plus jitter).
const RECONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// A console for sources.yaml.
struct ConsoleSpec {
    uuid: String,
    port: u16,
    ticket: String,
}

impl ConsoleSpec {
    /// A console whose hypervisor is never contacted (notification-only tests).
    fn fake() -> Self {
        ConsoleSpec {
            uuid: uuid::Uuid::new_v4().to_string(),
            port: 9,
            ticket: "unused".into(),
        }
    }

    fn on(server: &SpiceServer) -> Result<Self> {
        Ok(ConsoleSpec {
            uuid: uuid::Uuid::new_v4().to_string(),
            port: server.port().context("the server has a plain port")?,
            ticket: server
                .password()
                .context("the server has a password")?
                .to_owned(),
        })
    }
}

/// What a kerbside node needs on disk, and its settings.
struct NodeSpec<'a> {
    dir: &'a Path,
    name: &'a str,
    transport_url: String,
    rabbit: &'a TestRabbit,
    consoles: &'a [ConsoleSpec],
    /// Extra `[notifications]` lines.
    notifications: &'a str,
    /// The proxy's certificate, when the proxy runs.
    pki: Option<&'a TestPki>,
}

impl<'a> NodeSpec<'a> {
    /// Node `node-a` in `dir` with `consoles`, straight to `rabbit`'s broker, no extra
    /// `[notifications]` lines and no proxy certificate: the usual node, which a test varies
    /// with struct update syntax.
    fn new(dir: &'a Path, rabbit: &'a TestRabbit, consoles: &'a [ConsoleSpec]) -> Self {
        NodeSpec {
            dir,
            name: "node-a",
            transport_url: rabbit.transport_url().to_owned(),
            rabbit,
            consoles,
            notifications: "",
            pki: None,
        }
    }
}

/// Starts a notifications-only node that must refuse to start, and returns its start error;
/// a node that starts is a failure, saying the configuration was accepted although `why`.
async fn start_error(spec: &NodeSpec<'_>, why: &str) -> Result<String> {
    match start_node(spec, &[Component::Notifications]).await {
        Ok(_) => bail!("kerbside started although {why}"),
        Err(e) => Ok(e.to_string()),
    }
}

fn write_sources(path: &Path, consoles: &[ConsoleSpec]) -> Result<()> {
    let mut yaml = String::from("- source: lab\n  type: static\n  consoles:\n");
    for c in consoles {
        yaml.push_str(&format!(
            "    - uuid: {}\n      name: vm {}\n      hypervisor: localhost\n      hypervisor_ip: 127.0.0.1\n      insecure_port: {}\n      ticket: {}\n",
            c.uuid, c.uuid, c.port, c.ticket
        ));
    }
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

/// Writes the node's configuration and starts it.
async fn start_node(spec: &NodeSpec<'_>, components: &[Component]) -> Result<Running> {
    kerbside::telemetry::init_for_test();
    let config = node_config(spec)?;
    service::start(Arc::new(config), components)
        .await
        .map_err(|e| anyhow!("kerbside did not start: {e}"))
}

fn node_config(spec: &NodeSpec<'_>) -> Result<Config> {
    let dir = spec.dir;
    let sources = dir.join(format!("{}-sources.yaml", spec.name));
    write_sources(&sources, spec.consoles)?;
    let mut ini = format!(
        "[DEFAULT]\nnode_name = {name}\nstate_path = {state}\n\n\
         [database]\nconnection = sqlite:///{db}\n\n\
         [console]\nsources_file = {sources}\n\n\
         [metrics]\nenabled = false\n\n\
         [oslo_messaging_notifications]\ntransport_url = {url}\ntopics = {TOPIC}\n\n\
         [notifications]\nexchange = {exchange}\npool_name = {pool}\nprefetch_count = 5\n{extra}\n",
        name = spec.name,
        state = dir.join(format!("{}-state", spec.name)).display(),
        db = dir.join("kerbside.sqlite").display(),
        sources = sources.display(),
        url = spec.transport_url,
        exchange = spec.rabbit.exchange,
        pool = spec.rabbit.pool,
        extra = spec.notifications,
    );
    if let Some(pki) = spec.pki {
        let cert = pki.issue(
            &format!("{}-proxy", spec.name),
            "kerbside-proxy",
            LOOPBACK_SANS,
        )?;
        ini.push_str(&format!(
            "\n[proxy]\nbind_host = 127.0.0.1\ntls_port = 0\ninsecure_port = 0\npublic_host = 127.0.0.1\n\
             cert_file = {}\nkey_file = {}\nca_file = {}\ntermination_poll_interval = 1\n",
            cert.cert_path.display(),
            cert.key_path.display(),
            pki.ca_cert_path().display()
        ));
    }
    let path = dir.join(format!("{}.conf", spec.name));
    std::fs::write(&path, ini)?;
    let loaded = Config::load(&ConfigSources {
        files: vec![path],
        dirs: Vec::new(),
    })
    .map_err(|e| anyhow!("{e}"))?;
    Ok(loaded.config)
}

/// A fresh token for the instance's console.
async fn mint_token(db: &Db, uuid: &str) -> Result<String> {
    let token = kerbside::token::generate_token();
    let hash = kerbside::token::hash_token(token.expose_secret());
    let uuid = uuid.to_owned();
    db.run(move |conn| {
        let console = models::consoles_for_instance(conn, &uuid)?
            .into_iter()
            .next()
            .ok_or(kerbside::db::DbError::NotFound {
                what: "console",
                id: uuid.clone(),
            })?;
        models::insert_token(conn, console.id, &hash, Duration::from_secs(600))
    })
    .await?;
    Ok(token.expose_secret().to_owned())
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `deadline`.
async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > end {
            bail!("gave up waiting for {what} after {} s", deadline.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn live_sessions(db: &Db, uuid: &str) -> Result<Vec<models::Session>> {
    let uuid = uuid.to_owned();
    Ok(db
        .run(move |conn| models::sessions_for_instance(conn, &uuid, true))
        .await?)
}

async fn audit_rows(db: &Db, event_type: &str) -> Result<Vec<models::AuditEvent>> {
    let filter = AuditFilter {
        event_type: Some(format!("nova.{event_type}")),
        ..AuditFilter::default()
    };
    Ok(db
        .run(move |conn| models::list_events(conn, &filter, None, 1000))
        .await?)
}

async fn console_stale(db: &Db, uuid: &str) -> Result<bool> {
    let uuid = uuid.to_owned();
    let consoles = db
        .run(move |conn| models::consoles_for_instance(conn, &uuid))
        .await?;
    Ok(!consoles.is_empty() && consoles.iter().all(|c| c.stale))
}

/// The probe arguments for a session through the proxy with `token`.
fn probe_args(running: &Running, ca: &Path, token: &str) -> Result<ProbeArgs> {
    let proxy = running.proxy.as_ref().context("the proxy runs")?;
    let tls = proxy.tls_addrs.first().context("a TLS listener")?;
    Ok(ProbeArgs {
        host: "127.0.0.1".into(),
        tls_port: Some(tls.port()),
        password: Some(token.to_owned()),
        ca_file: Some(ca.to_path_buf()),
        // The channels QEMU offers a plain VM: the session is only held once all are up.
        channels: "main,display,inputs,cursor".into(),
        timeout: Duration::from_secs(150),
        ..ProbeArgs::default()
    })
}

/// Opens a session that stays up (up to two minutes) and reports when it is closed.
async fn hold_session(
    running: &Running,
    ca: &Path,
    token: &str,
    uuid: &str,
) -> Result<JoinHandle<Result<ProbeResult>>> {
    let mut args = probe_args(running, ca, token)?;
    args.extra = vec!["--hold".into(), "120".into(), "--exit-on-close".into()];
    let probe = tokio::spawn(async move { spice_probe(&args).await });
    let db = running.db.clone();
    let waited = wait_for("the session to start", Duration::from_secs(30), || {
        let db = db.clone();
        let finished = probe.is_finished();
        async move {
            if finished {
                bail!("the probe ended before its session started");
            }
            // Wait for every channel, not just main: ending a session while spice-gtk is
            // still linking its other channels races inside spice-server (seen here once as
            // QEMU dropping a half-linked channel and then the whole VM's SPICE server).
            let Some(session) = live_sessions(&db, uuid).await?.into_iter().next() else {
                return Ok(None);
            };
            let id = session.id.clone();
            let channels = db.run(move |conn| models::list_channels(conn, &id)).await?;
            Ok((channels.len() >= 4).then_some(session))
        }
    })
    .await;
    if let Err(e) = waited {
        if probe.is_finished() {
            let result = probe.await??;
            bail!("{e}: {}", result.describe());
        }
        return Err(e);
    }
    Ok(probe)
}

fn handled(running: &Running, event_type: &str) -> u64 {
    running
        .metrics
        .notifications
        .handled
        .with_label_values(&[event_type])
        .get()
}

fn failed(running: &Running, label: &str) -> u64 {
    running
        .metrics
        .notifications
        .failed
        .with_label_values(&[label])
        .get()
}

async fn wait_connected(running: &Running, connected: bool, deadline: Duration) -> Result<()> {
    let want = i64::from(connected);
    wait_for(
        if connected {
            "the consumer to connect"
        } else {
            "the consumer to notice the outage"
        },
        deadline,
        || async { Ok((running.metrics.notifications.connected.get() == want).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_events_end_sessions_revoke_tokens_and_leave_others_alone() -> Result<()> {
    require_all(&["qemu", "spice-probe", "rabbitmq"])?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(&dir.path().join("pki"))?;
    let rabbit = TestRabbit::new().await?;
    let (victim_vm, other_vm) = tokio::join!(
        SpiceServer::builder().start(),
        SpiceServer::builder().start()
    );
    let (victim_vm, other_vm) = (victim_vm?, other_vm?);
    let events = [
        ("instance-delete-end.json", "instance.delete.end"),
        ("instance-power_off-end.json", "instance.power_off.end"),
        (
            "instance-live_migration_post-end.json",
            "instance.live_migration_post.end",
        ),
        ("instance-rebuild-end.json", "instance.rebuild.end"),
    ];
    // One instance per event (a stale console opens no new session), all on the same VM.
    let mut consoles: Vec<ConsoleSpec> = Vec::new();
    for _ in &events {
        consoles.push(ConsoleSpec::on(&victim_vm)?);
    }
    consoles.push(ConsoleSpec::on(&other_vm)?);
    let other = consoles.last().context("other")?.uuid.clone();
    let spec = NodeSpec {
        pki: Some(&pki),
        ..NodeSpec::new(dir.path(), &rabbit, &consoles)
    };
    let running = start_node(&spec, &[Component::Proxy, Component::Notifications]).await?;
    wait_connected(&running, true, EFFECT_DEADLINE).await?;
    let ca = pki.ca_cert_path();
    let db = running.db.clone();

    let other_token = mint_token(&db, &other).await?;
    let other_probe = hold_session(&running, &ca, &other_token, &other).await?;
    let other_session = live_sessions(&db, &other)
        .await?
        .into_iter()
        .next()
        .context("other session")?;

    for ((fixture, event_type), console) in events.iter().zip(&consoles) {
        let uuid = console.uuid.as_str();
        let token = mint_token(&db, uuid).await?;
        let spare = mint_token(&db, uuid).await?;
        let probe = hold_session(&running, &ca, &token, uuid).await?;
        let session = live_sessions(&db, uuid)
            .await?
            .into_iter()
            .next()
            .context("session")?;

        rabbit.publish_fixture(fixture, uuid).await?;

        // The proxy closes the session (any node polls the same termination table)...
        let ended = wait_for(
            &format!("{event_type} to end the session"),
            EFFECT_DEADLINE,
            || {
                let (db, id) = (db.clone(), session.id.clone());
                async move {
                    let s = db.run(move |conn| models::get_session(conn, &id)).await?;
                    Ok(s.ended_at.is_some().then_some(s))
                }
            },
        )
        .await?;
        assert!(
            ended
                .end_reason
                .as_deref()
                .unwrap_or_default()
                .contains(event_type),
            "{event_type}: end reason {:?}",
            ended.end_reason
        );
        // ... and the client saw its main channel close long before its hold ended.
        let result = tokio::time::timeout(EFFECT_DEADLINE, probe)
            .await
            .context("the client was not disconnected")???;
        assert_eq!(
            result.exit_code,
            Some(probe_exit::IO),
            "{event_type}: {}",
            result.describe()
        );

        // Tokens are revoked and the console is stale; a new link is refused.
        assert!(
            console_stale(&db, uuid).await?,
            "{event_type}: console not marked stale"
        );
        let spare_row = {
            let hash = kerbside::token::hash_token(&spare);
            db.run(move |conn| models::find_token_by_hash(conn, &hash))
                .await?
                .context("spare token row")?
        };
        assert!(
            spare_row.revoked_at.is_some(),
            "{event_type}: spare token not revoked"
        );
        assert!(
            spare_row
                .revoke_reason
                .as_deref()
                .unwrap_or_default()
                .contains(event_type)
        );
        let refused = spice_probe(&probe_args(&running, &ca, &spare)?).await?;
        assert_eq!(
            refused.exit_code,
            Some(probe_exit::AUTH),
            "{event_type}: {}",
            refused.describe()
        );

        let audit = audit_rows(&db, event_type).await?;
        assert_eq!(audit.len(), 1, "{event_type}: {audit:?}");
        assert_eq!(handled(&running, event_type), 1);

        // The other instance is untouched.
        assert!(
            !other_probe.is_finished(),
            "{event_type} disconnected the other instance's client"
        );
        let other_now = db
            .run({
                let id = other_session.id.clone();
                move |conn| models::get_session(conn, &id)
            })
            .await?;
        assert!(
            other_now.is_live(),
            "{event_type} ended the other instance's session"
        );
        assert!(!console_stale(&db, &other).await?);
    }

    other_probe.abort();
    running.stop(Duration::from_secs(5)).await;
    rabbit.cleanup().await?;
    Ok(())
}

/// Publishes three unreadable messages, then a good one, and checks the good one is handled.
async fn poison_then_good(dead_letter: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rabbit = TestRabbit::new().await?;
    let dlx = if dead_letter {
        Some(rabbit.declare_dead_letter().await?)
    } else {
        None
    };
    let consoles = [ConsoleSpec::fake()];
    let extra = dlx
        .as_ref()
        .map(|(exchange, _)| format!("dead_letter_exchange = {exchange}\n"))
        .unwrap_or_default();
    let spec = NodeSpec {
        notifications: &extra,
        ..NodeSpec::new(dir.path(), &rabbit, &consoles)
    };
    let running = start_node(&spec, &[Component::Notifications]).await?;
    wait_connected(&running, true, EFFECT_DEADLINE).await?;
    let uuid = consoles.first().context("console")?.uuid.clone();

    rabbit
        .publish_raw("info", b"\x00\xffnot json at all")
        .await?;
    rabbit
        .publish_raw(
            "info",
            &serde_json::to_vec(&json!({"priority": "INFO", "payload": {}}))?,
        )
        .await?;
    rabbit.publish_raw("error", br#"{"oslo.version": "2.0", "oslo.message": "{\"event_type\": \"instance.delete.end\", \"payload\": "}"#).await?;
    // Unversioned and unknown events are ignored, not failed.
    rabbit
        .publish_notification(&json!({"event_type": "compute.instance.delete.end", "priority": "INFO", "payload": {"instance_id": uuid}}))
        .await?;
    rabbit
        .publish_fixture("instance-pause-end.json", &uuid)
        .await?;
    rabbit
        .publish_fixture("instance-delete-end.json", &uuid)
        .await?;

    let db = running.db.clone();
    wait_for(
        "the good notification to be handled",
        EFFECT_DEADLINE,
        || async { Ok((handled(&running, "instance.delete.end") == 1).then_some(())) },
    )
    .await?;
    assert!(console_stale(&db, &uuid).await?);
    assert_eq!(audit_rows(&db, "instance.delete.end").await?.len(), 1);
    assert_eq!(failed(&running, "unparsable"), 3);
    let ignored = &running.metrics.notifications.ignored;
    assert_eq!(
        ignored
            .with_label_values(&["compute.instance.delete.end"])
            .get(),
        1
    );
    assert_eq!(ignored.with_label_values(&["instance.pause.end"]).get(), 1);
    // Nothing went back to the queue.
    assert_eq!(rabbit.pool_queue_depth().await?, 0);
    assert_eq!(
        running.metrics.notifications.connected.get(),
        1,
        "a poison message must not break the consumer"
    );

    if let Some((_, queue)) = &dlx {
        let mut dead = Vec::new();
        let end = tokio::time::Instant::now() + EFFECT_DEADLINE;
        while dead.len() < 3 && tokio::time::Instant::now() < end {
            match rabbit.get(queue).await? {
                Some(body) => dead.push(body),
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert_eq!(dead.len(), 3);
        assert_eq!(
            dead.first().map(Vec::as_slice),
            Some(&b"\x00\xffnot json at all"[..])
        );
    }

    running.stop(Duration::from_secs(5)).await;
    rabbit.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn poison_messages_are_dropped_and_the_next_one_is_handled() -> Result<()> {
    poison_then_good(false).await
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_when_configured() -> Result<()> {
    poison_then_good(true).await
}

/// Cuts kerbside's broker connection, publishes while it is cut, and checks the events are
/// handled after the reconnect.
async fn events_published_during_an_outage_are_handled(durable: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rabbit = TestRabbit::new().await?;
    let chaos = ChaosProxy::start(&rabbit.broker_addr()?).await?;
    let consoles = [
        ConsoleSpec::fake(),
        ConsoleSpec::fake(),
        ConsoleSpec::fake(),
    ];
    let extra = format!("durable = {durable}\n");
    let spec = NodeSpec {
        transport_url: rabbit.transport_url_via(&chaos.addr().to_string())?,
        notifications: &extra,
        ..NodeSpec::new(dir.path(), &rabbit, &consoles)
    };
    let running = start_node(&spec, &[Component::Notifications]).await?;
    wait_connected(&running, true, EFFECT_DEADLINE).await?;
    let db = running.db.clone();
    let [before, during1, during2] =
        [0, 1, 2].map(|i| consoles.get(i).map(|c| c.uuid.clone()).unwrap_or_default());

    rabbit
        .publish_fixture("instance-power_off-end.json", &before)
        .await?;
    wait_for("the first event", EFFECT_DEADLINE, || async {
        Ok(console_stale(&db, &before).await?.then_some(()))
    })
    .await?;

    chaos.sever();
    wait_connected(&running, false, EFFECT_DEADLINE).await?;
    rabbit
        .publish_fixture("instance-delete-end.json", &during1)
        .await?;
    rabbit
        .publish_fixture("instance-shelve_offload-end.json", &during2)
        .await?;
    // They wait in the pool's queue while kerbside is away.
    assert_eq!(rabbit.pool_queue_depth().await?, 2);
    assert!(!console_stale(&db, &during1).await? && !console_stale(&db, &during2).await?);
    // Let kerbside fail to reconnect at least twice (the backoff path) before the broker
    // comes back.
    wait_for(
        "reconnect attempts during the outage",
        RECONNECT_DEADLINE,
        || async { Ok((chaos.refused() >= 2).then_some(())) },
    )
    .await?;

    chaos.restore();
    wait_connected(&running, true, RECONNECT_DEADLINE).await?;
    wait_for(
        "the events published during the outage",
        EFFECT_DEADLINE,
        || async {
            Ok(
                (console_stale(&db, &during1).await? && console_stale(&db, &during2).await?)
                    .then_some(()),
            )
        },
    )
    .await?;
    assert_eq!(audit_rows(&db, "instance.delete.end").await?.len(), 1);
    assert_eq!(
        audit_rows(&db, "instance.shelve_offload.end").await?.len(),
        1
    );
    assert!(
        chaos.relayed() >= 2,
        "kerbside did not reconnect through the relay"
    );
    assert_eq!(rabbit.pool_queue_depth().await?, 0);

    running.stop(Duration::from_secs(5)).await;
    rabbit.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn broker_outage_durable_queue() -> Result<()> {
    events_published_during_an_outage_are_handled(true).await
}

#[tokio::test]
async fn broker_outage_classic_transient_queue() -> Result<()> {
    events_published_during_an_outage_are_handled(false).await
}

#[tokio::test]
async fn broker_down_at_start_is_retried_in_the_background() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rabbit = TestRabbit::new().await?;
    let chaos = ChaosProxy::start(&rabbit.broker_addr()?).await?;
    chaos.sever();
    let consoles = [ConsoleSpec::fake()];
    let spec = NodeSpec {
        transport_url: rabbit.transport_url_via(&chaos.addr().to_string())?,
        ..NodeSpec::new(dir.path(), &rabbit, &consoles)
    };
    // The broker may start after kerbside: not a start error.
    let running = start_node(&spec, &[Component::Notifications]).await?;
    assert_eq!(running.metrics.notifications.connected.get(), 0);
    wait_for(
        "a refused connection attempt",
        RECONNECT_DEADLINE,
        || async { Ok((chaos.refused() >= 1).then_some(())) },
    )
    .await?;
    chaos.restore();
    wait_connected(&running, true, RECONNECT_DEADLINE).await?;
    let uuid = consoles.first().context("console")?.uuid.clone();
    rabbit
        .publish_fixture("instance-suspend-end.json", &uuid)
        .await?;
    let db = running.db.clone();
    wait_for(
        "instance.suspend.end to be handled",
        EFFECT_DEADLINE,
        || async { Ok(console_stale(&db, &uuid).await?.then_some(())) },
    )
    .await?;
    running.stop(Duration::from_secs(5)).await;
    rabbit.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn database_unavailable_requeues_until_it_is_back() -> Result<()> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;

    let dir = tempfile::tempdir()?;
    let rabbit = TestRabbit::new().await?;
    let consoles = [ConsoleSpec::fake()];
    let spec = NodeSpec::new(dir.path(), &rabbit, &consoles);
    let running = start_node(&spec, &[Component::Notifications]).await?;
    wait_connected(&running, true, EFFECT_DEADLINE).await?;
    let uuid = consoles.first().context("console")?.uuid.clone();

    // Another process holds the write lock: kerbside's transaction times out with "database
    // is locked" (transient), so the notification goes back to the queue.
    let path = dir.path().join("kerbside.sqlite");
    let mut locker = diesel::sqlite::SqliteConnection::establish(&path.display().to_string())?;
    locker.batch_execute("BEGIN EXCLUSIVE")?;
    rabbit
        .publish_fixture("instance-delete-end.json", &uuid)
        .await?;
    let received = || {
        running
            .metrics
            .notifications
            .received
            .with_label_values(&["instance.delete.end"])
            .get()
    };
    wait_for(
        "a failed attempt and a redelivery",
        Duration::from_secs(60),
        || async {
            Ok((failed(&running, "instance.delete.end") >= 1 && received() >= 2).then_some(()))
        },
    )
    .await?;
    assert_eq!(handled(&running, "instance.delete.end"), 0);
    locker.batch_execute("COMMIT")?;

    let db = running.db.clone();
    wait_for(
        "the notification once the database is back",
        Duration::from_secs(60),
        || async { Ok((handled(&running, "instance.delete.end") == 1).then_some(())) },
    )
    .await?;
    assert!(console_stale(&db, &uuid).await?);
    assert_eq!(audit_rows(&db, "instance.delete.end").await?.len(), 1);
    assert_eq!(rabbit.pool_queue_depth().await?, 0);

    running.stop(Duration::from_secs(5)).await;
    rabbit.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn two_nodes_in_one_pool_handle_each_event_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rabbit = TestRabbit::new().await?;
    let consoles: Vec<ConsoleSpec> = (0..12).map(|_| ConsoleSpec::fake()).collect();
    let spec_a = NodeSpec::new(dir.path(), &rabbit, &consoles);
    let spec_b = NodeSpec {
        name: "node-b",
        transport_url: spec_a.transport_url.clone(),
        ..spec_a
    };
    let (a, b) = (
        start_node(&spec_a, &[Component::Notifications]).await?,
        start_node(&spec_b, &[Component::Notifications]).await?,
    );
    wait_connected(&a, true, EFFECT_DEADLINE).await?;
    wait_connected(&b, true, EFFECT_DEADLINE).await?;

    for c in &consoles {
        rabbit
            .publish_fixture("instance-delete-end.json", &c.uuid)
            .await?;
    }
    let total = || handled(&a, "instance.delete.end") + handled(&b, "instance.delete.end");
    wait_for("every event to be handled", EFFECT_DEADLINE, || async {
        Ok((total() >= 12).then_some(()))
    })
    .await?;
    assert_eq!(rabbit.pool_queue_depth().await?, 0);
    // Give a duplicate delivery the chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        total(),
        12,
        "node-a {} + node-b {}",
        handled(&a, "instance.delete.end"),
        handled(&b, "instance.delete.end")
    );
    let rows = audit_rows(&a.db, "instance.delete.end").await?;
    assert_eq!(rows.len(), 12);
    let mut consoles_seen: Vec<_> = rows.iter().filter_map(|r| r.console_id).collect();
    consoles_seen.sort();
    consoles_seen.dedup();
    assert_eq!(consoles_seen.len(), 12, "an instance was handled twice");
    let nodes: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.node.as_str()).collect();
    eprintln!("events handled by {nodes:?}");

    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
    rabbit.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn durability_mismatch_is_a_clear_start_error() -> Result<()> {
    let dir = tempfile::tempdir()?;

    // Kolla-style durable exchange, DevStack-style configuration.
    let rabbit = TestRabbit::new().await?;
    rabbit.declare_exchange(true).await?;
    let spec = NodeSpec {
        notifications: "durable = false\n",
        ..NodeSpec::new(dir.path(), &rabbit, &[])
    };
    let err = start_error(
        &spec,
        "the exchange is durable and the configuration is not",
    )
    .await?;
    assert!(
        err.contains(&format!("exchange '{}'", rabbit.exchange)),
        "{err}"
    );
    assert!(err.contains("[notifications] durable = true"), "{err}");
    assert!(err.contains("inequivalent arg 'durable'"), "{err}");
    assert!(!err.contains("guest:guest"), "{err}");
    rabbit.cleanup().await?;

    // A classic queue left by an earlier configuration, quorum asked for now.
    let rabbit = TestRabbit::new().await?;
    rabbit.declare_pool_queue(false).await?;
    let spec = NodeSpec {
        name: "node-b",
        notifications: "queue_type = quorum\ndurable = true\n",
        ..NodeSpec::new(dir.path(), &rabbit, &[])
    };
    let err = start_error(&spec, "its queue exists with other settings").await?;
    assert!(
        err.contains(&format!("queue '{}'", rabbit.queue())),
        "{err}"
    );
    assert!(err.contains("queue_type = quorum"), "{err}");
    rabbit.cleanup().await?;

    // DevStack-style non-durable exchange, Kolla-style configuration.
    let rabbit = TestRabbit::new().await?;
    rabbit.declare_exchange(false).await?;
    let spec = NodeSpec {
        name: "node-c",
        notifications: "queue_type = quorum\n",
        ..NodeSpec::new(dir.path(), &rabbit, &[])
    };
    let err = start_error(
        &spec,
        "the exchange is not durable and the configuration is",
    )
    .await?;
    assert!(
        err.contains("set [notifications] durable = false and queue_type = classic"),
        "{err}"
    );
    rabbit.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn quorum_queue_and_durable_exchange_like_kolla() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rabbit = TestRabbit::new().await?;
    // Nova (oslo.messaging with rabbit_quorum_queue) declared the exchange durable first.
    rabbit.declare_exchange(true).await?;
    let consoles = [ConsoleSpec::fake()];
    let spec = NodeSpec {
        notifications: "queue_type = quorum\n",
        ..NodeSpec::new(dir.path(), &rabbit, &consoles)
    };
    let running = start_node(&spec, &[Component::Notifications]).await?;
    wait_connected(&running, true, EFFECT_DEADLINE).await?;
    let uuid = consoles.first().context("console")?.uuid.clone();
    rabbit
        .publish_fixture("instance-evacuate.json", &uuid)
        .await?;
    let db = running.db.clone();
    wait_for(
        "instance.evacuate to be handled",
        EFFECT_DEADLINE,
        || async { Ok(console_stale(&db, &uuid).await?.then_some(())) },
    )
    .await?;
    let audit = audit_rows(&db, "instance.evacuate").await?;
    assert!(
        audit.first().is_some_and(|r| r.message.contains("host2")),
        "{audit:?}"
    );
    running.stop(Duration::from_secs(5)).await;
    rabbit.cleanup().await?;
    Ok(())
}
