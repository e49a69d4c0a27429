//! QEMU as the real SPICE server for end-to-end tests, plus a tiny QMP client.
//!
//! [`SpiceServer::builder`] starts `qemu-system-x86_64` with no disk (SeaBIOS draws
//! "No bootable device" on a 720x400 text screen), SPICE on 127.0.0.1 and free ports,
//! the ticket passed through a 0600 `-object secret` file, and a QMP unix socket.
//! The process is killed when the [`SpiceServer`] is dropped (`kill_on_drop`).
//! [`SpiceServerBuilder::key_echo_guest`] boots the key-echo guest instead (see
//! [`crate::guests`]): it types back what a client sends, and [`SpiceServer::screen_text`]
//! reads its text screen.
//! QEMU's stdout and stderr go to a log file that every error quotes.
//!
//! This module does not speak SPICE itself; clients live in [`crate::clients`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rand::distributions::{Alphanumeric, DistString};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::clients::ppm_pixels;
use crate::pki::{IssuedCert, TestPki};
use crate::ports::{free_port, listening_inodes, process_holds_socket, who_listens};
use crate::proc_util::{read_log, tail};

/// How long QEMU may take to listen before [`SpiceServerBuilder::start`] gives up.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts when another process grabbed a port between allocation and QEMU's bind.
const START_ATTEMPTS: usize = 3;
/// How much of QEMU's log goes into an error message.
const LOG_TAIL: usize = 3000;

/// The guest's screen once SeaBIOS runs: VGA text mode as QXL presents it.
pub const BOOT_SCREEN: (u32, u32) = (720, 400);

/// The key-echo guest's disk image, in the server's temp dir.
const KEY_ECHO_IMAGE: &str = "keyecho.img";
/// VGA text memory (80x25 cells of character + attribute bytes) in guest physical memory.
const TEXT_MEMORY: u64 = 0xb8000;
const TEXT_COLUMNS: usize = 80;
const TEXT_ROWS: usize = 25;

/// The SPICE address every test server listens on.
pub const SPICE_HOST: &str = "127.0.0.1";

/// Options for a test QEMU; see [`SpiceServer::builder`].
#[derive(Debug, Clone)]
pub struct SpiceServerBuilder {
    password: Option<String>,
    tls: Option<TlsFiles>,
    tls_only: bool,
    monitors: u8,
    audio: bool,
    usbredir: u8,
    agent: bool,
    webdav: bool,
    extra_args: Vec<String>,
    spice_options: Vec<String>,
    ready_timeout: Duration,
    wait_for_boot_screen: bool,
    fixed_ports: Option<(u16, u16)>,
    key_echo: bool,
}

/// What QEMU and clients need from a [`TestPki`].
#[derive(Debug, Clone)]
struct TlsFiles {
    x509_dir: PathBuf,
    ca_file: PathBuf,
    host_subject: String,
}

impl Default for SpiceServerBuilder {
    fn default() -> Self {
        Self {
            password: Some(Alphanumeric.sample_string(&mut rand::thread_rng(), 16)),
            tls: None,
            tls_only: false,
            monitors: 1,
            audio: false,
            usbredir: 0,
            agent: false,
            webdav: false,
            extra_args: Vec::new(),
            spice_options: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            wait_for_boot_screen: true,
            fixed_ports: None,
            key_echo: false,
        }
    }
}

impl SpiceServerBuilder {
    /// Every kind of channel a rich console has: two monitors, audio playback and record,
    /// two USB redirection channels and WebDAV folder sharing.
    pub fn rich(self) -> Self {
        self.monitors(2).audio(true).usbredir(2).webdav(true)
    }

    /// The SPICE ticket; `None` disables ticketing. Defaults to a random 16-character
    /// password. SPICE tickets are at most 60 bytes.
    pub fn password(mut self, password: Option<&str>) -> Self {
        self.password = password.map(str::to_owned);
        self
    }

    /// Also listen with TLS on a second port using `pki`'s `x509-dir` layout.
    pub fn tls(mut self, pki: Option<&TestPki>) -> Self {
        self.tls = pki.map(|p| TlsFiles {
            x509_dir: p.dir().to_path_buf(),
            ca_file: p.ca_cert_path(),
            host_subject: p.host_subject(),
        });
        self
    }

    /// Also listen with TLS, presenting `leaf` (signed by `pki`'s CA) instead of the default
    /// server certificate; the `x509-dir` is written under `dir`.
    ///
    /// # Errors
    /// Writing the directory failed.
    pub fn tls_leaf(mut self, pki: &TestPki, leaf: &IssuedCert, dir: &Path) -> Result<Self> {
        self.tls = Some(TlsFiles {
            x509_dir: pki.x509_dir_for(leaf, dir)?,
            ca_file: pki.ca_cert_path(),
            host_subject: leaf.host_subject(),
        });
        Ok(self)
    }

    /// Listen on these plain and TLS ports instead of free ones (the TLS one only with
    /// [`Self::tls`]). The caller makes sure nothing else uses them (see
    /// `openstack_full::ConsolePorts`).
    pub fn fixed_ports(mut self, plain: u16, tls: u16) -> Self {
        self.fixed_ports = Some((plain, tls));
        self
    }

    /// Listen on the TLS port only (no plain port). Needs [`Self::tls`].
    pub fn tls_only(mut self, tls_only: bool) -> Self {
        self.tls_only = tls_only;
        self
    }

    /// Number of QXL monitors, i.e. display channels (at least 1; default 1).
    pub fn monitors(mut self, monitors: u8) -> Self {
        self.monitors = monitors;
        self
    }

    /// Add an HDA sound card backed by the SPICE audiodev (playback + record channels).
    pub fn audio(mut self, audio: bool) -> Self {
        self.audio = audio;
        self
    }

    /// Number of usbredir channels (spicevmc chardevs on an xHCI controller).
    pub fn usbredir(mut self, count: u8) -> Self {
        self.usbredir = count;
        self
    }

    /// Add the virtio-serial port of the spice-vdagent (no agent runs in the guest).
    pub fn agent(mut self, agent: bool) -> Self {
        self.agent = agent;
        self
    }

    /// Append raw QEMU arguments (e.g. a `-chardev spiceport` with a `-mon`).
    pub fn extra_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Add the `org.spice-space.webdav.0` spiceport (a "port" channel in the client).
    pub fn webdav(mut self, webdav: bool) -> Self {
        self.webdav = webdav;
        self
    }

    /// Append a raw `-spice` sub-option, e.g. `tls-channel=main` or
    /// `plaintext-channel=display`.
    pub fn spice_option(mut self, option: &str) -> Self {
        self.spice_options.push(option.to_owned());
        self
    }

    /// How long to wait for QEMU to listen (default [`DEFAULT_READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, ready_timeout: Duration) -> Self {
        self.ready_timeout = ready_timeout;
        self
    }

    /// Also wait (default: yes) until the guest shows SeaBIOS's 720x400 text screen.
    /// Straight after start the QXL surface is 640x480 for ~0.2 s; a client that
    /// connects then gets that first mode, so screenshots would depend on timing.
    pub fn wait_for_boot_screen(mut self, wait: bool) -> Self {
        self.wait_for_boot_screen = wait;
        self
    }

    /// Boot the key-echo guest (assembled from `tests/guests/keyecho.asm` with `nasm`, booted
    /// from a floppy) instead of an empty machine. Readiness then also waits until its text
    /// screen shows [`crate::guests::KEY_ECHO_BANNER`]; from then on every key typed into the
    /// guest appears on that screen (see [`SpiceServer::screen_text`]).
    pub fn key_echo_guest(mut self, key_echo: bool) -> Self {
        self.key_echo = key_echo;
        self
    }

    /// Start QEMU and wait until it is ready: the process runs, every SPICE port
    /// accepts TCP connections, QMP `query-spice` reports SPICE enabled and (see
    /// [`Self::wait_for_boot_screen`]) the guest shows its 720x400 boot screen.
    ///
    /// # Errors
    /// Invalid options, QEMU missing or exiting, or not ready before the deadline; the
    /// error includes the tail of QEMU's log.
    ///
    /// # Cancel safety
    /// Dropping the future kills the QEMU being started.
    pub async fn start(self) -> Result<SpiceServer> {
        if self.monitors == 0 {
            bail!("a SPICE server needs at least one monitor");
        }
        if self.tls_only && self.tls.is_none() {
            bail!("tls_only(true) needs tls(Some(pki))");
        }
        let mut last_error = anyhow!("QEMU was never started");
        for _ in 0..START_ATTEMPTS {
            match self.start_once().await {
                Ok(server) => return Ok(server),
                Err(StartError::PortTaken(e)) => last_error = e,
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_error.context(format!(
            "QEMU could not bind its SPICE ports in {START_ATTEMPTS} attempts"
        )))
    }

    async fn start_once(&self) -> Result<SpiceServer, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("kerbside-qemu-")
            .tempdir()
            .context("creating the QEMU temp dir")?;
        let port = match (self.tls_only, self.fixed_ports) {
            (true, _) => None,
            (false, Some((plain, _))) => Some(plain),
            (false, None) => Some(free_port()?),
        };
        let tls_port = match (&self.tls, self.fixed_ports) {
            (Some(_), Some((_, tls))) => Some(tls),
            (Some(_), None) => Some(free_port()?),
            (None, _) => None,
        };
        if let Some((plain, tls)) = self.fixed_ports {
            // A QEMU that held these ports before (killed on drop, not yet gone) would answer
            // the readiness probe in place of the new one, which then fails to bind them.
            let ports: Vec<u16> = port.into_iter().chain(tls_port).collect();
            wait_until_unbound(&ports)
                .await
                .with_context(|| format!("fixed SPICE ports {plain}/{tls}"))?;
        }
        let qmp_path = dir.path().join("qmp.sock");
        let log_path = dir.path().join("qemu.log");
        if self.key_echo {
            crate::guests::assemble_key_echo(&dir.path().join(KEY_ECHO_IMAGE))?;
        }
        let args = self.qemu_args(dir.path(), port, tls_port, &qmp_path)?;

        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("cloning the QEMU log handle")?;
        let child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .context("spawning qemu-system-x86_64 (install it with tools/install-test-deps.sh)")?;

        let mut server = SpiceServer {
            child,
            dir,
            host: SPICE_HOST.to_owned(),
            port,
            tls_port,
            password: self.password.clone(),
            qmp_path,
            log_path,
            tls: self.tls.clone(),
            options: self.clone(),
            args,
        };
        server.wait_ready(self.ready_timeout).await?;
        Ok(server)
    }

    fn qemu_args(
        &self,
        dir: &Path,
        port: Option<u16>,
        tls_port: Option<u16>,
        qmp_path: &Path,
    ) -> Result<Vec<String>> {
        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "pc,accel=tcg",
            "-m",
            "64",
            "-vga",
            "qxl",
            "-display",
            "none",
            "-name",
            "kerbside-test",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();

        let mut spice = format!("addr={SPICE_HOST}");
        if let Some(port) = port {
            write!(spice, ",port={port}")?;
        }
        if let (Some(tls_port), Some(tls)) = (tls_port, &self.tls) {
            write!(
                spice,
                ",tls-port={tls_port},x509-dir={}",
                tls.x509_dir.display()
            )?;
        }
        match &self.password {
            Some(password) => {
                let secret = dir.join("spice-password");
                write_secret(&secret, password)?;
                args.push("-object".into());
                args.push(format!(
                    "secret,id=spicepw,format=raw,file={}",
                    secret.display()
                ));
                spice.push_str(",password-secret=spicepw");
            }
            None => spice.push_str(",disable-ticketing=on"),
        }
        for option in &self.spice_options {
            write!(spice, ",{option}")?;
        }
        args.push("-spice".into());
        args.push(spice);

        // Each further QXL device is one more display channel (ids 1, 2, ...).
        for i in 1..self.monitors {
            args.push("-device".into());
            args.push(format!("qxl,id=qxl{i}"));
        }
        if self.audio {
            // Only the `spice` audiodev makes QEMU offer playback/record channels;
            // `-audiodev none` gives a sound card but no SPICE audio channels.
            args.extend(
                [
                    "-audiodev",
                    "spice,id=snd0",
                    "-device",
                    "intel-hda,id=hda0",
                    "-device",
                    "hda-duplex,audiodev=snd0",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
        }
        if self.usbredir > 0 {
            args.push("-device".into());
            args.push("qemu-xhci,id=xhci0".into());
            for i in 0..self.usbredir {
                args.push("-chardev".into());
                args.push(format!("spicevmc,name=usbredir,id=usbredir{i}"));
                args.push("-device".into());
                args.push(format!("usb-redir,chardev=usbredir{i},id=usbredirdev{i}"));
            }
        }
        if self.agent || self.webdav {
            args.push("-device".into());
            args.push("virtio-serial-pci,id=vser0".into());
        }
        if self.agent {
            args.extend(
                [
                    "-chardev",
                    "spicevmc,id=vdagent0,name=vdagent",
                    "-device",
                    "virtserialport,chardev=vdagent0,name=com.redhat.spice.0",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
        }
        if self.webdav {
            args.extend(
                [
                    "-chardev",
                    "spiceport,id=webdav0,name=org.spice-space.webdav.0",
                    "-device",
                    "virtserialport,chardev=webdav0,name=org.spice-space.webdav.0",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
        }
        if self.key_echo {
            args.push("-drive".into());
            args.push(format!(
                "file={},format=raw,if=floppy",
                dir.join(KEY_ECHO_IMAGE).display()
            ));
        }
        args.extend(self.extra_args.iter().cloned());
        args.push("-qmp".into());
        args.push(format!("unix:{},server=on,wait=off", qmp_path.display()));
        Ok(args)
    }
}

/// Why one start attempt failed.
enum StartError {
    /// QEMU could not bind a SPICE port (someone took it): worth another attempt.
    PortTaken(anyhow::Error),
    /// Anything else.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// Write `password` to a new 0600 file.
fn write_secret(path: &Path, password: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(password.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A running QEMU serving SPICE on 127.0.0.1. Killed on drop.
#[derive(Debug)]
pub struct SpiceServer {
    /// The QEMU process (`kill_on_drop`). Declared first so it dies before `dir` goes.
    child: Child,
    /// Holds the password file, the QMP socket and the log.
    dir: tempfile::TempDir,
    /// Always [`SPICE_HOST`].
    host: String,
    /// Plain SPICE port (`None` when TLS only).
    port: Option<u16>,
    /// TLS SPICE port (`None` without TLS).
    tls_port: Option<u16>,
    /// The current ticket (`None` = ticketing disabled).
    password: Option<String>,
    /// QMP unix socket.
    qmp_path: PathBuf,
    /// QEMU's stdout + stderr.
    log_path: PathBuf,
    /// CA and subject for clients, when TLS is on.
    tls: Option<TlsFiles>,
    /// The options it was started with.
    options: SpiceServerBuilder,
    /// The QEMU command line (without the program name).
    args: Vec<String>,
}

impl SpiceServer {
    /// Options for a new server: one QXL monitor, a random password, no TLS.
    pub fn builder() -> SpiceServerBuilder {
        SpiceServerBuilder::default()
    }

    /// Starts a server with the default options and `password` as its SPICE ticket.
    ///
    /// # Errors
    /// As [`SpiceServerBuilder::start`].
    pub async fn with_password(password: &str) -> Result<Self> {
        Self::builder().password(Some(password)).start().await
    }

    /// The SPICE listen address (`127.0.0.1`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The plain SPICE port; `None` for a TLS-only server.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The TLS SPICE port; `None` without TLS.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The current SPICE ticket (`None` when ticketing is disabled).
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The CA certificate that verifies the TLS port.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    /// The TLS server subject in spice-gtk `host-subject` format.
    pub fn host_subject(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.host_subject.as_str())
    }

    /// QEMU's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Path of the QMP unix socket.
    pub fn qmp_path(&self) -> &Path {
        &self.qmp_path
    }

    /// The per-server temp directory (password file, QMP socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The QEMU command line, for diagnostics.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Whether this QEMU itself holds a listening socket on each of `ports`.
    fn holds_listeners(&self, ports: &[u16]) -> bool {
        let Some(pid) = self.child.id() else {
            return false;
        };
        ports.iter().all(|port| {
            listening_inodes(*port)
                .into_iter()
                .any(|inode| process_holds_socket(pid, inode))
        })
    }

    /// How QEMU ended, once it has: `None` while it runs. spice-server 0.15.1 (Debian 12)
    /// sometimes dies of a segfault in its display worker when a client is killed mid-session
    /// (`dmesg`: "SPICE Worker ... segfault ... in libspice-server"); tests that go on with
    /// the same VM after killing a client check this.
    pub fn ended(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait().ok().flatten()?;
        Some(match status.signal() {
            Some(11) => {
                "QEMU died of a segfault (SIGSEGV; spice-server's display worker)".to_owned()
            }
            Some(signal) => format!("QEMU was killed by signal {signal}"),
            None => format!("QEMU exited ({status})"),
        })
    }

    /// The process's state and who listens on its SPICE ports, in words, for a failure
    /// message (a killed QEMU that nobody reaped yet is a zombie with no sockets).
    pub fn health(&self) -> String {
        let process = match self.child.id() {
            None => "QEMU has exited and was reaped".to_owned(),
            Some(pid) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => format!("QEMU pid {pid} is gone"),
                // pid (comm) state ...: the state follows the last ')'.
                Ok(stat) => {
                    // Fields after the command name: state is field 3, exit_code field 52
                    // (a zombie's wait status: a signal in the low 7 bits, else code << 8).
                    let rest: Vec<&str> = stat
                        .rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().collect())
                        .unwrap_or_default();
                    let state = rest.first().copied().unwrap_or("?");
                    match rest.get(49).and_then(|c| c.parse::<i32>().ok()) {
                        Some(status) if state == "Z" && status & 0x7f != 0 => {
                            format!("QEMU pid {pid} exited, killed by signal {}", status & 0x7f)
                        }
                        Some(status) if state == "Z" => {
                            format!("QEMU pid {pid} exited with status {}", status >> 8)
                        }
                        _ => format!("QEMU pid {pid} in state {state}"),
                    }
                }
            },
        };
        let ports: Vec<String> = self
            .port
            .iter()
            .chain(self.tls_port.iter())
            .map(|port| format!("port {port}: {}", who_listens(*port)))
            .collect();
        format!("{process}; {}", ports.join("; "))
    }

    /// Everything QEMU printed so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The channels a client should see, in `spice_probe.py --channels` form, e.g.
    /// `main,display:2,inputs,cursor:2,playback,record,usbredir:2`.
    pub fn expected_channels(&self) -> String {
        let o = &self.options;
        let mut spec = format!("main,display:{0},inputs,cursor:{0}", o.monitors);
        if o.audio {
            spec.push_str(",playback,record");
        }
        if o.usbredir > 0 {
            let _ = write!(spec, ",usbredir:{}", o.usbredir);
        }
        if o.webdav {
            spec.push_str(",webdav");
        }
        spec
    }

    fn log_tail(&self) -> String {
        tail(&self.log(), LOG_TAIL).to_owned()
    }

    async fn wait_ready(&mut self, ready_timeout: Duration) -> Result<(), StartError> {
        let deadline = Instant::now() + ready_timeout;
        let ports: Vec<u16> = self
            .port
            .iter()
            .chain(self.tls_port.iter())
            .copied()
            .collect();
        loop {
            if let Some(status) = self.child.try_wait().context("polling QEMU")? {
                let log = self.log_tail();
                let e = anyhow!(
                    "QEMU exited during start-up ({status}); args: {}\n--- QEMU log ---\n{log}",
                    self.args.join(" ")
                );
                return Err(
                    if log.contains("Failed to open SPICE sockets")
                        || log.contains("binding socket")
                    {
                        StartError::PortTaken(e)
                    } else {
                        StartError::Other(e)
                    },
                );
            }
            let last = match self.probe_ready(&ports).await {
                Ok(()) if self.holds_listeners(&ports) => return Ok(()),
                Ok(()) => "another process answers on the SPICE ports".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                return Err(StartError::Other(anyhow!(
                    "QEMU not ready after {ready_timeout:?} (last check: {last}); args: {}\n\
                     --- QEMU log ---\n{}",
                    self.args.join(" "),
                    self.log_tail()
                )));
            }
            sleep(Duration::from_millis(25)).await;
        }
    }

    async fn probe_ready(&self, ports: &[u16]) -> Result<()> {
        for port in ports {
            timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect((self.host.as_str(), *port)),
            )
            .await
            .map_err(|_| anyhow!("connect to port {port} timed out"))?
            .with_context(|| format!("port {port} not accepting"))?;
        }
        // QMP answers only once QEMU's main loop runs, i.e. after SPICE bound its
        // sockets: this rules out a stranger that happens to hold the port.
        let mut qmp = Qmp::connect(&self.qmp_path).await?;
        let info = qmp.execute("query-spice", None).await?;
        if info.get("enabled") != Some(&Value::Bool(true)) {
            bail!("query-spice says SPICE is not enabled: {info}");
        }
        if self.options.wait_for_boot_screen {
            let dump = self.dir.path().join("ready-screen.ppm");
            let ppm = qmp_screendump(&mut qmp, &dump).await?;
            let (w, h, _) = ppm_pixels(&ppm)?;
            if (w, h) != BOOT_SCREEN {
                bail!("guest screen is still {w}x{h}, waiting for the BIOS text mode");
            }
        }
        if self.options.key_echo {
            let text = qmp_screen_text(&mut qmp, &self.dir.path().join("ready-text.bin")).await?;
            if !text.contains(crate::guests::KEY_ECHO_BANNER) {
                bail!("the key-echo guest has not printed its banner yet; screen:\n{text}");
            }
        }
        Ok(())
    }

    /// The guest's VGA text screen (80x25, read from guest memory with QMP `pmemsave`): one
    /// line per row, trailing blanks removed. Meaningful while the guest is in text mode,
    /// e.g. the key-echo guest ([`SpiceServerBuilder::key_echo_guest`]).
    ///
    /// # Errors
    /// QMP failed or the dump could not be read.
    pub async fn screen_text(&self) -> Result<String> {
        qmp_screen_text(&mut self.qmp().await?, &self.dir.path().join("text.bin")).await
    }

    /// Type keys into the guest through QMP `send-key`, one key at a time; `qcodes` are
    /// QEMU key names such as `a`, `1`, `spc`, `ret`.
    ///
    /// # Errors
    /// QMP failed (e.g. an unknown key name).
    pub async fn send_keys(&self, qcodes: &[&str]) -> Result<()> {
        let mut qmp = self.qmp().await?;
        for qcode in qcodes {
            qmp.execute(
                "send-key",
                Some(json!({ "keys": [{ "type": "qcode", "data": qcode }] })),
            )
            .await
            .with_context(|| format!("QMP send-key {qcode}"))?;
        }
        Ok(())
    }

    /// The guest's first monitor as a PPM (QMP `screendump`), written to `path`.
    ///
    /// # Errors
    /// QMP failed or the file could not be read.
    pub async fn screendump(&self, path: &Path) -> Result<Vec<u8>> {
        qmp_screendump(&mut self.qmp().await?, path).await
    }

    /// A new QMP session (QEMU serves one at a time; drop it before the next).
    ///
    /// # Errors
    /// The socket is not there or the greeting/capabilities exchange failed.
    pub async fn qmp(&self) -> Result<Qmp> {
        Qmp::connect(&self.qmp_path)
            .await
            .with_context(|| format!("QEMU log tail:\n{}", self.log_tail()))
    }

    /// Change the SPICE ticket through QMP `set_password` (existing clients stay).
    ///
    /// # Errors
    /// QMP failed.
    pub async fn set_password(&mut self, password: &str) -> Result<()> {
        self.qmp()
            .await?
            .execute(
                "set_password",
                Some(json!({"protocol": "spice", "password": password})),
            )
            .await
            .context("QMP set_password")?;
        self.password = Some(password.to_owned());
        Ok(())
    }

    /// Expire the SPICE ticket through QMP `expire_password`; `time` is `now`,
    /// `never`, `+SECONDS` or an absolute UNIX time.
    ///
    /// # Errors
    /// QMP failed.
    pub async fn expire_password(&self, time: &str) -> Result<()> {
        self.qmp()
            .await?
            .execute(
                "expire_password",
                Some(json!({"protocol": "spice", "time": time})),
            )
            .await
            .context("QMP expire_password")?;
        Ok(())
    }

    /// QMP `query-spice`: the server's view (ports, auth, connected channels).
    ///
    /// # Errors
    /// QMP failed.
    pub async fn query_spice(&self) -> Result<Value> {
        self.qmp().await?.execute("query-spice", None).await
    }

    /// Kill QEMU and wait for it to exit.
    ///
    /// # Errors
    /// Killing or reaping failed.
    pub async fn stop(mut self) -> Result<()> {
        self.child.kill().await.context("killing QEMU")
    }
}

/// Waits (up to 30 s) until nothing listens on `ports`.
async fn wait_until_unbound(ports: &[u16]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let taken: Vec<String> = ports
            .iter()
            .filter(|port| !listening_inodes(**port).is_empty())
            .map(|port| format!("port {port}: {}", who_listens(*port)))
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("still listened on after 30 s: {}", taken.join("; "));
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// QMP `screendump` to `path`, then read it back.
async fn qmp_screendump(qmp: &mut Qmp, path: &Path) -> Result<Vec<u8>> {
    let filename = path.to_str().context("screendump path is not UTF-8")?;
    qmp.execute("screendump", Some(json!({ "filename": filename })))
        .await?;
    tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))
}

/// The 80x25 VGA text screen via QMP `pmemsave` to `path`: rows joined by newlines, each
/// without trailing blanks; bytes that are not printable ASCII become `.`.
async fn qmp_screen_text(qmp: &mut Qmp, path: &Path) -> Result<String> {
    let filename = path.to_str().context("pmemsave path is not UTF-8")?;
    let size = TEXT_COLUMNS * TEXT_ROWS * 2;
    qmp.execute(
        "pmemsave",
        Some(json!({ "val": TEXT_MEMORY, "size": size, "filename": filename })),
    )
    .await?;
    let cells = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    if cells.len() != size {
        bail!("pmemsave wrote {} bytes, not {size}", cells.len());
    }
    let rows: Vec<String> = cells
        .chunks(TEXT_COLUMNS * 2)
        .map(|row| {
            let line: String = row
                .chunks(2)
                .map(|cell| match cell.first() {
                    Some(&c) if c == b' ' || c.is_ascii_graphic() => char::from(c),
                    Some(0) => ' ',
                    _ => '.',
                })
                .collect();
            line.trim_end().to_owned()
        })
        .collect();
    Ok(rows.join("\n"))
}

/// A minimal QMP client over QEMU's unix socket: greeting, `qmp_capabilities`, then
/// one command at a time. Asynchronous events are skipped.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connect, read the greeting and enter command mode.
    ///
    /// # Errors
    /// Connecting or the capabilities negotiation failed or took over 10 s.
    pub async fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to QMP at {}", path.display()))?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp
            .read_message()
            .await
            .context("reading the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Run `command` with optional `arguments`; returns the `return` value.
    ///
    /// # Errors
    /// I/O failed, QEMU answered with `error`, or no answer within 10 s.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call may leave a reply unread; drop the session.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let (Some(args), Some(obj)) = (arguments, request.as_object_mut()) {
            obj.insert("arguments".into(), args);
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("sending QMP {command}"))?;
        loop {
            let reply = self
                .read_message()
                .await
                .with_context(|| format!("QMP {command}"))?;
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                bail!("QMP {command} failed: {err}");
            }
            // Anything else is an asynchronous event: skip it.
        }
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = timeout(QMP_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .map_err(|_| anyhow!("no QMP message within {QMP_TIMEOUT:?}"))?
            .context("reading from QMP")?;
        if n == 0 {
            bail!("QMP connection closed");
        }
        serde_json::from_str(&line).with_context(|| format!("bad QMP JSON: {line}"))
    }
}
