//! The proxy under hostile or careless clients: connections that never finish their link,
//! floods of handshakes and of wrong tokens, and slow handshakes. Real QEMU behind the proxy
//! and real spice-gtk clients prove that legitimate users still get in.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kerbside::proxy::ProxyContext;
use kerbside::spice::{ChannelType, LinkError, LinkMessage, parse_link_reply};
use kerbside_tests::app::{TestApp, TestConsole};
use kerbside_tests::logs::{LogCapture, LogEvent};
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::spice_client::{self, ClientOptions, gtk_caps};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TTL: Duration = Duration::from_secs(300);

/// Polls `check` until it returns true or `limit` passes.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn proxy(app: &TestApp) -> Result<&Arc<ProxyContext>> {
    Ok(&app.running.proxy.as_ref().context("no proxy")?.context)
}

/// The value of one sample of the proxy's metrics (0 when absent).
fn metric(app: &TestApp, sample: &str) -> Result<u64> {
    let body = proxy(app)?.metrics.render();
    Ok(body
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(Ok(0), str::parse)?)
}

fn link_failures(app: &TestApp, reason: &str) -> Result<u64> {
    metric(
        app,
        &format!("kerbside_proxy_link_failures_total{{reason=\"{reason}\"}}"),
    )
}

/// A TCP connection from `from` (any 127/8 address works on loopback).
async fn tcp_from(from: &str, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse()?, 0))?;
    Ok(socket.connect(to).await?)
}

/// Refusal and failure lines logged for `addr`, with a given `reason`.
fn lines(logs: &LogCapture, addr: &str, reason: &str) -> Vec<LogEvent> {
    logs.matching(|e| e.field("client.addr") == Some(addr) && e.field("reason") == Some(reason))
}

/// How many events the lines stand for: one for a first line, `count` for a summary.
fn represented(lines: &[LogEvent]) -> u64 {
    lines
        .iter()
        .map(|e| e.field("count").map_or(Ok(1), str::parse))
        .sum::<Result<u64, _>>()
        .unwrap_or(0)
}

#[tokio::test]
async fn links_that_never_send_a_ticket_hold_no_session_slot() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot"])?;
    let server = SpiceServer::with_password("slots").await?;
    let console = TestConsole::for_server(&server);
    // One session slot, and a handshake timeout long enough that the idle links below are
    // still there when the real client comes.
    let app = TestApp::builder()
        .console(console.clone())
        .ini("[proxy]\nmax_sessions = 1\nhandshake_timeout = 60")
        .start()
        .await?;
    let (logs, _capture) = LogCapture::install();
    let ctx = proxy(&app)?.clone();

    // 40 main links from another address that take their key and never send a ticket.
    let idle_from = ClientOptions {
        from: Some("127.0.0.2".parse()?),
        ..app.client()
    };
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut stream = spice_client::connect(&idle_from).await?;
        let reply = spice_client::send_link(
            &mut stream,
            &LinkMessage::new(0, ChannelType::Main, 0, gtk_caps(ChannelType::Main)),
        )
        .await?;
        assert_eq!(reply.error, LinkError::Ok, "the half link got its key");
        idle.push(stream);
    }
    assert_eq!(
        ctx.session_slots.available_permits(),
        1,
        "an unauthenticated link holds the session slot"
    );

    // A real client gets the only session slot meanwhile.
    let token = app.mint_token(&console.uuid, TTL).await?;
    let shot = app.screenshot_tls(&token, "slots.ppm").await?;
    assert_eq!(
        shot.exit_code,
        Some(0),
        "a session while 40 links wait for their tickets: {}",
        shot.stderr
    );
    assert!(shot.image.is_some(), "no screenshot");
    assert!(
        eventually(Duration::from_secs(30), || ctx
            .session_slots
            .available_permits()
            == 1)
        .await,
        "the screenshot session did not give its slot back"
    );

    // The slot is held by a session: further authorized main links get a link error, and the
    // log says so once, not once per link.
    let holder = app.mint_token(&console.uuid, TTL).await?;
    let main = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &holder)
        .await?
        .map_err(|e| anyhow::anyhow!("main link: {e}"))?;
    for _ in 0..20 {
        let refused = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &holder).await?;
        assert_eq!(refused.err(), Some(LinkError::Error), "session limit");
    }
    assert_eq!(link_failures(&app, "too_many_sessions")?, 20);
    let logged = lines(&logs, "127.0.0.1", "too_many_sessions");
    assert_eq!(
        logged.len(),
        1,
        "20 refusals within one interval make one line: {logged:?}"
    );
    assert_eq!(logged[0].level, tracing::Level::WARN);
    // The waiting links were never given a slot, and still wait.
    assert!(ctx.limits.handshakes() >= 40, "the half links were dropped");
    drop(main);
    drop(idle);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn handshakes_are_bounded_per_address_and_in_total() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot"])?;
    let server = SpiceServer::with_password("bounds").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::builder()
        .console(console.clone())
        .ini("[proxy]\nmax_handshakes = 24\nmax_handshakes_per_address = 8\nhandshake_timeout = 60")
        .start()
        .await?;
    let (logs, _capture) = LogCapture::install();
    let ctx = proxy(&app)?.clone();
    let (tls, plain) = (app.tls_addr(), app.insecure_addr());
    let at_once = Duration::from_secs(10); // far below the handshake timeout

    // One address: 8 connections that send nothing, on both listeners, are held.
    let mut held = Vec::new();
    for n in 0..8 {
        held.push(tcp_from("127.0.0.3", if n % 2 == 0 { tls } else { plain }).await?);
    }
    assert!(
        eventually(Duration::from_secs(10), || ctx.limits.handshakes() == 8).await,
        "8 idle connections should be held, {} are",
        ctx.limits.handshakes()
    );
    for addr in [tls, plain] {
        let mut extra = tcp_from("127.0.0.3", addr).await?;
        assert!(
            spice_client::closed_within(&mut extra, at_once).await,
            "a 9th connection from the same address must be closed at once"
        );
    }
    assert_eq!(link_failures(&app, "address_handshake_limit")?, 2);

    // Another address is not affected: a real client gets its screenshot.
    let token = app.mint_token(&console.uuid, TTL).await?;
    let shot = app.screenshot_tls(&token, "bounds.ppm").await?;
    assert_eq!(
        shot.exit_code,
        Some(0),
        "a session while another address is at its bound: {}",
        shot.stderr
    );

    // Two more addresses fill the total; then every new connection is closed at once.
    for from in ["127.0.0.4", "127.0.0.5"] {
        for _ in 0..8 {
            held.push(tcp_from(from, tls).await?);
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || ctx.limits.handshakes() == 24).await,
        "24 idle connections should be held, {} are",
        ctx.limits.handshakes()
    );
    let mut extra = tcp_from("127.0.0.6", tls).await?;
    assert!(
        spice_client::closed_within(&mut extra, at_once).await,
        "a connection over the total bound must be closed at once"
    );
    assert_eq!(link_failures(&app, "handshake_limit")?, 1);
    assert_eq!(
        lines(&logs, "127.0.0.3", "address_handshake_limit").len(),
        1
    );
    assert_eq!(lines(&logs, "127.0.0.6", "handshake_limit").len(), 1);

    // Once they go, their slots come back and a link goes through.
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || ctx.limits.handshakes() == 0).await,
        "slots of closed connections were not released"
    );
    let linked = spice_client::link(
        &ClientOptions {
            from: Some("127.0.0.6".parse()?),
            ..app.client()
        },
        ChannelType::Main,
        0,
        0,
        &app.mint_token(&console.uuid, TTL).await?,
    )
    .await?;
    assert!(linked.is_ok(), "link after the flood: {:?}", linked.err());
    drop(linked);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn wrong_token_floods_are_refused_without_spending_keys() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::with_password("flood").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::builder()
        .console(console.clone())
        .ini(
            "[proxy]\nfailed_link_burst = 5\nfailed_links_per_minute = 1\nrefusal_log_interval = 3",
        )
        .start()
        .await?;
    let (logs, _capture) = LogCapture::install();
    let ctx = proxy(&app)?.clone();
    let attacker = ClientOptions {
        from: Some("127.0.0.7".parse()?),
        ..app.client()
    };
    let wrong = "NoSuchTokenNoSuchTokenNoSuchTokenNoSuchToken1234";
    let keys_before = ctx.keys.taken();

    // The burst: each wrong token costs a key and is denied.
    for _ in 0..5 {
        let denied = spice_client::link(&attacker, ChannelType::Main, 0, 0, wrong).await?;
        assert_eq!(denied.err(), Some(LinkError::PermissionDenied));
    }
    assert_eq!(ctx.keys.taken() - keys_before, 5);

    // Then every link from that address gets a link error right after its link message,
    // with no key taken.
    for _ in 0..50 {
        let mut stream = spice_client::connect(&attacker).await?;
        let reply = spice_client::send_link(
            &mut stream,
            &LinkMessage::new(0, ChannelType::Main, 0, gtk_caps(ChannelType::Main)),
        )
        .await?;
        assert_eq!(reply.error, LinkError::Error, "throttled link");
        assert_eq!(reply.pub_key, [0u8; 162], "an error reply carries no key");
    }
    assert_eq!(
        ctx.keys.taken() - keys_before,
        5,
        "throttled links must not take RSA keys"
    );
    assert_eq!(link_failures(&app, "failed_link_limit")?, 50);
    assert_eq!(
        metric(
            &app,
            "kerbside_proxy_auth_total{reason=\"unknown_token\",result=\"denied\"}"
        )?,
        5
    );

    // While its bucket is empty the address is refused even with a good token; any other
    // address links normally.
    let token = app.mint_token(&console.uuid, TTL).await?;
    let refused = spice_client::link(&attacker, ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(refused.err(), Some(LinkError::Error));
    let other = ClientOptions {
        from: Some("127.0.0.8".parse()?),
        ..app.client()
    };
    let linked = spice_client::link(&other, ChannelType::Main, 0, 0, &token).await?;
    assert!(
        linked.is_ok(),
        "another address must not be throttled: {:?}",
        linked.err()
    );

    // The log: a first line per kind at once, then summaries with counts, never a line each.
    let complete = eventually(Duration::from_secs(20), || {
        represented(&lines(&logs, "127.0.0.7", "failed_link_limit")) == 51
            && represented(&lines(&logs, "127.0.0.7", "unknown_token")) == 5
    })
    .await;
    let throttled = lines(&logs, "127.0.0.7", "failed_link_limit");
    let denied = lines(&logs, "127.0.0.7", "unknown_token");
    assert!(
        complete,
        "the summaries must account for every refusal: {throttled:#?} {denied:#?}"
    );
    assert!(
        throttled.len() <= 10,
        "51 refusals logged in {} lines: {throttled:#?}",
        throttled.len()
    );
    assert!(
        denied.len() <= 2,
        "5 denials in {} lines: {denied:#?}",
        denied.len()
    );
    assert!(
        throttled
            .iter()
            .any(|e| e.field("count").is_some() && e.message.contains("more from 127.0.0.7")),
        "no summary line with a count: {throttled:#?}"
    );
    drop(linked);
    app.stop().await;
    Ok(())
}

/// A TLS client on an already connected socket, trusting the test CA.
async fn tls_over(
    tcp: TcpStream,
    ca: &std::path::Path,
    ip: IpAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    kerbside::proxy::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(ip.to_string())?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

#[tokio::test]
async fn one_deadline_covers_tls_and_the_link_stage() -> Result<()> {
    // 8 s for both: a client that waits 4 s before TLS and then stalls in the link stage is
    // closed about 8 s after it connected. Separate deadlines would give it 4 + 8 = 12 s.
    let timeout = Duration::from_secs(8);
    let app = TestApp::builder()
        .ini(&format!(
            "[proxy]\nhandshake_timeout = {}",
            timeout.as_secs()
        ))
        .start()
        .await?;
    let started = Instant::now();
    let tcp = TcpStream::connect(app.tls_addr()).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut tls = tls_over(tcp, &app.pki.ca_cert_path(), app.tls_addr().ip())
        .await
        .context("TLS within the deadline")?;
    // Nothing more from the client: the proxy answers with a link error and closes.
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut reply)).await;
    let elapsed = started.elapsed();
    assert!(read.is_ok(), "the stalled connection was never closed");
    let (reply, _) = parse_link_reply(&reply).context("a link error reply")?;
    assert_eq!(reply.error, LinkError::Error);
    assert!(
        elapsed < Duration::from_millis(10_500),
        "closed {elapsed:?} after connecting; the deadline is {timeout:?} for TLS and link together"
    );
    assert_eq!(link_failures(&app, "handshake_timeout")?, 1);
    let _ = tls.shutdown().await;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_main_link_cut_short_by_its_deadline_ends_its_session_and_frees_its_slot() -> Result<()> {
    // A hypervisor that accepts connections and never answers a link message.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let console = TestConsole::at(silent.local_addr()?, "never-checked");
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    // The link stage's deadline passes long before the hypervisor connection would time out.
    let app = TestApp::builder()
        .console(console.clone())
        .ini("[proxy]\nmax_sessions = 1\nhandshake_timeout = 2\nconnect_timeout = 300")
        .start()
        .await?;
    let ctx = proxy(&app)?.clone();
    let token = app.mint_token(&console.uuid, TTL).await?;
    let linked = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(
        linked.err(),
        Some(LinkError::Error),
        "the link did not fail"
    );
    // The session created while the hypervisor was being linked is ended, and its slot is
    // free again.
    assert!(
        eventually(Duration::from_secs(30), || ctx
            .session_slots
            .available_permits()
            == 1)
        .await,
        "the abandoned session keeps the only session slot"
    );
    let mut ended = Vec::new();
    for _ in 0..300 {
        ended = app.sessions(false).await?;
        if ended.iter().all(|s| s.ended_at.is_some()) && !ended.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(
        ended[0].end_reason.as_deref(),
        Some("the client's link did not complete"),
        "{ended:?}"
    );
    assert!(app.sessions(true).await?.is_empty());
    assert!(ctx.registry.is_empty(), "the session stays registered");
    held.abort();
    app.stop().await;
    Ok(())
}
