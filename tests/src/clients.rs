//! Wrappers around the real SPICE clients the end-to-end tests drive.
//!
//! - [`spicy_screenshot`]: spice-gtk's `spicy-screenshot` (main + display, writes a PPM);
//! - [`spice_probe`]: `tests/peers/spice_probe.py`, our SpiceClientGLib probe that opens
//!   any set of channels and reports JSON;
//! - [`remote_viewer`]: virt-viewer's `remote-viewer --debug` on a `.vv` file, under a
//!   private `Xvfb`, judged from its debug log.
//!
//! Every wrapper enforces a timeout, kills what it started (`kill_on_drop`), and
//! returns the client's own output so a failing test can say why. None of them
//! decides pass or fail: tests assert on the returned results.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::proc_util::{read_log, tail};

/// How long `spicy-screenshot` may run.
pub const SCREENSHOT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `Xvfb` may take to report its display number.
const XVFB_TIMEOUT: Duration = Duration::from_secs(10);

/// `remote-viewer --debug` prints this when the main channel links.
pub const RV_MAIN_OPENED: &str = "main channel: opened";
/// ... this when it creates the widget for display channel 0 (a picture is coming).
pub const RV_DISPLAY_CREATED: &str = "creating spice display";
/// ... this when the ticket is refused (then it waits on a password dialog forever).
pub const RV_AUTH_FAILURE: &str = "main channel: auth failure";
/// ... this when the main channel cannot reach the server (then an error dialog waits).
pub const RV_CONNECT_FAILED: &str = "main channel: failed to connect";
/// ... this when it drops the main channel (after a TLS failure, for example).
pub const RV_MAIN_ZAPPED: &str = "zap main channel";
/// spice-gtk warns with this when the TLS handshake fails (certificate not trusted,
/// wrong host-subject); remote-viewer itself logs no `main channel:` line then.
pub const RV_TLS_FAILURE: &str = "SSL_connect";
/// Prefix of every main-channel event line remote-viewer logs.
const RV_MAIN_PREFIX: &str = "main channel: ";

/// What `spicy-screenshot` did.
#[derive(Debug, Clone)]
pub struct ScreenshotResult {
    /// Exit code; `None` when it was killed (by the timeout or a signal).
    pub exit_code: Option<i32>,
    /// True when [`SCREENSHOT_TIMEOUT`] expired and it was killed.
    pub timed_out: bool,
    /// The PPM it wrote, if any.
    pub image: Option<Vec<u8>>,
    /// Its stderr (spice-gtk warnings such as `main channel event: 23` on auth failure).
    pub stderr: String,
}

/// Run `spicy-screenshot` against `host`, writing `out_ppm`. With `tls_port` and
/// `ca_file` the CA is passed through `SSL_CERT_FILE` (spicy-screenshot has no CA
/// option). A TLS-only server has no `port`.
///
/// Exit codes seen: 0 with an image; 1 on any failure (auth: stderr has
/// `main channel event: 23`, connect: 20, TLS: 21).
///
/// # Errors
/// Only when it could not be run at all; a failed connection is a result.
pub async fn spicy_screenshot(
    host: &str,
    port: Option<u16>,
    tls_port: Option<u16>,
    password: Option<&str>,
    ca_file: Option<&Path>,
    out_ppm: &Path,
) -> Result<ScreenshotResult> {
    let mut cmd = Command::new("spicy-screenshot");
    cmd.arg("-h").arg(host);
    if let Some(port) = port {
        cmd.arg("-p").arg(port.to_string());
    }
    if let Some(tls_port) = tls_port {
        cmd.arg("-s").arg(tls_port.to_string());
    }
    if let Some(password) = password {
        cmd.arg("-w").arg(password);
    }
    if let Some(ca) = ca_file {
        cmd.env("SSL_CERT_FILE", ca);
    }
    cmd.arg("-o").arg(out_ppm);
    let _ = std::fs::remove_file(out_ppm);
    let run = run_with_timeout(cmd, SCREENSHOT_TIMEOUT, "spicy-screenshot").await?;
    let image = match std::fs::read(out_ppm) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", out_ppm.display())),
    };
    Ok(ScreenshotResult {
        exit_code: run.exit_code,
        timed_out: run.timed_out,
        image,
        stderr: run.stderr,
    })
}

/// Arguments for [`spice_probe`]; see `tests/peers/spice_probe.py --help`.
#[derive(Debug, Clone)]
pub struct ProbeArgs {
    /// Server address.
    pub host: String,
    /// Plain port.
    pub port: Option<u16>,
    /// TLS port.
    pub tls_port: Option<u16>,
    /// SPICE ticket.
    pub password: Option<String>,
    /// CA that verifies the TLS port.
    pub ca_file: Option<PathBuf>,
    /// Expected subject (`C=..,O=..,CN=..`); enables subject verification.
    pub host_subject: Option<String>,
    /// Send every channel to the TLS port.
    pub secure_all: bool,
    /// Required channels, e.g. `main,display:2,usbredir:2`.
    pub channels: String,
    /// Overall timeout given to the probe (the process gets 10 s more).
    pub timeout: Duration,
    /// Also wait for a frame on display 0 and write it here (PPM).
    pub ppm: Option<PathBuf>,
    /// Extra raw arguments (e.g. `--hold`, `--settle`).
    pub extra: Vec<String>,
}

impl Default for ProbeArgs {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: None,
            tls_port: None,
            password: None,
            ca_file: None,
            host_subject: None,
            secure_all: false,
            channels: "main".into(),
            timeout: Duration::from_secs(15),
            ppm: None,
            extra: Vec::new(),
        }
    }
}

impl ProbeArgs {
    /// Arguments reaching `server` directly: its ports, password, CA and subject.
    pub fn for_server(server: &crate::qemu::SpiceServer) -> Self {
        Self {
            host: server.host().to_owned(),
            port: server.port(),
            tls_port: server.tls_port(),
            password: server.password().map(str::to_owned),
            ca_file: server.ca_file().map(Path::to_path_buf),
            host_subject: server.host_subject().map(str::to_owned),
            channels: server.expected_channels(),
            ..Self::default()
        }
    }

    fn to_args(&self) -> Vec<String> {
        let mut a = vec!["--host".to_owned(), self.host.clone()];
        if let Some(p) = self.port {
            a.extend(["--port".to_owned(), p.to_string()]);
        }
        if let Some(p) = self.tls_port {
            a.extend(["--tls-port".to_owned(), p.to_string()]);
        }
        if let Some(p) = &self.password {
            a.extend(["--password".to_owned(), p.clone()]);
        }
        if let Some(ca) = &self.ca_file {
            a.extend(["--ca-file".to_owned(), ca.display().to_string()]);
        }
        if let Some(s) = &self.host_subject {
            a.extend(["--host-subject".to_owned(), s.clone()]);
        }
        if self.secure_all {
            a.push("--secure-all".to_owned());
        }
        a.extend(["--channels".to_owned(), self.channels.clone()]);
        a.extend([
            "--timeout".to_owned(),
            format!("{:.3}", self.timeout.as_secs_f64()),
        ]);
        if let Some(ppm) = &self.ppm {
            a.extend(["--ppm".to_owned(), ppm.display().to_string()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// Probe exit codes (see `tests/peers/spice_probe.py`).
pub mod probe_exit {
    /// Every requested channel opened.
    pub const OK: i32 = 0;
    /// Usage error.
    pub const USAGE: i32 = 1;
    /// SPICE_CHANNEL_ERROR_AUTH.
    pub const AUTH: i32 = 2;
    /// SPICE_CHANNEL_ERROR_CONNECT.
    pub const CONNECT: i32 = 3;
    /// SPICE_CHANNEL_ERROR_TLS.
    pub const TLS: i32 = 4;
    /// SPICE_CHANNEL_ERROR_LINK.
    pub const LINK: i32 = 5;
    /// SPICE_CHANNEL_ERROR_IO.
    pub const IO: i32 = 6;
    /// Not everything opened within the timeout.
    pub const TIMEOUT: i32 = 7;
    /// The server never offered a requested channel.
    pub const NOT_OFFERED: i32 = 8;
}

/// What the probe did.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Exit code (see [`probe_exit`]); `None` if it was killed.
    pub exit_code: Option<i32>,
    /// The JSON line it printed (absent if it crashed before reporting).
    pub json: Option<Value>,
    /// Its stdout, raw.
    pub stdout: String,
    /// Its stderr (GLib warnings, Python tracebacks).
    pub stderr: String,
}

impl ProbeResult {
    /// How many channels of `channel_type` opened.
    pub fn opened_count(&self, channel_type: &str) -> usize {
        self.opened()
            .iter()
            .filter(|(t, _)| t == channel_type)
            .count()
    }

    /// Every `(type, id)` that opened, sorted.
    pub fn opened(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .json
            .as_ref()
            .and_then(|j| j.get("opened"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| {
                        Some((c.get("type")?.as_str()?.to_owned(), c.get("id")?.as_u64()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Everything, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "probe exit {:?}\nstdout: {}\nstderr tail: {}",
            self.exit_code,
            self.stdout.trim(),
            tail(&self.stderr, 2000)
        )
    }
}

/// Path of `tests/peers/spice_probe.py`.
pub fn probe_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/spice_probe.py")
}

/// Run the SpiceClientGLib probe with `/usr/bin/python3`.
///
/// # Errors
/// Only when it could not be run or printed invalid JSON; SPICE failures are results.
pub async fn spice_probe(args: &ProbeArgs) -> Result<ProbeResult> {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(probe_script()).args(args.to_args());
    let run = run_with_timeout(
        cmd,
        args.timeout + Duration::from_secs(10),
        "spice_probe.py",
    )
    .await?;
    let json = match run
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
    {
        Some(line) => Some(serde_json::from_str(line).with_context(|| {
            format!(
                "probe printed invalid JSON: {line}\nstderr: {}",
                tail(&run.stderr, 2000)
            )
        })?),
        None => None,
    };
    Ok(ProbeResult {
        exit_code: run.exit_code,
        json,
        stdout: run.stdout,
        stderr: run.stderr,
    })
}

/// How long a test lets remote-viewer reach a verdict (opened, refused, failed). Verdicts end
/// the wait at once, so this only bounds a viewer that shows nothing: generous, because a
/// GTK client starting next to QEMU and 50 other sessions on two cores can take a while.
pub const RV_TIMEOUT: Duration = Duration::from_secs(120);

/// What remote-viewer showed in its `--debug` log.
#[derive(Debug, Clone, Default)]
pub struct RemoteViewerResult {
    /// The log had [`RV_MAIN_OPENED`].
    pub main_channel_opened: bool,
    /// The log had [`RV_DISPLAY_CREATED`].
    pub display_created: bool,
    /// The log had [`RV_AUTH_FAILURE`].
    pub auth_failed: bool,
    /// The log had [`RV_CONNECT_FAILED`].
    pub connect_failed: bool,
    /// The log had [`RV_TLS_FAILURE`].
    pub tls_failed: bool,
    /// Every `main channel: ...` event, in order (e.g. `failed to connect`).
    pub main_channel_events: Vec<String>,
    /// remote-viewer exited by itself before we stopped it.
    pub exited_early: bool,
    /// The full stdout + stderr of remote-viewer.
    pub log: String,
}

/// Run `remote-viewer --debug vv_path` on a private `Xvfb` until the display widget is
/// created, the main channel fails (auth, connect, TLS), it exits, or `run_timeout`
/// passes; then kill both. remote-viewer has no useful exit code: a failure leaves it
/// waiting on a dialog, so the log is the only signal.
///
/// # Errors
/// Xvfb or remote-viewer could not be started; a failed SPICE session is a result.
pub async fn remote_viewer(vv_path: &Path, run_timeout: Duration) -> Result<RemoteViewerResult> {
    let work = tempfile::Builder::new()
        .prefix("kerbside-rv-")
        .tempdir()
        .context("creating the remote-viewer temp dir")?;
    let xvfb = Xvfb::start(work.path()).await?;
    let log_path = work.path().join("remote-viewer.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone().context("cloning the log handle")?;
    let mut viewer = Command::new("remote-viewer")
        .arg("--debug")
        .arg(vv_path)
        .env("DISPLAY", format!(":{}", xvfb.display))
        .env("GDK_BACKEND", "x11")
        .env("NO_AT_BRIDGE", "1")
        .env("GSETTINGS_BACKEND", "memory")
        .env("XDG_RUNTIME_DIR", work.path())
        .env_remove("WAYLAND_DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .context("spawning remote-viewer (install it with tools/install-test-deps.sh)")?;

    let started = Instant::now();
    let deadline = started + run_timeout;
    let mut exited_early = false;
    let mut exit_status = None;
    loop {
        let text = read_log(&log_path);
        if text.contains(RV_AUTH_FAILURE)
            || text.contains(RV_CONNECT_FAILED)
            || text.contains(RV_MAIN_ZAPPED)
            || (text.contains(RV_MAIN_OPENED) && text.contains(RV_DISPLAY_CREATED))
        {
            break;
        }
        if let Some(status) = viewer.try_wait().context("polling remote-viewer")? {
            exited_early = true;
            exit_status = Some(status);
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    if !exited_early {
        viewer.kill().await.context("killing remote-viewer")?;
    }
    let xvfb_log = read_log(&work.path().join("xvfb.log"));
    xvfb.stop().await?;

    let mut log = read_log(&log_path);
    // What the harness saw, for assertion messages: an empty log alone says nothing.
    let elapsed = started.elapsed().as_secs_f32();
    match exit_status {
        Some(status) => log.push_str(&format!(
            "\n[harness: remote-viewer exited by itself after {elapsed:.1} s: {status}]\n"
        )),
        None if Instant::now() >= deadline => log.push_str(&format!(
            "\n[harness: no verdict within {elapsed:.1} s; remote-viewer killed]\n"
        )),
        None => {}
    }
    if log.trim_start().starts_with("[harness") {
        log.push_str(&format!("[harness: Xvfb log]\n{}\n", tail(&xvfb_log, 2000)));
    }
    let main_channel_events = log
        .lines()
        .filter_map(|l| {
            l.split_once(RV_MAIN_PREFIX)
                .map(|(_, ev)| ev.trim().to_owned())
        })
        .collect();
    Ok(RemoteViewerResult {
        main_channel_opened: log.contains(RV_MAIN_OPENED),
        display_created: log.contains(RV_DISPLAY_CREATED),
        auth_failed: log.contains(RV_AUTH_FAILURE),
        connect_failed: log.contains(RV_CONNECT_FAILED),
        tls_failed: log.contains(RV_TLS_FAILURE),
        main_channel_events,
        exited_early,
        log,
    })
}

/// A private X server. `-displayfd` lets Xvfb pick a free display number itself
/// (it uses the usual lock files), so parallel tests never collide.
struct Xvfb {
    child: Child,
    display: u32,
}

impl Xvfb {
    async fn start(dir: &Path) -> Result<Self> {
        let log_path = dir.join("xvfb.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "1024x768x24",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("spawning Xvfb (install it with tools/install-test-deps.sh)")?;
        let stdout = child.stdout.take().context("Xvfb stdout")?;
        let mut line = String::new();
        let read = timeout(XVFB_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
        let display = match read {
            Ok(Ok(n)) if n > 0 => line.trim().parse::<u32>().ok(),
            _ => None,
        };
        match display {
            Some(display) => Ok(Xvfb { child, display }),
            None => {
                let _ = child.kill().await;
                bail!(
                    "Xvfb did not report a display number within {XVFB_TIMEOUT:?} (got {line:?})\n\
                     --- Xvfb log ---\n{}",
                    tail(&read_log(&log_path), 2000)
                )
            }
        }
    }

    async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("killing Xvfb")
    }
}

/// Output of a finished (or killed) client.
struct Finished {
    exit_code: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

/// Run `cmd` to completion, killing it after `limit`.
async fn run_with_timeout(mut cmd: Command, limit: Duration, what: &str) -> Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {what} (install it with tools/install-test-deps.sh)"))?;
    // wait_with_output owns the child: on timeout the future is dropped and
    // kill_on_drop kills the process.
    match timeout(limit, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.with_context(|| format!("waiting for {what}"))?;
            Ok(Finished {
                exit_code: out.status.code(),
                timed_out: false,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
        Err(_) => Ok(Finished {
            exit_code: None,
            timed_out: true,
            stdout: String::new(),
            stderr: format!("{what} killed after {limit:?}"),
        }),
    }
}

/// A decoded binary PPM (P6, maxval 255): `(width, height, RGB bytes)`.
///
/// # Errors
/// Not a P6 PPM with maxval 255, or the pixel data is short.
pub fn ppm_pixels(bytes: &[u8]) -> Result<(u32, u32, &[u8])> {
    let mut pos = 0usize;
    let mut fields: Vec<u32> = Vec::with_capacity(3);
    let magic = bytes
        .get(..2)
        .ok_or_else(|| anyhow!("PPM shorter than its magic"))?;
    if magic != b"P6" {
        bail!(
            "not a binary PPM (magic {:?})",
            String::from_utf8_lossy(magic)
        );
    }
    pos += 2;
    while fields.len() < 3 {
        let b = *bytes
            .get(pos)
            .ok_or_else(|| anyhow!("PPM header truncated"))?;
        if b == b'#' {
            while bytes.get(pos).is_some_and(|c| *c != b'\n') {
                pos += 1;
            }
        } else if b.is_ascii_whitespace() {
            pos += 1;
        } else if b.is_ascii_digit() {
            let start = pos;
            while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let text = std::str::from_utf8(bytes.get(start..pos).unwrap_or_default())
                .context("PPM header number")?;
            fields.push(text.parse().context("PPM header number")?);
        } else {
            bail!("unexpected byte {b:#04x} in the PPM header");
        }
    }
    // Exactly one whitespace byte separates the header from the pixels.
    pos += 1;
    let (w, h, max) = match fields.as_slice() {
        [w, h, max] => (*w, *h, *max),
        _ => bail!("PPM header incomplete"),
    };
    if max != 255 {
        bail!("PPM maxval {max} unsupported (want 255)");
    }
    let len = (w as usize)
        .checked_mul(h as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| anyhow!("PPM {w}x{h} too large"))?;
    let end = pos
        .checked_add(len)
        .ok_or_else(|| anyhow!("PPM too large"))?;
    let pixels = bytes.get(pos..end).ok_or_else(|| {
        anyhow!(
            "PPM {w}x{h} needs {len} pixel bytes, has {}",
            bytes.len().saturating_sub(pos)
        )
    })?;
    Ok((w, h, pixels))
}
