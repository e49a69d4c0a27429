//! The HTTP API against a REAL Keystone and Nova API (from PyPI, shared by these tests):
//! the Nova spice-direct token exchange end to end through the proxy to QEMU, its errors,
//! the Keystone-authenticated operator API, termination, Keystone restarts and the broker
//! call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use kerbside::cli::Component;
use kerbside::db::models;
use kerbside::spice::ChannelType;
use kerbside_tests::app::TestApp;
use kerbside_tests::app::TestConsole;
use kerbside_tests::chaos::ChaosProxy;
use kerbside_tests::clients::remote_viewer;
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
    let viewer = remote_viewer(&vv_path, Duration::from_secs(20)).await?;
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
    let extra = format!("[nova]\nendpoint_override = http://{}/v2.1\n", chaos.addr());
    let app = start_app(os, "kerbside", "kerbsidepass", &extra).await?;
    let token = os.insert_console_token(&ConsoleTokenSpec::spice_direct(5900))?;
    let path = format!("/nova?token={token}");
    assert_eq!(get(&app, &path, None).await?.status().as_u16(), 200);

    chaos.sever();
    let msg = expect_error(get(&app, &path, None).await?, 503).await?;
    assert!(msg.contains("Nova") && msg.contains("unreachable"), "{msg}");

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
    let server = SpiceServer::builder()
        .password(Some("hv-secret-ticket"))
        .start()
        .await?;
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
    require_all(&["qemu"])?;
    let os = openstack::shared().await?;
    let server = SpiceServer::builder()
        .password(Some("term"))
        .start()
        .await?;
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
    let mut main = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("link: {e}"))?;
    let session = app
        .sessions(true)
        .await?
        .into_iter()
        .next()
        .context("no live session")?;
    let admin = os.token("admin", "adminpass", "admin").await?;
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

    let mut buf = vec![0u8; 65536];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match main.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the terminated session stayed open");
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

/// What the stub compute endpoint saw.
#[derive(Default)]
struct Seen {
    create_requests: Vec<String>,
}

/// A compute endpoint that answers `POST /servers/{id}/remote-consoles` with Nova's recorded
/// spice-direct sample (carrying `token`), and relays everything else to the real Nova API.
/// (Creating a console needs nova-compute; the token lookup that follows is real.)
async fn stub_compute(nova_port: u16, token: String, seen: Arc<Mutex<Seen>>) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let sample: Value = serde_json::from_str(include_str!(
        "../fixtures/nova/os-remote-consoles-v2.99-create-spice-direct-console-resp.json"
    ))?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (token, seen, mut sample) = (token.clone(), seen.clone(), sample.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                if text.starts_with("POST ") && text.contains("/remote-consoles ") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    let _ = client.read_exact(&mut body).await;
                    seen.lock()
                        .unwrap()
                        .create_requests
                        .push(format!("{text}{}", String::from_utf8_lossy(&body)));
                    sample["remote_console"]["url"] =
                        Value::String(format!("http://127.0.0.1:13002/nova?token={token}"));
                    let out = sample.to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{out}",
                        out.len()
                    );
                    let _ = client.write_all(resp.as_bytes()).await;
                    return;
                }
                let Ok(mut nova) = tokio::net::TcpStream::connect(("127.0.0.1", nova_port)).await
                else {
                    return;
                };
                if nova.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut nova).await;
                }
            });
        }
    });
    Ok(port)
}

#[tokio::test]
async fn broker_call_returns_a_vv_in_one_round_trip() -> Result<()> {
    let os = openstack::shared().await?;
    let server_id = uuid::Uuid::new_v4().to_string();
    let nova_token = os.insert_console_token(&ConsoleTokenSpec {
        instance_uuid: server_id.clone(),
        ..ConsoleTokenSpec::spice_direct(5900)
    })?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stub = stub_compute(os.nova.port, nova_token, seen.clone()).await?;
    let app = start_app(
        os,
        "kerbside",
        "kerbsidepass",
        &format!("[nova]\nendpoint_override = http://127.0.0.1:{stub}/v2.1\n"),
    )
    .await?;
    let user = os.token("demo", "demopass", "demo").await?;
    let broker = |id: &str| url(&app, &format!("/v1/servers/{id}/console"));

    let resp = reqwest::Client::new()
        .post(broker(&server_id)?)
        .header("X-Auth-Token", &user)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-virt-viewer");
    let vv = resp.text().await?;
    assert!(vv_value(&vv, "password").is_some(), "{vv}");
    {
        let seen = seen.lock().unwrap();
        let request = seen.create_requests.first().context("Nova was not asked")?;
        let lower = request.to_ascii_lowercase();
        assert!(
            lower.contains("openstack-api-version: compute 2.99"),
            "{request}"
        );
        assert!(lower.contains(&format!("x-auth-token: {}", user.to_ascii_lowercase())));
        let body: Value =
            serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap_or_default())?;
        let expected: Value = serde_json::from_str(include_str!(
            "../fixtures/nova/os-remote-consoles-v2.99-create-spice-direct-console-req.json"
        ))?;
        assert_eq!(body, expected);
    }
    let id = server_id.clone();
    app.db()
        .run(move |conn| models::get_console_by_source_name(conn, "nova", &id))
        .await?;
    // No token: 401.
    let resp = reqwest::Client::new()
        .post(broker(&server_id)?)
        .send()
        .await?;
    expect_error(resp, 401).await?;
    expect_error(
        reqwest::Client::new()
            .post(broker("not-a-uuid")?)
            .header("X-Auth-Token", &user)
            .send()
            .await?,
        400,
    )
    .await?;
    app.stop().await;

    // Against the real Nova API, as the user: an unknown server is Nova's 404.
    let app = start_app(os, "kerbside", "kerbsidepass", "").await?;
    let resp = reqwest::Client::new()
        .post(url(
            &app,
            &format!("/v1/servers/{}/console", uuid::Uuid::new_v4()),
        )?)
        .header("X-Auth-Token", &user)
        .send()
        .await?;
    let msg = expect_error(resp, 404).await?;
    assert!(msg.contains("Nova"), "{msg}");
    app.stop().await;
    Ok(())
}
