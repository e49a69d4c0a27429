//! The SPICE peer harness, proven against QEMU directly (no proxy in between):
//! spicy-screenshot, the SpiceClientGLib probe and remote-viewer each talk to a real
//! QEMU, over plain and TLS, with right and wrong tickets, and QMP changes tickets.

use std::path::Path;

use anyhow::{Context, Result};
use kerbside_tests::clients::{
    ProbeArgs, RV_TIMEOUT, ppm_pixels, probe_exit, remote_viewer, spice_probe, spicy_screenshot,
};
use kerbside_tests::pki::TestPki;
use kerbside_tests::qemu::SpiceServer;
use kerbside_tests::require::require_all;

/// SeaBIOS's text screen, as QXL presents it.
const SCREEN: (u32, u32) = (720, 400);

fn assert_screen(image: Option<&[u8]>, what: &str) -> Result<()> {
    let image = image.with_context(|| format!("{what}: no image written"))?;
    let (w, h, pixels) = ppm_pixels(image)?;
    assert_eq!((w, h), SCREEN, "{what}: unexpected screen size");
    assert!(
        pixels.iter().any(|b| *b != 0),
        "{what}: the screen is entirely black"
    );
    Ok(())
}

#[tokio::test]
async fn spicy_screenshot_plain_password_checked() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot"])?;
    let server = SpiceServer::with_password("right-ticket").await?;
    let dir = tempfile::tempdir()?;

    let good = spicy_screenshot(
        server.host(),
        server.port(),
        None,
        Some("right-ticket"),
        None,
        &dir.path().join("good.ppm"),
    )
    .await?;
    assert_eq!(good.exit_code, Some(0), "stderr: {}", good.stderr);
    assert_screen(good.image.as_deref(), "right password")?;

    let bad = spicy_screenshot(
        server.host(),
        server.port(),
        None,
        Some("wrong-ticket"),
        None,
        &dir.path().join("bad.ppm"),
    )
    .await?;
    assert_eq!(bad.exit_code, Some(1), "stderr: {}", bad.stderr);
    assert!(bad.image.is_none(), "an image despite a wrong password");
    // 23 = SPICE_CHANNEL_ERROR_AUTH
    assert!(
        bad.stderr.contains("main channel event: 23"),
        "expected an auth failure, stderr: {}",
        bad.stderr
    );
    Ok(())
}

#[tokio::test]
async fn spicy_screenshot_tls_only_verifies_the_ca() -> Result<()> {
    require_all(&["qemu", "spicy-screenshot"])?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(&dir.path().join("pki"))?;
    let server = SpiceServer::builder()
        .tls(Some(&pki))
        .tls_only(true)
        .start()
        .await?;
    assert_eq!(server.port(), None);

    let good = spicy_screenshot(
        server.host(),
        None,
        server.tls_port(),
        server.password(),
        Some(&pki.ca_cert_path()),
        &dir.path().join("tls.ppm"),
    )
    .await?;
    assert_eq!(good.exit_code, Some(0), "stderr: {}", good.stderr);
    assert_screen(good.image.as_deref(), "TLS only")?;

    // Without our CA the system store cannot verify the server: TLS error (21).
    let other_ca = TestPki::new(&dir.path().join("other"))?;
    let untrusted = spicy_screenshot(
        server.host(),
        None,
        server.tls_port(),
        server.password(),
        Some(&other_ca.ca_cert_path()),
        &dir.path().join("untrusted.ppm"),
    )
    .await?;
    assert_eq!(untrusted.exit_code, Some(1), "stderr: {}", untrusted.stderr);
    assert!(untrusted.image.is_none());
    assert!(
        untrusted.stderr.contains("main channel event: 21"),
        "expected a TLS failure, stderr: {}",
        untrusted.stderr
    );
    Ok(())
}

#[tokio::test]
async fn probe_opens_every_channel_type() -> Result<()> {
    require_all(&["qemu", "spice-probe"])?;
    let server = SpiceServer::builder()
        .monitors(2)
        .audio(true)
        .usbredir(2)
        .agent(true)
        .webdav(true)
        .start()
        .await?;
    let dir = tempfile::tempdir()?;
    let args = ProbeArgs {
        channels: "main,display:2,inputs,cursor,playback,record,usbredir:2".into(),
        ppm: Some(dir.path().join("probe.ppm")),
        ..ProbeArgs::for_server(&server)
    };
    let r = spice_probe(&args).await?;
    assert_eq!(r.exit_code, Some(probe_exit::OK), "{}", r.describe());
    let opened = r.opened();
    for (kind, count) in [
        ("main", 1),
        ("display", 2),
        ("inputs", 1),
        ("cursor", 2),
        ("playback", 1),
        ("record", 1),
        ("usbredir", 2),
        ("webdav", 1),
    ] {
        assert_eq!(r.opened_count(kind), count, "{kind}: opened {opened:?}");
    }
    let ppm = std::fs::read(dir.path().join("probe.ppm"))?;
    assert_screen(Some(&ppm), "probe surface dump")?;

    // Honesty: asking for a channel the server does not have must fail, not pass.
    let missing = spice_probe(&ProbeArgs {
        channels: "main,display:3".into(),
        extra: vec!["--settle".into(), "1".into()],
        ..ProbeArgs::for_server(&server)
    })
    .await?;
    assert_eq!(
        missing.exit_code,
        Some(probe_exit::NOT_OFFERED),
        "{}",
        missing.describe()
    );
    Ok(())
}

#[tokio::test]
async fn probe_over_tls_checks_host_subject() -> Result<()> {
    require_all(&["qemu", "spice-probe"])?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(dir.path())?;
    let server = SpiceServer::builder().tls(Some(&pki)).start().await?;

    let ok = spice_probe(&ProbeArgs {
        secure_all: true,
        ..ProbeArgs::for_server(&server)
    })
    .await?;
    assert_eq!(ok.exit_code, Some(probe_exit::OK), "{}", ok.describe());
    assert_eq!(ok.opened_count("display"), 1, "{}", ok.describe());

    let wrong_subject = spice_probe(&ProbeArgs {
        secure_all: true,
        host_subject: Some("C=XX,O=Kerbside Test,CN=somebody-else".into()),
        ..ProbeArgs::for_server(&server)
    })
    .await?;
    assert_eq!(
        wrong_subject.exit_code,
        Some(probe_exit::TLS),
        "{}",
        wrong_subject.describe()
    );
    Ok(())
}

/// A `.vv` file value: the PEM on one line with literal `\n`.
fn vv_escape(pem: &str) -> String {
    pem.trim_end().replace('\n', "\\n")
}

/// A `.vv` for `server`, trusting `pki`'s CA and expecting its server subject.
fn write_vv(path: &Path, server: &SpiceServer, pki: &TestPki, password: &str) -> Result<()> {
    let text = format!(
        "[virt-viewer]\n\
         type=spice\n\
         host={host}\n\
         port={port}\n\
         tls-port={tls_port}\n\
         password={password}\n\
         ca={ca}\n\
         host-subject={subject}\n\
         secure-channels=all\n\
         delete-this-file=1\n\
         title=kerbside peers test\n",
        host = server.host(),
        port = server.port().context("plain port")?,
        tls_port = server.tls_port().context("tls port")?,
        ca = vv_escape(pki.ca_pem()),
        subject = pki.host_subject(),
    );
    std::fs::write(path, text)?;
    Ok(())
}

#[tokio::test]
async fn remote_viewer_opens_a_vv_file() -> Result<()> {
    require_all(&["qemu", "remote-viewer", "xvfb"])?;
    let dir = tempfile::tempdir()?;
    let pki = TestPki::new(&dir.path().join("pki"))?;
    let server = SpiceServer::builder().tls(Some(&pki)).start().await?;
    let password = server.password().context("password")?.to_owned();

    let vv = dir.path().join("console.vv");
    write_vv(&vv, &server, &pki, &password)?;
    let r = remote_viewer(&vv, RV_TIMEOUT).await?;
    assert!(r.main_channel_opened, "log:\n{}", r.log);
    assert!(r.display_created, "log:\n{}", r.log);
    assert!(!r.auth_failed, "log:\n{}", r.log);
    assert!(!vv.exists(), "delete-this-file=1 was not honoured");

    // The refusals get a VM of their own: spice-server 0.15.1 may crash when the viewer above
    // is killed (see `SpiceServer::ended`).
    drop(server);
    let server = SpiceServer::builder().tls(Some(&pki)).start().await?;
    let bad = dir.path().join("bad.vv");
    write_vv(&bad, &server, &pki, "not-the-ticket")?;
    let r = remote_viewer(&bad, RV_TIMEOUT).await?;
    assert!(
        r.auth_failed,
        "log:\n{}\n{}; qemu log:\n{}",
        r.log,
        server.health(),
        server.log()
    );
    assert!(!r.main_channel_opened, "log:\n{}", r.log);

    // A CA that did not sign the server: the TLS handshake fails.
    let other = TestPki::new(&dir.path().join("other"))?;
    let untrusted = dir.path().join("untrusted.vv");
    write_vv(&untrusted, &server, &other, &password)?;
    let r = remote_viewer(&untrusted, RV_TIMEOUT).await?;
    assert!(r.tls_failed, "log:\n{}", r.log);
    assert!(!r.main_channel_opened, "log:\n{}", r.log);
    Ok(())
}

#[tokio::test]
async fn qmp_expire_and_set_password() -> Result<()> {
    require_all(&["qemu", "spice-probe", "spicy-screenshot"])?;
    let mut server = SpiceServer::builder().start().await?;
    let dir = tempfile::tempdir()?;

    let before = spice_probe(&ProbeArgs::for_server(&server)).await?;
    assert_eq!(
        before.exit_code,
        Some(probe_exit::OK),
        "{}",
        before.describe()
    );

    server.expire_password("now").await?;
    let expired = spice_probe(&ProbeArgs::for_server(&server)).await?;
    assert_eq!(
        expired.exit_code,
        Some(probe_exit::AUTH),
        "{}",
        expired.describe()
    );
    let shot = spicy_screenshot(
        server.host(),
        server.port(),
        None,
        server.password(),
        None,
        &dir.path().join("expired.ppm"),
    )
    .await?;
    assert_eq!(shot.exit_code, Some(1), "stderr: {}", shot.stderr);
    assert!(
        shot.stderr.contains("main channel event: 23"),
        "{}",
        shot.stderr
    );

    // set_password installs a new ticket but keeps the expiry (the new ticket is
    // refused too until the expiry is lifted), so lift it explicitly.
    server.set_password("fresh-ticket").await?;
    let still_expired = spice_probe(&ProbeArgs::for_server(&server)).await?;
    assert_eq!(
        still_expired.exit_code,
        Some(probe_exit::AUTH),
        "{}",
        still_expired.describe()
    );
    server.expire_password("never").await?;
    let after = spice_probe(&ProbeArgs::for_server(&server)).await?;
    assert_eq!(
        after.exit_code,
        Some(probe_exit::OK),
        "{}",
        after.describe()
    );
    Ok(())
}

#[test]
fn ppm_pixels_reads_p6_with_comments() {
    let mut ppm = b"P6\n# made by hand\n2 1\n255\n".to_vec();
    ppm.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    let (w, h, px) = ppm_pixels(&ppm).unwrap();
    assert_eq!((w, h, px), (2, 1, &[1u8, 2, 3, 4, 5, 6][..]));
    assert!(ppm_pixels(b"P6\n2 1\n255\n\x01").is_err());
    assert!(ppm_pixels(b"P5\n1 1\n255\n\x01").is_err());
}

#[test]
fn test_pki_subject_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path()).unwrap();
    for f in ["ca-cert.pem", "server-cert.pem", "server-key.pem"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        pki.host_subject(),
        "C=XX,O=Kerbside Test,CN=spice-server.kerbside.test"
    );
    let proxy = pki
        .issue("proxy", "kerbside-proxy", &["127.0.0.1"])
        .unwrap();
    assert!(proxy.cert_path.ends_with("proxy-cert.pem"));
    assert!(proxy.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn require_rejects_unknown_names() {
    let err = kerbside_tests::require::require("no-such-peer").unwrap_err();
    assert!(format!("{err:#}").contains("known: qemu"), "{err:#}");
}
