//! The independent-client lane: ryll (a SPICE client written in Rust, not spice-gtk) through
//! kerbside, with the `.vv` kerbside writes, against a real QEMU; and the key-echo guest those
//! tests type into.
//!
//! ryll runs headless and is driven through its control socket (`kerbside_tests::ryll`).
//! ryll 0.3 opens main, display, cursor, inputs, playback, one usbredir channel and webdav;
//! it skips record and further usbredir channels, so the channel test compares what it
//! opens through kerbside with what it opens directly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use kerbside_tests::app::{TestApp, TestConsole};
use kerbside_tests::guests::KEY_ECHO_BANNER;
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::ryll::{Ryll, RyllChannels, scancode, write_direct_vv};
use kerbside_tests::screens::{same_screen, screen_difference, stable_direct_screenshot};
use serde_json::Value;
use tokio::time::{Instant, sleep};

/// Generous: QEMU runs under TCG on a machine that builds and tests in parallel.
const SETTLE: Duration = Duration::from_secs(60);

/// Polls the guest's text screen until `wanted` holds or [`SETTLE`] passes; returns the
/// last screen read.
async fn screen_text_until(
    server: &SpiceServer,
    wanted: impl Fn(&str) -> bool,
) -> Result<(bool, String)> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = server.screen_text().await?;
        if wanted(&text) {
            return Ok((true, text));
        }
        if Instant::now() >= deadline {
            return Ok((false, text));
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// The lines of a text screen, without the blank ones at the end.
fn lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// How many channels of each SPICE channel type QEMU has connected (QMP `query-spice`).
async fn server_channel_types(server: &SpiceServer) -> Result<BTreeMap<u64, usize>> {
    let info = server.query_spice().await?;
    let mut types = BTreeMap::new();
    for channel in info
        .get("channels")
        .and_then(Value::as_array)
        .context("query-spice without channels")?
    {
        let kind = channel
            .get("channel-type")
            .and_then(Value::as_u64)
            .context("channel without channel-type")?;
        *types.entry(kind).or_insert(0) += 1;
    }
    Ok(types)
}

/// Polls QEMU until it has exactly `count` channels connected; returns their types.
async fn server_channels_when(server: &SpiceServer, count: usize) -> Result<BTreeMap<u64, usize>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let types = server_channel_types(server).await?;
        if types.values().sum::<usize>() == count || Instant::now() >= deadline {
            return Ok(types);
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// ryll's screenshot once it equals `expected` (ryll may still be drawing), or the last one.
async fn ryll_screenshot_like(ryll: &mut Ryll, expected: &Option<Vec<u8>>) -> Result<Vec<u8>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let shot = ryll.screenshot().await?;
        let image = Some(shot);
        if screen_difference(expected, &image)?.is_none() || Instant::now() >= deadline {
            return image.context("no screenshot");
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// ryll's screenshot once two in a row, half a second apart, show the same screen.
async fn stable_ryll_screenshot(ryll: &mut Ryll) -> Result<Vec<u8>> {
    let deadline = Instant::now() + SETTLE;
    let mut previous = Some(ryll.screenshot().await?);
    loop {
        sleep(Duration::from_millis(500)).await;
        let shot = Some(ryll.screenshot().await?);
        if screen_difference(&previous, &shot)?.is_none() || Instant::now() >= deadline {
            return shot.context("no screenshot");
        }
        previous = shot;
    }
}

fn save(dir: &Path, name: &str, image: &[u8]) -> Result<()> {
    std::fs::write(dir.join(name), image).with_context(|| format!("saving {name}"))
}

#[tokio::test]
async fn the_key_echo_guest_shows_keys_typed_through_qmp() -> Result<()> {
    require_all(&["qemu", "nasm"])?;
    let server = SpiceServer::builder()
        .password(Some("keyecho"))
        .key_echo_guest(true)
        .start()
        .await?;
    let text = server.screen_text().await?;
    assert_eq!(lines(&text), [KEY_ECHO_BANNER], "screen:\n{text}");
    let before = server.screendump(&server.dir().join("before.ppm")).await?;

    server.send_keys(&["h", "i", "ret", "4", "2"]).await?;
    let (echoed, text) = screen_text_until(&server, |t| lines(t).len() >= 3).await?;
    assert!(echoed, "the typed keys never showed; screen:\n{text}");
    assert_eq!(
        lines(&text),
        [KEY_ECHO_BANNER, "hi", "42"],
        "screen:\n{text}"
    );

    // The picture changed too, and by more than the blinking cursor.
    let after = server.screendump(&server.dir().join("after.ppm")).await?;
    let difference = screen_difference(&Some(before), &Some(after))?;
    assert!(
        difference.is_some(),
        "the screen looks the same after typing"
    );
    Ok(())
}

#[tokio::test]
async fn ryll_through_kerbside_shows_the_same_screen_as_a_direct_client() -> Result<()> {
    require_all(&["qemu", "nasm", "spicy-screenshot", "ryll"])?;
    let server = SpiceServer::builder()
        .password(Some("ryll-screen"))
        .key_echo_guest(true)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let out = tempfile::tempdir()?;
    let direct = stable_direct_screenshot(&server, "ryll-screen", out.path()).await?;

    let vv = app.manage_vv(&console.uuid, "ryll.vv").await?.0;
    let mut ryll = Ryll::start(&vv).await?;
    ryll.wait_for_display(SETTLE).await?;
    let through = ryll_screenshot_like(&mut ryll, &direct).await?;
    save(ryll.dir(), "through-kerbside.ppm", &through)?;
    same_screen(&direct, &Some(through)).with_context(|| {
        format!(
            "ryll through kerbside vs spicy-screenshot direct:\n{}",
            ryll.log()
        )
    })?;

    // It really went through kerbside: a session with its channels is on record.
    let sessions = app.sessions(false).await?;
    assert_eq!(sessions.len(), 1, "sessions: {sessions:?}");
    ryll.stop().await?;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn ryll_opens_the_same_channels_through_kerbside_as_directly() -> Result<()> {
    require_all(&["qemu", "ryll"])?;
    let server = SpiceServer::builder()
        .password(Some("ryll-channels"))
        .rich()
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;

    // Directly to QEMU first.
    let direct_vv = server.dir().join("direct.vv");
    write_direct_vv(&server, &direct_vv)?;
    let ryll = Ryll::start(&direct_vv).await?;
    let direct = ryll.wait_for_channels(SETTLE).await?;
    let linked: usize = direct.connected.values().sum();
    let direct_server = server_channels_when(&server, linked).await?;
    ryll.stop().await?;
    let gone = server_channels_when(&server, 0).await?;
    assert!(gone.is_empty(), "QEMU still has channels: {gone:?}");

    // What ryll opens directly: both monitors and everything it supports.
    let expected = |channels: &RyllChannels| {
        for (name, count) in [
            ("main", 1),
            ("display", 2),
            ("cursor", 2),
            ("inputs", 1),
            ("playback", 1),
            ("usbredir", 1),
            ("webdav", 1),
        ] {
            assert_eq!(channels.count(name), count, "{name}: {channels:?}");
        }
        assert_eq!(channels.offered, Some(10), "{channels:?}");
    };
    expected(&direct);

    // Then through kerbside, with the .vv kerbside writes.
    let vv = app.manage_vv(&console.uuid, "ryll.vv").await?.0;
    let ryll = Ryll::start(&vv).await?;
    let through = ryll.wait_for_channels(SETTLE).await?;
    expected(&through);
    assert_eq!(
        through,
        direct,
        "ryll's channels through kerbside differ from direct; log:\n{}",
        ryll.log()
    );
    // QEMU sees the same channels from kerbside as from ryll itself.
    let through_server = server_channels_when(&server, linked).await?;
    assert_eq!(through_server, direct_server);

    // kerbside recorded every channel it relayed under one session.
    let session = app.newest_session().await?;
    let recorded = app
        .db()
        .run(move |conn| kerbside::db::models::list_channels(conn, &session.id))
        .await?;
    assert_eq!(recorded.len(), linked, "channels recorded: {recorded:?}");
    ryll.stop().await?;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_key_sent_by_ryll_through_kerbside_reaches_the_guest() -> Result<()> {
    require_all(&["qemu", "nasm", "ryll"])?;
    let server = SpiceServer::builder()
        .password(Some("ryll-keys"))
        .key_echo_guest(true)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let vv = app.manage_vv(&console.uuid, "ryll.vv").await?.0;
    let mut ryll = Ryll::start(&vv).await?;
    ryll.wait_for_display(SETTLE).await?;
    let before = stable_ryll_screenshot(&mut ryll).await?;

    // One key at a time, each once the previous one shows (see `Ryll::send_key`).
    let typed = "kerbside 42";
    for (i, key) in typed.char_indices() {
        ryll.send_key(scancode(key).context("no scancode")?).await?;
        // Text rows are read without trailing blanks: a typed space shows with the next key.
        let shown = typed.get(..=i).context("typed prefix")?.trim_end();
        let (echoed, text) =
            screen_text_until(&server, |t| lines(t).get(1).is_some_and(|l| *l == shown)).await?;
        assert!(
            echoed,
            "{key:?} typed through ryll did not show; screen:\n{text}\nryll log:\n{}",
            ryll.log()
        );
    }
    let text = server.screen_text().await?;
    assert_eq!(lines(&text), [KEY_ECHO_BANNER, typed], "screen:\n{text}");

    // ryll sees its own typing come back through kerbside: its screen changed, and shows
    // the guest's screen as QEMU draws it (a direct SPICE client would take over the
    // session from kerbside, so the reference is a QMP screendump).
    let guest = Some(server.screendump(&server.dir().join("typed.ppm")).await?);
    let after = ryll_screenshot_like(&mut ryll, &guest).await?;
    save(ryll.dir(), "typed-ryll.ppm", &after)?;
    same_screen(&guest, &Some(after.clone()))
        .with_context(|| format!("ryll after typing vs QMP screendump:\n{}", ryll.log()))?;
    assert!(
        screen_difference(&Some(before), &Some(after))?.is_some(),
        "ryll's screen looks the same after typing"
    );
    ryll.stop().await?;
    app.stop().await;
    Ok(())
}

/// The firewall's view-only profile, with a real client typing through kerbside into the
/// key-echo guest: no key reaches the guest, while what the guest shows still reaches the
/// client (a key typed into the guest through QMP appears on ryll's screen).
#[tokio::test]
async fn view_only_keeps_typed_keys_from_the_guest_while_the_screen_updates() -> Result<()> {
    require_all(&["qemu", "nasm", "ryll"])?;
    let server = SpiceServer::builder()
        .password(Some("ryll-view-only"))
        .key_echo_guest(true)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let profiles = server.dir().join("firewall-profiles.yaml");
    std::fs::write(&profiles, "default:\n  view_only: true\n")?;
    let app = TestApp::builder()
        .console(console.clone())
        .ini(&format!(
            "[firewall]\nprofiles_file = {}\nmode = enforce\n",
            profiles.display()
        ))
        .start()
        .await?;
    let vv = app.manage_vv(&console.uuid, "ryll-view-only.vv").await?.0;
    let mut ryll = Ryll::start(&vv).await?;
    ryll.wait_for_display(SETTLE).await?;

    let dropped = || {
        app.running
            .metrics
            .proxy
            .firewall_verdicts
            .with_label_values(&["inputs", "client_to_server", "view_only", "drop"])
            .get()
    };
    for key in "abc".chars() {
        ryll.send_key(scancode(key).context("no scancode")?).await?;
    }
    // Every key press is a message the firewall drops; wait until all three were seen.
    let deadline = Instant::now() + SETTLE;
    while dropped() < 3 {
        assert!(
            Instant::now() < deadline,
            "the keys were not dropped ({} drops); ryll log:\n{}",
            dropped(),
            ryll.log()
        );
        sleep(Duration::from_millis(200)).await;
    }
    // The messages were dropped, not delayed: the guest shows only its banner.
    let text = server.screen_text().await?;
    assert_eq!(lines(&text), [KEY_ECHO_BANNER], "screen:\n{text}");

    // The display still updates: a key typed into the guest directly shows on ryll's screen.
    server.send_keys(&["x"]).await?;
    let (echoed, text) =
        screen_text_until(&server, |t| lines(t).get(1).is_some_and(|l| *l == "x")).await?;
    assert!(echoed, "QMP typing did not show; screen:\n{text}");
    let guest = Some(
        server
            .screendump(&server.dir().join("view-only.ppm"))
            .await?,
    );
    let shot = ryll_screenshot_like(&mut ryll, &guest).await?;
    same_screen(&guest, &Some(shot))
        .with_context(|| format!("ryll after the guest changed:\n{}", ryll.log()))?;
    assert_eq!(app.sessions(true).await?.len(), 1, "the session ended");
    ryll.stop().await?;
    app.stop().await;
    Ok(())
}
