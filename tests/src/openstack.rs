//! Real Keystone and Nova API (from PyPI, in the venv `tools/install-openstack.sh` makes),
//! started on free loopback ports for the API tests.
//!
//! One pair is shared by every test of the binary ([`shared`]): set-up takes several
//! seconds. Each server runs under `tests/openstack/serve.sh`, which stops it when this
//! process exits; a [`Gunicorn`] a test starts itself is stopped when dropped. A missing
//! venv is an error that says how to install it, never a skip.
//!
//! Users seeded (domain `Default`): `admin`/`adminpass` (admin), `kerbside`/`kerbsidepass`
//! (admin + service on `service`), `kerbside-noadmin`/`noadminpass` (service only),
//! `demo`/`demopass` (member on `demo`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

/// The venv holding Keystone and Nova.
pub fn venv() -> PathBuf {
    std::env::var_os("KERBSIDE_OPENSTACK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kerbside-openstack-venv"))
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openstack")
}

/// A gunicorn server (Keystone or Nova API) in its own process group.
pub struct Gunicorn {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    name: String,
    log: PathBuf,
}

impl Gunicorn {
    /// Starts `module` of `state`'s `wsgi/` directory on `port` and waits until `path`
    /// answers 200.
    ///
    /// # Errors
    /// It cannot be started or never answers.
    pub fn start(state: &Path, name: &str, module: &str, port: u16, path: &str) -> Result<Self> {
        Self::start_within(state, name, module, port, path, Duration::from_secs(60))
    }

    /// As [`Gunicorn::start`], waiting up to `limit` for the answer.
    ///
    /// # Errors
    /// It cannot be started or never answers.
    pub fn start_within(
        state: &Path,
        name: &str,
        module: &str,
        port: u16,
        path: &str,
        limit: Duration,
    ) -> Result<Self> {
        let log = state
            .join("logs")
            .join(format!("{name}-{port}-gunicorn.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(scripts().join("serve.sh"))
            .arg(std::process::id().to_string())
            .arg(venv().join("bin/gunicorn"))
            .args(["--no-control-socket", "--pythonpath"])
            .arg(state.join("wsgi"))
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--workers", "1", "--threads", "4", "--timeout", "120"])
            .args(["--graceful-timeout", "2"])
            .arg(format!("{module}:application"))
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} under gunicorn"))?;
        let mut server = Gunicorn {
            child,
            port,
            name: name.to_owned(),
            log,
        };
        server.wait_ready(path, limit)?;
        Ok(server)
    }

    fn wait_ready(&mut self, path: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before answering; its log:\n{}",
                    self.name,
                    tail(&self.log)
                );
            }
            if http_status(self.port, path) == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "{} did not answer 200 on port {} within {limit:?}; its log:\n{}",
            self.name,
            self.port,
            tail(&self.log)
        )
    }

    /// Stops it (SIGINT to its process group, then SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        crate::proc_util::stop_group(&mut self.child);
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(30);
    lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
}

/// The HTTP status of `GET path` on 127.0.0.1:`port`, if anything answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// Keystone and the Nova API, seeded.
pub struct OpenStack {
    /// State directory (databases, keys, configuration, logs).
    pub dir: PathBuf,
    /// Keystone.
    pub keystone: Gunicorn,
    /// The Nova API.
    pub nova: Gunicorn,
}

/// A spice-direct (or other) console token to put in Nova's database.
#[derive(Clone, Debug)]
pub struct ConsoleTokenSpec {
    /// `spice-direct`, `novnc`, ...
    pub console_type: String,
    /// Hypervisor address.
    pub host: String,
    /// Plain port.
    pub port: u16,
    /// TLS port.
    pub tls_port: Option<u16>,
    /// Instance.
    pub instance_uuid: String,
    /// Seconds until expiry (negative: already expired).
    pub ttl: i64,
}

impl ConsoleTokenSpec {
    /// A spice-direct token for `port` on 127.0.0.1, valid ten minutes.
    pub fn spice_direct(port: u16) -> Self {
        ConsoleTokenSpec {
            console_type: "spice-direct".to_owned(),
            host: "127.0.0.1".to_owned(),
            port,
            tls_port: None,
            instance_uuid: uuid::Uuid::new_v4().to_string(),
            ttl: 600,
        }
    }
}

static SHARED: OnceLock<std::result::Result<OpenStack, String>> = OnceLock::new();

/// The Keystone + Nova pair shared by this test binary, started on first use.
///
/// # Errors
/// The venv is missing (the message says to run `tools/install-openstack.sh`) or the
/// services did not start (with their logs).
pub async fn shared() -> Result<&'static OpenStack> {
    tokio::task::spawn_blocking(|| {
        SHARED
            .get_or_init(|| OpenStack::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("real Keystone/Nova unavailable: {e}"))
    })
    .await?
}

impl OpenStack {
    fn start() -> Result<Self> {
        let venv = venv();
        for program in ["bin/keystone-manage", "bin/nova-manage", "bin/gunicorn"] {
            if !venv.join(program).is_file() {
                bail!(
                    "{} is missing: run `tools/install-openstack.sh` (creates the venv with \
                     keystone and nova from PyPI; set KERBSIDE_OPENSTACK_VENV to use another)",
                    venv.join(program).display()
                );
            }
        }
        sweep_leftovers();
        let dir = std::env::temp_dir().join(format!("kerbside-openstack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ports = crate::ports::free_ports(2)?;
        let (ks_port, nova_port) = match ports.as_slice() {
            [a, b] => (*a, *b),
            _ => bail!("could not pick two free ports"),
        };
        let out = Command::new(scripts().join("setup.sh"))
            .arg(&dir)
            .arg(ks_port.to_string())
            .output()
            .context("running tests/openstack/setup.sh")?;
        if !out.status.success() {
            bail!(
                "tests/openstack/setup.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let keystone = Gunicorn::start(&dir, "keystone", "keystone_app", ks_port, "/v3")?;
        let nova = Gunicorn::start(&dir, "nova-api", "nova_api_app", nova_port, "/")?;
        let seed = Command::new(venv.join("bin/python"))
            .arg(scripts().join("seed_keystone.py"))
            .arg(format!("http://127.0.0.1:{ks_port}/v3"))
            .arg(format!("http://127.0.0.1:{nova_port}/v2.1"))
            .output()
            .context("running seed_keystone.py")?;
        if !seed.status.success() {
            bail!(
                "seeding Keystone failed: {}",
                String::from_utf8_lossy(&seed.stderr)
            );
        }
        Ok(OpenStack {
            dir,
            keystone,
            nova,
        })
    }

    /// Keystone's URL without a version (as `auth_url` is usually written).
    pub fn keystone_root(&self) -> String {
        format!("http://127.0.0.1:{}/", self.keystone.port)
    }

    /// Keystone's v3 URL.
    pub fn keystone_v3(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.keystone.port)
    }

    /// The Nova API's v2.1 URL.
    pub fn nova_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2.1", self.nova.port)
    }

    /// `[keystone_authtoken]` and `[api]` for kerbside with this service user (its `[nova]`
    /// falls back to it), the API on a free port.
    pub fn kerbside_ini(&self, user: &str, password: &str) -> String {
        self.kerbside_ini_at(&self.keystone_root(), user, password)
    }

    /// As [`OpenStack::kerbside_ini`], with Keystone at `auth_url`.
    pub fn kerbside_ini_at(&self, auth_url: &str, user: &str, password: &str) -> String {
        format!(
            "[api]\nbind_host = 127.0.0.1\nbind_port = 0\nworkers = 2\npolicy_file = /nonexistent/policy.yaml\n\n\
             [keystone_authtoken]\nwww_authenticate_uri = {www}\nauth_url = {auth_url}\n\
             username = {user}\npassword = {password}\nproject_name = service\n\
             region_name = RegionOne\ntoken_cache_time = 300\n\n\
             [nova]\ntimeout = 30\n",
            www = self.keystone_root(),
        )
    }

    /// A project-scoped token of `user`.
    ///
    /// # Errors
    /// Keystone refused.
    pub async fn token(&self, user: &str, password: &str, project: &str) -> Result<String> {
        token_at(&self.keystone_v3(), user, password, project).await
    }

    /// Revokes `token` (with an admin token).
    ///
    /// # Errors
    /// Keystone refused.
    pub async fn revoke(&self, token: &str) -> Result<()> {
        let admin = self.token("admin", "adminpass", "admin").await?;
        let resp = reqwest::Client::new()
            .delete(format!("{}/auth/tokens", self.keystone_v3()))
            .header("X-Auth-Token", admin)
            .header("X-Subject-Token", token)
            .send()
            .await?;
        anyhow::ensure!(resp.status().as_u16() == 204, "revoke: {}", resp.status());
        Ok(())
    }

    async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let admin = self.token("admin", "adminpass", "admin").await?;
        let mut req = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", self.keystone_v3()))
            .header("X-Auth-Token", admin);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {text}");
        Ok(if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// Creates a service user with the admin and service roles on project `service`;
    /// returns its id.
    ///
    /// # Errors
    /// Keystone refused.
    pub async fn create_service_user(&self, name: &str, password: &str) -> Result<String> {
        use reqwest::Method;
        let projects = self
            .admin_call(Method::GET, "/projects?name=service", None)
            .await?;
        let project = projects
            .pointer("/projects/0/id")
            .and_then(serde_json::Value::as_str)
            .context("no service project")?
            .to_owned();
        let user = self
            .admin_call(
                Method::POST,
                "/users",
                Some(
                    serde_json::json!({"user": {"name": name, "domain_id": "default",
                    "password": password, "default_project_id": project}}),
                ),
            )
            .await?;
        let id = user
            .pointer("/user/id")
            .and_then(serde_json::Value::as_str)
            .context("no user id")?
            .to_owned();
        let roles = self.admin_call(Method::GET, "/roles", None).await?;
        for wanted in ["admin", "service"] {
            let role = roles
                .get("roles")
                .and_then(serde_json::Value::as_array)
                .and_then(|r| {
                    r.iter()
                        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(wanted))
                })
                .and_then(|r| r.get("id").and_then(serde_json::Value::as_str))
                .context("role missing")?
                .to_owned();
            self.admin_call(
                Method::PUT,
                &format!("/projects/{project}/users/{id}/roles/{role}"),
                None,
            )
            .await?;
        }
        Ok(id)
    }

    /// Disables or enables a user (disabling revokes its tokens).
    ///
    /// # Errors
    /// Keystone refused.
    pub async fn set_user_enabled(&self, id: &str, enabled: bool) -> Result<()> {
        self.admin_call(
            reqwest::Method::PATCH,
            &format!("/users/{id}"),
            Some(serde_json::json!({"user": {"enabled": enabled}})),
        )
        .await?;
        Ok(())
    }

    /// Writes a console token into Nova's cell1 database (only its sha-256 is stored, as
    /// Nova does) and returns the token.
    ///
    /// # Errors
    /// Database failures.
    pub fn insert_console_token(&self, spec: &ConsoleTokenSpec) -> Result<String> {
        use diesel::prelude::*;
        use diesel::sql_types::{BigInt, Integer, Nullable, Text};
        let token = uuid::Uuid::new_v4().to_string();
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let now = chrono::Utc::now();
        let mut conn =
            diesel::SqliteConnection::establish(&self.dir.join("nova.db").display().to_string())?;
        diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn)?;
        diesel::sql_query(
            "INSERT INTO console_auth_tokens (created_at, token_hash, console_type, host, port, \
             tls_port, internal_access_path, instance_uuid, expires, access_url_base) \
             VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL)",
        )
        .bind::<Text, _>(now.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .bind::<Text, _>(hash)
        .bind::<Text, _>(&spec.console_type)
        .bind::<Text, _>(&spec.host)
        .bind::<Integer, _>(i32::from(spec.port))
        .bind::<Nullable<Integer>, _>(spec.tls_port.map(i32::from))
        .bind::<Text, _>(&spec.instance_uuid)
        .bind::<BigInt, _>(now.timestamp() + spec.ttl)
        .execute(&mut conn)?;
        Ok(token)
    }

    /// Starts another Keystone on the same database and keys (a test may stop and restart
    /// it without disturbing the shared one).
    ///
    /// # Errors
    /// It did not start.
    pub fn extra_keystone(&self, port: u16) -> Result<Gunicorn> {
        Gunicorn::start(&self.dir, "keystone-extra", "keystone_app", port, "/v3")
    }
}

/// A project-scoped token from the Keystone at `v3` (`http://host:port/v3`).
///
/// # Errors
/// Keystone refused.
pub async fn token_at(v3: &str, user: &str, password: &str, project: &str) -> Result<String> {
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
    // Keystone on SQLite may answer 500 ("database is locked") while another test writes to
    // it on a busy machine: try again a few times, as a real client would.
    let client = reqwest::Client::new();
    let mut attempt = 0;
    let resp = loop {
        let resp = client
            .post(format!("{v3}/auth/tokens"))
            .json(&body)
            .send()
            .await?;
        attempt += 1;
        if resp.status().is_server_error() && attempt < 5 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        break resp;
    };
    anyhow::ensure!(
        resp.status().as_u16() == 201,
        "token for {user}: {}",
        resp.status()
    );
    resp.headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .context("no X-Subject-Token")
}

/// Removes state directories of earlier test processes that are gone.
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("kerbside-openstack-")
            && pid.parse::<u32>().is_ok()
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
