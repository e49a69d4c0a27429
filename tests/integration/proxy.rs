//! The SPICE proxy end to end: real QEMU behind it, real spice-gtk clients in front, and a
//! scripted client and server for what real peers cannot be made to do on demand.

use std::time::Duration;

use anyhow::{Context, Result};
use kerbside::spice::{ChannelType, LinkError, LinkMessage};
use kerbside_tests::app::{TestApp, TestConsole, program};
use kerbside_tests::clients::{
    RV_TIMEOUT, probe_exit, remote_viewer, spice_probe, spicy_screenshot,
};
use kerbside_tests::pki::TestPki;
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::screens::{same_screen, stable_direct_screenshot};
use kerbside_tests::spice_client::{
    self, ClientOptions, ScriptedServer, dst_info, gtk_caps, mini_message,
};
use kerbside_tests::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TTL: Duration = Duration::from_secs(300);

/// Whether the peer closes `stream` (end of stream or an error) within 30 s, reading and
/// dropping whatever arrives meanwhile.
async fn closes(stream: &mut Box<dyn spice_client::Stream>) -> bool {
    spice_client::closed_within(stream, Duration::from_secs(30)).await
}

/// Whether the peer ends `stream` with a TLS `close_notify` within 30 s, reading and dropping
/// whatever arrives meanwhile. tokio-rustls reports end of stream as `Ok(0)` only after a
/// `close_notify`; a bare TCP close is an `UnexpectedEof` error.
async fn closes_cleanly(stream: &mut Box<dyn spice_client::Stream>) -> Result<bool> {
    let mut buf = vec![0u8; 65536];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
    })
    .await;
    ended.unwrap_or(Ok(false))
}

/// The `channel.ended` audit messages of one session.
async fn channel_ends(
    app: &TestApp,
    session_id: &kerbside::db::models::SessionId,
) -> Result<Vec<String>> {
    Ok(app
        .audit_events("channel.ended")
        .await?
        .into_iter()
        .filter(|e| e.session_id.as_ref() == Some(session_id))
        .map(|e| e.message)
        .collect())
}

/// Links a session's main channel through `main_via` and its display channel through
/// `display_via` (possibly another proxy node), like spice-gtk does: main first, then the
/// display with the connection id MAIN_INIT gave.
async fn main_and_display(
    main_via: &ClientOptions,
    display_via: &ClientOptions,
    token: &str,
) -> Result<(spice_client::ClientChannel, spice_client::ClientChannel)> {
    let mut main = spice_client::link(main_via, ChannelType::Main, 0, 0, token)
        .await?
        .map_err(|e| anyhow::anyhow!("main link: {e}"))?;
    let (_, init) = spice_client::read_message(&mut main.stream).await?;
    let connection_id = u32::from_le_bytes(init[..4].try_into()?);
    let display = spice_client::link(display_via, ChannelType::Display, 0, connection_id, token)
        .await?
        .map_err(|e| anyhow::anyhow!("display link: {e}"))?;
    Ok((main, display))
}

#[tokio::test]
async fn screenshot_through_the_proxy_matches_direct() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot"])?;
    let server = SpiceServer::with_password("hv-ticket-1").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let out = app.dir().to_path_buf();

    // Compare with what the guest shows once it stopped printing, not with a screen caught
    // mid-way through SeaBIOS's output.
    let direct = stable_direct_screenshot(&server, "hv-ticket-1", &out).await?;

    // Straight to TLS.
    let tls = app.screenshot_tls(&token, "tls.ppm").await?;
    assert_eq!(
        tls.exit_code,
        Some(0),
        "through the proxy over TLS: {}",
        tls.stderr
    );
    same_screen(&direct, &tls.image)?;

    // Plain port first: NEED_SECURED sends every channel to the TLS port, same token.
    let redirected = spicy_screenshot(
        "127.0.0.1",
        Some(app.insecure_addr().port()),
        Some(app.tls_addr().port()),
        Some(&token),
        Some(&app.pki.ca_cert_path()),
        &out.join("redirect.ppm"),
    )
    .await?;
    assert_eq!(
        redirected.exit_code,
        Some(0),
        "via the plain port's redirect: {}",
        redirected.stderr
    );
    same_screen(&direct, &redirected.image)?;

    // The hypervisor's ticket is not a kerbside token.
    let wrong = spicy_screenshot(
        "127.0.0.1",
        None,
        Some(app.tls_addr().port()),
        Some("hv-ticket-1"),
        Some(&app.pki.ca_cert_path()),
        &out.join("wrong.ppm"),
    )
    .await?;
    assert_eq!(
        wrong.exit_code,
        Some(1),
        "a hypervisor ticket must not open the console"
    );
    assert!(
        wrong.stderr.contains("event: 23") || wrong.image.is_none(),
        "{}",
        wrong.stderr
    );

    let sessions = app.sessions(false).await?;
    assert!(sessions.len() >= 2, "sessions recorded: {sessions:?}");
    assert!(!app.audit_events("channel.created").await?.is_empty());
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn tls_hypervisor_is_verified_by_ca_and_host_subject() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot"])?;
    let hv_dir = tempfile::tempdir()?;
    let hv_pki = TestPki::new(hv_dir.path())?;
    let server = SpiceServer::builder()
        .password(Some("hv-tls"))
        .tls(Some(&hv_pki))
        .tls_only(true)
        .start()
        .await?;
    let good = TestConsole::for_server(&server);
    assert!(good.port.is_none() && good.tls_port.is_some());
    // Same hypervisor, but the expected subject names another machine.
    let mut wrong_subject = TestConsole::for_server(&server);
    wrong_subject.uuid = uuid::Uuid::new_v4().to_string();
    wrong_subject.host_subject = Some("C=XX,O=Kerbside Test,CN=someone-else".to_owned());
    let app = TestApp::builder()
        .console(good.clone())
        .console(wrong_subject.clone())
        .source_ca(hv_pki.ca_pem())
        .start()
        .await?;

    let token = app.mint_token(&good.uuid, TTL).await?;
    let shot = app.screenshot_tls(&token, "tls-hv.ppm").await?;
    assert_eq!(
        shot.exit_code,
        Some(0),
        "TLS hypervisor through the proxy: {}",
        shot.stderr
    );

    let token = app.mint_token(&wrong_subject.uuid, TTL).await?;
    let refused = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(
        refused.err(),
        Some(LinkError::Error),
        "a hypervisor with the wrong subject must be refused"
    );
    let failed = eventually(Duration::from_secs(5), || async {
        Ok(!app.audit_events("hypervisor.failed").await?.is_empty())
    })
    .await?;
    assert!(failed, "no hypervisor.failed audit event");
    let events = app.audit_events("hypervisor.failed").await?;
    assert!(events[0].message.contains("TLS"), "{}", events[0].message);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_channel_of_a_rich_session_is_relayed() -> Result<()> {
    require_all(&["qemu", "spice-probe"])?;
    let server = SpiceServer::builder()
        .password(Some("rich"))
        .rich()
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let channels = "main,display:2,inputs,cursor,playback,record,usbredir:2,webdav";
    let mut args = app.probe_args(&token, channels);
    args.timeout = Duration::from_secs(30);
    let probe = spice_probe(&args).await?;
    assert_eq!(
        probe.exit_code,
        Some(probe_exit::OK),
        "{}",
        probe.describe()
    );
    assert_eq!(probe.opened_count("display"), 2, "{}", probe.describe());
    assert_eq!(probe.opened_count("usbredir"), 2, "{}", probe.describe());
    for kind in ["main", "inputs", "cursor", "playback", "record", "webdav"] {
        assert!(
            probe.opened_count(kind) >= 1,
            "{kind} did not open: {}",
            probe.describe()
        );
    }
    // Every channel is on record under one session.
    let session = app.newest_session().await?;
    let channels = app
        .db()
        .run(move |conn| kerbside::db::models::list_channels(conn, &session.id))
        .await?;
    assert!(
        channels.len() >= 10,
        "channels recorded: {}",
        channels.len()
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn remote_viewer_opens_a_vv_from_kerbside_manage() -> Result<()> {
    require_all(&["qemu", "remote-viewer", "xvfb"])?;
    let server = SpiceServer::with_password("rv").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let (vv, token) = app.manage_vv(&console.uuid, "console.vv").await?;
    assert!(
        token.len() >= 40 && token.len() <= 60 && token.chars().all(|c| c.is_ascii_alphanumeric()),
        "token {token:?}"
    );
    let text = std::fs::read_to_string(&vv)?;
    for key in [
        "type=spice",
        "host=127.0.0.1",
        "port=",
        "tls-port=",
        "password=",
        "ca=-----BEGIN CERTIFICATE-----\\n",
        "host-subject=",
        "secure-channels=all",
        "delete-this-file=1",
        "title=",
    ] {
        assert!(text.contains(key), "{key} missing from the .vv:\n{text}");
    }
    let viewer = remote_viewer(&vv, RV_TIMEOUT).await?;
    assert!(
        viewer.main_channel_opened,
        "remote-viewer did not open the main channel:\n{}",
        viewer.log
    );
    assert!(viewer.display_created, "no display:\n{}", viewer.log);
    assert!(
        !vv.exists(),
        "delete-this-file=1 should make remote-viewer delete the file"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn wrong_expired_and_rebound_tokens_are_denied() -> Result<()> {
    require_all(&["qemu", "spice-probe"])?;
    let server = SpiceServer::with_password("deny").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let client = app.client();

    let unknown = spice_client::link(
        &client,
        ChannelType::Main,
        0,
        0,
        "NoSuchTokenNoSuchTokenNoSuchTokenNoSuch1",
    )
    .await?;
    assert_eq!(unknown.err(), Some(LinkError::PermissionDenied));
    let probe =
        spice_probe(&app.probe_args("NoSuchTokenNoSuchTokenNoSuchTokenNoSuch1", "main")).await?;
    assert_eq!(
        probe.exit_code,
        Some(probe_exit::AUTH),
        "{}",
        probe.describe()
    );

    let short = app
        .mint_token(&console.uuid, Duration::from_secs(1))
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = spice_client::link(&client, ChannelType::Main, 0, 0, &short).await?;
    assert_eq!(
        expired.err(),
        Some(LinkError::PermissionDenied),
        "an expired token must be refused"
    );

    // A token bound by a session from 127.0.0.1 is refused from another address.
    let token = app.mint_token(&console.uuid, TTL).await?;
    let mut main = spice_client::link(&client, ChannelType::Main, 0, 0, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("main link: {e}"))?;
    let (msg_type, init) = spice_client::read_message(&mut main.stream).await?;
    assert_eq!(msg_type, 103, "MAIN_INIT first");
    let connection_id = u32::from_le_bytes(init[..4].try_into()?);
    let elsewhere = ClientOptions {
        from: Some("127.0.0.2".parse()?),
        ..client.clone()
    };
    let stolen = spice_client::link(&elsewhere, ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(
        stolen.err(),
        Some(LinkError::PermissionDenied),
        "a bound token must not work from another address"
    );
    let stolen =
        spice_client::link(&elsewhere, ChannelType::Display, 0, connection_id, &token).await?;
    assert_eq!(
        stolen.err(),
        Some(LinkError::PermissionDenied),
        "nor for another channel of its session"
    );

    // Same client: another channel of the session links (its session id is the proxy's).
    let display =
        spice_client::link(&client, ChannelType::Display, 0, connection_id, &token).await?;
    assert!(
        display.is_ok(),
        "display of the bound session: {:?}",
        display.err()
    );
    // Another token cannot join this session.
    let other = app.mint_token(&console.uuid, TTL).await?;
    let foreign =
        spice_client::link(&client, ChannelType::Inputs, 0, connection_id, &other).await?;
    assert_eq!(foreign.err(), Some(LinkError::PermissionDenied));
    // An unknown connection id is answered like spice-server does.
    let mut stream = spice_client::connect(&client).await?;
    let reply = spice_client::send_link(
        &mut stream,
        &LinkMessage::new(
            connection_id ^ 0x5a5a_5a5a,
            ChannelType::Display,
            0,
            gtk_caps(ChannelType::Display),
        ),
    )
    .await?;
    assert_eq!(reply.error, LinkError::BadConnectionId);

    let denied = app
        .running
        .proxy
        .as_ref()
        .context("proxy")?
        .context
        .metrics
        .render();
    assert!(
        denied.contains("kerbside_proxy_auth_total{reason=\"unknown_token\",result=\"denied\"}"),
        "{denied}"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn hypervisor_down_gives_a_link_error_and_an_audit_row() -> Result<()> {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let console = TestConsole::at(closed, "ticket");
    let app = TestApp::builder()
        .console(console.clone())
        .ini("[proxy]\nconnect_timeout = 2")
        .start()
        .await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let result = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(
        result.err(),
        Some(LinkError::Error),
        "an unreachable hypervisor is a link error, not OK then a closed socket"
    );
    let audited = eventually(Duration::from_secs(5), || async {
        Ok(!app.audit_events("hypervisor.failed").await?.is_empty())
    })
    .await?;
    assert!(audited, "no audit row for the failed hypervisor");
    let events = app.audit_events("hypervisor.failed").await?;
    assert!(
        events[0].message.contains(&closed.to_string()),
        "{}",
        events[0].message
    );
    assert!(
        !events[0].message.contains("ticket"),
        "{}",
        events[0].message
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn migration_messages_never_reach_the_client() -> Result<()> {
    let upstream_session = 1_804_289_383u32; // what an unseeded spice-server hands out first
    let script = vec![
        mini_message(101, &dst_info("198.51.100.7")),
        mini_message(111, &dst_info("198.51.100.7")),
        mini_message(
            116,
            &[dst_info("198.51.100.7"), 1u32.to_le_bytes().to_vec()].concat(),
        ),
        mini_message(113, &[5u32.to_le_bytes().as_slice(), b"vm-1\0"].concat()),
    ];
    let mut server = ScriptedServer::start("scripted-ticket", upstream_session, script).await?;
    let console = TestConsole::at(server.addr, "scripted-ticket");
    let app = TestApp::for_console(&console).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let mut main = app.link_main(&token).await?;

    let (t, init) = spice_client::read_message(&mut main.stream).await?;
    assert_eq!(t, 103);
    let given = u32::from_le_bytes(init[..4].try_into()?);
    assert_ne!(
        given, upstream_session,
        "the hypervisor's session id must be replaced"
    );
    let session = app
        .sessions(true)
        .await?
        .into_iter()
        .next()
        .context("session")?;
    assert_eq!(session.proxy_connection_id, i64::from(given));
    assert_eq!(
        session.upstream_session_id,
        Some(i64::from(upstream_session))
    );

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(spice_client::read_message(&mut main.stream).await?);
    }
    let types: Vec<u16> = seen.iter().map(|(t, _)| *t).collect();
    // Each migration message became one empty message list, so message counts still match.
    assert_eq!(types, [8, 8, 8, 113]);
    assert!(seen[..3].iter().all(|(_, body)| body == &[0, 0]));
    assert!(
        !seen
            .iter()
            .any(|(_, body)| body.windows(12).any(|w| w == b"198.51.100.7"))
    );

    // The hypervisor was told the client cannot follow, once per MIGRATE_BEGIN(_SEAMLESS).
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let (t, _) = tokio::time::timeout(Duration::from_secs(5), server.received.recv())
            .await?
            .context("server closed")?;
        replies.push(t);
    }
    assert_eq!(replies, [103, 103], "MIGRATE_CONNECT_ERROR expected");
    // Client traffic still flows: ATTACH_CHANNELS reaches the hypervisor.
    main.stream.write_all(&mini_message(104, &[])).await?;
    let (t, _) = tokio::time::timeout(Duration::from_secs(5), server.received.recv())
        .await?
        .context("server closed")?;
    assert_eq!(t, 104);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn garbage_and_idle_connections_are_closed_while_sessions_work() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot"])?;
    let server = SpiceServer::with_password("busy").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::builder()
        .console(console.clone())
        // Room for all the idle connections below, which come from the client's own address.
        .ini("[proxy]\nhandshake_timeout = 2\nmax_handshakes = 4000\nmax_handshakes_per_address = 4000")
        .start()
        .await?;

    // Random bytes on the plain port get INVALID_MAGIC, then a close.
    let mut garbage = tokio::net::TcpStream::connect(app.insecure_addr()).await?;
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
    let mut reply = Vec::new();
    garbage.read_to_end(&mut reply).await?;
    assert_eq!(reply.len(), 16 + 178);
    assert_eq!(
        u32::from_le_bytes(reply[16..20].try_into()?),
        2,
        "INVALID_MAGIC"
    );
    // A valid link message on the plain port gets NEED_SECURED.
    let mut plain = tokio::net::TcpStream::connect(app.insecure_addr()).await?;
    plain
        .write_all(&LinkMessage::new(0, ChannelType::Main, 0, gtk_caps(ChannelType::Main)).encode())
        .await?;
    let mut reply = Vec::new();
    plain.read_to_end(&mut reply).await?;
    assert_eq!(
        u32::from_le_bytes(reply[16..20].try_into()?),
        5,
        "NEED_SECURED"
    );
    // Random bytes on the TLS port: the TLS handshake fails and the socket closes.
    let mut tls_garbage = tokio::net::TcpStream::connect(app.tls_addr()).await?;
    tls_garbage.write_all(&[0x42; 300]).await?;
    let mut sink = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), tls_garbage.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "garbage on the TLS port was not closed");

    // 1,000 idle connections on each port, some with half a link message.
    let mut idle = Vec::new();
    for i in 0..1000 {
        for addr in [app.insecure_addr(), app.tls_addr()] {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            if i % 100 == 0 && addr == app.insecure_addr() {
                s.write_all(&b"REDQ\x02\x00\x00\x00"[..]).await?;
            }
            idle.push(s);
        }
    }
    // A real session works meanwhile.
    let token = app.mint_token(&console.uuid, TTL).await?;
    let shot = app.screenshot_tls(&token, "busy.ppm").await?;
    assert_eq!(
        shot.exit_code,
        Some(0),
        "a session while 2,000 idle connections wait: {}",
        shot.stderr
    );
    // Every idle connection is closed by the handshake timeout.
    for mut s in idle {
        let mut buf = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(ended.is_ok(), "an idle connection was left open");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn terminate_ends_a_live_session() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::with_password("term").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let (mut main, mut display) = main_and_display(&app.client(), &app.client(), &token).await?;
    let session = app.live_session().await?;

    let output = tokio::process::Command::new(program("kerbside-manage")?)
        .args(app.config_args())
        .args([
            "session",
            "terminate",
            session.id.as_str(),
            "--reason",
            "test says so",
        ])
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Each channel ends with a TLS close_notify, not a bare TCP close.
    for (name, stream) in [("main", &mut main.stream), ("display", &mut display.stream)] {
        assert!(
            closes_cleanly(stream).await?,
            "the terminated session's {name} channel was not closed with a TLS close_notify"
        );
    }
    let ended = eventually(Duration::from_secs(5), || async {
        Ok(app.sessions(false).await?.iter().any(|s| {
            s.id == session.id && s.end_reason.as_deref() == Some("terminated: test says so")
        }))
    })
    .await?;
    assert!(
        ended,
        "session not recorded as terminated: {:?}",
        app.sessions(false).await?
    );
    // Both channels' ends are audited with the operator's reason.
    let audited = eventually(Duration::from_secs(5), || async {
        Ok(channel_ends(&app, &session.id).await?.len() == 2)
    })
    .await?;
    let ends = channel_ends(&app, &session.id).await?;
    assert!(audited, "channel ends: {ends:?}");
    for end in &ends {
        assert!(end.contains("ended: terminated: test says so"), "{end}");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn takeover_and_vanished_clients_are_recorded_in_words() -> Result<()> {
    require_all(&["qemu", "spice-probe"])?;
    let server = SpiceServer::with_password("takeover").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;

    // A real spice-gtk client holds main, display, inputs and cursor open.
    let mut args = app.probe_args(&token, "main,display,inputs,cursor");
    args.extra = vec!["--hold".into(), "120".into(), "--exit-on-close".into()];
    args.timeout = Duration::from_secs(150);
    let probe = tokio::spawn(async move { spice_probe(&args).await });
    let linked = eventually(Duration::from_secs(30), || async {
        let Some(session) = app.sessions(true).await?.into_iter().next() else {
            return Ok(false);
        };
        let channels = app
            .db()
            .run(move |conn| kerbside::db::models::list_channels(conn, &session.id))
            .await?;
        Ok(channels.len() >= 4)
    })
    .await?;
    assert!(linked, "the first client did not link its four channels");
    let first = app.live_session().await?;

    // A second client with the same token takes the console over: QEMU drops every channel
    // of the first client.
    let second = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    let mut second = second.map_err(|e| anyhow::anyhow!("second main link: {e}"))?;
    spice_client::read_message(&mut second.stream).await?;
    let result = tokio::time::timeout(Duration::from_secs(60), probe)
        .await
        .context("the first client was not disconnected")???;
    assert_eq!(
        result.exit_code,
        Some(probe_exit::IO),
        "{}",
        result.describe()
    );

    // The hypervisor closed them, and the record says so for each channel and the session.
    let recorded = eventually(Duration::from_secs(10), || async {
        Ok(channel_ends(&app, &first.id).await?.len() >= 4)
    })
    .await?;
    let ends = channel_ends(&app, &first.id).await?;
    assert!(recorded, "channel ends of the first session: {ends:?}");
    for end in &ends {
        assert!(
            end.contains("ended: the hypervisor closed the connection"),
            "a channel closed by the hypervisor is recorded as: {end}"
        );
    }
    let first_end = app
        .sessions(false)
        .await?
        .into_iter()
        .find(|s| s.id == first.id)
        .and_then(|s| s.end_reason);
    assert_eq!(
        first_end.as_deref(),
        Some("the hypervisor closed the connection")
    );

    // The second client vanishes without a close_notify, as a killed client does (with unread
    // bytes, its kernel resets the connection): the record says so in words, without the TLS
    // library's explanation and URL.
    let second_id = app
        .sessions(true)
        .await?
        .into_iter()
        .next()
        .context("no second session")?
        .id;
    drop(second);
    let ended = eventually(Duration::from_secs(10), || async {
        Ok(app
            .sessions(false)
            .await?
            .iter()
            .any(|s| s.id == second_id && s.end_reason.is_some()))
    })
    .await?;
    assert!(ended, "{:?}", app.sessions(false).await?);
    let second_end = app
        .sessions(false)
        .await?
        .into_iter()
        .find(|s| s.id == second_id)
        .and_then(|s| s.end_reason);
    let second_end = second_end.unwrap_or_default();
    assert!(
        second_end == "the client closed the connection"
            || second_end == "client connection failed: connection reset",
        "{second_end}"
    );
    for event in ["channel.ended", "session.ended"] {
        for e in app.audit_events(event).await? {
            assert!(!e.message.contains("://"), "{event}: {}", e.message);
        }
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn termination_reaches_another_proxy_process_through_mariadb() -> Result<()> {
    require_all(&["qemu", "mariadb"])?;
    let database = kerbside_tests::db::TestDatabase::mariadb().await?;
    let url = kerbside_tests::db::with_database(
        &kerbside_tests::db::mariadb_server_url(),
        database.mariadb_name().context("mariadb")?,
    );
    let server = SpiceServer::with_password("two-nodes").await?;
    let console = TestConsole::for_server(&server);
    let node_a = TestApp::builder()
        .console(console.clone())
        .database(&url)
        .node("node-a")
        .start()
        .await?;

    // A second kerbside process on the same database: another node.
    let (mut process_b, b_addr) = spawn_proxy_process(&node_a, "node-b", 2).await?;

    // The session's main channel on node B, its display channel on node A.
    let token = node_a.mint_token(&console.uuid, TTL).await?;
    let on_b = ClientOptions {
        addr: b_addr,
        ..node_a.client()
    };
    let (mut main, mut display) = main_and_display(&on_b, &node_a.client(), &token).await?;
    let session = node_a
        .sessions(true)
        .await?
        .into_iter()
        .next()
        .context("no live session")?;
    assert_eq!(session.node, "node-b");

    let id = session.id.clone();
    node_a
        .db()
        .run(move |conn| {
            kerbside::db::models::request_termination(conn, &id, "moved by test", "test")
        })
        .await?;
    for (name, stream) in [
        ("main on node B", &mut main.stream),
        ("display on node A", &mut display.stream),
    ] {
        assert!(closes(stream).await, "{name} stayed open after termination");
    }
    let ended = eventually(Duration::from_secs(5), || async {
        Ok(node_a.sessions(false).await?.iter().any(|s| {
            s.id == session.id && s.end_reason.as_deref() == Some("terminated: moved by test")
        }))
    })
    .await?;
    assert!(
        ended,
        "node B did not record the termination: {:?}\nterminations: {:?}\nnode B log:\n{}",
        node_a.sessions(false).await?,
        node_a
            .db()
            .run(|conn| {
                use diesel::prelude::*;
                use kerbside::db::schema::session_terminations::dsl::*;
                Ok(session_terminations
                    .select(kerbside::db::models::SessionTermination::as_select())
                    .load(conn)?)
            })
            .await?,
        std::fs::read_to_string(node_a.dir().join("node-b.log")).unwrap_or_default()
    );
    process_b.start_kill()?;
    let _ = process_b.wait().await;
    node_a.stop().await;
    Ok(())
}

#[tokio::test]
async fn ipv6_old_clients_full_headers_and_limits() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::with_password("v6").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::builder()
        .console(console.clone())
        .ini("[proxy]\nbind_host = ::1\nmax_sessions = 1")
        .start()
        .await?;
    let proxy = app.running.proxy.as_ref().context("proxy")?;
    let v6 = *proxy
        .tls_addrs
        .iter()
        .find(|a| a.is_ipv6())
        .context("no IPv6 listener")?;
    assert!(proxy.insecure_addrs.iter().any(|a| a.is_ipv6()));
    let token = app.mint_token(&console.uuid, TTL).await?;

    // A client without AUTH_SELECTION sends no mechanism word; one without MINI_HEADER gets
    // full headers on both legs.
    let mut stream = spice_client::connect(&ClientOptions {
        addr: v6,
        ..app.client()
    })
    .await?;
    let mut caps = kerbside::spice::Caps::default();
    caps.set_common(kerbside::spice::consts::COMMON_CAP_AUTH_SPICE);
    let reply = spice_client::send_link(
        &mut stream,
        &LinkMessage::new(0, ChannelType::Main, 0, caps),
    )
    .await?;
    assert_eq!(reply.error, LinkError::Ok);
    assert!(
        !reply
            .caps
            .has_common(kerbside::spice::consts::COMMON_CAP_MINI_HEADER),
        "MINI_HEADER offered to a client without it"
    );
    assert!(
        !reply
            .caps
            .has_common(kerbside::spice::consts::COMMON_CAP_AUTH_SASL),
        "SASL is never offered"
    );
    let ticket = kerbside::spice::encrypt_ticket(&reply.pub_key, token.as_bytes())?;
    stream.write_all(&ticket).await?;
    let mut result = [0u8; 4];
    stream.read_exact(&mut result).await?;
    assert_eq!(
        u32::from_le_bytes(result),
        0,
        "link over IPv6 without AUTH_SELECTION"
    );
    let mut header = [0u8; 18];
    stream.read_exact(&mut header).await?;
    assert_eq!(
        u64::from_le_bytes(header[..8].try_into()?),
        1,
        "full header: first serial is 1"
    );
    assert_eq!(
        u16::from_le_bytes(header[8..10].try_into()?),
        103,
        "full header: MAIN_INIT"
    );

    // max_sessions = 1: a second authorized session is refused with a link error (the first
    // token is bound to the IPv6 client, so the second session needs a token of its own).
    let second_token = app.mint_token(&console.uuid, TTL).await?;
    let second = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &second_token).await?;
    assert_eq!(
        second.err(),
        Some(LinkError::Error),
        "the session limit must hold"
    );

    // Metrics are served over HTTP.
    let metrics_addr = app.running.metrics_addrs.first().context("metrics")?;
    let mut http = tokio::net::TcpStream::connect(metrics_addr).await?;
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    http.read_to_string(&mut body).await?;
    for metric in [
        "kerbside_proxy_connections_total",
        "kerbside_proxy_sessions_active 1",
        "kerbside_proxy_handshake_seconds_bucket",
        "kerbside_proxy_link_failures_total{reason=\"too_many_sessions\"} 1",
        "kerbside_proxy_bytes_total{channel=\"main\",direction=\"to_client\"}",
    ] {
        assert!(
            body.contains(metric),
            "{metric} missing from /metrics:\n{body}"
        );
    }
    let connected = eventually(Duration::from_secs(5), || async {
        Ok(!app.audit_events("hypervisor.connected").await?.is_empty())
    })
    .await?;
    assert!(connected, "no hypervisor.connected audit event");
    app.stop().await;
    Ok(())
}

/// Runs `kerbside --component proxy` as its own process on the app's state, with a grace
/// period of `grace` seconds; returns the process and its TLS address. (The firewall tests
/// use it for a second node too.)
pub(crate) async fn spawn_proxy_process(
    app: &TestApp,
    name: &str,
    grace: u64,
) -> Result<(tokio::process::Child, std::net::SocketAddr)> {
    let [tls, plain] = kerbside_tests::ports::free_ports(2)?[..] else {
        anyhow::bail!("ports")
    };
    let conf = app.dir().join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nnode_name = {name}\n[proxy]\ntls_port = {tls}\ninsecure_port = {plain}\nshutdown_timeout = {grace}\n[metrics]\nenabled = false\n"
        ),
    )?;
    let mut args = app.config_args();
    args.truncate(4);
    let child = tokio::process::Command::new(program("kerbside")?)
        .args(&args)
        .arg("--config-file")
        .arg(&conf)
        .args(["--component", "proxy"])
        .kill_on_drop(true)
        .stderr(std::fs::File::create(
            app.dir().join(format!("{name}.log")),
        )?)
        .spawn()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{tls}").parse()?;
    let up = eventually(Duration::from_secs(20), || async {
        Ok(tokio::net::TcpStream::connect(addr).await.is_ok())
    })
    .await?;
    anyhow::ensure!(up, "{name} did not start");
    Ok((child, addr))
}

/// A main channel linked through the proxy process at `addr` with a fresh token for
/// `console`, past its first message (the session is live).
async fn live_main_channel(
    app: &TestApp,
    console: &TestConsole,
    addr: std::net::SocketAddr,
) -> Result<spice_client::ClientChannel> {
    let token = app.mint_token(&console.uuid, TTL).await?;
    let mut main = spice_client::link(
        &ClientOptions {
            addr,
            ..app.client()
        },
        ChannelType::Main,
        0,
        0,
        &token,
    )
    .await?
    .map_err(|e| anyhow::anyhow!("link: {e}"))?;
    spice_client::read_message(&mut main.stream).await?;
    Ok(main)
}

fn signal(child: &tokio::process::Child, name: &str) -> Result<()> {
    let pid = child.id().context("process already gone")?;
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} failed");
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_then_closes_and_a_second_signal_stops_at_once() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::with_password("drain").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;

    // Graceful: SIGTERM closes the listener at once, lets the session run out the grace
    // period, then closes it and exits cleanly.
    let (mut child, addr) = spawn_proxy_process(&app, "drainer", 3).await?;
    let mut main = live_main_channel(&app, &console, addr).await?;
    signal(&child, "TERM")?;
    let refused = eventually(Duration::from_secs(5), || async {
        Ok(tokio::net::TcpStream::connect(addr).await.is_err())
    })
    .await?;
    assert!(refused, "the listener stayed open after SIGTERM");
    // During the grace period the session still works: a message from the client goes through.
    main.stream.write_all(&mini_message(104, &[])).await?;
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .context("kerbside did not stop after the grace period")??;
    assert!(status.success(), "exit status {status}");
    assert!(
        closes(&mut main.stream).await,
        "the session outlived the process"
    );
    let ended =
        eventually(Duration::from_secs(5), || async {
            Ok(app.sessions(false).await?.iter().any(|s| {
                s.node == "drainer" && s.end_reason.as_deref() == Some("proxy shutting down")
            }))
        })
        .await?;
    assert!(
        ended,
        "the drained session was not recorded: {:?}",
        app.sessions(false).await?
    );

    // Impatient: a second signal stops without waiting for the (long) grace period.
    let (mut child, addr) = spawn_proxy_process(&app, "impatient", 600).await?;
    let _main = live_main_channel(&app, &console, addr).await?;
    signal(&child, "TERM")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, "INT")?;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .context("a second signal did not stop kerbside")??;
    assert!(status.success(), "exit status {status}");

    // Ctrl-C: SIGINT alone stops at once too, without the (long) grace period, and the
    // session is closed and recorded.
    let (mut child, addr) = spawn_proxy_process(&app, "interrupted", 600).await?;
    let mut main = live_main_channel(&app, &console, addr).await?;
    signal(&child, "INT")?;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .context("SIGINT did not stop kerbside at once")??;
    assert!(status.success(), "exit status {status}");
    assert!(
        closes(&mut main.stream).await,
        "the session outlived the process"
    );
    let ended = eventually(Duration::from_secs(5), || async {
        Ok(app.sessions(false).await?.iter().any(|s| {
            s.node == "interrupted" && s.end_reason.as_deref() == Some("proxy shutting down")
        }))
    })
    .await?;
    assert!(ended, "the interrupted session was not recorded");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn idle_channels_are_closed_and_recorded() -> Result<()> {
    // A scripted hypervisor that goes quiet after MAIN_INIT (QEMU pings idle channels every
    // few minutes, so an idle timeout is tested against silence, not against QEMU).
    let server = ScriptedServer::start("quiet", 7, Vec::new()).await?;
    let console = TestConsole::at(server.addr, "quiet");
    let app = TestApp::builder()
        .console(console.clone())
        .ini("[proxy]\nidle_timeout = 2")
        .start()
        .await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let mut main = app.link_main(&token).await?;
    spice_client::read_message(&mut main.stream).await?;
    assert!(
        closes_cleanly(&mut main.stream).await?,
        "an idle session stayed open, or was closed without a TLS close_notify"
    );
    let recorded = eventually(Duration::from_secs(10), || async {
        Ok(app
            .sessions(false)
            .await?
            .iter()
            .any(|s| s.end_reason.as_deref() == Some("idle timeout")))
    })
    .await?;
    assert!(recorded, "{:?}", app.sessions(false).await?);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn hypervisor_certificates_are_checked_against_the_hypervisor_name() -> Result<()> {
    require_all(&["qemu"])?;
    let dir = tempfile::tempdir()?;
    let hv_pki = TestPki::new(&dir.path().join("ca"))?;
    // One certificate names the hypervisor only; the other names another host, plus the
    // address kerbside connects to.
    let named = hv_pki.issue("hv1", "hv1.test", &["hv1.test"])?;
    let impostor = hv_pki.issue("evil", "evil.test", &["evil.test", "127.0.0.1"])?;
    let mut consoles = Vec::new();
    let mut servers = Vec::new();
    for leaf in [&named, &impostor] {
        let server = SpiceServer::builder()
            .password(Some("names"))
            .tls_leaf(&hv_pki, leaf, &dir.path().join(&leaf.name))?
            .tls_only(true)
            .start()
            .await?;
        let mut console = TestConsole::for_server(&server);
        console.hypervisor = "hv1.test".to_owned();
        console.host = "127.0.0.1".to_owned();
        console.host_subject = None;
        consoles.push(console);
        servers.push(server);
    }
    let app = TestApp::builder()
        .console(consoles[0].clone())
        .console(consoles[1].clone())
        .source_ca(hv_pki.ca_pem())
        .start()
        .await?;

    // hv1.test's own certificate, reached at 127.0.0.1: accepted.
    let token = app.mint_token(&consoles[0].uuid, TTL).await?;
    let mut main = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("a certificate naming the hypervisor was refused: {e}"))?;
    let (msg_type, _) = spice_client::read_message(&mut main.stream).await?;
    assert_eq!(
        msg_type, 103,
        "MAIN_INIT through a TLS hypervisor named hv1.test"
    );

    // A certificate valid for the address but not for hv1.test: refused, and audited.
    let token = app.mint_token(&consoles[1].uuid, TTL).await?;
    let refused = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(
        refused.err(),
        Some(LinkError::Error),
        "a certificate for evil.test must not stand for hv1.test"
    );
    let failed = eventually(Duration::from_secs(5), || async {
        Ok(!app.audit_events("hypervisor.failed").await?.is_empty())
    })
    .await?;
    assert!(failed, "no hypervisor.failed audit event");
    let events = app.audit_events("hypervisor.failed").await?;
    assert!(
        events[0].message.contains("hv1.test") && events[0].message.contains("TLS"),
        "{}",
        events[0].message
    );
    assert!(!events[0].message.contains("://"), "{}", events[0].message);
    drop(main);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_hypervisor_that_requires_tls_gets_it_or_a_clear_refusal() -> Result<()> {
    require_all(&["qemu"])?;
    let dir = tempfile::tempdir()?;
    let hv_pki = TestPki::new(dir.path())?;
    // Both ports, but every channel must use TLS: a plain link gets NEED_SECURED.
    let server = SpiceServer::builder()
        .password(Some("secured"))
        .tls(Some(&hv_pki))
        .spice_option("tls-channel=default")
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    assert!(console.port.is_some() && console.tls_port.is_some());

    // With the CA known, kerbside goes straight to the TLS port.
    let app = TestApp::builder()
        .console(console.clone())
        .source_ca(hv_pki.ca_pem())
        .start()
        .await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let mut main = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("a TLS-only hypervisor with a known CA: {e}"))?;
    let (msg_type, _) = spice_client::read_message(&mut main.stream).await?;
    assert_eq!(msg_type, 103);
    drop(main);
    app.stop().await;

    // Without a CA, TLS is impossible: the plain link's NEED_SECURED becomes a refusal that
    // says what is missing.
    let app = TestApp::for_console(&console).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let refused = spice_client::link(&app.client(), ChannelType::Main, 0, 0, &token).await?;
    assert_eq!(refused.err(), Some(LinkError::Error));
    let failed = eventually(Duration::from_secs(5), || async {
        Ok(!app.audit_events("hypervisor.failed").await?.is_empty())
    })
    .await?;
    assert!(failed, "no hypervisor.failed audit event");
    let events = app.audit_events("hypervisor.failed").await?;
    assert!(
        events[0].message.contains("requires TLS") && events[0].message.contains("no CA"),
        "{}",
        events[0].message
    );
    app.stop().await;
    Ok(())
}

/// `kerbside-bench static-screen`: a scripted hypervisor whose screen never changes.
struct StaticScreenHypervisor {
    addr: std::net::SocketAddr,
    _process: tokio::process::Child,
}

impl StaticScreenHypervisor {
    async fn start(ticket: &str) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut process = tokio::process::Command::new(program("kerbside-bench")?)
            .args(["static-screen", "--ticket", ticket])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = process.stdout.take().context("stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .context("kerbside-bench static-screen did not start")??;
        let reported: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("kerbside-bench static-screen printed {line:?}"))?;
        let addr = reported["addr"].as_str().context("no addr")?.parse()?;
        Ok(StaticScreenHypervisor {
            addr,
            _process: process,
        })
    }
}

#[tokio::test]
async fn spice_gtk_gets_the_first_frame_of_a_static_screen_in_every_session() -> Result<()> {
    require_all(&["spice-probe"])?;
    let hv = StaticScreenHypervisor::start("static").await?;
    let console = TestConsole::at(hv.addr, "static");
    let app = TestApp::for_console(&console).await?;
    let channels = "main,display,inputs,cursor";

    // The scripted screen is one spice-gtk can draw: straight to the hypervisor, a frame.
    let direct = spice_probe(&kerbside_tests::clients::ProbeArgs {
        host: hv.addr.ip().to_string(),
        port: Some(hv.addr.port()),
        password: Some("static".to_owned()),
        channels: channels.to_owned(),
        ppm: Some(app.dir().join("static-direct.ppm")),
        timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await?;
    assert_eq!(
        direct.exit_code,
        Some(probe_exit::OK),
        "direct: {}",
        direct.describe()
    );

    // Through kerbside, every session gets its first frame, though nothing more ever comes.
    for session in 0..10 {
        let token = app.mint_token(&console.uuid, TTL).await?;
        let mut args = app.probe_args(&token, channels);
        args.ppm = Some(app.dir().join(format!("static-{session}.ppm")));
        args.timeout = Duration::from_secs(30);
        let probe = spice_probe(&args).await?;
        assert_eq!(
            probe.exit_code,
            Some(probe_exit::OK),
            "session {session}: {}",
            probe.describe()
        );
        let frames = probe
            .json
            .as_ref()
            .and_then(|j| j.get("frames"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        assert!(frames > 0, "session {session}: {}", probe.describe());
    }
    app.stop().await;
    Ok(())
}
