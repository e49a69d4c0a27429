//! ryll, an independent SPICE client (Rust, not spice-gtk), driven headless through its
//! control socket.
//!
//! `tools/install-test-deps.sh` installs a pinned ryll from PyPI into its own venv
//! ([`venv`]). [`Ryll::start`] runs `ryll --headless --file VV --control-socket SOCK` and
//! speaks the socket's NDJSON protocol (`hello`, `status`, `screenshot`, `send_key`; see
//! ryll's `docs/control-socket-protocol.md`). The control socket does not report channels,
//! so [`Ryll::channels`] reads them from ryll's log.
//!
//! What ryll 0.3 opens: main, every display and cursor channel, inputs, playback, ONE
//! usbredir channel and the webdav port. It skips the record channel and every further
//! usbredir channel, and says so in its log ("Skipping record channel (id=0): not
//! supported", "Skipping usbredir channel (id=N): only one supported").
//!
//! The process is killed when the [`Ryll`] is dropped (`kill_on_drop`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::proc_util::{read_log, tail};
use crate::qemu::SpiceServer;
use crate::screens::rgba_to_ppm;

/// The ryll version `tools/install-test-deps.sh` installs.
pub const VERSION: &str = "0.3.0";
/// How long ryll may take to bind its control socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one control-socket request may take (a screenshot is a few hundred KB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of ryll's log goes into an error message.
const LOG_TAIL: usize = 4000;

/// The venv holding ryll: `KERBSIDE_RYLL_VENV`, or `/var/tmp/kerbside-ryll-venv`.
pub fn venv() -> PathBuf {
    std::env::var_os("KERBSIDE_RYLL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kerbside-ryll-venv"))
}

/// The ryll program in [`venv`].
pub fn program() -> PathBuf {
    venv().join("bin/ryll")
}

/// Checks that the pinned ryll is installed and runs (for [`crate::require`]).
///
/// # Errors
/// It is missing, does not run, or is another version; the message says how to install it.
pub fn check_installed() -> Result<()> {
    let hint = format!(
        "run `tools/install-test-deps.sh` (as root) from the repository root: it installs \
         ryll {VERSION} from PyPI into {} (set KERBSIDE_RYLL_VENV to use another venv)",
        venv().display()
    );
    let program = program();
    if !program.is_file() {
        bail!("{} is missing; {hint}", program.display());
    }
    let output = std::process::Command::new(&program)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version; {hint}", program.display()))?;
    let version = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !version.starts_with(&format!("ryll {VERSION}")) {
        bail!(
            "{} --version says {:?} (want ryll {VERSION}); {hint}",
            program.display(),
            version.trim()
        );
    }
    Ok(())
}

/// Write a `.vv` that points straight at `server`'s plain port (no proxy), into `path`.
///
/// # Errors
/// Writing failed.
pub fn write_direct_vv(server: &SpiceServer, path: &Path) -> Result<()> {
    let port = server.port().context("the server has no plain port")?;
    let mut vv = format!(
        "[virt-viewer]\ntype=spice\nhost={}\nport={port}\n",
        server.host()
    );
    if let Some(password) = server.password() {
        vv.push_str(&format!("password={password}\n"));
    }
    std::fs::write(path, vv).with_context(|| format!("writing {}", path.display()))
}

/// The AT set 1 make code of a key on a US keyboard: `a`-`z`, `0`-`9`, space and `\n`
/// (Enter).
pub fn scancode(key: char) -> Option<u16> {
    const LETTERS: [u16; 26] = [
        0x1e, 0x30, 0x2e, 0x20, 0x12, 0x21, 0x22, 0x23, 0x17, 0x24, 0x25, 0x26, 0x32, 0x31, 0x18,
        0x19, 0x10, 0x13, 0x1f, 0x14, 0x16, 0x2f, 0x11, 0x2d, 0x15, 0x2c,
    ];
    match key {
        'a'..='z' => LETTERS.get(usize::from(key as u8 - b'a')).copied(),
        '1'..='9' => Some(u16::from(key as u8 - b'1') + 0x02),
        '0' => Some(0x0b),
        ' ' => Some(0x39),
        '\n' => Some(0x1c),
        _ => None,
    }
}

/// The channels ryll linked, as its log tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RyllChannels {
    /// How many channels (besides main) the server offered ("received channel list: N").
    pub offered: Option<usize>,
    /// Channels that linked ("NAME: connected successfully"), by name, with main.
    pub connected: BTreeMap<String, usize>,
    /// Channels ryll chose not to open ("Skipping NAME channel"), by name.
    pub skipped: BTreeMap<String, usize>,
}

impl RyllChannels {
    /// Parse ryll's (ANSI-stripped) log.
    pub fn from_log(log: &str) -> Self {
        let mut channels = RyllChannels::default();
        for line in log.lines() {
            if let Some(rest) = after(line, "received channel list: ") {
                channels.offered = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            } else if let Some(name) = line.strip_suffix(": connected successfully") {
                if let Some(name) = name.split_whitespace().last() {
                    *channels.connected.entry(name.to_owned()).or_default() += 1;
                }
            } else if let Some(rest) = after(line, "Skipping ")
                && rest.contains(" channel (id=")
                && let Some(name) = rest.split_whitespace().next()
            {
                *channels.skipped.entry(name.to_owned()).or_default() += 1;
            }
        }
        channels
    }

    /// True once every offered channel either linked or was skipped (main is not offered).
    pub fn settled(&self) -> bool {
        let linked: usize = self.connected.values().sum();
        let skipped: usize = self.skipped.values().sum();
        self.offered
            .is_some_and(|offered| linked.saturating_sub(1) + skipped == offered)
            && self.connected.contains_key("main")
    }

    /// How many channels of `name` linked.
    pub fn count(&self, name: &str) -> usize {
        self.connected.get(name).copied().unwrap_or(0)
    }
}

/// The text after `needle` in `line`, if it occurs.
fn after<'a>(line: &'a str, needle: &str) -> Option<&'a str> {
    line.find(needle)
        .and_then(|i| line.get(i.saturating_add(needle.len())..))
}

/// `text` without ANSI escape sequences (ryll colours its log).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (0x40..=0x7e).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running headless ryll with its control socket connected. Killed on drop.
#[derive(Debug)]
pub struct Ryll {
    /// The ryll process (`kill_on_drop`). Declared first so it dies before `dir` goes.
    child: Child,
    /// Its working directory: control socket, log.
    dir: tempfile::TempDir,
    log_path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Ryll {
    /// Run `ryll --headless --file VV --control-socket SOCK`, connect to the socket and say
    /// hello. `vv` may be deleted by ryll (`delete-this-file=1`). Does not wait for SPICE;
    /// see [`Self::wait_for_display`].
    ///
    /// # Errors
    /// ryll is missing, exits, or its socket does not answer `hello`; the error includes the
    /// tail of its log.
    pub async fn start(vv: &Path) -> Result<Ryll> {
        crate::require::require("ryll")?;
        let dir = tempfile::Builder::new()
            .prefix("kerbside-ryll-")
            .tempdir()
            .context("creating ryll's temp dir")?;
        let socket = dir.path().join("control.sock");
        let log_path = dir.path().join("ryll.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("cloning ryll's log handle")?;
        let mut child = Command::new(program())
            .arg("--headless")
            .arg("--file")
            .arg(vv)
            .arg("--control-socket")
            .arg(&socket)
            .arg("--bug-report-dir")
            .arg(dir.path())
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", program().display()))?;

        let deadline = Instant::now() + SOCKET_TIMEOUT;
        let stream = loop {
            if let Some(status) = child.try_wait().context("polling ryll")? {
                bail!(
                    "ryll exited before its control socket answered ({status}):\n{}",
                    tail(&strip_ansi(&read_log(&log_path)), LOG_TAIL)
                );
            }
            match UnixStream::connect(&socket).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    bail!(
                        "ryll's control socket {} did not accept within {SOCKET_TIMEOUT:?} \
                         ({e}):\n{}",
                        socket.display(),
                        tail(&strip_ansi(&read_log(&log_path)), LOG_TAIL)
                    );
                }
                Err(_) => sleep(Duration::from_millis(100)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut ryll = Ryll {
            child,
            dir,
            log_path,
            reader: BufReader::new(read),
            writer,
            next_id: 1,
        };
        let hello = ryll
            .request(
                "hello",
                json!({ "client_name": "kerbside-tests", "protocol_version": "1.2" }),
            )
            .await?;
        if hello.get("server_name") != Some(&json!("ryll")) {
            bail!("unexpected hello result: {hello}");
        }
        Ok(ryll)
    }

    /// One control-socket request; returns its `result`.
    ///
    /// # Errors
    /// I/O failed, no answer within 20 s, or ryll answered `ok: false`.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call may leave a reply unread.
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        let mut line = json!({ "id": id, "method": method, "params": params }).to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("sending {method} to ryll"))?;
        loop {
            let mut reply = String::new();
            let n = timeout(REQUEST_TIMEOUT, self.reader.read_line(&mut reply))
                .await
                .map_err(|_| {
                    anyhow!(
                        "ryll did not answer {method} within {REQUEST_TIMEOUT:?}; log:\n{}",
                        self.log_tail()
                    )
                })?
                .with_context(|| format!("reading ryll's answer to {method}"))?;
            if n == 0 {
                bail!(
                    "ryll closed its control socket during {method}; log:\n{}",
                    self.log_tail()
                );
            }
            let reply: Value = serde_json::from_str(&reply)
                .with_context(|| format!("ryll's answer to {method} is not JSON"))?;
            if reply.get("event").is_some() || reply.get("id") != Some(&json!(id)) {
                continue; // an event, or a late answer to an abandoned request
            }
            if reply.get("ok") == Some(&Value::Bool(true)) {
                return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
            }
            bail!(
                "ryll refused {method}: {}",
                reply.get("error").cloned().unwrap_or(reply)
            );
        }
    }

    /// `status`: `spice_connected`, `agent_connected`, `surfaces`.
    ///
    /// # Errors
    /// See [`Self::request`].
    pub async fn status(&mut self) -> Result<Value> {
        self.request("status", json!({})).await
    }

    /// Wait until SPICE is connected and ryll knows a display surface.
    ///
    /// # Errors
    /// Not so before `limit`, or the socket failed.
    pub async fn wait_for_display(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status().await?;
            let surfaces = status
                .get("surfaces")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if status.get("spice_connected") == Some(&Value::Bool(true)) && surfaces > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ryll shows no display after {limit:?} (status {status}); log:\n{}",
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// A screenshot of the primary surface (surface 0 of the first display channel) as a
    /// binary PPM.
    ///
    /// # Errors
    /// See [`Self::request`]; or the image is malformed.
    pub async fn screenshot(&mut self) -> Result<Vec<u8>> {
        let shot = self
            .request("screenshot", json!({ "surface_id": 0, "format": "rgba" }))
            .await?;
        let dimension = |key: &str| {
            shot.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .with_context(|| format!("screenshot without {key}"))
        };
        let (width, height) = (dimension("width")?, dimension("height")?);
        let data = shot
            .get("data_base64")
            .and_then(Value::as_str)
            .context("screenshot without data_base64")?;
        rgba_to_ppm(width, height, &base64_decode(data)?)
    }

    /// Press and release the key with AT set 1 make code `scancode` (`send_key press`).
    ///
    /// Sending many keys back to back can lose some in the guest, not in SPICE: QEMU's PS/2
    /// keyboard queue holds 16 bytes (8 presses), and a guest that has not read them yet
    /// drops the rest. Wait for each key's effect before sending the next.
    ///
    /// # Errors
    /// See [`Self::request`].
    pub async fn send_key(&mut self, scancode: u16) -> Result<()> {
        self.request(
            "send_key",
            json!({ "scancode": scancode, "state": "press" }),
        )
        .await
        .map(|_| ())
    }

    /// Everything ryll logged so far, without colours. It never logs tickets.
    pub fn log(&self) -> String {
        strip_ansi(&read_log(&self.log_path))
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL).to_owned()
    }

    /// The channels ryll linked so far (from its log).
    pub fn channels(&self) -> RyllChannels {
        RyllChannels::from_log(&self.log())
    }

    /// Wait until every channel the server offered linked or was skipped.
    ///
    /// # Errors
    /// Not so before `limit`; the error shows the log.
    pub async fn wait_for_channels(&self, limit: Duration) -> Result<RyllChannels> {
        let deadline = Instant::now() + limit;
        loop {
            let channels = self.channels();
            if channels.settled() {
                return Ok(channels);
            }
            if Instant::now() >= deadline {
                bail!(
                    "ryll's channels did not settle within {limit:?} ({channels:?}); log:\n{}",
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// ryll's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill ryll and wait for it to exit.
    ///
    /// # Errors
    /// Killing or reaping failed.
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("killing ryll")
    }
}

/// Decode standard base64 (with or without padding; no line breaks).
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 3);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = value(*c).with_context(|| format!("invalid base64 byte {c:#04x}"))?;
            acc |= v << (18 - 6 * i);
        }
        let [_, b0, b1, b2] = acc.to_be_bytes();
        match chunk.len() {
            4 => out.extend([b0, b1, b2]),
            3 => out.extend([b0, b1]),
            2 => out.push(b0),
            _ => bail!("truncated base64"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("AAAA/w==").unwrap(), [0, 0, 0, 255]);
        assert!(base64_decode("Z").is_err());
        assert!(base64_decode("Zm9v!").is_err());
    }

    #[test]
    fn channels_are_read_from_the_log() {
        let log = "\u{1b}[2m2026Z\u{1b}[0m INFO main: connected successfully\n\
                   x INFO main: received channel list: 4 channels\n\
                   x INFO display: connected successfully\n\
                   x INFO Skipping record channel (id=0): not supported\n\
                   x INFO inputs: connected successfully\n";
        let channels = RyllChannels::from_log(&strip_ansi(log));
        assert_eq!(channels.offered, Some(4));
        assert_eq!(channels.count("main"), 1);
        assert_eq!(channels.count("display"), 1);
        assert_eq!(channels.skipped.get("record"), Some(&1));
        assert!(!channels.settled());
        let more = format!("{log}x INFO cursor: connected successfully\n");
        assert!(RyllChannels::from_log(&strip_ansi(&more)).settled());
    }

    #[test]
    fn scancodes_follow_the_us_layout() {
        assert_eq!(scancode('a'), Some(0x1e));
        assert_eq!(scancode('z'), Some(0x2c));
        assert_eq!(scancode('h'), Some(0x23));
        assert_eq!(scancode('1'), Some(0x02));
        assert_eq!(scancode('9'), Some(0x0a));
        assert_eq!(scancode('0'), Some(0x0b));
        assert_eq!(scancode('\n'), Some(0x1c));
        assert_eq!(scancode('A'), None);
    }
}
