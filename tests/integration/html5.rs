//! Browser consoles in a real browser: headless Chromium (`kerbside_tests::browser`) opens
//! `/spice_auto.html` on kerbside's API, spice-html5 connects to the proxy's WebSocket, and
//! the page's canvas must show the VM's screen as a direct `spicy-screenshot` sees it. Tokens
//! come from `kerbside-manage token create --html5` and from the real Nova
//! (`openstack_full`), whose spice-html5 console of a booted server is QEMU behind
//! `[nova] console_host_map`. Refusals (a wrong, an expired token, a page of another origin)
//! must be on the page in words; sessions are recorded with transport `websocket` and end on
//! terminate. A raw WebSocket client checks the transport itself.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kerbside::db::models;
use kerbside::service::Component;
use kerbside_tests::app::{TestApp, TestConsole, program};
use kerbside_tests::browser::{Browser, BrowserOptions, png_rgba};
use kerbside_tests::clients::ppm_pixels;
use kerbside_tests::openstack_full::{
    FAKE_CONSOLE_HOST, FAKE_CONSOLE_PORT, console_ports, fake_console_vm, full,
};
use kerbside_tests::pki::TestPki;
use kerbside_tests::ports::free_port;
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::screens::{
    rgba_to_ppm, same_screen, screen_difference, stable_direct_screenshot,
};
use kerbside_tests::spice_client::{self, Stream, gtk_caps};
use kerbside_tests::wait::eventually;
use serde_json::json;

/// Generous: QEMU under TCG and Chromium share two busy cores.
const SETTLE: Duration = Duration::from_secs(90);
/// Where the page says what is happening.
const STATUS: &str = "#kerbside-status";
/// spice-html5's canvas of the primary surface.
const CANVAS: &str = "#spice-screen canvas";

/// `[html5]` on a free port, the API without Keystone.
fn html5_ini(ws_port: u16, extra: &str) -> String {
    format!(
        "\n[api]\nauth_strategy = noauth\nbind_host = 127.0.0.1\nbind_port = 0\n\n[html5]\nenabled = true\nbind_host = 127.0.0.1\n\
         bind_port = {ws_port}\n{extra}\n"
    )
}

/// kerbside (proxy and API) with browser consoles and `consoles`.
async fn start_app(consoles: &[TestConsole], extra: &str) -> Result<TestApp> {
    let mut builder = TestApp::builder()
        .components(&[Component::Proxy, Component::Api])
        .ini(&html5_ini(free_port()?, extra));
    for console in consoles {
        builder = builder.console(console.clone());
    }
    let app = builder.start().await?;
    anyhow::ensure!(app.websocket_addr().is_some(), "no WebSocket listener");
    Ok(app)
}

/// Chromium accepting the test CA's certificate on `wss://` (it is not in the system's trust
/// store).
async fn browser(dir: &Path) -> Result<Browser> {
    Browser::start_with(
        dir,
        BrowserOptions {
            accept_insecure_certs: true,
            ..Default::default()
        },
    )
    .await
}

/// Runs `kerbside-manage` on the app's configuration; fails unless it succeeds.
async fn manage(app: &TestApp, args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(program("kerbside-manage")?)
        .args(app.config_args())
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "kerbside-manage {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// `kerbside-manage token create --html5`: (token, browser link).
async fn manage_link(app: &TestApp, console: &str, ttl: Option<u64>) -> Result<(String, String)> {
    let ttl = ttl.map(|t| t.to_string());
    let mut args = vec![
        "token",
        "create",
        "--source",
        "test",
        "--console",
        console,
        "--html5",
    ];
    if let Some(ttl) = &ttl {
        args.extend(["--ttl", ttl]);
    }
    let out = manage(app, &args).await?;
    let mut lines = out.lines();
    let token = lines.next().context("no token printed")?.to_owned();
    let link = lines.next().context("no link printed")?.to_owned();
    Ok((token, link))
}

/// The page's status once it contains one of `wanted`, or an error saying what it showed.
async fn status_becomes(browser: &Browser, wanted: &[&str]) -> Result<String> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let text = browser.text_content(STATUS).await?;
        if let Some(text) = text
            .as_deref()
            .filter(|t| wanted.iter().any(|w| t.contains(w)))
        {
            return Ok(text.to_owned());
        }
        if tokio::time::Instant::now() > deadline {
            let _ = browser.screenshot("status").await;
            bail!(
                "the page never said {wanted:?}; it said {text:?}; console: {:?}",
                browser.console_log().await.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The canvas's pixels as a PPM once they equal `expected`, or the last ones read.
async fn canvas_like(browser: &Browser, expected: &Option<Vec<u8>>) -> Result<Option<Vec<u8>>> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let shot = match browser.canvas_rgba(CANVAS).await {
            Ok((w, h, rgba)) => Some(rgba_to_ppm(w, h, &rgba)?),
            Err(_) => None,
        };
        if shot.is_some() && screen_difference(expected, &shot)?.is_none() {
            return Ok(shot);
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(shot);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks that the page shows `expected`: the canvas's pixels, and a screenshot of the canvas
/// element as the browser draws it (the page does not scale it).
async fn assert_page_shows(browser: &Browser, expected: &Option<Vec<u8>>) -> Result<()> {
    let canvas = canvas_like(browser, expected).await?;
    if let Some(ppm) = &canvas {
        std::fs::write(browser.dir().join("canvas.ppm"), ppm)?;
    }
    same_screen(expected, &canvas).context("the canvas's pixels vs spicy-screenshot direct")?;
    let png = browser.element_screenshot(CANVAS, "canvas").await?;
    let (w, h, rgba) = png_rgba(&png)?;
    // The element's screenshot includes its border (spice.css draws one): cut it off. Its
    // outermost pixels are softened by Chromium's compositor at the layer's edge, so the
    // comparison leaves out a margin of EDGE pixels on both images.
    let inner = browser
        .execute(
            "const c = document.querySelector(arguments[0]); \
             return [c.clientLeft, c.clientTop, c.clientWidth, c.clientHeight];",
            vec![json!(CANVAS)],
        )
        .await?;
    let [left, top, width, height] = [0, 1, 2, 3].map(|i| inner[i].as_u64().unwrap_or(0) as u32);
    anyhow::ensure!(
        width > 2 * EDGE && height > 2 * EDGE,
        "canvas of {width}x{height}"
    );
    let rect = (width - 2 * EDGE, height - 2 * EDGE);
    let shown = crop(w, h, &rgba, (left + EDGE, top + EDGE, rect.0, rect.1))?;
    let expected = expected.as_deref().context("no direct screenshot")?;
    let (ew, eh, pixels) = ppm_pixels(expected)?;
    let rgb_to_rgba: Vec<u8> = pixels
        .chunks(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let wanted = crop(ew, eh, &rgb_to_rgba, (EDGE, EDGE, rect.0, rect.1))?;
    same_screen(
        &Some(rgba_to_ppm(rect.0, rect.1, &wanted)?),
        &Some(rgba_to_ppm(rect.0, rect.1, &shown)?),
    )
    .context("a screenshot of the canvas element vs spicy-screenshot direct")?;
    Ok(())
}

/// Pixels at the edge of the canvas element that its screenshot may soften.
const EDGE: u32 = 4;

/// The `(left, top, width, height)` rectangle of a `w`x`h` RGBA image.
fn crop(
    w: u32,
    h: u32,
    rgba: &[u8],
    (left, top, width, height): (u32, u32, u32, u32),
) -> Result<Vec<u8>> {
    anyhow::ensure!(
        left + width <= w && top + height <= h,
        "({left},{top}) {width}x{height} is outside {w}x{h}"
    );
    let mut out = Vec::with_capacity((width * height * 4) as usize);
    for y in top..top + height {
        let start = ((y * w + left) * 4) as usize;
        out.extend_from_slice(&rgba[start..start + (width * 4) as usize]);
    }
    Ok(out)
}

async fn live_websocket_session(app: &TestApp) -> Result<models::Session> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if let Some(session) = app.sessions(true).await?.into_iter().next() {
            return Ok(session);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no live session was recorded");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_the_vm_screen_through_kerbside_and_ends_on_terminate() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot", "chromium"])?;
    let vm = SpiceServer::with_password("html5-screen").await?;
    let console = TestConsole::for_server(&vm);
    let app = start_app(std::slice::from_ref(&console), "").await?;
    let out = tempfile::tempdir()?;
    let direct = stable_direct_screenshot(&vm, "html5-screen", out.path()).await?;

    let (_, link) = manage_link(&app, &console.uuid, None).await?;
    let api = app.api_url().context("no API")?;
    assert!(
        link.starts_with(&format!("{api}/spice_auto.html?token=")),
        "{link}"
    );
    let browser = browser(&out.path().join("browser")).await?;
    browser.goto(&link).await?;
    let status = status_becomes(&browser, &["Connected"]).await?;
    assert!(
        status.contains(&format!("vm {}", &console.uuid[..8])),
        "{status}"
    );
    assert_page_shows(&browser, &direct).await?;

    // One session, over WebSocket, with its channels, shown as such to operators.
    let session = live_websocket_session(&app).await?;
    assert_eq!(session.transport, "websocket");
    assert_eq!(app.sessions(false).await?.len(), 1);
    let id = session.id.clone();
    let channels = app
        .db()
        .run(move |conn| models::list_channels(conn, &id))
        .await?;
    assert!(channels.len() >= 2, "channels: {channels:?}");
    let list = manage(&app, &["session", "list"]).await?;
    let line = list
        .lines()
        .find(|l| l.starts_with(session.id.as_str()))
        .with_context(|| format!("the session is not listed:\n{list}"))?;
    assert!(line.contains(" websocket "), "{list}");
    assert!(
        list.lines()
            .next()
            .unwrap_or_default()
            .contains("TRANSPORT"),
        "{list}"
    );
    let metrics = app.running.metrics.render();
    assert!(
        metrics.contains("kerbside_proxy_transport_sessions_total{transport=\"websocket\"} 1"),
        "{metrics}"
    );

    // The operator ends it: the page says so and the session is over.
    manage(&app, &["session", "terminate", session.id.as_str()]).await?;
    let status = status_becomes(&browser, &["session ended"]).await?;
    assert_eq!(
        browser
            .execute(
                "return document.getElementById('kerbside-status').dataset.state;",
                vec![]
            )
            .await?,
        json!("ended"),
        "{status}"
    );
    let ended = eventually(SETTLE, || async {
        Ok(app.sessions(true).await?.is_empty())
    })
    .await?;
    assert!(ended, "the session did not end");
    let session = app.newest_session().await?;
    assert!(
        session
            .end_reason
            .as_deref()
            .unwrap_or_default()
            .contains("terminated"),
        "{session:?}"
    );
    browser.close().await?;
    app.stop().await;
    vm.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_and_foreign_origin_consoles_are_refused_on_the_page() -> Result<()> {
    require_all(&["chromium"])?;
    // No VM is reached: every refusal comes before the hypervisor link.
    let console = TestConsole::at("127.0.0.1:1".parse()?, "unused");
    let app = start_app(std::slice::from_ref(&console), "").await?;
    let api = app.api_url().context("no API")?;
    let out = tempfile::tempdir()?;
    let browser = browser(&out.path().join("browser")).await?;

    // A token kerbside never issued (kerbside's shape), and one Nova never issued.
    let wrong = "A".repeat(kerbside::token::TOKEN_LENGTH);
    for (token, status, words) in [
        (wrong.as_str(), 404, "console token not found or expired"),
        ("bad.token", 400, "not a Nova console token"),
    ] {
        let url = format!("{api}/spice_auto.html?token={token}");
        let resp = reqwest::get(&url).await?;
        assert_eq!(resp.status().as_u16(), status, "{url}");
        assert!(
            resp.headers()["content-type"]
                .to_str()?
                .starts_with("text/html")
        );
        browser.goto(&url).await?;
        let text = status_becomes(&browser, &[words]).await?;
        assert!(text.starts_with("The console cannot be opened"), "{text}");
    }

    // An expired token: valid for a second, then refused on the page.
    let (_, link) = manage_link(&app, &console.uuid, Some(1)).await?;
    let expired = eventually(SETTLE, || async {
        Ok(reqwest::get(&link).await?.status().as_u16() == 404)
    })
    .await?;
    assert!(expired, "the token never expired");
    browser.goto(&link).await?;
    status_becomes(&browser, &["console token not found or expired"]).await?;

    // A page of another origin: the same page, reached as http://localhost:PORT, opens a
    // WebSocket to 127.0.0.1, which refuses it with a close frame the page explains.
    let (_, link) = manage_link(&app, &console.uuid, None).await?;
    let foreign = link.replace("127.0.0.1", "localhost");
    assert_ne!(foreign, link);
    browser.goto(&foreign).await?;
    let text = status_becomes(&browser, &["origin not allowed"]).await?;
    assert!(text.contains("refused this page"), "{text}");
    assert!(app.sessions(false).await?.is_empty());
    let metrics = app.running.metrics.render();
    assert!(
        metrics.contains("kerbside_proxy_link_failures_total{reason=\"websocket_origin\"}"),
        "{metrics}"
    );
    browser.close().await?;
    app.stop().await;
    Ok(())
}

/// A WebSocket to the proxy (TLS with the test CA) as a SPICE byte stream, the way
/// spice-html5 opens one: `binary` subprotocol, an `Origin`.
async fn websocket(app: &TestApp, origin: Option<&str>) -> Result<(Box<dyn Stream>, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let addr = app.websocket_addr().context("no WebSocket listener")?;
    let mut options = app.client();
    options.addr = addr;
    let tls = spice_client::connect(&options).await?;
    let mut request = format!("wss://{addr}/websockify").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(origin)?);
    }
    let (ws, response) = tokio_tungstenite::client_async(request, tls).await?;
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((
        Box::new(kerbside::proxy::transport::WsStream::new(ws)),
        protocol,
    ))
}

#[tokio::test]
async fn the_websocket_runs_the_same_link_stage_as_tls() -> Result<()> {
    require_all(&["qemu"])?;
    let vm = SpiceServer::with_password("ws-link").await?;
    let console = TestConsole::for_server(&vm);
    let app = start_app(
        std::slice::from_ref(&console),
        "allowed_origins = horizon.example.com\n",
    )
    .await?;
    let token = app
        .mint_token(&console.uuid, Duration::from_secs(600))
        .await?;
    let main = |id| {
        kerbside::spice::LinkMessage::new(
            id,
            kerbside::spice::ChannelType::Main,
            0,
            gtk_caps(kerbside::spice::ChannelType::Main),
        )
    };

    // A wrong token gets SPICE's own refusal over the WebSocket, like over TLS.
    let (mut stream, protocol) = websocket(&app, Some("https://horizon.example.com")).await?;
    assert_eq!(protocol, "binary");
    let reply = spice_client::send_link(&mut stream, &main(0)).await?;
    assert_eq!(reply.error, kerbside::spice::LinkError::Ok);
    let result = spice_client::send_ticket(&mut stream, &reply, "not-the-token").await?;
    assert_eq!(result, kerbside::spice::LinkError::PermissionDenied);

    // The right token links to QEMU; the session is a WebSocket one.
    let (mut stream, _) = websocket(&app, None).await?;
    let reply = spice_client::send_link(&mut stream, &main(0)).await?;
    let result = spice_client::send_ticket(&mut stream, &reply, &token).await?;
    assert_eq!(result, kerbside::spice::LinkError::Ok);
    let (msg_type, _) = spice_client::read_message(&mut stream).await?;
    assert_eq!(
        msg_type, 103,
        "the first message of a main channel is MAIN_INIT"
    );
    let session = live_websocket_session(&app).await?;
    assert_eq!(session.transport, "websocket");
    drop(stream);
    let ended = eventually(SETTLE, || async {
        Ok(app.sessions(true).await?.is_empty())
    })
    .await?;
    assert!(ended, "closing the WebSocket did not end the session");

    // A foreign Origin is closed before any SPICE byte.
    let (mut stream, _) = websocket(&app, Some("https://evil.example.net")).await?;
    let refused = spice_client::send_link(&mut stream, &main(0)).await;
    assert!(refused.is_err(), "a foreign page got a link reply");
    app.stop().await;
    vm.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nova_spice_html5_console_opens_in_the_browser_through_kerbside() -> Result<()> {
    require_all(&[
        "qemu",
        "spicy-screenshot",
        "chromium",
        "mariadb",
        "rabbitmq",
    ])?;
    let stack = full().await?;
    let demo = stack.token("demo", "demopass", "demo").await?;
    let server = stack.boot(&demo, "kerbside-html5").await?;
    let _ports = console_ports().await?;
    let out = tempfile::tempdir()?;
    let pki = TestPki::new(&out.path().join("hypervisor-pki"))?;
    let vm = fake_console_vm(&pki).await?;
    let direct = stable_direct_screenshot(&vm, "", out.path()).await?;
    let pool = format!("kerbside-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let app = TestApp::builder()
        .components(&[Component::Proxy, Component::Api])
        .ini(&stack.kerbside_ini(&pool))
        .ini(&format!(
            "\n[html5]\nenabled = true\nbind_host = 127.0.0.1\nbind_port = {}\n",
            free_port()?
        ))
        .start()
        .await?;

    // The user asks Nova for a spice-html5 console, as Horizon's console tab does.
    let created = stack
        .compute(
            &demo,
            reqwest::Method::POST,
            &format!("/servers/{server}/remote-consoles"),
            Some(json!({"remote_console": {"protocol": "spice", "type": "spice-html5"}})),
        )
        .await?;
    let nova_url = url::Url::parse(
        created["remote_console"]["url"]
            .as_str()
            .context("no console URL")?,
    )?;
    assert_eq!(nova_url.path(), "/spice_auto.html", "{nova_url}");
    let token = nova_url
        .query_pairs()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .context("no token in Nova's URL")?;
    // With [spice] html5proxy_base_url pointing at kerbside, this is the URL Nova returns.
    let page = format!(
        "{}/spice_auto.html?token={token}",
        app.api_url().context("no API")?
    );

    let browser = browser(&out.path().join("browser")).await?;
    browser.goto(&page).await?;
    status_becomes(&browser, &["Connected"]).await?;
    assert_page_shows(&browser, &direct).await?;

    // Nova's console, as Nova described it: the plain port only (no tls_port for
    // spice-html5), reached at the address of [nova] console_host_map.
    let id = server.clone();
    let console = app
        .db()
        .run(move |conn| models::get_console_by_source_name(conn, "nova", &id))
        .await?;
    assert_eq!(console.hypervisor, FAKE_CONSOLE_HOST);
    assert_eq!(console.hypervisor_ip, "127.0.0.1");
    assert_eq!(console.insecure_port, Some(i32::from(FAKE_CONSOLE_PORT)));
    assert_eq!(console.secure_port, None);
    let session = live_websocket_session(&app).await?;
    assert_eq!(session.transport, "websocket");
    assert_eq!(session.console_id, console.id);

    // The broker call hands out a browser link to the same console too.
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v1/servers/{server}/console?type=html5",
            app.api_url().context("no API")?
        ))
        .header("X-Auth-Token", &demo)
        .timeout(Duration::from_secs(120))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let link: serde_json::Value = resp.json().await?;
    assert_eq!(link["console"]["type"], "spice-html5", "{link}");
    let url = link["console"]["url"].as_str().context("no url")?;
    assert!(url.contains("/spice_auto.html?token="), "{link}");
    manage(&app, &["session", "terminate", session.id.as_str()]).await?;
    status_becomes(&browser, &["session ended"]).await?;
    browser.goto(url).await?;
    status_becomes(&browser, &["Connected"]).await?;
    assert_page_shows(&browser, &direct).await?;

    // The spice-direct exchange still refuses a spice-html5 token.
    let resp = reqwest::get(format!(
        "{}/nova?token={token}",
        app.api_url().context("no API")?
    ))
    .await?;
    assert_eq!(resp.status().as_u16(), 400);

    browser.close().await?;
    app.stop().await;
    vm.stop().await?;
    stack.delete(&demo, &server).await?;
    Ok(())
}
