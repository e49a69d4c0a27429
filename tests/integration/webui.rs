//! The web console in a real browser: headless Chromium under chromedriver
//! (`kerbside_tests::browser`) against kerbside with the real Keystone and Nova the API tests
//! use, real QEMU consoles and real SPICE clients.
//!
//! - An administrator signs in (password, user domain, then the project), watches a live
//!   session appear and disappear by itself while a SpiceClientGLib client connects, opens
//!   its detail and audit trail, and terminates it through the confirmation page: the
//!   client drops.
//! - A member signs in with an application credential or a password; wrong passwords,
//!   missing CSRF tokens, expired and revoked Keystone tokens give the right page and status.
//! - A member of the full OpenStack sees only their project's servers, downloads a `.vv`
//!   with "Open console", and remote-viewer links through the proxy with it; a shelved
//!   server's refusal is shown in words.
//! - With `auth_strategy = noauth` the console is the marked local administrator, and every
//!   answer carries the security headers.
//! - Two API nodes on one MariaDB database share web sessions; `web_console = false` serves
//!   no `/ui/`.
//!
//! Every page is photographed into `<target>/tmp/webui-screenshots/` (and into
//! `docs/screenshots/` for the README when `KERBSIDE_UPDATE_SCREENSHOTS=1`). Waits poll with
//! generous bounds; nothing is asserted on timing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kerbside::db::models;
use kerbside::service::Component;
use kerbside_tests::app::{SOURCE, TestApp, TestConsole};
use kerbside_tests::browser::{Browser, BrowserOptions, wait_for_download};
use kerbside_tests::clients::{RV_TIMEOUT, probe_exit, remote_viewer};
use kerbside_tests::openstack::{self, OpenStack};
use kerbside_tests::openstack_full::{console_ports, fake_console_vm, full};
use kerbside_tests::pki::TestPki;
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::nova_real::hold_session;

/// Bound for a page, a refresh or a Keystone/Nova round trip on a busy machine.
const PAGE: Duration = Duration::from_secs(60);
/// Bound for a session to show up or end (the proxy's termination poll is 1 s).
const EFFECT: Duration = Duration::from_secs(90);
/// The session cookie's name with `[api] insecure_cookies` (plain HTTP in the tests).
const COOKIE: &str = "kerbside-session";

/// Where the screenshots go: the test output directory.
fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("webui-screenshots")
}

/// The pictures the README shows (`docs/screenshots/<name>.png`).
const README_SHOTS: &[&str] = &[
    "login",
    "sessions",
    "sessions-phone",
    "session",
    "terminate",
    "servers",
    "servers-error",
];

/// Photographs the page as `name`; with `KERBSIDE_UPDATE_SCREENSHOTS=1` a picture the README
/// shows also goes into `docs/screenshots/`.
async fn shot(browser: &Browser, name: &str) -> Result<()> {
    let png = browser.screenshot(name).await?;
    if std::env::var("KERBSIDE_UPDATE_SCREENSHOTS").as_deref() == Ok("1")
        && README_SHOTS.contains(&name)
    {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs)?;
        std::fs::write(docs.join(format!("{name}.png")), &png)?;
    }
    Ok(())
}

/// A browser for the web console at 1280x800, downloads into `downloads`.
async fn browser(downloads: Option<&Path>) -> Result<Browser> {
    Browser::start_with(
        &shots_dir(),
        BrowserOptions {
            window: (1280, 800),
            download_dir: downloads.map(Path::to_path_buf),
            ..BrowserOptions::default()
        },
    )
    .await
}

fn api_base(app: &TestApp) -> Result<String> {
    app.api_url().context("the API is not running")
}

/// kerbside (proxy and API) on the shared Keystone with the `kerbside` service user, the
/// console cookie over plain HTTP, and no token cache (a revoked token is noticed at once).
/// Sign-ins are limited well above what a test makes (the limit has its own test).
async fn start_app(os: &OpenStack, console: Option<TestConsole>) -> Result<TestApp> {
    start_app_with(os, console, "login_rate = 600\nlogin_burst = 100\n").await
}

/// As [`start_app`], with `api` added to its `[api]` section.
async fn start_app_with(
    os: &OpenStack,
    console: Option<TestConsole>,
    api: &str,
) -> Result<TestApp> {
    let mut builder = TestApp::builder()
        .components(&[Component::Proxy, Component::Api])
        .ini(
            &os.kerbside_ini("kerbside", "kerbsidepass")
                .replace("token_cache_time = 300", "token_cache_time = 0"),
        )
        .ini(&format!("[api]\ninsecure_cookies = true\n{api}"));
    if let Some(c) = console {
        builder = builder.console(c);
    }
    builder.start().await
}

/// Waits until the page's `<h1>` says `title`.
async fn wait_title(browser: &Browser, title: &str) -> Result<()> {
    browser.wait_for_text("h1", title, PAGE).await.map(drop)
}

/// Signs in with a password and the project (the first offered unless `project` names one).
async fn password_sign_in(
    browser: &Browser,
    base: &str,
    user: &str,
    password: &str,
    project: &str,
) -> Result<()> {
    browser.goto(&format!("{base}/ui/login")).await?;
    wait_title(browser, "Sign in").await?;
    browser.fill("#username", user).await?;
    browser.fill("#password", password).await?;
    browser.fill("#domain", "Default").await?;
    browser.click("#password-form button[type=submit]").await?;
    wait_title(browser, "Choose a project").await?;
    browser
        .wait_for_text("#project-form", project, PAGE)
        .await?;
    let picked = browser
        .execute(
            "for (const l of document.querySelectorAll('#project-form label.choice')) { \
               if (l.textContent.trim() === arguments[0]) { l.querySelector('input').click(); return true; } } \
             return false;",
            vec![json!(project)],
        )
        .await?;
    anyhow::ensure!(picked == json!(true), "project {project} not offered");
    shot(browser, "project").await?;
    browser.click("#project-form button[type=submit]").await?;
    Ok(())
}

/// The web session row of the browser's cookie.
async fn web_session(app: &TestApp, browser: &Browser) -> Result<(String, models::WebSession)> {
    let cookie = browser.cookie(COOKIE).await?.context("no session cookie")?;
    let hash = kerbside::token::hash_token(&cookie);
    let row = app
        .db()
        .run(move |conn| models::find_web_session(conn, &hash))
        .await?
        .context("no web session row for the cookie")?;
    Ok((cookie, row))
}

/// Whether Keystone still accepts `token` (checked with an admin token).
async fn keystone_accepts(os: &OpenStack, token: &str) -> Result<bool> {
    let admin = os.token("admin", "adminpass", "admin").await?;
    let status = reqwest::Client::new()
        .get(format!("{}/auth/tokens", os.keystone_v3()))
        .header("X-Auth-Token", admin)
        .header("X-Subject-Token", token)
        .send()
        .await?
        .status()
        .as_u16();
    Ok(status == 200)
}

/// Runs `fetch` in the page and returns the HTTP status.
async fn fetch_status(browser: &Browser, method: &str, path: &str, body: &str) -> Result<u16> {
    let v = browser
        .execute(
            "return fetch(arguments[1], {method: arguments[0], redirect: 'manual', \
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}, \
               body: arguments[0] === 'GET' ? undefined : arguments[2]}).then(r => r.status);",
            vec![json!(method), json!(path), json!(body)],
        )
        .await?;
    v.as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .context("no status")
}

/// Asserts that the page does not scroll sideways at the current width (wide tables scroll
/// inside their own box).
async fn fits_width(browser: &Browser, what: &str) -> Result<()> {
    let v = browser
        .execute(
            "const w = window.innerWidth; const wide = []; \
             for (const e of document.querySelectorAll('body *')) { \
               if (e.closest('.table-wrap') !== null) continue; \
               const r = e.getBoundingClientRect(); \
               if (r.right > w + 1) wide.push(e.tagName + '.' + e.className + ' ' + Math.round(r.right)); } \
             return [document.documentElement.scrollWidth, w, wide.slice(0, 5)];",
            vec![],
        )
        .await?;
    let (scroll, inner) = (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0));
    assert!(
        scroll <= inner,
        "{what}: the page is {scroll} px wide in a {inner} px window; too wide: {}",
        v[2]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_watches_a_live_session_and_terminates_it() -> Result<()> {
    require_all(&["chromium", "qemu", "spice-probe"])?;
    let os = openstack::shared().await?;
    let vm = SpiceServer::builder().start().await?;
    let console = TestConsole::for_server(&vm);
    let uuid = console.uuid.clone();
    let app = start_app(os, Some(console)).await?;
    let base = api_base(&app)?;
    let browser = browser(None).await?;

    // Sign in: password and domain, then the project.
    browser.goto(&format!("{base}/ui/sessions")).await?;
    wait_title(&browser, "Sign in").await?;
    browser
        .wait_for_text("[data-testid=notice]", "Please sign in", PAGE)
        .await?;
    shot(&browser, "login").await?;
    password_sign_in(&browser, &base, "admin", "adminpass", "admin").await?;
    wait_title(&browser, "Sessions").await?;
    browser
        .wait_for_text("[data-testid=user]", "admin", PAGE)
        .await?;
    browser
        .wait_for_text("#sessions-rows", "No live sessions", PAGE)
        .await?;
    let (cookie, row) = web_session(&app, &browser).await?;
    assert!(row.scoped && row.project_name.as_deref() == Some("admin"));
    let sealed = row.keystone_token.clone().context("no sealed token")?;
    assert!(
        !sealed.contains("gAAAA"),
        "the token is stored sealed, not as is"
    );
    let token = kerbside::api::ui::session::open(&cookie, &sealed).context("cannot unseal")?;
    assert!(keystone_accepts(os, token.expose_secret()).await?);

    // A real client connects: the row appears without reloading the page.
    let console_token = app.mint_token(&uuid, Duration::from_secs(600)).await?;
    let (probe, session) =
        hold_session(&app, &console_token, &uuid, Duration::from_secs(600)).await?;
    let rows = browser
        .wait_for_text("#sessions-rows", &session.id.to_string(), EFFECT)
        .await?;
    assert!(rows.contains(&uuid), "{rows}");
    assert!(rows.contains("main 1"), "channels by type: {rows}");
    assert!(rows.contains("display 1"), "channels by type: {rows}");
    assert!(rows.contains("live"), "{rows}");
    fits_width(&browser, "sessions at 1280x800").await?;
    shot(&browser, "sessions").await?;
    browser.set_window_size(390, 844).await?;
    shot(&browser, "sessions-phone").await?;
    fits_width(&browser, "sessions at phone width").await?;
    browser.set_window_size(1280, 800).await?;

    // Its detail page: channels and audit trail.
    browser
        .goto(&format!("{base}/ui/sessions/{}", session.id))
        .await?;
    wait_title(&browser, "Session").await?;
    let channels = browser.text_content("[data-testid=channels]").await?;
    assert!(
        channels.as_deref().is_some_and(|c| c.contains("inputs")),
        "{channels:?}"
    );
    browser
        .wait_for_text("[data-testid=events]", "session.", PAGE)
        .await?;
    shot(&browser, "session").await?;

    // A form without its CSRF token changes nothing (403), even from the signed-in page.
    let status = fetch_status(
        &browser,
        "POST",
        &format!("/ui/sessions/{}/terminate", session.id),
        "reason=no+csrf",
    )
    .await?;
    assert_eq!(status, 403);
    assert!(
        !probe.is_finished(),
        "a request without CSRF ended the session"
    );
    // GETs change nothing: the confirmation page is a page.
    browser.click("a.button.danger").await?;
    wait_title(&browser, "Terminate session").await?;
    shot(&browser, "terminate").await?;
    assert!(
        !probe.is_finished(),
        "the confirmation page ended the session"
    );
    let id = session.id.clone();
    let still = app
        .db()
        .run(move |conn| models::get_session(conn, &id))
        .await?;
    assert!(still.ended_at.is_none());

    // Confirm with a reason: the client drops.
    browser.fill("#reason", "web console test").await?;
    browser.click("#terminate-form button[type=submit]").await?;
    browser
        .wait_for_text("[data-testid=terminated]", "Termination requested", PAGE)
        .await?;
    let result = tokio::time::timeout(EFFECT, probe)
        .await
        .context("the client was not disconnected")???;
    assert_eq!(
        result.exit_code,
        Some(probe_exit::IO),
        "{}",
        result.describe()
    );
    browser
        .goto(&format!("{base}/ui/sessions/{}", session.id))
        .await?;
    browser
        .wait_for_text("[data-testid=session-state]", "ended", EFFECT)
        .await?;
    let trail = browser
        .wait_for_text("[data-testid=events]", "web console test", PAGE)
        .await?;
    assert!(trail.contains("web:admin@admin"), "{trail}");
    // The sessions page drops the row by itself.
    browser.goto(&format!("{base}/ui/sessions")).await?;
    browser
        .wait_for_text("#sessions-rows", "No live sessions", EFFECT)
        .await?;

    // Sources, consoles (search and filter), a console with a paged audit trail.
    browser.goto(&format!("{base}/ui/sources")).await?;
    let sources = browser
        .wait_for_text("[data-testid=sources]", SOURCE, PAGE)
        .await?;
    assert!(sources.contains("ok"), "{sources}");
    shot(&browser, "sources").await?;
    let part = uuid.get(..8).context("short uuid")?;
    browser
        .goto(&format!("{base}/ui/consoles?source={SOURCE}&q={part}"))
        .await?;
    browser
        .wait_for_text("[data-testid=console-count]", "1 of 1", PAGE)
        .await?;
    shot(&browser, "consoles").await?;
    browser
        .goto(&format!("{base}/ui/consoles?q=no-such-console"))
        .await?;
    browser
        .wait_for_text("[data-testid=consoles]", "No console matches", PAGE)
        .await?;
    let id = uuid.clone();
    app.db()
        .run(move |conn| {
            let console = models::get_console_by_source_name(conn, SOURCE, &id)?;
            for n in 0..60 {
                let e = models::NewAuditEvent::new(
                    "test".to_owned(),
                    models::AuditKind::TokenCreated,
                    format!("paging event {n:02}"),
                )
                .console(console.id);
                models::record_event(conn, &e)?;
            }
            Ok(())
        })
        .await?;
    browser
        .goto(&format!("{base}/ui/consoles/{SOURCE}/{uuid}"))
        .await?;
    let first = browser
        .wait_for_text("[data-testid=events]", "session.created", PAGE)
        .await?;
    assert!(!first.contains("paging event 59"), "one page only");
    shot(&browser, "console").await?;
    browser.click("a[rel=next]").await?;
    browser
        .wait_for_text("[data-testid=events]", "paging event 59", PAGE)
        .await?;

    // Sign out: the session is gone and Keystone no longer accepts its token.
    browser.click("header form button").await?;
    browser
        .wait_for_text("[data-testid=notice]", "You have signed out", PAGE)
        .await?;
    let hash = kerbside::token::hash_token(&cookie);
    let gone = app
        .db()
        .run(move |conn| models::find_web_session(conn, &hash))
        .await?;
    assert!(gone.is_none(), "the web session outlived sign-out");
    assert!(!keystone_accepts(os, token.expose_secret()).await?);

    browser.close().await?;
    app.stop().await;
    vm.stop().await?;
    Ok(())
}

/// The value of the hidden `csrf` field in `html`.
fn csrf_field(html: &str) -> Option<String> {
    let start = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let rest = html.get(start..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

/// The `name=value` of cookie `name` in an answer's Set-Cookie headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_failures_expiry_revocation_and_csrf() -> Result<()> {
    require_all(&["chromium"])?;
    let os = openstack::shared().await?;
    let app = start_app(os, None).await?;
    let base = api_base(&app)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // Statuses, without a browser: a wrong password is 401 with the sign-in page, a login
    // without its CSRF token 403.
    let login = http.get(format!("{base}/ui/login")).send().await?;
    assert_eq!(login.status().as_u16(), 200);
    let cookie = set_cookie(&login, "kerbside-login").context("no login cookie")?;
    let cookie_pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let csrf = csrf_field(&login.text().await?).context("no csrf field")?;
    let wrong = http
        .post(format!("{base}/ui/login"))
        .header("Cookie", &cookie_pair)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&username=demo&password=not-the-password&domain=Default"
        ))
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.text().await?.contains("Keystone did not accept"));
    let no_csrf = http
        .post(format!("{base}/ui/login"))
        .header("Cookie", &cookie_pair)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("username=demo&password=demopass&domain=Default")
        .send()
        .await?;
    assert_eq!(no_csrf.status().as_u16(), 403);
    assert!(no_csrf.text().await?.contains("CSRF"));
    let not_signed_in = http.get(format!("{base}/ui/sessions")).send().await?;
    assert_eq!(not_signed_in.status().as_u16(), 303);

    let browser = browser(None).await?;
    // A wrong password in the browser: the page says so.
    browser.goto(&format!("{base}/ui/login")).await?;
    browser.fill("#username", "demo").await?;
    browser.fill("#password", "not-the-password").await?;
    browser.click("#password-form button[type=submit]").await?;
    browser
        .wait_for_text("[data-testid=error]", "Keystone did not accept", PAGE)
        .await?;
    shot(&browser, "login-wrong-password").await?;

    // An application credential of demo's: signed in to its project, as a member.
    let demo = os.token("demo", "demopass", "demo").await?;
    let me: Value = reqwest::Client::new()
        .get(format!("{}/auth/tokens", os.keystone_v3()))
        .header("X-Auth-Token", &demo)
        .header("X-Subject-Token", &demo)
        .send()
        .await?
        .json()
        .await?;
    let user_id = me["token"]["user"]["id"].as_str().context("no user id")?;
    let name = format!("kerbside-webui-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let created: Value = reqwest::Client::new()
        .post(format!(
            "{}/users/{user_id}/application_credentials",
            os.keystone_v3()
        ))
        .header("X-Auth-Token", &demo)
        .json(&json!({"application_credential": {"name": name}}))
        .send()
        .await?
        .json()
        .await?;
    let (cred_id, secret) = (
        created["application_credential"]["id"]
            .as_str()
            .context("no credential id")?,
        created["application_credential"]["secret"]
            .as_str()
            .context("no secret")?,
    );
    browser.fill("#credential_id", cred_id).await?;
    browser.fill("#secret", secret).await?;
    browser.click("#appcred-form button[type=submit]").await?;
    // A member's home is their servers; the operator sections are not offered.
    wait_title(&browser, "My servers").await?;
    browser
        .wait_for_text("[data-testid=user]", "demo", PAGE)
        .await?;
    let nav = browser
        .text_content("header nav")
        .await?
        .unwrap_or_default();
    assert!(
        !nav.contains("Sessions") && nav.contains("My servers"),
        "{nav}"
    );
    // The same policy as the REST API: a member may not list sessions.
    browser.goto(&format!("{base}/ui/sessions")).await?;
    browser
        .wait_for_text("[data-testid=error]", "kerbside:session:list", PAGE)
        .await?;
    shot(&browser, "forbidden").await?;
    assert_eq!(
        fetch_status(&browser, "GET", "/ui/sessions", "").await?,
        403
    );

    // The session's Keystone token expires: the next page is the sign-in page, saying so.
    let (cookie, _) = web_session(&app, &browser).await?;
    let hash = kerbside::token::hash_token(&cookie);
    app.db()
        .run(move |conn| {
            models::set_web_session_expiry(
                conn,
                &hash,
                kerbside::db::now() - chrono::TimeDelta::seconds(1),
            )
        })
        .await?;
    let expired = http
        .get(format!("{base}/ui/servers"))
        .header("Cookie", format!("{COOKIE}={cookie}"))
        .send()
        .await?;
    assert_eq!(expired.status().as_u16(), 303);
    assert_eq!(
        expired.headers()["location"],
        "/ui/login?notice=expired",
        "an expired session goes to the sign-in page"
    );
    // That request removed the row: the browser's next page says the session ended.
    browser.goto(&format!("{base}/ui/servers")).await?;
    wait_title(&browser, "Sign in").await?;
    shot(&browser, "login-expired").await?;

    // Password sign-in as demo, then Keystone revokes the token: back to sign-in, saying so.
    password_sign_in(&browser, &base, "demo", "demopass", "demo").await?;
    wait_title(&browser, "My servers").await?;
    shot(&browser, "servers-empty").await?;
    let (cookie, row) = web_session(&app, &browser).await?;
    let token = kerbside::api::ui::session::open(
        &cookie,
        row.keystone_token.as_deref().context("no token")?,
    )
    .context("cannot unseal")?;
    os.revoke(token.expose_secret()).await?;
    browser.goto(&format!("{base}/ui/servers")).await?;
    browser
        .wait_for_text("[data-testid=notice]", "no longer accepts", PAGE)
        .await?;
    shot(&browser, "login-revoked").await?;

    browser.close().await?;
    app.stop().await;
    Ok(())
}

/// A login form from a fresh GET: the cookie pair and the CSRF field.
async fn login_form(http: &reqwest::Client, base: &str) -> Result<(String, String)> {
    let login = http.get(format!("{base}/ui/login")).send().await?;
    let cookie = set_cookie(&login, "kerbside-login").context("no login cookie")?;
    let pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let csrf = csrf_field(&login.text().await?).context("no csrf field")?;
    Ok((pair, csrf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_are_limited_per_address_before_keystone_is_asked() -> Result<()> {
    let os = openstack::shared().await?;
    let app = start_app_with(os, None, "login_rate = 1\nlogin_burst = 2\n").await?;
    let base = api_base(&app)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let (cookie, csrf) = login_form(&http, &base).await?;
    let attempt = |password: &'static str| {
        http.post(format!("{base}/ui/login"))
            .header("Cookie", &cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!(
                "csrf={csrf}&username=demo&password={password}&domain=Default"
            ))
            .send()
    };
    // The burst: Keystone answers both.
    for _ in 0..2 {
        assert_eq!(attempt("not-the-password").await?.status().as_u16(), 401);
    }
    // Then even the right password is refused without asking Keystone, with a retry time.
    let limited = attempt("demopass").await?;
    assert_eq!(limited.status().as_u16(), 429);
    let retry_after: u64 = limited
        .headers()
        .get("retry-after")
        .context("no Retry-After")?
        .to_str()?
        .parse()?;
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let page = limited.text().await?;
    assert!(page.contains("Too many sign-in attempts"), "{page}");
    // The application credential form draws on the same bucket.
    let app_cred = http
        .post(format!("{base}/ui/login/application-credential"))
        .header("Cookie", &cookie)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&credential_id=x&secret=y"))
        .send()
        .await?;
    assert_eq!(app_cred.status().as_u16(), 429);
    let metrics = app
        .running
        .metrics
        .api
        .rate_limited
        .with_label_values(&["ui_login"])
        .get();
    assert_eq!(metrics, 2);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noauth_console_is_the_marked_local_administrator_with_security_headers() -> Result<()> {
    require_all(&["chromium"])?;
    // Without insecure_cookies: the cookie is Secure and __Host- prefixed.
    let app = TestApp::builder()
        .components(&[Component::Api])
        .ini("[api]\nbind_host = 127.0.0.1\nbind_port = 0\nauth_strategy = noauth\npolicy_file = /nonexistent/policy.yaml\n")
        .start()
        .await?;
    let base = api_base(&app)?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = http.get(format!("{base}/ui/login")).send().await?;
    assert_eq!(login.status().as_u16(), 200);
    let h = login.headers();
    let csp = h["content-security-policy"].to_str()?;
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let cookie = set_cookie(&login, "__Host-kerbside-login").context("no __Host- cookie")?;
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    let body = login.text().await?;
    assert!(body.contains("Continue as the local administrator"));
    assert!(!body.contains("<script>"), "no inline script");
    // Assets are served by kerbside, nothing from elsewhere.
    for asset in ["kerbside.css", "kerbside.js", "kerbside.svg"] {
        let r = http.get(format!("{base}/ui/static/{asset}")).send().await?;
        assert_eq!(r.status().as_u16(), 200, "{asset}");
    }
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "{body}"
    );
    // The console is not part of the REST API's document.
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        doc["paths"]
            .as_object()
            .is_some_and(|p| p.keys().all(|k| !k.starts_with("/ui"))),
        "the OpenAPI document lists no /ui path"
    );
    app.stop().await;

    // In the browser (plain HTTP, so the cookie goes without Secure): the banner everywhere.
    let app = TestApp::builder()
        .components(&[Component::Api])
        .ini("[api]\nbind_host = 127.0.0.1\nbind_port = 0\nauth_strategy = noauth\ninsecure_cookies = true\npolicy_file = /nonexistent/policy.yaml\n")
        .start()
        .await?;
    let base = api_base(&app)?;
    let browser = browser(None).await?;
    browser.goto(&format!("{base}/ui/")).await?;
    wait_title(&browser, "Sign in").await?;
    browser
        .wait_for_text("[data-testid=noauth-banner]", "local administrator", PAGE)
        .await?;
    shot(&browser, "login-noauth").await?;
    browser.click("#noauth-continue").await?;
    wait_title(&browser, "Sessions").await?;
    browser
        .wait_for_text("[data-testid=noauth-banner]", "Local administrator", PAGE)
        .await?;
    browser
        .wait_for_text("[data-testid=user]", "local administrator", PAGE)
        .await?;
    shot(&browser, "sessions-noauth").await?;
    browser.goto(&format!("{base}/ui/servers")).await?;
    browser
        .wait_for_text("[data-testid=unavailable]", "noauth", PAGE)
        .await?;
    browser.goto(&format!("{base}/ui/no-such-page")).await?;
    browser
        .wait_for_text("[data-testid=error]", "no such page", PAGE)
        .await?;
    let console = browser.console_log().await?;
    assert!(
        !console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "CSP violations: {console:?}"
    );
    browser.close().await?;
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_sees_only_their_servers_and_opens_a_console() -> Result<()> {
    require_all(&[
        "chromium",
        "qemu",
        "remote-viewer",
        "xvfb",
        "mariadb",
        "rabbitmq",
    ])?;
    let stack = full().await?;
    let demo = stack.token("demo", "demopass", "demo").await?;
    let other = stack.token("other", "otherpass", "other").await?;
    let suffix = &uuid::Uuid::new_v4().to_string()[..8];
    let mine = stack.boot(&demo, &format!("webui-mine-{suffix}")).await?;
    let theirs = stack
        .boot(&other, &format!("webui-theirs-{suffix}"))
        .await?;
    let _ports = console_ports().await?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(&dir.path().join("hypervisor-pki"))?;
    let mut vm = fake_console_vm(&pki).await?;
    let pool = format!("kerbside-{suffix}");
    let app = TestApp::builder()
        .components(&[Component::Proxy, Component::Api])
        .ini(&stack.kerbside_ini(&pool))
        .ini(&format!(
            "\n[proxy]\nhypervisor_tls = auto\nhypervisor_ca_file = {}\n\
             [api]\ninsecure_cookies = true\n\
             [html5]\nenabled = true\nbind_host = 127.0.0.1\nbind_port = {}\n\
             insecure_websocket = true\n",
            pki.ca_cert_path().display(),
            kerbside_tests::ports::free_port()?
        ))
        .start()
        .await?;
    let base = api_base(&app)?;
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let browser = browser(Some(&downloads)).await?;

    password_sign_in(&browser, &base, "demo", "demopass", "demo").await?;
    wait_title(&browser, "My servers").await?;
    let servers = browser
        .wait_for_text("[data-testid=servers]", &mine, PAGE)
        .await?;
    assert!(
        !servers.contains(&theirs),
        "another project's server is listed: {servers}"
    );
    assert!(servers.contains("ACTIVE"), "{servers}");
    shot(&browser, "servers").await?;
    browser.set_window_size(390, 844).await?;
    shot(&browser, "servers-phone").await?;
    fits_width(&browser, "My servers at phone width").await?;
    browser.set_window_size(1280, 800).await?;

    // Open console: the broker call, and the .vv arrives as a download.
    browser
        .click(&format!("tr[data-server='{mine}'] button"))
        .await?;
    let vv_path = wait_for_download(&downloads, ".vv", EFFECT).await?;
    let vv = std::fs::read_to_string(&vv_path)?;
    assert!(vv.contains("[virt-viewer]"), "{vv}");
    assert!(
        vv.contains(&format!("tls-port={}", app.tls_addr().port())),
        "{vv}"
    );
    // It links through the proxy to the server's console.
    let viewer = remote_viewer(&vv_path, RV_TIMEOUT).await?;
    assert!(
        viewer.main_channel_opened,
        "log:\n{}\nqemu:\n{}",
        viewer.log,
        vm.log()
    );
    let id = mine.clone();
    let sessions = app
        .db()
        .run(move |conn| models::sessions_for_instance(conn, &id, false))
        .await?;
    assert!(
        sessions.iter().any(|s| s.upstream_session_id.is_some()),
        "no session linked through the proxy: {sessions:?}"
    );

    // spice-server 0.15.1 may crash when the viewer above is killed (see
    // `SpiceServer::ended`); the hypervisor is not what this test is about.
    if let Some(how) = vm.ended() {
        eprintln!("{how} after remote-viewer was killed; starting the fake console again");
        vm = fake_console_vm(&pki).await?;
    }
    // Open in browser: the same broker call, and kerbside's spice-html5 page shows it.
    browser.goto(&format!("{base}/ui/servers")).await?;
    browser
        .click(&format!("tr[data-server='{mine}'] .open-browser button"))
        .await?;
    browser
        .wait_for_text("#kerbside-status", "Connected", PAGE)
        .await
        .with_context(|| {
            // Seen before: the proxy found nothing listening on the fake console's port.
            format!(
                "the browser console did not connect; {}; qemu log:\n{}",
                vm.health(),
                vm.log()
            )
        })?;
    shot(&browser, "servers-browser-console").await?;
    let id = mine.clone();
    let websocket = app
        .db()
        .run(move |conn| models::sessions_for_instance(conn, &id, false))
        .await?
        .into_iter()
        .filter(|s| s.transport == "websocket")
        .count();
    assert!(websocket > 0, "no websocket session was recorded");

    // A shelved server: Nova's refusal, in words, on the same page.
    stack.action(&demo, &mine, json!({"shelve": null})).await?;
    stack.wait_status(&demo, &mine, "SHELVED_OFFLOADED").await?;
    browser.goto(&format!("{base}/ui/servers")).await?;
    browser
        .wait_for_text("[data-testid=servers]", "SHELVED", PAGE)
        .await?;
    browser
        .click(&format!("tr[data-server='{mine}'] button"))
        .await?;
    browser
        .wait_for_text("[data-testid=error]", "not ready for a console", PAGE)
        .await?;
    shot(&browser, "servers-error").await?;

    browser.close().await?;
    app.stop().await;
    vm.stop().await?;
    let admin = stack.admin_token().await?;
    for server in [&mine, &theirs] {
        if let Err(e) = stack.delete(&admin, server).await {
            bail!("deleting {server}: {e}");
        }
    }
    Ok(())
}

/// Signs in as the noauth local administrator on `base` with plain HTTP; returns the session
/// cookie's value.
async fn noauth_sign_in(http: &reqwest::Client, base: &str) -> Result<String> {
    let login = http.get(format!("{base}/ui/login")).send().await?;
    let cookie = set_cookie(&login, "kerbside-login").context("no login cookie")?;
    let pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let csrf = csrf_field(&login.text().await?).context("no csrf field")?;
    let signed_in = http
        .post(format!("{base}/ui/login"))
        .header("Cookie", &pair)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await?;
    assert_eq!(signed_in.status().as_u16(), 303);
    let session = set_cookie(&signed_in, COOKIE).context("no session cookie")?;
    let value = session
        .split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_owned())
        .context("malformed cookie")?;
    Ok(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sessions_are_shared_by_api_nodes_and_the_console_can_be_off() -> Result<()> {
    require_all(&["mariadb"])?;
    let database = kerbside_tests::db::TestDatabase::mariadb().await?;
    let url = kerbside_tests::db::with_database(
        &kerbside_tests::db::mariadb_server_url(),
        database.mariadb_name().context("mariadb")?,
    );
    let ini = "[api]\nbind_host = 127.0.0.1\nbind_port = 0\nauth_strategy = noauth\n\
               insecure_cookies = true\npolicy_file = /nonexistent/policy.yaml\n";
    let mut nodes = Vec::new();
    for name in ["api-a", "api-b"] {
        nodes.push(
            TestApp::builder()
                .components(&[Component::Api])
                .database(&url)
                .node(name)
                .ini(ini)
                .start()
                .await?,
        );
    }
    let (a, b) = (api_base(&nodes[0])?, api_base(&nodes[1])?);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // Signed in on one node, the session works on the other.
    let cookie = noauth_sign_in(&http, &a).await?;
    let page = http
        .get(format!("{b}/ui/sessions"))
        .header("Cookie", format!("{COOKIE}={cookie}"))
        .send()
        .await?;
    assert_eq!(page.status().as_u16(), 200);
    let body = page.text().await?;
    assert!(body.contains("Local administrator"), "{body}");
    // Its CSRF token too: sign out on the second node ends it on the first.
    let csrf = csrf_field(&body).context("no csrf field")?;
    let out = http
        .post(format!("{b}/ui/logout"))
        .header("Cookie", format!("{COOKIE}={cookie}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await?;
    assert_eq!(out.status().as_u16(), 303);
    let after = http
        .get(format!("{a}/ui/sessions"))
        .header("Cookie", format!("{COOKIE}={cookie}"))
        .send()
        .await?;
    assert_eq!(after.status().as_u16(), 303);
    assert_eq!(after.headers()["location"], "/ui/login?notice=ended");
    for node in &nodes {
        node.stop().await;
    }

    // With [api] web_console = false there is no /ui/.
    let off = TestApp::builder()
        .components(&[Component::Api])
        .ini(&format!("{ini}web_console = false\n"))
        .start()
        .await?;
    let resp = http
        .get(format!("{}/ui/login", api_base(&off)?))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 404);
    off.stop().await;
    Ok(())
}
