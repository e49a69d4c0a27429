//! The HTTP API against a REAL Keystone and Nova API (from PyPI, shared by these tests):
//! the Nova spice-direct token exchange end to end through the proxy to QEMU, its errors,
//! the Keystone-authenticated operator API, termination and Keystone restarts. The broker
//! call, which needs nova-compute, is tested in `nova_real.rs` against a complete OpenStack.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kerbside::db::models;
use kerbside::service::Component;
use kerbside::spice::ChannelType;
use kerbside_tests::app::TestApp;
use kerbside_tests::app::TestConsole;
use kerbside_tests::chaos::ChaosProxy;
use kerbside_tests::clients::{RV_TIMEOUT, remote_viewer};
use kerbside_tests::openstack::{self, ConsoleTokenSpec, OpenStack};
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::spice_client;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start_app(os: &OpenStack, user: &str, password: &str, extra: &str) -> Result<TestApp> {
    start_app_with(TestApp::builder(), &os.kerbside_ini(user, password), extra).await
}

async fn start_app_with(
    builder: kerbside_tests::app::TestAppBuilder,
    ini: &str,
    extra: &str,
) -> Result<TestApp> {
    builder
        .components(&[Component::Proxy, Component::Api])
        .ini(ini)
        .ini(extra)
        .start()
        .await
}

/// A session live through kerbside, whose API checks tokens with the shared OpenStack.
struct LiveSession {
    os: &'static OpenStack,
    /// The hypervisor, kept running for the session.
    _server: SpiceServer,
    console: TestConsole,
    app: TestApp,
    /// The kerbside token the session linked with.
    token: String,
    /// The session's main channel, linked through the proxy.
    main: spice_client::ClientChannel,
    session: models::Session,
    /// A Keystone token of the cloud's admin.
    admin: String,
}

/// QEMU with `password` as its ticket, kerbside (proxy and API, its service user on the shared
/// OpenStack) in front of it, and one session whose main channel is linked through the proxy.
async fn live_session_behind_the_api(password: &str) -> Result<LiveSession> {
    require_all(&["qemu"])?;
    let os = openstack::shared().await?;
    let server = SpiceServer::with_password(password).await?;
    let console = TestConsole::for_server(&server);
    let app = start_app_with(
        TestApp::builder().console(console.clone()),
        &os.kerbside_ini("kerbside", "kerbsidepass"),
        "",
    )
    .await?;
    let token = app
        .mint_token(&console.uuid, Duration::from_secs(300))
        .await?;
    let main = app.link_main(&token).await?;
    let session = app.live_session().await?;
    let admin = os.token("admin", "adminpass", "admin").await?;
    Ok(LiveSession {
        os,
        _server: server,
        console,
        app,
        token,
        main,
        session,
        admin,
    })
}

fn url(app: &TestApp, path: &str) -> Result<String> {
    Ok(format!(
        "{}{path}",
        app.api_url().context("the API is not running")?
    ))
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> Result<reqwest::Response> {
    let mut req = reqwest::Client::new().get(url(app, path)?);
    if let Some(t) = token {
        req = req.header("X-Auth-Token", t);
    }
    Ok(req.send().await?)
}

/// Asserts the status and the error body shape; returns the message.
async fn expect_error(resp: reqwest::Response, status: u16) -> Result<String> {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], status, "{body}");
    assert!(body["error"]["title"].is_string(), "{body}");
    Ok(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Asserts that an error message names no URL, address or port (internal detail).
fn assert_no_internals(msg: &str, ports: &[u16]) {
    for needle in [
        "http://",
        "https://",
        "127.0.0.1",
        "refused",
        "error sending",
    ] {
        assert!(!msg.contains(needle), "{needle:?} leaked into {msg:?}");
    }
    for port in ports {
        assert!(
            !msg.contains(&port.to_string()),
            "port {port} leaked into {msg:?}"
        );
    }
}

fn vv_value<'a>(vv: &'a str, key: &str) -> Option<&'a str> {
    vv.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(|v| v.trim()))
}

#[tokio::test]
async fn nova_token_exchange_reaches_qemu_through_the_proxy() -> Result<()> {
    require_all(&["qemu", "remote-viewer", "xvfb"])?;
    let os = openstack::shared().await?;
    // libvirt spice-direct consoles have no SPICE password.
    let server = SpiceServer::builder().password(None).start().await?;
    let app = start_app(os, "kerbside", "kerbsidepass", "").await?;
    let spec = ConsoleTokenSpec::spice_direct(server.port().context("plain port")?);
    let token = os.insert_console_token(&spec)?;

    let resp = get(&app, &format!("/nova?token={token}"), None).await?;
    assert_eq!(resp.status().as_u16(), 200);
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "application/x-virt-viewer");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"console.vv\""
    );
    let vv = resp.text().await?;
    assert_eq!(vv_value(&vv, "host"), Some("127.0.0.1"));
    assert_eq!(
        vv_value(&vv, "tls-port"),
        Some(app.tls_addr().port().to_string().as_str())
    );
    assert_eq!(
        vv_value(&vv, "port"),
        Some(app.insecure_addr().port().to_string().as_str())
    );
    assert_eq!(vv_value(&vv, "secure-channels"), Some("all"));
    assert!(vv_value(&vv, "ca").is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
    assert_eq!(
        vv_value(&vv, "host-subject"),
        Some(app.proxy_cert.host_subject().as_str())
    );
    let password = vv_value(&vv, "password").context("no password")?;
    assert_ne!(
        password, token,
        "the .vv must carry a kerbside token, not Nova's"
    );

    // The console is recorded in the nova source, without a ticket.
    let uuid = spec.instance_uuid.clone();
    let console = app
        .db()
        .run(move |conn| models::get_console_by_source_name(conn, "nova", &uuid))
        .await?;
    assert_eq!(console.insecure_port, Some(i32::from(spec.port)));
    assert_eq!(console.secure_port, None);
    assert!(console.ticket.is_none());
    assert!(
        app.audit_events("token.created")
            .await?
            .iter()
            .any(|e| e.console_id == Some(console.id)),
        "no audit event"
    );

    // A real client with that .vv reaches QEMU through the proxy.
    let vv_path = app.dir().join("nova.vv");
    std::fs::write(&vv_path, &vv)?;
    let viewer = remote_viewer(&vv_path, RV_TIMEOUT).await?;
    assert!(viewer.main_channel_opened, "log:\n{}", viewer.log);
    assert!(viewer.display_created, "log:\n{}", viewer.log);

    // The path Kerbside 0.8 used works too, and Nova tokens stay valid until they expire.
    let again = get(&app, &format!("/nova-console.vv?token={token}"), None).await?;
    assert_eq!(again.status().as_u16(), 200);

    // A Nova token with a TLS port: recorded, and the .vv still points at the proxy's ports.
    let with_tls = ConsoleTokenSpec {
        tls_port: Some(5901),
        ..ConsoleTokenSpec::spice_direct(5900)
    };
    let tls_token = os.insert_console_token(&with_tls)?;
    let resp = get(&app, &format!("/nova?token={tls_token}"), None).await?;
    assert_eq!(resp.status().as_u16(), 200);
    let vv = resp.text().await?;
    assert_eq!(
        vv_value(&vv, "tls-port"),
        Some(app.tls_addr().port().to_string().as_str())
    );
    let uuid = with_tls.instance_uuid.clone();
    let console = app
        .db()
        .run(move |conn| models::get_console_by_source_name(conn, "nova", &uuid))
        .await?;
    assert_eq!(
        (console.insecure_port, console.secure_port),
        (Some(5900), Some(5901))
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn nova_token_errors() -> Result<()> {
    let os = openstack::shared().await?;
    let app = start_app(os, "kerbside", "kerbsidepass", "").await?;
    let unknown = uuid::Uuid::new_v4();
    let msg = expect_error(
        get(&app, &format!("/nova?token={unknown}"), None).await?,
        404,
    )
    .await?;
    assert_eq!(msg, "console token not found or expired");

    let expired = os.insert_console_token(&ConsoleTokenSpec {
        ttl: -5,
        ..ConsoleTokenSpec::spice_direct(5900)
    })?;
    expect_error(
        get(&app, &format!("/nova?token={expired}"), None).await?,
        404,
    )
    .await?;

    let novnc = os.insert_console_token(&ConsoleTokenSpec {
        console_type: "novnc".to_owned(),
        ..ConsoleTokenSpec::spice_direct(5902)
    })?;
    let msg = expect_error(get(&app, &format!("/nova?token={novnc}"), None).await?, 400).await?;
    assert!(msg.contains("not a spice-direct"), "{msg}");

    for bad in [
        "/nova",
        "/nova?token=",
        "/nova?token=abc",
        "/nova?token=..%2F..%2Fetc%2Fpasswd",
    ] {
        expect_error(get(&app, bad, None).await?, 400).await?;
    }
    let long = "a".repeat(200);
    expect_error(get(&app, &format!("/nova?token={long}"), None).await?, 400).await?;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn nova_unreachable_is_503_and_recovers() -> Result<()> {
    let os = openstack::shared().await?;
    let chaos = ChaosProxy::start(&format!("127.0.0.1:{}", os.nova.port)).await?;
    // No cache: every request below must reach Nova (or fail to).
    let extra = format!(
        "[nova]\nendpoint_override = http://{}/v2.1\ncache_time = 0\n",
        chaos.addr()
    );
    let app = start_app(os, "kerbside", "kerbsidepass", &extra).await?;
    let token = os.insert_console_token(&ConsoleTokenSpec::spice_direct(5900))?;
    let path = format!("/nova?token={token}");
    assert_eq!(get(&app, &path, None).await?.status().as_u16(), 200);

    chaos.sever();
    let msg = expect_error(get(&app, &path, None).await?, 503).await?;
    assert_eq!(msg, "Nova is unreachable");
    assert_no_internals(&msg, &[chaos.addr().port(), os.nova.port]);

    chaos.restore();
    assert_eq!(get(&app, &path, None).await?.status().as_u16(), 200);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn service_user_without_admin_role_is_502_with_a_clear_message() -> Result<()> {
    let os = openstack::shared().await?;
    let app = start_app(os, "kerbside-noadmin", "noadminpass", "").await?;
    let token = os.insert_console_token(&ConsoleTokenSpec::spice_direct(5900))?;
    let msg = expect_error(get(&app, &format!("/nova?token={token}"), None).await?, 502).await?;
    assert!(
        msg.contains("the kerbside service user lacks the admin role in Nova"),
        "{msg}"
    );
    app.stop().await;

    // Wrong service credentials: Keystone refuses them, said plainly.
    let app = start_app(os, "kerbside", "wrong-password", "").await?;
    let msg = expect_error(get(&app, &format!("/nova?token={token}"), None).await?, 502).await?;
    assert!(msg.contains("rejected the credentials"), "{msg}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn operator_api_authentication_and_authorization() -> Result<()> {
    let os = openstack::shared().await?;
    let app = start_app(os, "kerbside", "kerbsidepass", "").await?;

    // Unauthenticated endpoints.
    let versions: Value = get(&app, "/", None).await?.json().await?;
    assert_eq!(versions["versions"][0]["id"], "v1");
    assert_eq!(
        get(&app, "/healthcheck", None).await?.status().as_u16(),
        200
    );
    let doc: Value = get(&app, "/openapi.json", None).await?.json().await?;
    assert!(doc["paths"]["/v1/sessions/{session_id}/terminate"]["post"].is_object());

    // No token: 401 with WWW-Authenticate, like keystonemiddleware.
    let resp = get(&app, "/v1/sources", None).await?;
    assert_eq!(
        resp.headers()["www-authenticate"],
        format!("Keystone uri=\"{}\"", os.keystone_root())
    );
    expect_error(resp, 401).await?;
    expect_error(get(&app, "/v1/sources", Some("garbage")).await?, 401).await?;

    let member = os.token("demo", "demopass", "demo").await?;
    let msg = expect_error(get(&app, "/v1/sources", Some(&member)).await?, 403).await?;
    assert!(msg.contains("kerbside:source:list"), "{msg}");

    let admin = os.token("admin", "adminpass", "admin").await?;
    let sources: Value = get(&app, "/v1/sources", Some(&admin)).await?.json().await?;
    assert!(
        sources["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "test")),
        "{sources}"
    );
    // Cached: a second call does not need Keystone, and answers the same.
    assert_eq!(
        get(&app, "/v1/sources/test", Some(&admin))
            .await?
            .status()
            .as_u16(),
        200
    );
    expect_error(get(&app, "/v1/sources/nope", Some(&admin)).await?, 404).await?;
    expect_error(get(&app, "/v1/nothing-here", Some(&admin)).await?, 404).await?;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn operator_api_resources_hide_secrets() -> Result<()> {
    require_all(&["qemu"])?;
    let os = openstack::shared().await?;
    let server = SpiceServer::with_password("hv-secret-ticket").await?;
    let console = TestConsole::for_server(&server);
    let app = start_app_with(
        TestApp::builder().console(console.clone()),
        &os.kerbside_ini("kerbside", "kerbsidepass"),
        "",
    )
    .await?;
    let admin = os.token("admin", "adminpass", "admin").await?;
    let base = format!("/v1/consoles/test/{}", console.uuid);

    let list = get(&app, "/v1/consoles?source=test", Some(&admin))
        .await?
        .text()
        .await?;
    let show = get(&app, &base, Some(&admin)).await?.text().await?;
    for body in [&list, &show] {
        assert!(!body.contains("hv-secret-ticket"), "ticket leaked: {body}");
        assert!(body.contains("\"has_ticket\":true"), "{body}");
    }
    // Issue a few tokens: each is audited; page through the events.
    for _ in 0..3 {
        let resp = get(&app, &format!("{base}/console.vv"), Some(&admin)).await?;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-virt-viewer");
    }
    let page: Value = get(&app, &format!("{base}/events?limit=2"), Some(&admin))
        .await?
        .json()
        .await?;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");
    let marker = page["next_marker"].as_i64().context("no next_marker")?;
    let rest: Value = get(
        &app,
        &format!("{base}/events?limit=2&marker={marker}"),
        Some(&admin),
    )
    .await?
    .json()
    .await?;
    assert!(
        rest["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{rest}"
    );
    assert!(
        rest["events"][0]["id"].as_i64() > Some(marker),
        "pagination went backwards: {rest}"
    );
    expect_error(
        get(&app, &format!("{base}/events?limit=0"), Some(&admin)).await?,
        400,
    )
    .await?;
    expect_error(
        get(&app, &format!("{base}/events?marker=x"), Some(&admin)).await?,
        400,
    )
    .await?;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn terminate_through_the_api_ends_a_live_session() -> Result<()> {
    // The hypervisor stays bound (`_server`) for the session to last.
    let LiveSession {
        os,
        _server,
        app,
        mut main,
        session,
        admin,
        ..
    } = live_session_behind_the_api("term").await?;
    let listed: Value = get(&app, "/v1/sessions", Some(&admin))
        .await?
        .json()
        .await?;
    assert!(
        listed["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["id"] == session.id.as_str())),
        "{listed}"
    );
    let member = os.token("demo", "demopass", "demo").await?;
    let terminate = url(&app, &format!("/v1/sessions/{}/terminate", session.id))?;
    let refused = reqwest::Client::new()
        .post(&terminate)
        .header("X-Auth-Token", &member)
        .send()
        .await?;
    expect_error(refused, 403).await?;
    let resp = reqwest::Client::new()
        .post(&terminate)
        .header("X-Auth-Token", &admin)
        .json(&serde_json::json!({"reason": "api says so"}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 202);

    assert!(
        spice_client::closed_within(&mut main.stream, Duration::from_secs(10)).await,
        "the terminated session stayed open"
    );
    let mut ended = false;
    for _ in 0..50 {
        let s: Value = get(&app, &format!("/v1/sessions/{}", session.id), Some(&admin))
            .await?
            .json()
            .await?;
        if s["session"]["live"] == false {
            assert_eq!(s["session"]["end_reason"], "terminated: api says so", "{s}");
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "session not recorded as ended");
    // Terminating it again conflicts.
    let again = reqwest::Client::new()
        .post(&terminate)
        .header("X-Auth-Token", &admin)
        .send()
        .await?;
    expect_error(again, 409).await?;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn keystone_restart_and_revoked_service_token_reauthenticate() -> Result<()> {
    let os = openstack::shared().await?;
    let port = kerbside_tests::ports::free_port()?;
    let mut keystone = os.extra_keystone(port)?;
    let user = format!(
        "kerbside-restart-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let user_id = os.create_service_user(&user, "restartpass").await?;
    let auth_url = format!("http://127.0.0.1:{port}/");
    let app = start_app_with(
        TestApp::builder(),
        &os.kerbside_ini_at(&auth_url, &user, "restartpass"),
        "",
    )
    .await?;
    let admin = os.token("admin", "adminpass", "admin").await?;
    assert_eq!(
        get(&app, "/v1/sources", Some(&admin))
            .await?
            .status()
            .as_u16(),
        200
    );

    // Keystone down: a token kerbside has not seen cannot be checked.
    keystone.stop();
    let fresh = os.token("admin", "adminpass", "admin").await?;
    let msg = expect_error(get(&app, "/v1/sources", Some(&fresh)).await?, 503).await?;
    assert!(msg.contains("Keystone"), "{msg}");

    // Keystone back; meanwhile kerbside's own service token was revoked (disabling a user
    // revokes its tokens): kerbside re-authenticates once and carries on.
    let _keystone = os.extra_keystone(port)?;
    os.set_user_enabled(&user_id, false).await?;
    os.set_user_enabled(&user_id, true).await?;
    let newer = os.token("admin", "adminpass", "admin").await?;
    assert_eq!(
        get(&app, "/v1/sources", Some(&newer))
            .await?
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        get(&app, "/v1/sources", Some(&fresh))
            .await?
            .status()
            .as_u16(),
        200
    );
    app.stop().await;
    Ok(())
}

/// A TCP relay to `upstream` that can be switched to hang: from then on it accepts
/// connections and reads nothing, and stops forwarding on the ones it has (Keystone
/// "accepting but never answering"). With no upstream it hangs from the start.
struct HangingRelay {
    addr: std::net::SocketAddr,
    hung: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingRelay {
    async fn start(upstream: Option<u16>) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hung = Arc::new(AtomicBool::new(upstream.is_none()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (hung.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let Some(port) = upstream.filter(|_| !flag.load(Ordering::SeqCst)) else {
                    held.push(client);
                    continue;
                };
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let pump =
                        |flag: Arc<AtomicBool>,
                         mut from: tokio::net::tcp::OwnedReadHalf,
                         mut to: tokio::net::tcp::OwnedWriteHalf| async move {
                            let mut buf = vec![0u8; 16384];
                            loop {
                                let n = match from.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if flag.load(Ordering::SeqCst) {
                                    // Hung: keep both ends open, forward nothing, ever.
                                    std::future::pending::<()>().await;
                                }
                                if to.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                    let up = tokio::spawn(pump(flag.clone(), cr, sw));
                    let down = tokio::spawn(pump(flag, sr, cw));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(HangingRelay {
            addr,
            hung,
            accepted,
            task,
        })
    }

    fn hang(&self) {
        self.hung.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HangingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests in flight: a counter of finished ones and their (status, body).
type InFlight = (
    Arc<std::sync::atomic::AtomicUsize>,
    Vec<tokio::task::JoinHandle<Result<(u16, String)>>>,
);

/// Fires `n` concurrent GETs of `path` with distinct tokens that Keystone has never seen;
/// returns a counter of finished ones and the handles (status, body).
fn fire_uncached(app: &TestApp, path: &str, n: usize) -> Result<InFlight> {
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let target = url(app, path)?;
    let handles = (0..n)
        .map(|i| {
            let (client, target, done) = (client.clone(), target.clone(), done.clone());
            tokio::spawn(async move {
                let resp = client
                    .get(&target)
                    .header(
                        "X-Auth-Token",
                        format!("never-seen-token-{i}-{}", uuid::Uuid::new_v4()),
                    )
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let body = resp.text().await?;
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok((status, body))
            })
        })
        .collect();
    Ok((done, handles))
}

#[tokio::test]
async fn a_hung_keystone_fails_requests_together_and_healthcheck_still_answers() -> Result<()> {
    use std::sync::atomic::Ordering;
    let os = openstack::shared().await?;
    let hung = HangingRelay::start(None).await?;
    let timeout_s = 3;
    let app = start_app_with(
        TestApp::builder(),
        &os.kerbside_ini_at(
            &format!("http://{}/", hung.addr),
            "kerbside",
            "kerbsidepass",
        ),
        &format!("[keystone_authtoken]\nhttp_request_timeout = {timeout_s}\n"),
    )
    .await?;
    let started = std::time::Instant::now();
    let (done, handles) = fire_uncached(&app, "/v1/sources", 50)?;
    // Keystone is wanted by all 50 and answers none; the node itself is fine.
    let health = get(&app, "/healthcheck", None).await?;
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "/healthcheck waited for the requests that need Keystone"
    );
    for handle in handles {
        let (status, body) = handle.await??;
        assert_eq!(status, 503, "{body}");
        let body: Value = serde_json::from_str(&body)?;
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(msg, "Keystone is unreachable", "{body}");
        assert_no_internals(msg, &[hung.addr.port()]);
    }
    let elapsed = started.elapsed();
    // One shared authentication, failed after the timeout: not one per request. Served one
    // by one per worker, 50 requests would take 25 x 3 s; the bound leaves wide slack.
    assert!(
        elapsed < Duration::from_secs(5 * timeout_s),
        "50 requests needing a hung Keystone took {elapsed:?} (timeout {timeout_s} s)"
    );
    assert!(
        hung.accepted() < 10,
        "{} connections to Keystone for 50 requests: the authentication was not shared",
        hung.accepted()
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn cached_tokens_keep_working_while_keystone_hangs() -> Result<()> {
    use std::sync::atomic::Ordering;
    let os = openstack::shared().await?;
    let relay = HangingRelay::start(Some(os.keystone.port)).await?;
    let app = start_app_with(
        TestApp::builder(),
        &os.kerbside_ini_at(
            &format!("http://{}/", relay.addr),
            "kerbside",
            "kerbsidepass",
        ),
        "[keystone_authtoken]\nhttp_request_timeout = 4\n",
    )
    .await?;
    let admin = os.token("admin", "adminpass", "admin").await?;
    // Validated once through the relay while Keystone answers: now cached.
    assert_eq!(
        get(&app, "/v1/sources", Some(&admin))
            .await?
            .status()
            .as_u16(),
        200
    );
    relay.hang();
    let (done, handles) = fire_uncached(&app, "/v1/sources", 20)?;
    for _ in 0..3 {
        assert_eq!(
            get(&app, "/v1/sources", Some(&admin))
                .await?
                .status()
                .as_u16(),
            200
        );
        assert_eq!(
            get(&app, "/healthcheck", None).await?.status().as_u16(),
            200
        );
    }
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "a cached token waited for requests that need the hung Keystone"
    );
    for handle in handles {
        let (status, body) = handle.await??;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("Keystone is unreachable"), "{body}");
        assert_no_internals(&body, &[relay.addr.port(), os.keystone.port]);
    }
    app.stop().await;
    Ok(())
}

fn lookups(app: &TestApp, result: &str) -> u64 {
    app.running
        .metrics
        .api
        .nova_lookups
        .with_label_values(&[result])
        .get()
}

#[tokio::test]
async fn nova_answers_are_cached_so_bogus_tokens_reach_nova_once() -> Result<()> {
    let os = openstack::shared().await?;
    let app = start_app(
        os,
        "kerbside",
        "kerbsidepass",
        "[api]\nnova_rate = 0\n[nova]\nnegative_cache_time = 3\n",
    )
    .await?;
    let bogus = uuid::Uuid::new_v4();
    for _ in 0..8 {
        expect_error(get(&app, &format!("/nova?token={bogus}"), None).await?, 404).await?;
    }
    assert_eq!(
        lookups(&app, "not_found"),
        1,
        "Nova was asked more than once"
    );
    // Concurrent requests with one bogus token share one lookup too.
    let other = uuid::Uuid::new_v4();
    let path = format!("/nova-console.vv?token={other}");
    let mut handles = Vec::new();
    for _ in 0..10 {
        let target = url(&app, &path)?;
        handles.push(tokio::spawn(async move {
            Ok::<_, anyhow::Error>(reqwest::get(target).await?.status().as_u16())
        }));
    }
    for handle in handles {
        assert_eq!(handle.await??, 404);
    }
    assert_eq!(
        lookups(&app, "not_found"),
        2,
        "concurrent lookups were not shared"
    );
    assert_eq!(app.running.metrics.api.nova_lookup_cache_hits.get(), 7 + 9);

    // A found token is cached as well: two exchanges, one lookup (and two kerbside tokens).
    let token = os.insert_console_token(&ConsoleTokenSpec::spice_direct(5900))?;
    for _ in 0..2 {
        assert_eq!(
            get(&app, &format!("/nova?token={token}"), None)
                .await?
                .status()
                .as_u16(),
            200
        );
    }
    assert_eq!(lookups(&app, "found"), 1);

    // "Not found" is remembered briefly only: a token Nova issues later is then found.
    let mut asked_again = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = get(&app, &format!("/nova?token={bogus}"), None).await?;
        if lookups(&app, "not_found") >= 3 {
            asked_again = true;
            break;
        }
    }
    assert!(asked_again, "the negative answer never expired");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_flood_of_nova_tokens_is_rate_limited_per_address() -> Result<()> {
    let os = openstack::shared().await?;
    let app = start_app(
        os,
        "kerbside",
        "kerbsidepass",
        "[api]\nnova_rate = 6\nnova_burst = 3\ntrusted_proxies = 127.0.0.1\n",
    )
    .await?;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..12 {
        let path = if i % 2 == 0 {
            "/nova"
        } else {
            "/nova-console.vv"
        };
        let resp = get(
            &app,
            &format!("{path}?token={}", uuid::Uuid::new_v4()),
            None,
        )
        .await?;
        let status = resp.status().as_u16();
        if status == 429 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let msg = expect_error(resp, 429).await?;
            assert!(msg.contains("too many requests"), "{msg}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[..3], [404, 404, 404], "{statuses:?}");
    // One request per 10 s refills; however slow this machine, most of the flood is refused.
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 7,
        "{statuses:?}"
    );
    assert!(
        retry_after.is_some_and(|s| (1..=10).contains(&s)),
        "Retry-After: {retry_after:?}"
    );
    let asked = lookups(&app, "not_found");
    assert!(asked <= 5, "Nova was asked {asked} times for a flood of 12");
    assert!(
        app.running
            .metrics
            .api
            .rate_limited
            .with_label_values(&["/nova"])
            .get()
            >= 3
    );

    // Behind a trusted reverse proxy, each forwarded client has its own bucket.
    let resp = reqwest::Client::new()
        .get(url(&app, &format!("/nova?token={}", uuid::Uuid::new_v4()))?)
        .header("X-Forwarded-For", "198.51.100.7")
        .send()
        .await?;
    expect_error(resp, 404).await?;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn terminate_refuses_bad_bodies_and_revokes_the_sessions_token() -> Result<()> {
    let LiveSession {
        _server,
        console,
        app,
        token,
        mut main,
        session,
        admin,
        ..
    } = live_session_behind_the_api("revoke").await?;

    // The session shows its console's UUID and byte counts.
    let shown: Value = get(&app, &format!("/v1/sessions/{}", session.id), Some(&admin))
        .await?
        .json()
        .await?;
    assert_eq!(
        shown["session"]["console_uuid"],
        console.uuid.as_str(),
        "{shown}"
    );
    assert!(shown["session"]["bytes_to_client"].is_i64(), "{shown}");
    assert!(shown["session"]["bytes_to_server"].is_i64(), "{shown}");
    let listed: Value = get(&app, "/v1/sessions", Some(&admin))
        .await?
        .json()
        .await?;
    assert_eq!(listed["sessions"][0]["console_uuid"], console.uuid.as_str());

    let terminate = url(&app, &format!("/v1/sessions/{}/terminate", session.id))?;
    let post = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(&terminate)
            .header("X-Auth-Token", &admin)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    for (body, why) in [
        (b"{not json".to_vec(), "malformed JSON"),
        (br#"{"reason": 5}"#.to_vec(), "a number for reason"),
        (br#"{"reason": ["a"]}"#.to_vec(), "a list for reason"),
        (br#"{"reasn": "typo"}"#.to_vec(), "an unknown field"),
        (br#"[1, 2]"#.to_vec(), "a list"),
    ] {
        let msg = expect_error(post(body).await?, 400).await?;
        assert!(msg.contains("invalid request body"), "{why}: {msg}");
    }
    // 10 MB: refused (and drained, so that the client reads the answer).
    let msg = expect_error(post(vec![b' '; 10 * 1024 * 1024]).await?, 413).await?;
    assert!(msg.contains("16384"), "{msg}");
    // None of that ended the session or touched its token.
    let still: Value = get(&app, &format!("/v1/sessions/{}", session.id), Some(&admin))
        .await?
        .json()
        .await?;
    assert_eq!(
        still["session"]["live"], true,
        "a bad body ended the session: {still}"
    );
    assert!(
        app.audit_events("session.termination_requested")
            .await?
            .is_empty()
    );

    // An empty body is fine (default reason), and the token is revoked with the session.
    let resp = post(Vec::new()).await?;
    assert_eq!(resp.status().as_u16(), 202);
    let accepted: Value = resp.json().await?;
    assert_eq!(accepted["tokens_revoked"], 1, "{accepted}");
    assert_eq!(
        accepted["reason"], "terminated through the API",
        "{accepted}"
    );
    assert!(
        spice_client::closed_within(&mut main.stream, Duration::from_secs(10)).await,
        "the terminated session stayed open"
    );
    // The same .vv password, from the same client, no longer opens the console.
    let again = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(
        again.err(),
        Some(kerbside::spice::LinkError::PermissionDenied),
        "the terminated session's token still opens the console"
    );
    let hash = kerbside::token::hash_token(&token);
    let row = app
        .db()
        .run(move |conn| models::find_token_by_hash(conn, &hash))
        .await?
        .context("token row")?;
    assert!(row.revoked_at.is_some(), "{row:?}");
    assert!(
        row.revoke_reason
            .as_deref()
            .is_some_and(|r| r.contains("terminated")),
        "{row:?}"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn terminate_revokes_and_listings_carry_the_console_uuid_on_both_backends() -> Result<()> {
    use kerbside::db::models::{
        NewConsole, NewSession, SessionId, TokenBinding, bind_token, create_session,
        get_session_listing, insert_token, list_session_listings, terminate_session,
        upsert_console, upsert_source,
    };
    for database in [
        kerbside_tests::db::TestDatabase::sqlite().await?,
        kerbside_tests::db::TestDatabase::mariadb().await?,
    ] {
        let backend = database.backend();
        let uuid = uuid::Uuid::new_v4().to_string();
        let (session_id, revoked, listing, listed, token) = database
            .run(move |conn| {
                let source = upsert_source(conn, "lab", "static")?;
                let console = upsert_console(
                    conn,
                    &NewConsole {
                        source_id: source.id,
                        uuid: uuid.clone(),
                        name: "vm one".to_owned(),
                        hypervisor: "hv".to_owned(),
                        hypervisor_ip: "192.0.2.10".to_owned(),
                        insecure_port: Some(5900),
                        secure_port: None,
                        host_subject: None,
                        ticket: None,
                        firewall_profile: None,
                    },
                )?;
                let token = insert_token(
                    conn,
                    console.id,
                    &kerbside::token::hash_token("a-token-of-this-test"),
                    Duration::from_secs(300),
                )?;
                let connection_id = models::allocate_connection_id(conn)?;
                let session = create_session(
                    conn,
                    &NewSession {
                        id: SessionId::generate(),
                        console_id: console.id,
                        token_id: Some(token.id),
                        client_address: "192.0.2.7".to_owned(),
                        node: "n1".to_owned(),
                        proxy_connection_id: connection_id,
                        upstream_session_id: None,
                        firewall_profile: None,
                        transport: "tls".to_owned(),
                    },
                )?;
                assert_eq!(
                    bind_token(conn, token.id, &session.id, "192.0.2.7")?,
                    TokenBinding::Bound
                );
                let (_, revoked) = terminate_session(conn, &session.id, "test", "tester")?;
                let listing = get_session_listing(conn, &session.id)?;
                let listed = list_session_listings(conn, true)?;
                let token = models::get_token(conn, token.id)?;
                Ok((session.id, revoked, listing, listed, token))
            })
            .await?;
        assert_eq!(revoked, 1, "{backend:?}");
        assert!(token.revoked_at.is_some(), "{backend:?}: {token:?}");
        assert_eq!(listing.console_name.as_deref(), Some("vm one"));
        assert!(listing.console_uuid.is_some());
        assert!(
            listed
                .iter()
                .any(|l| l.session.id == session_id && l.console_uuid == listing.console_uuid),
            "{backend:?}: {listed:?}"
        );
        // A second request for the same session revokes nothing more (and is recorded).
        let id = session_id.clone();
        let again = database
            .run(move |conn| terminate_session(conn, &id, "again", "tester"))
            .await?;
        assert_eq!(again.1, 0, "{backend:?}");
    }
    Ok(())
}
