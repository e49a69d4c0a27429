//! kerbside against a real OpenStack (tests/src/openstack_full.rs): the broker call boots
//! nothing itself but asks the real Nova, whose fake compute driver answers with its spice
//! console (`fakespiceconsole.com` ports 6969/6970, mapped to 127.0.0.1 with
//! `[nova] console_host_map`), where QEMU listens; and real instance actions (delete, stop,
//! shelve, rebuild, live migration) end live sessions through Nova's own notifications.
//!
//! Tests that serve the fake console take `console_ports()` (one at a time, across test
//! processes too). Waits poll with generous bounds; nothing is asserted on timing.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kerbside::db::models;
use kerbside::service::Component;
use kerbside::spice::ChannelType;
use kerbside_tests::app::{TestApp, TestConsole};
use kerbside_tests::clients::{ProbeResult, RV_TIMEOUT, probe_exit, remote_viewer, spice_probe};
use kerbside_tests::openstack_full::{
    FAKE_CONSOLE_HOST, FAKE_CONSOLE_PORT, FAKE_CONSOLE_TLS_PORT, FullStack, console_ports,
    fake_console_vm, full,
};
use kerbside_tests::pki::TestPki;
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::spice_client;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Upper bound for a session to end once Nova has finished the action: Nova publishes the
/// notification within seconds, kerbside ends sessions within `[proxy]
/// termination_poll_interval` (1 s) of handling it.
const EFFECT_DEADLINE: Duration = Duration::from_secs(60);

/// kerbside (proxy, API, notifications) on `stack`, trusting `pki` for hypervisors, with a
/// static console `other` as a second instance.
pub(crate) async fn start_kerbside(
    stack: &FullStack,
    pki: &TestPki,
    other: Option<TestConsole>,
) -> Result<TestApp> {
    start_kerbside_with(stack, pki, other, "").await
}

/// [`start_kerbside`] with more configuration (`extra`, INI text).
async fn start_kerbside_with(
    stack: &FullStack,
    pki: &TestPki,
    other: Option<TestConsole>,
    extra: &str,
) -> Result<TestApp> {
    let pool = format!("kerbside-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let mut builder = TestApp::builder()
        .components(&[Component::Proxy, Component::Api, Component::Notifications])
        .ini(&stack.kerbside_ini(&pool))
        .ini(&format!(
            "\n[proxy]\nhypervisor_tls = auto\nhypervisor_ca_file = {}\n",
            pki.ca_cert_path().display()
        ))
        .ini(extra);
    if let Some(console) = other {
        builder = builder.console(console);
    }
    let app = builder.start().await?;
    wait_for(
        "the notification consumer to connect",
        EFFECT_DEADLINE,
        || {
            let connected = app.running.metrics.notifications.connected.get() == 1;
            async move { Ok(connected.then_some(())) }
        },
    )
    .await?;
    Ok(app)
}

/// Polls `check` every 200 ms until it returns `Some`, failing after `deadline`.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST /v1/servers/{id}/console` with `token`.
async fn broker(app: &TestApp, token: Option<&str>, server: &str) -> Result<reqwest::Response> {
    let base = app.api_url().context("the API is not running")?;
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/servers/{server}/console"))
        .timeout(Duration::from_secs(120));
    if let Some(token) = token {
        req = req.header("X-Auth-Token", token);
    }
    Ok(req.send().await?)
}

/// The broker call's `.vv` (which must come with 200).
async fn broker_vv(app: &TestApp, token: &str, server: &str) -> Result<String> {
    let resp = broker(app, Some(token), server).await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    anyhow::ensure!(status == 200, "broker call: {status} {text}");
    Ok(text)
}

fn vv_value<'a>(vv: &'a str, key: &str) -> Option<&'a str> {
    vv.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::trim))
}

/// Asserts the status and kerbside's error body; returns the message.
async fn expect_error(resp: reqwest::Response, status: u16) -> Result<String> {
    let got = resp.status().as_u16();
    let text = resp.text().await?;
    let body: Value = serde_json::from_str(&text)
        .with_context(|| format!("HTTP {got} with a body that is not JSON: {text}"))?;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], status, "{body}");
    Ok(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

pub(crate) async fn live_sessions(app: &TestApp, uuid: &str) -> Result<Vec<models::Session>> {
    let uuid = uuid.to_owned();
    Ok(app
        .db()
        .run(move |conn| models::sessions_for_instance(conn, &uuid, true))
        .await?)
}

/// Opens a session through kerbside with `token` that stays up for `hold` and reports when
/// it is closed; returns once every channel is linked.
pub(crate) async fn hold_session(
    app: &TestApp,
    token: &str,
    uuid: &str,
    hold: Duration,
) -> Result<(JoinHandle<Result<ProbeResult>>, models::Session)> {
    let mut args = app.probe_args(token, "main,display,inputs,cursor");
    args.timeout = hold + Duration::from_secs(120);
    args.extra = vec![
        "--hold".into(),
        hold.as_secs().to_string(),
        "--exit-on-close".into(),
    ];
    let probe = tokio::spawn(async move { spice_probe(&args).await });
    let waited = wait_for("the session to start", Duration::from_secs(90), || {
        let finished = probe.is_finished();
        async move {
            if finished {
                bail!("the probe ended before its session started");
            }
            // Every channel, not just main: ending a half-linked session races inside
            // spice-server.
            let Some(session) = live_sessions(app, uuid).await?.into_iter().next() else {
                return Ok(None);
            };
            let id = session.id.clone();
            let channels = app
                .db()
                .run(move |conn| models::list_channels(conn, &id))
                .await?;
            Ok((channels.len() >= 4).then_some(session))
        }
    })
    .await;
    match waited {
        Ok(session) => Ok((probe, session)),
        Err(e) if probe.is_finished() => {
            let result = probe.await??;
            bail!("{e}: {}", result.describe())
        }
        Err(e) => Err(e),
    }
}

async fn token_row(app: &TestApp, token: &str) -> Result<models::ConsoleToken> {
    let hash = kerbside::token::hash_token(token);
    app.db()
        .run(move |conn| models::find_token_by_hash(conn, &hash))
        .await?
        .context("no token row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_call_on_a_booted_server_reaches_qemu_with_a_real_client() -> Result<()> {
    require_all(&["qemu", "remote-viewer", "xvfb", "mariadb", "rabbitmq"])?;
    let stack = full().await?;
    let demo = stack.token("demo", "demopass", "demo").await?;
    let server = stack.boot(&demo, "kerbside-broker").await?;
    let _ports = console_ports().await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(&dir.path().join("hypervisor-pki"))?;
    let vm = fake_console_vm(&pki).await?;
    let app = start_kerbside(stack, &pki, None).await?;

    let resp = broker(&app, Some(&demo), &server).await?;
    let (status, content_type) = (
        resp.status().as_u16(),
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    );
    let vv = resp.text().await?;
    assert_eq!(status, 200, "{vv}");
    assert_eq!(content_type, "application/x-virt-viewer", "{vv}");
    assert_eq!(vv_value(&vv, "host"), Some("127.0.0.1"), "{vv}");
    assert_eq!(
        vv_value(&vv, "tls-port"),
        Some(app.tls_addr().port().to_string().as_str())
    );
    assert!(vv_value(&vv, "password").is_some_and(|p| !p.is_empty()));

    // Nova's console, as Nova described it, with the address to connect to from the map.
    let id = server.clone();
    let console = app
        .db()
        .run(move |conn| models::get_console_by_source_name(conn, "nova", &id))
        .await?;
    assert_eq!(console.hypervisor, FAKE_CONSOLE_HOST);
    assert_eq!(console.hypervisor_ip, "127.0.0.1");
    assert_eq!(console.insecure_port, Some(i32::from(FAKE_CONSOLE_PORT)));
    assert_eq!(console.secure_port, Some(i32::from(FAKE_CONSOLE_TLS_PORT)));

    // remote-viewer with that .vv reaches QEMU through kerbside.
    let vv_path = dir.path().join("console.vv");
    std::fs::write(&vv_path, &vv)?;
    let viewer = remote_viewer(&vv_path, RV_TIMEOUT).await?;
    assert!(
        viewer.main_channel_opened,
        "log:\n{}\nqemu:\n{}",
        viewer.log,
        vm.log()
    );
    assert!(viewer.display_created, "log:\n{}", viewer.log);
    let sessions = app
        .db()
        .run({
            let server = server.clone();
            move |conn| models::sessions_for_instance(conn, &server, false)
        })
        .await?;
    assert!(!sessions.is_empty(), "no session was recorded");
    assert!(
        sessions.iter().all(|s| s.upstream_session_id.is_some()),
        "the proxy never linked to QEMU: {sessions:?}"
    );

    app.stop().await;
    vm.stop().await?;
    stack.delete(&demo, &server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_call_passes_on_novas_refusals() -> Result<()> {
    require_all(&["mariadb", "rabbitmq"])?;
    let stack = full().await?;
    let demo = stack.token("demo", "demopass", "demo").await?;
    let other = stack.token("other", "otherpass", "other").await?;
    let server = stack.boot(&demo, "kerbside-refusals").await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(&dir.path().join("hypervisor-pki"))?;
    let app = start_kerbside(stack, &pki, None).await?;

    // A member of another project: Nova does not show them the server.
    let msg = expect_error(broker(&app, Some(&other), &server).await?, 404).await?;
    assert!(msg.contains("Nova"), "{msg}");
    // An unknown server.
    let unknown = uuid::Uuid::new_v4().to_string();
    expect_error(broker(&app, Some(&demo), &unknown).await?, 404).await?;
    // No token, and a malformed id: kerbside's own answers.
    expect_error(broker(&app, None, &server).await?, 401).await?;
    expect_error(broker(&app, Some(&demo), "not-a-uuid").await?, 400).await?;

    // A server that is not on a host (shelved and offloaded): Nova's 409 "not ready".
    // (A stopped server still has a console on the fake driver; libvirt refuses it.)
    stack
        .action(&demo, &server, json!({"shelve": null}))
        .await?;
    stack
        .wait_status(&demo, &server, "SHELVED_OFFLOADED")
        .await?;
    let msg = expect_error(broker(&app, Some(&demo), &server).await?, 409).await?;
    assert!(msg.contains("Nova"), "{msg}");
    // Nothing was recorded for the refused calls.
    let id = server.clone();
    let recorded = app
        .db()
        .run(move |conn| models::get_console_by_source_name(conn, "nova", &id))
        .await;
    assert!(recorded.is_err(), "a console was recorded: {recorded:?}");

    app.stop().await;
    stack.delete(&demo, &server).await?;
    Ok(())
}

/// A real Nova action and the notifications kerbside may act on (the first that arrives
/// ends the session: Nova sends `instance.shutdown.end` before `instance.delete.end`).
struct Action {
    name: &'static str,
    /// Event types (or their prefixes) the end reason may name.
    events: &'static [&'static str],
}

impl Action {
    fn named_in(&self, reason: &str) -> bool {
        self.events.iter().any(|e| reason.contains(e))
    }
}

const ACTIONS: [Action; 5] = [
    Action {
        name: "delete",
        events: &["instance.shutdown.end", "instance.delete.end"],
    },
    Action {
        name: "stop",
        events: &["instance.power_off.end"],
    },
    Action {
        name: "shelve",
        events: &[
            "instance.power_off.end",
            "instance.shelve.end",
            "instance.shelve_offload.end",
        ],
    },
    Action {
        name: "rebuild",
        events: &["instance.rebuild.end"],
    },
    Action {
        name: "live-migrate",
        events: &["instance.live_migration_post.end"],
    },
];

/// Runs `action` on `server` (as its owner, or the admin for a live migration) and waits
/// until Nova has finished it.
async fn perform(stack: &FullStack, demo: &str, action: &str, server: &str) -> Result<()> {
    match action {
        "delete" => {
            stack.delete(demo, server).await?;
            stack.wait_status(demo, server, "DELETED").await?;
        }
        "stop" => {
            stack.action(demo, server, json!({"os-stop": null})).await?;
            stack.wait_status(demo, server, "SHUTOFF").await?;
        }
        "shelve" => {
            stack.action(demo, server, json!({"shelve": null})).await?;
            stack.wait_status(demo, server, "SHELVED_OFFLOADED").await?;
        }
        "rebuild" => {
            stack
                .action(
                    demo,
                    server,
                    json!({"rebuild": {"imageRef": stack.image_id}}),
                )
                .await?;
            stack.wait_status(demo, server, "ACTIVE").await?;
        }
        "live-migrate" => {
            let admin = stack.admin_token().await?;
            let before = stack.server(&admin, server).await?["OS-EXT-SRV-ATTR:host"].clone();
            stack
                .action(
                    &admin,
                    server,
                    json!({"os-migrateLive": {"host": null, "block_migration": "auto"}}),
                )
                .await?;
            let after = stack.wait_status(&admin, server, "ACTIVE").await?;
            assert_ne!(
                after["OS-EXT-SRV-ATTR:host"], before,
                "the server did not move: {after}"
            );
        }
        other => bail!("unknown action {other}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nova_actions_end_sessions_and_revoke_tokens() -> Result<()> {
    require_all(&["qemu", "spice-probe", "mariadb", "rabbitmq"])?;
    let stack = full().await?;
    let demo = stack.token("demo", "demopass", "demo").await?;
    // One server per action, and one more whose session must survive them all.
    let mut servers = Vec::new();
    for action in &ACTIONS {
        servers.push(
            stack
                .boot(&demo, &format!("kerbside-{}", action.name))
                .await?,
        );
    }
    let bystander = stack.boot(&demo, "kerbside-bystander").await?;

    let _ports = console_ports().await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(&dir.path().join("hypervisor-pki"))?;
    let vm = fake_console_vm(&pki).await?;
    // The bystander's console is another VM (the fake driver gives every server the same
    // console, and one SPICE server serves one client at a time).
    let other_vm = SpiceServer::builder().start().await?;
    let app = start_kerbside(
        stack,
        &pki,
        Some(TestConsole {
            uuid: bystander.clone(),
            ..TestConsole::for_server(&other_vm)
        }),
    )
    .await?;
    let other_token = app
        .mint_token(&bystander, Duration::from_secs(3600))
        .await?;
    // Held until the test ends (it outlives all five actions on a busy machine).
    let (other_probe, other_session) =
        hold_session(&app, &other_token, &bystander, Duration::from_secs(3600)).await?;

    for (action, server) in ACTIONS.iter().zip(&servers) {
        let name = action.name;
        // Two .vv files from the broker: one for the session, one kept unused.
        let vv = broker_vv(&app, &demo, server).await?;
        let token = vv_value(&vv, "password").context("no password")?.to_owned();
        let spare_vv = broker_vv(&app, &demo, server).await?;
        let spare = vv_value(&spare_vv, "password")
            .context("no password")?
            .to_owned();
        let (probe, session) = hold_session(&app, &token, server, Duration::from_secs(600))
            .await
            .with_context(|| format!("{name}: opening the session"))?;

        perform(stack, &demo, name, server)
            .await
            .with_context(|| format!("{name} in Nova"))?;

        let ended = wait_for(
            &format!("{name} to end the session"),
            EFFECT_DEADLINE,
            || {
                let id = session.id.clone();
                async {
                    let s = app
                        .db()
                        .run(move |conn| models::get_session(conn, &id))
                        .await?;
                    Ok(s.ended_at.is_some().then_some(s))
                }
            },
        )
        .await?;
        let reason = ended.end_reason.clone().unwrap_or_default();
        assert!(action.named_in(&reason), "{name}: end reason {reason}");
        // The client saw its channels close long before its hold ended.
        let result = tokio::time::timeout(EFFECT_DEADLINE, probe)
            .await
            .with_context(|| format!("{name}: the client was not disconnected"))???;
        assert_eq!(
            result.exit_code,
            Some(probe_exit::IO),
            "{name}: {}",
            result.describe()
        );
        // Every token of the instance is revoked: the unused one is refused.
        let spare_row = token_row(&app, &spare).await?;
        assert!(spare_row.revoked_at.is_some(), "{name}: spare not revoked");
        assert!(
            action.named_in(spare_row.revoke_reason.as_deref().unwrap_or_default()),
            "{name}: {:?}",
            spare_row.revoke_reason
        );
        let refused = spice_probe(&app.probe_args(&spare, "main")).await?;
        assert_eq!(
            refused.exit_code,
            Some(probe_exit::AUTH),
            "{name}: {}",
            refused.describe()
        );
        // The bystander's session is untouched.
        assert!(!other_probe.is_finished(), "{name} ended the bystander");
        let id = other_session.id.clone();
        let still = app
            .db()
            .run(move |conn| models::get_session(conn, &id))
            .await?;
        assert!(still.ended_at.is_none(), "{name}: {:?}", still.end_reason);
    }
    let other_row = token_row(&app, &other_token).await?;
    assert!(other_row.revoked_at.is_none());

    other_probe.abort();
    app.stop().await;
    vm.stop().await?;
    other_vm.stop().await?;
    let admin = stack.admin_token().await?;
    for server in servers.iter().skip(1).chain([&bystander]) {
        let _ = stack.delete(&admin, server).await;
    }
    Ok(())
}

/// A main channel linked through kerbside with `token`, past MAIN_INIT (its session is live),
/// and the connection id MAIN_INIT gave.
async fn live_main(app: &TestApp, token: &str) -> Result<(spice_client::ClientChannel, u32)> {
    let mut main = spice_client::link(&app.client(), ChannelType::Main, 0, 0, token)
        .await?
        .map_err(|e| anyhow::anyhow!("main link: {e}"))?;
    let (msg_type, init) = spice_client::read_message(&mut main.stream).await?;
    anyhow::ensure!(msg_type == 103, "the first main message is {msg_type}");
    let connection_id = u32::from_le_bytes(init.get(..4).context("short MAIN_INIT")?.try_into()?);
    Ok((main, connection_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flavors_firewall_profile_is_the_sessions_and_an_unknown_one_fails_closed() -> Result<()>
{
    require_all(&["qemu", "mariadb", "rabbitmq"])?;
    let stack = full().await?;
    let demo = stack.token("demo", "demopass", "demo").await?;
    // The README's recipe: a profile in the profiles file, named by a flavor's extra spec
    // (set by the admin).
    let suffix = &uuid::Uuid::new_v4().to_string()[..8];
    let tagged = stack
        .flavor(
            &format!("kerbside-no-usb-{suffix}"),
            json!({"kerbside:firewall_profile": "no-usb-no-clipboard"}),
        )
        .await?;
    let misspelt = stack
        .flavor(
            &format!("kerbside-misspelt-{suffix}"),
            json!({"kerbside:firewall_profile": "no-usb-no-clipbaord"}),
        )
        .await?;
    let server = stack
        .boot_flavor(&demo, "kerbside-fw-tagged", &tagged)
        .await?;
    let other = stack
        .boot_flavor(&demo, "kerbside-fw-misspelt", &misspelt)
        .await?;
    let _ports = console_ports().await?;
    let dir = tempfile::tempdir()?;
    let profiles = dir.path().join("firewall-profiles.yaml");
    std::fs::write(
        &profiles,
        "no-usb-no-clipboard:\n  channels: {usbredir: deny}\n  clipboard_to_guest: deny\n  \
         clipboard_to_client: deny\n",
    )?;
    let pki = TestPki::new(&dir.path().join("hypervisor-pki"))?;
    let vm = fake_console_vm(&pki).await?;
    let app = start_kerbside_with(
        stack,
        &pki,
        None,
        &format!("[firewall]\nprofiles_file = {}\n", profiles.display()),
    )
    .await?;
    let refusals = || {
        app.running
            .metrics
            .proxy
            .firewall_verdicts
            .with_label_values(&["usbredir", "client_to_server", "channel_type", "close"])
            .get()
    };

    // The broker call reads the flavor as kerbside's service user; the session gets its
    // profile, which refuses USB redirection.
    let vv = broker_vv(&app, &demo, &server).await?;
    let token = vv_value(&vv, "password").context("no password")?.to_owned();
    let console = {
        let id = server.clone();
        app.db()
            .run(move |conn| models::get_console_by_source_name(conn, "nova", &id))
            .await?
    };
    assert_eq!(
        console.firewall_profile.as_deref(),
        Some("no-usb-no-clipboard")
    );
    let (main, connection_id) = live_main(&app, &token).await?;
    let session = live_sessions(&app, &server)
        .await?
        .into_iter()
        .next()
        .context("no session")?;
    assert_eq!(
        session.firewall_profile.as_deref(),
        Some("no-usb-no-clipboard")
    );
    let usb = spice_client::link(
        &app.client(),
        ChannelType::Usbredir,
        0,
        connection_id,
        &token,
    )
    .await?;
    assert!(
        matches!(usb, Err(kerbside::spice::LinkError::ChannelNotAvailable)),
        "{:?}",
        usb.map(|_| ())
    );
    assert_eq!(refusals(), 1);
    drop(main);

    // The token exchange (the URL Nova hands out) for a server whose flavor names a profile
    // that does not exist: the session fails closed to the most restrictive profile.
    let console = stack
        .compute(
            &demo,
            reqwest::Method::POST,
            &format!("/servers/{other}/remote-consoles"),
            Some(json!({"remote_console": {"protocol": "spice", "type": "spice-direct"}})),
        )
        .await?;
    let nova_token = kerbside::nova::remote_console_token(&console.to_string())?;
    let base = app.api_url().context("the API is not running")?;
    let resp = reqwest::Client::new()
        // A UUID: nothing to escape.
        .get(format!("{base}/nova?token={nova_token}"))
        .timeout(Duration::from_secs(120))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let vv = resp.text().await?;
    assert_eq!(status, 200, "token exchange: {vv}");
    let token = vv_value(&vv, "password").context("no password")?.to_owned();
    let row = {
        let id = other.clone();
        app.db()
            .run(move |conn| models::get_console_by_source_name(conn, "nova", &id))
            .await?
    };
    assert_eq!(row.firewall_profile.as_deref(), Some("no-usb-no-clipbaord"));
    let (main, connection_id) = wait_for("the second session", Duration::from_secs(60), || {
        let app = &app;
        let token = token.clone();
        async move {
            // The first session's QEMU client may still be going away.
            Ok(live_main(app, &token).await.ok())
        }
    })
    .await?;
    let session = live_sessions(&app, &other)
        .await?
        .into_iter()
        .next()
        .context("no session")?;
    assert_eq!(
        session.firewall_profile.as_deref(),
        Some(kerbside::spice::firewall::MOST_RESTRICTIVE_PROFILE)
    );
    let usb = spice_client::link(
        &app.client(),
        ChannelType::Usbredir,
        0,
        connection_id,
        &token,
    )
    .await?;
    assert!(usb.is_err(), "usbredir linked under most-restrictive");
    assert_eq!(refusals(), 2);
    drop(main);

    app.stop().await;
    vm.stop().await?;
    let admin = stack.admin_token().await?;
    for id in [&server, &other] {
        let _ = stack.delete(&admin, id).await;
    }
    Ok(())
}
