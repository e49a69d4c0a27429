//! The processes under test: kerbside as its own `--component proxy` process with SQLite and a
//! static source, HAProxy terminating TLS in front of the hypervisor, and their CPU and memory
//! read from /proc.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kerbside::db::models;
use kerbside::db::{Db, DbUrl, PoolOptions};
use kerbside_tests::pki::TestPki;
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};

/// The static source's name in sources.yaml.
const SOURCE: &str = "bench";

/// CPU time and resident memory of a process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// utime + stime of every thread.
    pub cpu: Duration,
    /// utime + stime of the RSA key generator threads.
    pub keygen_cpu: Duration,
    /// VmRSS in KiB.
    pub rss_kib: u64,
}

fn ticks(stat: &str) -> Option<u64> {
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; index 0 here is field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of /proc stat times (USER_HZ, 100 on Linux).
const HZ: u64 = 100;

/// Reads a process's usage.
///
/// # Errors
/// When /proc cannot be read.
pub fn usage(pid: u32) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let cpu = ticks(&stat).context("unparsable stat")?;
    let mut keygen = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if stat.contains("(kerbside-keygen") {
                keygen += ticks(&stat).unwrap_or(0);
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(Usage {
        cpu: Duration::from_millis(cpu * 1000 / HZ),
        keygen_cpu: Duration::from_millis(keygen * 1000 / HZ),
        rss_kib,
    })
}

/// Waits until a process's CPU time stops moving (background work such as key refills and
/// database writes finished), up to `limit`.
pub async fn settle(pid: u32, limit: Duration) {
    let started = Instant::now();
    let mut last = usage(pid).map(|u| u.cpu).unwrap_or_default();
    let mut quiet = 0;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = usage(pid).map(|u| u.cpu).unwrap_or_default();
        quiet = if now == last { quiet + 1 } else { 0 };
        if quiet >= 2 {
            return;
        }
        last = now;
    }
}

/// A free loopback port (bound then released).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on {addr}")
}

/// kerbside running as `kerbside --component proxy`.
pub struct Kerbside {
    /// Its TLS listener.
    pub addr: SocketAddr,
    child: Child,
    db: Db,
    console_id: models::ConsoleId,
}

impl Kerbside {
    /// Writes a state directory (config, sources.yaml naming `hypervisor`, certificate) and
    /// starts the proxy; `extra` is appended to its configuration (INI text).
    ///
    /// # Errors
    /// When it does not start.
    pub async fn start(
        program: &Path,
        dir: &Path,
        pki: &TestPki,
        hypervisor: SocketAddr,
        ticket: &str,
        extra: &str,
    ) -> Result<Self> {
        let cert = pki.issue("kerbside", "kerbside-bench", &["127.0.0.1"])?;
        let uuid = uuid::Uuid::new_v4().to_string();
        let sources = dir.join("sources.yaml");
        std::fs::write(
            &sources,
            format!(
                "- source: {SOURCE}\n  type: static\n  consoles:\n    - uuid: {uuid}\n      \
                 name: bench vm\n      hypervisor: localhost\n      hypervisor_ip: {ip}\n      \
                 insecure_port: {port}\n      ticket: \"{ticket}\"\n",
                ip = hypervisor.ip(),
                port = hypervisor.port()
            ),
        )?;
        let tls_port = free_port()?;
        let database = format!("sqlite:///{}", dir.join("kerbside.sqlite").display());
        let mut ini = String::new();
        write!(
            ini,
            "[DEFAULT]\nstate_path = {state}\nnode_name = bench\n\n\
             [database]\nconnection = {database}\n\n\
             [proxy]\nbind_host = 127.0.0.1\ntls_port = {tls_port}\ninsecure_port = {insecure}\n\
             public_host = 127.0.0.1\ncert_file = {cert}\nkey_file = {key}\nca_file = {ca}\n\
             handshake_timeout = 300\nmax_sessions = 5000\nmax_connections = 30000\n\
             max_handshakes = 30000\nmax_handshakes_per_address = 30000\n\
             failed_link_burst = 0\n\n\
             [console]\nsources_file = {sources}\n\n\
             [metrics]\nbind_port = 0\n\n{extra}",
            state = dir.display(),
            insecure = free_port()?,
            cert = cert.cert_path.display(),
            key = cert.key_path.display(),
            ca = pki.ca_cert_path().display(),
            sources = sources.display(),
        )?;
        let config = dir.join("kerbside.conf");
        std::fs::write(&config, ini)?;
        let log = std::fs::File::create(dir.join("kerbside.log"))?;
        let mut child = Command::new(program)
            .arg("--config-file")
            .arg(&config)
            .args(["--component", "proxy"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
        wait_listening(addr, &mut child, "kerbside").await?;
        let db = Db::connect(
            &DbUrl::parse(&database).map_err(|e| anyhow::anyhow!("{e}"))?,
            &PoolOptions::default(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let started = Instant::now();
        let console_id = loop {
            let uuid = uuid.clone();
            match db
                .run(move |conn| models::get_console_by_source_name(conn, SOURCE, &uuid))
                .await
            {
                Ok(console) => break console.id,
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    bail!("the console never appeared: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Ok(Kerbside {
            addr,
            child,
            db,
            console_id,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Mints `n` tokens for the console directly in the database.
    ///
    /// # Errors
    /// Database failures.
    pub async fn tokens(&self, n: usize) -> Result<Vec<String>> {
        let console_id = self.console_id;
        let tokens: Vec<String> = (0..n)
            .map(|_| kerbside::token::generate_token().expose_secret().to_owned())
            .collect();
        let hashes: Vec<String> = tokens
            .iter()
            .map(|t| kerbside::token::hash_token(t))
            .collect();
        self.db
            .run(move |conn| {
                for hash in &hashes {
                    models::insert_token(conn, console_id, hash, Duration::from_secs(3600))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| anyhow::anyhow!("minting tokens: {e}"))?;
        Ok(tokens)
    }

    /// Stops the proxy.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// HAProxy terminating TLS in front of the hypervisor (mode tcp).
pub struct Relay {
    /// Its TLS listener.
    pub addr: SocketAddr,
    child: Child,
}

impl Relay {
    /// Starts `haproxy -db` with the bench certificate.
    ///
    /// # Errors
    /// When HAProxy is missing or does not start.
    pub async fn start(dir: &Path, pki: &TestPki, hypervisor: SocketAddr) -> Result<Self> {
        let cert = pki.issue("relay", "relay-bench", &["127.0.0.1"])?;
        let pem = dir.join("haproxy.pem");
        std::fs::write(
            &pem,
            [
                std::fs::read_to_string(&cert.cert_path)?,
                std::fs::read_to_string(&cert.key_path)?,
            ]
            .concat(),
        )?;
        let port = free_port()?;
        // HAProxy refuses to start when maxconn needs more descriptors than it may open.
        let maxconn = open_files_limit().map_or(9000, |n| (n.saturating_sub(100) / 2).min(9000));
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn {maxconn}\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 1h\n  timeout server 1h\n\nfrontend spice\n  \
                 bind 127.0.0.1:{port} ssl crt {pem}\n  default_backend hypervisor\n\n\
                 backend hypervisor\n  server hv {hypervisor}\n",
                pem = pem.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let mut child = Command::new(haproxy()?)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting haproxy")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(addr, &mut child, "haproxy").await?;
        Ok(Relay { addr, child })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops HAProxy.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// This process's soft limit on open files (inherited by the proxies it starts).
fn open_files_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn haproxy() -> Result<PathBuf> {
    for p in [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("haproxy is not installed (apt-get install -y haproxy; tools/bench.sh does)")
}

/// HAProxy's version line, for the report.
pub async fn haproxy_version() -> String {
    let Ok(path) = haproxy() else {
        return "missing".to_owned();
    };
    Command::new(path)
        .arg("-v")
        .output()
        .await
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}
