//! The SPICE firewall against QEMU's real spice-server: the default profile lets a whole
//! session through; a profile that denies a channel type refuses that channel only, on any
//! node (a session's channels get the profile recorded when it started); hostile client
//! messages are dropped in enforce mode (spice-server never sees them: the key-echo guest gets
//! the key sent after them and QEMU's log stays clean), only counted in warn mode and neither
//! counted nor stopped in mode off (spice-server complains about them), while the session
//! lives on; dropped agent messages give the client its tokens back, so it keeps sending;
//! QEMU monitor ports and denied port names are closed.

use std::time::Duration;

use anyhow::{Context, Result};
use kerbside::spice::{ChannelType, LinkError};
use kerbside_tests::app::{TestApp, TestConsole};
use kerbside_tests::clients::{probe_exit, spice_probe};
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;
use kerbside_tests::spice_client::{self, ClientChannel, ClientOptions, mini_message};
use kerbside_tests::wait::eventually;
use tokio::io::AsyncWriteExt;

const TTL: Duration = Duration::from_secs(300);

/// A TestApp whose profiles file makes `profile` (YAML settings) the default profile, in
/// `mode`.
async fn app_with_default_profile(
    console: &TestConsole,
    profile: &str,
    mode: &str,
) -> Result<TestApp> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("firewall-profiles.yaml");
    std::fs::write(&path, format!("default:\n{profile}"))?;
    let app = TestApp::builder()
        .console(console.clone())
        .ini(&format!(
            "[firewall]\nprofiles_file = {}\nmode = {mode}\n",
            path.display()
        ))
        .start()
        .await?;
    // The profiles are read at start; the file may go.
    drop(dir);
    Ok(app)
}

/// The value of `kerbside_firewall_verdicts_total` with these labels.
fn verdicts(app: &TestApp, channel: &str, direction: &str, rule: &str, action: &str) -> u64 {
    app.running
        .metrics
        .proxy
        .firewall_verdicts
        .with_label_values(&[channel, direction, rule, action])
        .get()
}

/// Lines of the metrics page for verdicts that dropped or closed something.
fn enforced_verdicts(app: &TestApp) -> Vec<String> {
    app.running
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("kerbside_firewall_verdicts_total{"))
        .filter(|l| l.contains("action=\"drop\"") || l.contains("action=\"close\""))
        .map(str::to_owned)
        .collect()
}

/// Asks for the screen (DISPLAY_INIT, 14 bytes) and waits for the hypervisor's next display
/// message.
async fn display_answers(display: &mut ClientChannel) -> Result<u16> {
    display
        .stream
        .write_all(&mini_message(101, &[0; 14]))
        .await?;
    display.stream.flush().await?;
    let (msg_type, _) = tokio::time::timeout(
        Duration::from_secs(20),
        spice_client::read_message(&mut display.stream),
    )
    .await
    .context("no display message")??;
    Ok(msg_type)
}

/// Links main and reads MAIN_INIT's connection id.
async fn main_channel(client: &ClientOptions, token: &str) -> Result<(ClientChannel, u32)> {
    let mut main = spice_client::link(client, ChannelType::Main, 0, 0, token)
        .await?
        .map_err(|e| anyhow::anyhow!("main link: {e}"))?;
    let (_, init) = spice_client::read_message(&mut main.stream).await?;
    let connection_id = u32::from_le_bytes(init[..4].try_into()?);
    Ok((main, connection_id))
}

#[tokio::test]
async fn the_default_profile_passes_a_rich_session_untouched() -> Result<()> {
    require_all(&["qemu", "spice-probe"])?;
    let server = SpiceServer::builder()
        .password(Some("fw-rich"))
        .rich()
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let mut args = app.probe_args(
        &token,
        "main,display:2,inputs,cursor,playback,record,usbredir:2,webdav",
    );
    args.timeout = Duration::from_secs(30);
    let probe = spice_probe(&args).await?;
    assert_eq!(
        probe.exit_code,
        Some(probe_exit::OK),
        "{}",
        probe.describe()
    );
    for kind in [
        "main", "display", "inputs", "cursor", "playback", "record", "usbredir", "webdav",
    ] {
        assert!(
            probe.opened_count(kind) >= 1,
            "{kind} did not open: {}",
            probe.describe()
        );
    }
    assert_eq!(enforced_verdicts(&app), Vec::<String>::new());
    let sessions = app.sessions(false).await?;
    assert_eq!(
        sessions.first().and_then(|s| s.firewall_profile.as_deref()),
        Some("default")
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_denied_channel_type_is_refused_and_the_session_lives_on() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::builder()
        .password(Some("fw-deny"))
        .audio(true)
        .usbredir(1)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = app_with_default_profile(
        &console,
        "  channels: {usbredir: deny, playback: deny}\n",
        "enforce",
    )
    .await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let client = app.client();
    let (_main, connection_id) = main_channel(&client, &token).await?;
    for denied in [ChannelType::Usbredir, ChannelType::Playback] {
        let refused = spice_client::link(&client, denied, 0, connection_id, &token).await?;
        assert!(
            matches!(refused, Err(LinkError::ChannelNotAvailable)),
            "{denied:?} was not refused"
        );
        assert_eq!(
            verdicts(
                &app,
                denied.name(),
                "client_to_server",
                "channel_type",
                "close"
            ),
            1
        );
    }
    // The session goes on: other channels still link, and it is live.
    let mut display = spice_client::link(&client, ChannelType::Display, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("display link after a refusal: {e}"))?;
    assert!(display_answers(&mut display).await? > 0);
    let live = app.sessions(true).await?;
    assert_eq!(live.len(), 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn in_warn_mode_a_denied_channel_type_links_and_is_counted() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::builder()
        .password(Some("fw-deny-warn"))
        .usbredir(1)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = app_with_default_profile(&console, "  channels: {usbredir: deny}\n", "warn").await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let client = app.client();
    let (_main, connection_id) = main_channel(&client, &token).await?;
    let linked = spice_client::link(&client, ChannelType::Usbredir, 0, connection_id, &token)
        .await?
        .map(|_| ());
    assert_eq!(linked, Ok(()), "usbredir was refused in warn mode");
    assert_eq!(
        verdicts(
            &app,
            "usbredir",
            "client_to_server",
            "channel_type",
            "warn_close"
        ),
        1
    );
    assert_eq!(
        verdicts(
            &app,
            "usbredir",
            "client_to_server",
            "channel_type",
            "close"
        ),
        0
    );
    app.stop().await;
    Ok(())
}

/// KEY_DOWN and KEY_UP of `a` (PC scancode 0x1e and its break code).
fn key_a() -> Vec<u8> {
    [
        mini_message(101, &0x1eu32.to_le_bytes()),
        mini_message(102, &0x9eu32.to_le_bytes()),
    ]
    .concat()
}

/// What QEMU logged after its first `skip` bytes of log, as lines.
fn log_lines_after(server: &SpiceServer, skip: usize) -> Vec<String> {
    let log = server.log();
    log.get(skip..)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Lines of spice-server's own complaints: warnings and criticals of its `Spice` log domain,
/// such as `qemu-system-x86_64: warning: Spice: inputs:0 (0x…): failed to parse message type
/// 999`.
fn spice_server_complaints(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains("Spice"))
        .cloned()
        .collect()
}

/// Sends an unknown and an oversized message on inputs, then a key, to the key-echo guest
/// through kerbside in `mode`, and checks what the firewall counted (`action` per rule, none
/// in mode off), what reached spice-server, and that the session lives on.
async fn hostile_inputs(mode: &str, action: Option<&str>) -> Result<()> {
    require_all(&["qemu", "nasm"])?;
    let server = SpiceServer::builder()
        .password(Some("fw-hostile"))
        .key_echo_guest(true)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = app_with_default_profile(&console, "  view_only: false\n", mode).await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let client = app.client();
    let (_main, connection_id) = main_channel(&client, &token).await?;
    let mut display = spice_client::link(&client, ChannelType::Display, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("display link: {e}"))?;
    let mut inputs = spice_client::link(&client, ChannelType::Inputs, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("inputs link: {e}"))?;
    // INPUTS_INIT: spice-server has set the channel up.
    tokio::time::timeout(Duration::from_secs(20), async {
        while spice_client::read_message(&mut inputs.stream).await?.0 != 101 {}
        anyhow::Ok(())
    })
    .await
    .context("no INPUTS_INIT")??;
    let log_start = server.log().len();
    // An unknown type, and a KEY_DOWN (4 bytes) of 64 KiB, then a real key.
    let hostile = [
        mini_message(999, &[0xa5; 10]),
        mini_message(101, &vec![0x5a; 64 * 1024]),
        key_a(),
    ]
    .concat();
    inputs.stream.write_all(&hostile).await?;
    inputs.stream.flush().await?;
    let counted = |rule: &str| {
        action.map_or(0, |action| {
            verdicts(&app, "inputs", "client_to_server", rule, action)
        })
    };
    let expected = u64::from(action.is_some());
    if mode == "enforce" {
        // The key reaches the guest: spice-server read on past where the hostile messages
        // were, so had they reached it, it would have complained (and closed the channel,
        // and the key would never have arrived).
        let typed = eventually(Duration::from_secs(30), || async {
            Ok(server.screen_text().await?.lines().nth(1) == Some("a"))
        })
        .await?;
        assert!(
            typed,
            "the key after the dropped messages never reached the guest; screen:\n{}",
            server.screen_text().await?
        );
        let complaints = spice_server_complaints(&log_lines_after(&server, log_start));
        assert!(
            complaints.is_empty(),
            "spice-server saw something of the dropped messages: {complaints:?}"
        );
    } else {
        // Passed on: spice-server complains about them in its log.
        let complained = eventually(Duration::from_secs(30), || async {
            Ok(!spice_server_complaints(&log_lines_after(&server, log_start)).is_empty())
        })
        .await?;
        assert!(
            complained,
            "spice-server never saw the messages kerbside passed in {mode} mode; QEMU log:\n{}",
            server.log()
        );
    }
    assert_eq!(counted("unknown_type"), expected, "{mode}");
    assert_eq!(counted("oversize"), expected, "{mode}");
    if action.is_none() {
        assert_eq!(
            app.running
                .metrics
                .render()
                .matches("kerbside_firewall_verdicts_total{")
                .count(),
            0,
            "verdicts counted in mode off"
        );
    }
    // The display still works and the session lives.
    assert!(display_answers(&mut display).await? > 0);
    assert_eq!(app.sessions(true).await?.len(), 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn hostile_client_messages_are_dropped_in_enforce_mode() -> Result<()> {
    hostile_inputs("enforce", Some("drop")).await
}

#[tokio::test]
async fn hostile_client_messages_are_only_counted_in_warn_mode() -> Result<()> {
    hostile_inputs("warn", Some("warn_drop")).await
}

#[tokio::test]
async fn hostile_client_messages_pass_uncounted_in_mode_off() -> Result<()> {
    hostile_inputs("off", None).await
}

#[tokio::test]
async fn a_qemu_monitor_port_is_closed_and_the_session_lives_on() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::builder()
        .password(Some("fw-port"))
        .extra_args(&[
            "-chardev",
            "spiceport,id=qmpport,name=org.qemu.monitor.qmp.0",
            "-mon",
            "chardev=qmpport,mode=control",
        ])
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    // Even a profile that allows every port never lets QEMU's monitor through.
    let app = app_with_default_profile(&console, "  ports: {default: allow}\n", "enforce").await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let client = app.client();
    let (_main, connection_id) = main_channel(&client, &token).await?;
    let mut port = spice_client::link(&client, ChannelType::Port, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("port link: {e}"))?;
    // The proxy closes the channel when the hypervisor names the port: no message with the
    // monitor's name (or anything after it) reaches the client.
    let (got, closed) = port_messages(&mut port, Duration::from_secs(20)).await;
    assert!(closed, "the monitor port stayed open: {got:?}");
    assert!(!got.contains(&201), "PORT_INIT reached the client: {got:?}");
    assert_eq!(
        verdicts(&app, "port", "server_to_client", "port_monitor", "close"),
        1
    );
    let mut display = spice_client::link(&client, ChannelType::Display, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("display link: {e}"))?;
    assert!(display_answers(&mut display).await? > 0);
    assert_eq!(app.sessions(true).await?.len(), 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn view_only_drops_input_while_the_display_updates() -> Result<()> {
    require_all(&["qemu"])?;
    let server = SpiceServer::with_password("fw-view").await?;
    let console = TestConsole::for_server(&server);
    let app = app_with_default_profile(&console, "  view_only: true\n", "enforce").await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let client = app.client();
    let (_main, connection_id) = main_channel(&client, &token).await?;
    let mut inputs = spice_client::link(&client, ChannelType::Inputs, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("inputs link: {e}"))?;
    // KEY_DOWN and KEY_UP of 'a' (scancode 0x1e).
    let keys = [
        mini_message(101, &0x1eu32.to_le_bytes()),
        mini_message(102, &0x9eu32.to_le_bytes()),
    ]
    .concat();
    inputs.stream.write_all(&keys).await?;
    inputs.stream.flush().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while verdicts(&app, "inputs", "client_to_server", "view_only", "drop") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "view-only drops not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut display = spice_client::link(&client, ChannelType::Display, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("display link: {e}"))?;
    assert!(display_answers(&mut display).await? > 0);
    assert_eq!(app.sessions(true).await?.len(), 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn dropped_agent_messages_return_their_tokens_so_the_client_keeps_sending() -> Result<()> {
    use kerbside::spice::firewall::agent::{
        VD_AGENT_CLIPBOARD, VD_AGENT_CLIPBOARD_GRAB, VD_AGENT_FILE_XFER_DATA,
        VD_AGENT_FILE_XFER_START, chunk_agent_message,
    };
    require_all(&["qemu"])?;
    // The guest's agent port (a virtio-serial spicevmc vdagent port).
    let server = SpiceServer::builder()
        .password(Some("fw-clip"))
        .agent(true)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = app_with_default_profile(
        &console,
        "  clipboard_to_guest: deny\n  file_transfer: deny\n",
        "enforce",
    )
    .await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let mut main = app.link_main(&token).await?;
    // MAIN_INIT {session_id, display_channels_hint, supported_mouse_modes, current_mouse_mode,
    // agent_connected, agent_tokens, ...}: the tokens spice-server gives the client.
    let (msg_type, init) = spice_client::read_message(&mut main.stream).await?;
    assert_eq!(msg_type, 103, "the first main message is not MAIN_INIT");
    let initial = u32::from_le_bytes(init.get(20..24).context("short MAIN_INIT")?.try_into()?);
    assert!(initial > 0, "spice-server gave no agent tokens");
    main.stream
        .write_all(&mini_message(106, &10u32.to_le_bytes()))
        .await?;
    let log_start = server.log().len();
    // Like spice-gtk, spend one token per AGENT_DATA and wait for tokens when out of them;
    // three times the initial allowance of clipboard and file transfer messages, all of which
    // the profile denies.
    let kinds = [
        (VD_AGENT_CLIPBOARD, &b"\x01\0\0\0secret"[..]),
        (VD_AGENT_CLIPBOARD_GRAB, &b"\x01\0\0\0"[..]),
        (
            VD_AGENT_FILE_XFER_START,
            &b"[vdagent-file-xfer]\nname=a.txt\nsize=4\n"[..],
        ),
        (
            VD_AGENT_FILE_XFER_DATA,
            &b"\x01\0\0\0\x04\0\0\0\0\0\0\0data"[..],
        ),
    ];
    let total = initial * 3;
    let mut tokens = initial;
    let mut returned = 0u32;
    for i in 0..total {
        while tokens == 0 {
            let (msg_type, body) = tokio::time::timeout(
                Duration::from_secs(20),
                spice_client::read_message(&mut main.stream),
            )
            .await
            .with_context(|| {
                format!("out of agent tokens after {i} of {total} messages: none came back")
            })??;
            if msg_type == 110 {
                let n = u32::from_le_bytes(body.get(..4).context("short AGENT_TOKEN")?.try_into()?);
                tokens += n;
                returned += n;
            }
        }
        let (agent_type, data) = kinds[i as usize % kinds.len()];
        let chunks = chunk_agent_message(agent_type, data);
        assert_eq!(chunks.len(), 1);
        main.stream
            .write_all(&mini_message(107, &chunks[0]))
            .await?;
        main.stream.flush().await?;
        tokens -= 1;
    }
    // The tokens of the last messages come back too.
    let all_back = tokio::time::timeout(Duration::from_secs(20), async {
        while tokens < initial {
            let (msg_type, body) = spice_client::read_message(&mut main.stream).await?;
            if msg_type == 110 {
                let n = u32::from_le_bytes(body.get(..4).context("short AGENT_TOKEN")?.try_into()?);
                tokens += n;
                returned += n;
            }
        }
        anyhow::Ok(())
    })
    .await;
    assert!(
        all_back.is_ok(),
        "{tokens} of {initial} tokens back after {total} dropped messages"
    );
    assert_eq!(returned, total);
    let clipboard = verdicts(
        &app,
        "main",
        "client_to_server",
        "clipboard_to_guest",
        "drop",
    );
    let files = verdicts(&app, "main", "client_to_server", "file_transfer", "drop");
    assert_eq!(clipboard + files, u64::from(total));
    // kinds[2] and kinds[3] are file transfer messages.
    let sent_files = (0..total).filter(|i| i % 4 >= 2).count();
    assert_eq!(files, u64::try_from(sent_files)?);
    // None of it reached spice-server, and the session lives on.
    let complaints = spice_server_complaints(&log_lines_after(&server, log_start));
    assert!(complaints.is_empty(), "{complaints:?}");
    assert_eq!(app.sessions(true).await?.len(), 1);
    app.stop().await;
    Ok(())
}

/// Reads a port channel until it closes or `limit` passes; returns the message types seen and
/// whether it closed.
async fn port_messages(port: &mut ClientChannel, limit: Duration) -> (Vec<u16>, bool) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        while let Ok((msg_type, _)) = spice_client::read_message(&mut port.stream).await {
            got.push(msg_type);
        }
    })
    .await
    .is_ok();
    (got, closed)
}

#[tokio::test]
async fn a_port_name_the_profile_denies_is_closed_and_an_allowed_one_opens() -> Result<()> {
    require_all(&["qemu"])?;
    // Two named ports: channel id 0 and 1 in the order QEMU registers them.
    let server = SpiceServer::builder()
        .password(Some("fw-port-names"))
        .extra_args(&[
            "-chardev",
            "spiceport,id=serial0,name=org.qemu.console.serial.0",
            "-chardev",
            "spiceport,id=debug0,name=com.example.debug.0",
        ])
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    let app = app_with_default_profile(
        &console,
        "  ports:\n    default: deny\n    allow: [\"org.qemu.console.serial.*\"]\n",
        "enforce",
    )
    .await?;
    let token = app.mint_token(&console.uuid, TTL).await?;
    let client = app.client();
    let (_main, connection_id) = main_channel(&client, &token).await?;
    let mut outcomes = Vec::new();
    for id in 0..2u8 {
        let mut port = spice_client::link(&client, ChannelType::Port, id, connection_id, &token)
            .await?
            .map_err(|e| anyhow::anyhow!("port {id} link: {e}"))?;
        outcomes.push(port_messages(&mut port, Duration::from_secs(10)).await);
    }
    // One port (the serial console) stays open and shows its PORT_INIT; the other is
    // closed before its PORT_INIT reaches the client.
    let open: Vec<_> = outcomes.iter().filter(|(_, closed)| !closed).collect();
    let closed: Vec<_> = outcomes.iter().filter(|(_, closed)| *closed).collect();
    assert_eq!(open.len(), 1, "{outcomes:?}");
    assert_eq!(closed.len(), 1, "{outcomes:?}");
    assert!(
        open[0].0.contains(&201),
        "the allowed port got no PORT_INIT: {outcomes:?}"
    );
    assert!(
        !closed[0].0.contains(&201),
        "PORT_INIT of the denied port: {outcomes:?}"
    );
    assert_eq!(
        verdicts(&app, "port", "server_to_client", "port_name", "close"),
        1
    );
    assert_eq!(app.sessions(true).await?.len(), 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_channel_on_another_node_gets_the_profile_recorded_on_its_session() -> Result<()> {
    require_all(&["qemu", "mariadb"])?;
    let database = kerbside_tests::db::TestDatabase::mariadb().await?;
    let url = kerbside_tests::db::with_database(
        &kerbside_tests::db::mariadb_server_url(),
        database.mariadb_name().context("mariadb")?,
    );
    let server = SpiceServer::builder()
        .password(Some("fw-two-nodes"))
        .usbredir(1)
        .start()
        .await?;
    let console = TestConsole::for_server(&server);
    // Both nodes read the same profiles file: by default no USB redirection; "with-usb"
    // allows it.
    let dir = tempfile::tempdir()?;
    let profiles = dir.path().join("firewall-profiles.yaml");
    std::fs::write(
        &profiles,
        "default:\n  channels: {usbredir: deny}\nwith-usb:\n  channels: {usbredir: allow}\n",
    )?;
    let node_a = TestApp::builder()
        .console(console.clone())
        .database(&url)
        .node("node-a")
        .ini(&format!(
            "[firewall]\nprofiles_file = {}\n",
            profiles.display()
        ))
        .start()
        .await?;
    let (mut process_b, b_addr) = crate::proxy::spawn_proxy_process(&node_a, "node-b", 2).await?;
    let on_b = ClientOptions {
        addr: b_addr,
        ..node_a.client()
    };
    let on_a = node_a.client();

    // The session starts on node B under the console's profile then, "default".
    let token = node_a.mint_token(&console.uuid, TTL).await?;
    let (_main, connection_id) = main_channel(&on_b, &token).await?;
    let session = node_a
        .sessions(true)
        .await?
        .into_iter()
        .next()
        .context("no live session")?;
    assert_eq!(session.node, "node-b");
    assert_eq!(session.firewall_profile.as_deref(), Some("default"));

    // Then the console's profile changes (a sources.yaml edit, or the flavor's extra spec read
    // at a later token exchange).
    set_console_profile(&node_a, &console.uuid, "with-usb").await?;

    // Node A sees the session for the first time: its USB channel there is refused under the
    // session's own profile, not the console's new one.
    let refused =
        spice_client::link(&on_a, ChannelType::Usbredir, 0, connection_id, &token).await?;
    assert!(
        matches!(refused, Err(LinkError::ChannelNotAvailable)),
        "usbredir on node A was not refused: {:?}",
        refused.map(|_| ())
    );
    assert_eq!(
        verdicts(
            &node_a,
            "usbredir",
            "client_to_server",
            "channel_type",
            "close"
        ),
        1
    );
    // Its other channels link there.
    let mut display = spice_client::link(&on_a, ChannelType::Display, 0, connection_id, &token)
        .await?
        .map_err(|e| anyhow::anyhow!("display link on node A: {e}"))?;
    assert!(display_answers(&mut display).await? > 0);
    drop(display);

    // A session that starts now gets "with-usb", and its USB channel links on node A: the
    // refusal above came from the profile recorded on the first session.
    let token = node_a.mint_token(&console.uuid, TTL).await?;
    let (_main, connection_id) = main_channel(&on_b, &token).await?;
    let newest = node_a
        .sessions(true)
        .await?
        .into_iter()
        .find(|s| s.id != session.id)
        .context("no second session")?;
    assert_eq!(newest.firewall_profile.as_deref(), Some("with-usb"));
    let usb = spice_client::link(&on_a, ChannelType::Usbredir, 0, connection_id, &token).await?;
    assert!(
        usb.is_ok(),
        "usbredir of the new session refused on node A: {:?}",
        usb.map(|_| ())
    );
    process_b.start_kill()?;
    let _ = process_b.wait().await;
    node_a.stop().await;
    Ok(())
}

/// Sets the firewall profile a console names, as a sources.yaml edit or a Nova flavor read
/// would.
async fn set_console_profile(app: &TestApp, uuid: &str, profile: &str) -> Result<()> {
    let uuid = uuid.to_owned();
    let profile = profile.to_owned();
    let changed = app
        .db()
        .run(move |conn| {
            use diesel::prelude::*;
            use kerbside::db::schema::consoles::dsl;
            Ok(diesel::update(dsl::consoles.filter(dsl::uuid.eq(&uuid)))
                .set(dsl::firewall_profile.eq(Some(profile)))
                .execute(conn)?)
        })
        .await?;
    anyhow::ensure!(changed == 1, "{changed} consoles changed");
    Ok(())
}
