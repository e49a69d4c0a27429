//! Channel readiness through the proxy with the real spice-gtk client: every channel of a
//! session must become ready promptly, session after session. spice-gtk 0.42 stalls a channel
//! when the link result shares a TLS record with the first relayed message (seen through
//! coalescing TLS relays in 40-70% of sessions), so this runs many sessions to catch a
//! regression of the proxy's "link result in a record of its own" rule.
//!
//! The readiness limit is the probe's own `--timeout`: the test asserts the probe's exit code,
//! never a wall-clock measurement (numbers live in the benchmark).

use std::time::Duration;

use anyhow::Result;
use kerbside_tests::app::{TestApp, TestConsole};
use kerbside_tests::clients::{probe_exit, spice_probe};
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;

/// Sessions opened one after another (spice-server serves one client at a time).
const SESSIONS: usize = 50;

/// The probe's limit for all four channels of a session to open.
const READY_WITHIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn fifty_sessions_get_all_four_channels_ready_within_two_seconds() -> Result<()> {
    require_all(&["qemu", "spice-probe"])?;
    let server = SpiceServer::with_password("readiness").await?;
    let console = TestConsole::for_server(&server);
    let app = TestApp::for_console(&console).await?;
    let mut failures = Vec::new();
    for n in 0..SESSIONS {
        let token = app
            .mint_token(&console.uuid, Duration::from_secs(300))
            .await?;
        let mut args = app.probe_args(&token, "main,display,inputs,cursor");
        args.timeout = READY_WITHIN;
        let probe = spice_probe(&args).await?;
        if probe.exit_code != Some(probe_exit::OK) {
            failures.push(format!("session {n}: {}", probe.describe()));
        }
    }
    app.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {SESSIONS} sessions did not get every channel ready within {READY_WITHIN:?}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}
