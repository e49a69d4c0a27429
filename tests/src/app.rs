//! `TestApp`: kerbside started in-process on loopback with its own state directory, SQLite (or
//! a throwaway MariaDB database), TLS material from a test CA, and static consoles pointing at
//! the test's SPICE servers.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kerbside::config::{Config, ConfigSources};
use kerbside::db::Db;
use kerbside::db::models;
use kerbside::service::Component;

/// Environment variable that sets `[proxy] ticket_key_uses` for every proxy a test starts
/// (unset: the default), so the same tests run with one key per link and with reused keys.
pub const TICKET_KEY_USES_ENV: &str = "KERBSIDE_TEST_TICKET_KEY_USES";
use kerbside::service::Running;
use secrecy::ExposeSecret;

use crate::pki::{IssuedCert, TestPki};
use crate::qemu::SpiceServer;

/// Name of the static source every TestApp console belongs to.
pub const SOURCE: &str = "test";

/// One console of the test source.
#[derive(Clone, Debug)]
pub struct TestConsole {
    /// Instance uuid.
    pub uuid: String,
    /// Address to connect to (`hypervisor_ip`).
    pub host: String,
    /// The hypervisor's name (`hypervisor`): what its TLS certificate must name when there is
    /// no host subject. `localhost` unless a test says otherwise.
    pub hypervisor: String,
    /// Plain port.
    pub port: Option<u16>,
    /// TLS port.
    pub tls_port: Option<u16>,
    /// Ticket.
    pub ticket: Option<String>,
    /// Host subject.
    pub host_subject: Option<String>,
}

impl TestConsole {
    /// A console for a harness SPICE server.
    pub fn for_server(server: &SpiceServer) -> Self {
        TestConsole {
            uuid: uuid::Uuid::new_v4().to_string(),
            host: server.host().to_owned(),
            hypervisor: "localhost".to_owned(),
            port: server.port(),
            tls_port: server.tls_port(),
            ticket: server.password().map(str::to_owned),
            host_subject: server.host_subject().map(str::to_owned),
        }
    }

    /// A console at an arbitrary address (scripted servers, closed ports).
    pub fn at(addr: SocketAddr, ticket: &str) -> Self {
        TestConsole {
            uuid: uuid::Uuid::new_v4().to_string(),
            host: addr.ip().to_string(),
            hypervisor: "localhost".to_owned(),
            port: Some(addr.port()),
            tls_port: None,
            ticket: Some(ticket.to_owned()),
            host_subject: None,
        }
    }
}

/// Builds a [`TestApp`].
#[derive(Default)]
pub struct TestAppBuilder {
    consoles: Vec<TestConsole>,
    source_ca: Option<String>,
    database_url: Option<String>,
    extra: String,
    node: Option<String>,
    components: Vec<Component>,
}

impl TestAppBuilder {
    /// Adds a console to the test source.
    pub fn console(mut self, console: TestConsole) -> Self {
        self.consoles.push(console);
        self
    }

    /// The CA (PEM) that verifies the consoles' hypervisors.
    pub fn source_ca(mut self, pem: &str) -> Self {
        self.source_ca = Some(pem.to_owned());
        self
    }

    /// Uses this database URL instead of a fresh SQLite file.
    pub fn database(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    /// Appends raw INI text (sections and options) to the configuration.
    pub fn ini(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// Sets `[DEFAULT] node_name`.
    pub fn node(mut self, name: &str) -> Self {
        self.node = Some(name.to_owned());
        self
    }

    /// Components to run (default: the proxy).
    pub fn components(mut self, components: &[Component]) -> Self {
        self.components = components.to_vec();
        self
    }

    /// Writes the files, loads the configuration as `kerbside` would and starts it.
    ///
    /// # Errors
    /// Any set-up failure, with context.
    pub async fn start(self) -> Result<TestApp> {
        kerbside::telemetry::init_for_test();
        let dir = tempfile::tempdir()?;
        let pki = TestPki::new(&dir.path().join("pki"))?;
        let proxy_cert = pki.issue(
            "proxy",
            "kerbside-proxy.test",
            &["127.0.0.1", "::1", "localhost"],
        )?;
        let sources = dir.path().join("sources.yaml");
        std::fs::write(
            &sources,
            sources_yaml(&self.consoles, self.source_ca.as_deref()),
        )?;
        let database = match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite:///{}", dir.path().join("kerbside.sqlite").display()),
        };
        let node = self
            .node
            .clone()
            .unwrap_or_else(|| format!("test-{}", &uuid::Uuid::new_v4().to_string()[..8]));
        // tools/test.sh runs the proxy tests a second time with one key per link.
        let key_uses = std::env::var(TICKET_KEY_USES_ENV)
            .map(|uses| format!("ticket_key_uses = {uses}\n"))
            .unwrap_or_default();
        let mut ini = String::new();
        let _ = write!(
            ini,
            "[DEFAULT]\nstate_path = {state}\nnode_name = {node}\n\n\
             [database]\nconnection = {database}\n\n\
             [proxy]\nbind_host = 127.0.0.1\ntls_port = 0\ninsecure_port = 0\npublic_host = 127.0.0.1\n\
             cert_file = {cert}\nkey_file = {key}\nca_file = {ca}\nhandshake_timeout = 5\n\
             termination_poll_interval = 1\nkey_pool_size = 8\nshutdown_timeout = 2\n{key_uses}\n\
             [console]\nsources_file = {sources}\n\n\
             [metrics]\nbind_port = 0\n",
            state = dir.path().display(),
            cert = proxy_cert.cert_path.display(),
            key = proxy_cert.key_path.display(),
            ca = pki.ca_cert_path().display(),
            sources = sources.display(),
        );
        let config_path = dir.path().join("kerbside.conf");
        std::fs::write(&config_path, &ini)?;
        // Test-specific options go in a second file: later files win, as in production.
        let override_path = dir.path().join("override.conf");
        std::fs::write(&override_path, &self.extra)?;
        let loaded = Config::load(&ConfigSources {
            files: vec![config_path.clone(), override_path],
            dirs: Vec::new(),
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let config = Arc::new(loaded.config);
        let components = if self.components.is_empty() {
            vec![Component::Proxy]
        } else {
            self.components
        };
        let running = kerbside::service::start(config.clone(), &components)
            .await
            .map_err(|e| anyhow::anyhow!("kerbside did not start: {e}"))?;
        let unbound: SocketAddr = ([0, 0, 0, 0], 0).into();
        let tls_addr = running
            .proxy
            .as_ref()
            .and_then(|p| p.tls_addrs.first().copied())
            .unwrap_or(unbound);
        let insecure_addr = running
            .proxy
            .as_ref()
            .and_then(|p| p.insecure_addrs.first().copied())
            .unwrap_or(unbound);
        // Other programs (kerbside-manage) must write the ports the proxy really bound, and
        // link to the API where it really listens.
        let api = running
            .api_addrs
            .first()
            .map(|a| format!("[api]\npublic_url = http://{a}\n"))
            .unwrap_or_default();
        if let Some(proxy) = &running.proxy {
            let ports = format!(
                "{api}[proxy]\npublic_tls_port = {}\npublic_insecure_port = {}\n",
                proxy.tls_addrs.first().context("no TLS listener")?.port(),
                proxy
                    .insecure_addrs
                    .first()
                    .context("no plain listener")?
                    .port()
            );
            std::fs::write(dir.path().join("ports.conf"), ports)?;
        } else {
            std::fs::write(dir.path().join("ports.conf"), api)?;
        }
        Ok(TestApp {
            tls_addr,
            insecure_addr,
            running,
            config,
            config_path,
            pki,
            proxy_cert,
            consoles: self.consoles,
            dir,
        })
    }
}

fn sources_yaml(consoles: &[TestConsole], ca: Option<&str>) -> String {
    let mut y = format!("- source: {SOURCE}\n  type: static\n");
    if let Some(ca) = ca {
        y.push_str("  ca_cert: |\n");
        for line in ca.lines() {
            let _ = writeln!(y, "    {line}");
        }
    }
    y.push_str("  consoles:\n");
    if consoles.is_empty() {
        y.push_str("    []\n");
    }
    for c in consoles {
        let _ = writeln!(
            y,
            "    - uuid: {}\n      name: vm {}\n      hypervisor: {}\n      hypervisor_ip: {}",
            c.uuid,
            &c.uuid[..8],
            c.hypervisor,
            c.host
        );
        if let Some(p) = c.port {
            let _ = writeln!(y, "      insecure_port: {p}");
        }
        if let Some(p) = c.tls_port {
            let _ = writeln!(y, "      secure_port: {p}");
        }
        if let Some(t) = &c.ticket {
            let _ = writeln!(y, "      ticket: \"{t}\"");
        }
        if let Some(s) = &c.host_subject {
            let _ = writeln!(y, "      host_subject: \"{s}\"");
        }
    }
    y
}

/// kerbside running in this process.
pub struct TestApp {
    tls_addr: SocketAddr,
    insecure_addr: SocketAddr,
    /// The running components.
    pub running: Running,
    /// Its configuration.
    pub config: Arc<Config>,
    /// The main configuration file; `override.conf` beside it holds the test's own options.
    pub config_path: PathBuf,
    /// The test CA (signs the proxy certificate and may sign hypervisors').
    pub pki: TestPki,
    /// The proxy's certificate.
    pub proxy_cert: IssuedCert,
    /// The consoles of the test source.
    pub consoles: Vec<TestConsole>,
    dir: tempfile::TempDir,
}

impl TestApp {
    /// A builder.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// Starts kerbside with its defaults and `console` as the test source's only console.
    ///
    /// # Errors
    /// As [`TestAppBuilder::start`].
    pub async fn for_console(console: &TestConsole) -> Result<Self> {
        Self::builder().console(console.clone()).start().await
    }

    /// The proxy's TLS address (the first listener).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// The proxy's plain (NEED_SECURED) address (the first listener).
    pub fn insecure_addr(&self) -> SocketAddr {
        self.insecure_addr
    }

    /// The proxy's WebSocket (browser console) address, when `[html5] enabled`.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.running
            .proxy
            .as_ref()
            .and_then(|p| p.websocket_addrs.first().copied())
    }

    /// The API's base URL (`http://127.0.0.1:PORT`), when the API runs.
    pub fn api_url(&self) -> Option<String> {
        self.running
            .api_addrs
            .first()
            .map(|a| format!("http://{a}"))
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.running.db
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a `.vv` for console `uuid` of the test source with `kerbside-manage token create
    /// --vv`, as an operator hands one to a user; returns its path (`name` in the app's
    /// directory) and the token the command printed.
    ///
    /// # Errors
    /// The program is not built, or the command fails (with its standard error).
    pub async fn manage_vv(&self, uuid: &str, name: &str) -> Result<(PathBuf, String)> {
        let vv = self.dir().join(name);
        let output = tokio::process::Command::new(program("kerbside-manage")?)
            .args(self.config_args())
            .args([
                "token",
                "create",
                "--source",
                "test",
                "--console",
                uuid,
                "--vv",
            ])
            .arg(&vv)
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout)?.trim().to_owned();
        Ok((vv, token))
    }

    /// Mints a token for a console of the test source.
    ///
    /// # Errors
    /// Database failures.
    pub async fn mint_token(&self, uuid: &str, ttl: Duration) -> Result<String> {
        let token = kerbside::token::generate_token();
        let hash = kerbside::token::hash_token(token.expose_secret());
        let uuid = uuid.to_owned();
        self.db()
            .run(move |conn| {
                let console = models::get_console_by_source_name(conn, SOURCE, &uuid)?;
                models::insert_token(conn, console.id, &hash, ttl)
            })
            .await
            .context("minting a token")?;
        Ok(token.expose_secret().to_owned())
    }

    /// Probe arguments reaching the proxy with `token` over TLS only.
    pub fn probe_args(&self, token: &str, channels: &str) -> crate::clients::ProbeArgs {
        crate::clients::ProbeArgs {
            host: "127.0.0.1".into(),
            port: Some(self.insecure_addr().port()),
            tls_port: Some(self.tls_addr().port()),
            password: Some(token.to_owned()),
            ca_file: Some(self.pki.ca_cert_path()),
            host_subject: Some(self.proxy_cert.host_subject()),
            secure_all: true,
            channels: channels.to_owned(),
            ..Default::default()
        }
    }

    /// Options for the raw test client over TLS.
    pub fn client(&self) -> crate::spice_client::ClientOptions {
        crate::spice_client::ClientOptions {
            addr: self.tls_addr(),
            ca_file: Some(self.pki.ca_cert_path()),
            from: None,
        }
    }

    /// Links a main channel (channel id 0, no connection id yet) through the proxy over TLS
    /// with `token`.
    ///
    /// # Errors
    /// I/O failures, or the proxy refusing the link (with the link error).
    pub async fn link_main(&self, token: &str) -> Result<crate::spice_client::ClientChannel> {
        crate::spice_client::link(
            &self.client(),
            kerbside::spice::ChannelType::Main,
            0,
            0,
            token,
        )
        .await?
        .map_err(|e| anyhow::anyhow!("main link: {e}"))
    }

    /// Takes a screenshot with spicy-screenshot straight to the proxy's TLS port with
    /// `token`, trusting the proxy's CA, into `file` in the state directory.
    ///
    /// # Errors
    /// As [`crate::clients::spicy_screenshot`]: only when it could not be run.
    pub async fn screenshot_tls(
        &self,
        token: &str,
        file: &str,
    ) -> Result<crate::clients::ScreenshotResult> {
        crate::clients::spicy_screenshot(
            "127.0.0.1",
            None,
            Some(self.tls_addr().port()),
            Some(token),
            Some(&self.pki.ca_cert_path()),
            &self.dir().join(file),
        )
        .await
    }

    /// Audit events of a type.
    ///
    /// # Errors
    /// Database failures.
    pub async fn audit_events(&self, event_type: &str) -> Result<Vec<models::AuditEvent>> {
        let filter = models::AuditFilter {
            event_type: Some(event_type.to_owned()),
            ..Default::default()
        };
        Ok(self
            .db()
            .run(move |conn| models::list_events(conn, &filter, None, 1000))
            .await?)
    }

    /// Sessions, newest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sessions(&self, live_only: bool) -> Result<Vec<models::Session>> {
        Ok(self
            .db()
            .run(move |conn| models::list_sessions(conn, live_only))
            .await?)
    }

    /// The newest live session.
    ///
    /// # Errors
    /// Database failures, or no live session.
    pub async fn live_session(&self) -> Result<models::Session> {
        self.sessions(true)
            .await?
            .into_iter()
            .next()
            .context("no live session")
    }

    /// The newest session, live or ended.
    ///
    /// # Errors
    /// Database failures, or no session.
    pub async fn newest_session(&self) -> Result<models::Session> {
        self.sessions(false)
            .await?
            .into_iter()
            .next()
            .context("no session")
    }

    /// `--config-file` arguments reaching the same state as this app.
    pub fn config_args(&self) -> Vec<String> {
        vec![
            "--config-file".to_owned(),
            self.config_path.display().to_string(),
            "--config-file".to_owned(),
            self.config_path
                .with_file_name("override.conf")
                .display()
                .to_string(),
            "--config-file".to_owned(),
            self.config_path
                .with_file_name("ports.conf")
                .display()
                .to_string(),
        ]
    }

    /// Stops kerbside (a drain of up to 2 s); dropping the app afterwards checks that
    /// nothing was left behind.
    pub async fn stop(&self) {
        self.running.stop(Duration::from_secs(2)).await;
        // Tasks and servers finish closing in their own time on a busy machine: wait for
        // them (generously); only what is still there then counts as leaked at drop.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.leftovers().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What is still running: tasks and servers on the shutdown's trackers, and sessions in
    /// the proxy's registry. Empty once a stop has finished cleanly.
    pub fn leftovers(&self) -> Vec<String> {
        let shutdown = &self.running.shutdown;
        let mut left = Vec::new();
        if !shutdown.tracker().is_empty() {
            left.push(format!("{} task(s)", shutdown.tracker().len()));
        }
        if !shutdown.servers().is_empty() {
            left.push(format!("{} server task(s)", shutdown.servers().len()));
        }
        if let Some(proxy) = &self.running.proxy {
            let sessions = proxy.context.registry.len();
            if sessions > 0 {
                left.push(format!("{sessions} session(s) in the registry"));
            }
        }
        left
    }
}

/// A test that stopped its app fails when the stop left tasks, servers or sessions behind
/// (a leak that would otherwise outlive the test). An app dropped without a stop is told
/// to stop now, so nothing of it keeps running into the next test.
impl Drop for TestApp {
    fn drop(&mut self) {
        let shutdown = &self.running.shutdown;
        if *shutdown.phase().borrow() != kerbside::shutdown::Phase::Stopped {
            shutdown.token().cancel();
            shutdown.stop_token().cancel();
            return;
        }
        let left = self.leftovers();
        if !left.is_empty() && !std::thread::panicking() {
            // A test that stopped its app expects nothing to be left.
            assert!(
                left.is_empty(),
                "the app leaked after its stop: {}",
                left.join(", ")
            );
        }
    }
}

/// Path of a kerbside program built by `cargo build --bins` in the same target directory.
///
/// # Errors
/// When it has not been built.
pub fn program(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/integration-HASH -> target/debug/NAME
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` first (tools/test.sh does)",
        path.display()
    );
    Ok(path)
}
