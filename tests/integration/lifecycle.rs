//! The process lifecycle as tests can see it: the published phase goes Running → Draining →
//! Stopped, draining keeps live sessions (and the metrics endpoint) for the grace period, and
//! the stop closes them and leaves no task behind.

use std::time::Duration;

use anyhow::{Context, Result};
use kerbside::shutdown::Phase;
use kerbside_tests::app::{TestApp, TestConsole};
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::spice_client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn phases_go_running_draining_stopped_while_a_session_drains() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::with_password("phases").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let mut phase = app.running.shutdown.phase();
    assert_eq!(*phase.borrow_and_update(), Phase::Running);

    // A live session keeps the drain busy until the grace period ends.
    let token = app
        .mint_token(&console.uuid, Duration::from_secs(300))
        .await?;
    let mut main = app.link_main(&token).await?;
    spice_client::read_message(&mut main.stream).await?;

    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while phase.changed().await.is_ok() {
            let now = *phase.borrow_and_update();
            seen.push(now);
            if now == Phase::Stopped {
                break;
            }
        }
        seen
    });
    let running = app.running.shutdown.clone();
    let stop = tokio::spawn(async move { running.drain(Duration::from_secs(5)).await });
    // While draining, the session is still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *app.running.shutdown.phase().borrow(),
        Phase::Draining,
        "the drain ended before its grace period although a session was live"
    );
    // Operators can watch a drain: the metrics endpoint still answers.
    let metrics = *app.running.metrics_addrs.first().context("metrics")?;
    let during = scrape(metrics).await?;
    assert!(
        during.contains("kerbside_proxy_sessions_active 1"),
        "metrics during the drain:\n{during}"
    );
    stop.await?;
    let seen = tokio::time::timeout(Duration::from_secs(30), watcher).await??;
    assert_eq!(seen, vec![Phase::Draining, Phase::Stopped]);
    let live = app.sessions(true).await?;
    assert!(
        live.is_empty(),
        "sessions still live after the stop: {live:?}"
    );
    // Every task and server ended with the stop, the metrics endpoint included.
    assert!(
        app.running.shutdown.tracker().is_empty(),
        "{} task(s) left after the stop",
        app.running.shutdown.tracker().len()
    );
    assert!(
        app.running.shutdown.servers().is_empty(),
        "a server is still running after the stop"
    );
    assert!(
        tokio::net::TcpStream::connect(metrics).await.is_err(),
        "the metrics endpoint still accepts connections after the stop"
    );
    app.stop().await;
    Ok(())
}

/// `GET /metrics` over plain HTTP.
async fn scrape(addr: std::net::SocketAddr) -> Result<String> {
    let mut http = tokio::net::TcpStream::connect(addr).await?;
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    http.read_to_string(&mut body).await?;
    Ok(body)
}
