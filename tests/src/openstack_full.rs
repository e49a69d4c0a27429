//! A small but complete OpenStack for the Nova tests: Keystone, Placement, Glance (file
//! store), Neutron (API only), and Nova API, conductor, scheduler and two nova-compute
//! processes with `compute_driver = fake.FakeDriverWithoutFakeNodes` (hosts `compute1` and
//! `compute2`, so servers can be live-migrated). All from PyPI, pinned in
//! `tests/openstack/constraints.txt` and installed by `tools/install-openstack.sh`.
//!
//! Started once per test process on first use ([`full`], about two minutes, most of it
//! creating the MariaDB schemas) with MariaDB schemas (`ksos_<pid>_*`) and a RabbitMQ vhost
//! (`kerbside-os-<pid>`) of its own. Every service runs under `tests/openstack/serve.sh`,
//! which stops it by PID when the test process exits; `tests/openstack/full/reap.sh` then
//! drops the schemas and the vhost. Nova publishes versioned notifications on the `nova`
//! exchange of that vhost.
//!
//! Users (domain `Default`): `admin`/`adminpass`, `kerbside`/`kerbsidepass` (admin + service
//! on `service`), `demo`/`demopass` (member of `demo`), `other`/`otherpass` (member of
//! `other`). A public 1 MiB raw image ([`FullStack::image_id`]) and a flavor
//! ([`FullStack::flavor_id`]) exist.
//!
//! The fake driver gives every server the same spice console, `fakespiceconsole.com` ports
//! 6969 (plain) and 6970 (TLS): tests that serve it take [`console_ports`] first.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::openstack::{Gunicorn, token_at, venv};
use crate::pki::TestPki;
use crate::qemu::SpiceServer;

/// The console host the fake driver gives every server.
pub const FAKE_CONSOLE_HOST: &str = "fakespiceconsole.com";
/// The fake driver's plain SPICE port.
pub const FAKE_CONSOLE_PORT: u16 = 6969;
/// The fake driver's TLS SPICE port.
pub const FAKE_CONSOLE_TLS_PORT: u16 = 6970;
/// The compute microversion the tests speak (spice-direct consoles).
pub const COMPUTE_VERSION: &str = "compute 2.99";

/// Generous bound for service start-up and readiness on a busy machine.
const START_DEADLINE: Duration = Duration::from_secs(600);
/// Generous bound for a server to reach a state.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(240);

/// QEMU serving the fake driver's console: plain on 6969, TLS on 6970 with a certificate for
/// `fakespiceconsole.com` signed by `pki`'s CA, no SPICE password (as libvirt's
/// spice-direct consoles).
///
/// # Errors
/// The certificate cannot be issued or QEMU does not start.
pub async fn fake_console_vm(pki: &TestPki) -> Result<SpiceServer> {
    // QEMU's x509-dir takes server-cert.pem: replace the default leaf. The address SAN
    // keeps the connection verifiable while the proxy names hypervisors by address.
    pki.issue(
        "server",
        FAKE_CONSOLE_HOST,
        &[FAKE_CONSOLE_HOST, "127.0.0.1"],
    )?;
    SpiceServer::builder()
        .password(None)
        .tls(Some(pki))
        .fixed_ports(FAKE_CONSOLE_PORT, FAKE_CONSOLE_TLS_PORT)
        .start()
        .await
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openstack")
}

/// A non-HTTP service (conductor, scheduler, compute) under serve.sh in its own process
/// group.
pub struct Daemon {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, name: &str, program: &str, config: &Path) -> Result<Self> {
        let log = dir.join("logs").join(format!("{name}.out"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(scripts().join("serve.sh"))
            .arg(std::process::id().to_string())
            .arg(venv().join("bin").join(program))
            .arg("--config-file")
            .arg(config)
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Daemon {
            child,
            name: name.to_owned(),
            log,
        })
    }

    /// Fails when it has exited, with its log.
    fn check_alive(&mut self, dir: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its output:\n{}\nits log:\n{}",
                self.name,
                tail(&self.log),
                tail(&dir.join("logs").join(format!("nova-{}.log", self.short())))
            );
        }
        Ok(())
    }

    fn short(&self) -> &str {
        self.name.strip_prefix("nova-").unwrap_or(&self.name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        crate::proc_util::stop_group(&mut self.child);
    }
}

/// The JSON value at `pointer` (`/a/b`), or null.
pub fn field<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(40);
    lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
}

/// The running OpenStack.
pub struct FullStack {
    /// State directory (configuration, logs, images).
    pub dir: PathBuf,
    /// Keystone.
    pub keystone: Gunicorn,
    /// The Nova API.
    pub nova: Gunicorn,
    /// RabbitMQ URL of the stack's vhost (Nova publishes its notifications there).
    pub transport_url: String,
    /// The public image servers boot from.
    pub image_id: String,
    /// The flavor servers use.
    pub flavor_id: String,
    _others: Vec<Gunicorn>,
    _daemons: Vec<Daemon>,
}

static FULL: OnceLock<std::result::Result<FullStack, String>> = OnceLock::new();

/// The OpenStack of this test process, started on first use.
///
/// # Errors
/// The venv lacks a service (the message says to run `tools/install-openstack.sh`),
/// MariaDB or RabbitMQ are missing, or a service did not start (with its log).
pub async fn full() -> Result<&'static FullStack> {
    tokio::task::spawn_blocking(|| {
        FULL.get_or_init(|| FullStack::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("the test OpenStack is unavailable: {e}"))
    })
    .await?
}

fn start_http(dir: &Path, name: &str, module: &str, port: u16, path: &str) -> Result<Gunicorn> {
    Gunicorn::start_within(dir, name, module, port, path, START_DEADLINE)
}

fn run(command: &mut Command, what: &str) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl FullStack {
    fn start() -> Result<Self> {
        let venv = venv();
        for program in [
            "bin/nova-compute",
            "bin/nova-conductor",
            "bin/nova-scheduler",
            "bin/placement-manage",
            "bin/glance-manage",
            "bin/neutron-db-manage",
        ] {
            if !venv.join(program).is_file() {
                bail!(
                    "{} is missing: run `tools/install-openstack.sh`",
                    venv.join(program).display()
                );
            }
        }
        let pid = std::process::id();
        sweep_leftovers();
        let dir = std::env::temp_dir().join(format!("kerbside-os-full-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let prefix = format!("ksos_{pid}_");
        let vhost = format!("kerbside-os-{pid}");
        // Drops the schemas and the vhost once this process is gone.
        Command::new(scripts().join("full/reap.sh"))
            .arg(pid.to_string())
            .arg(&dir)
            .arg(&prefix)
            .arg(&vhost)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting tests/openstack/full/reap.sh")?;
        run(
            Command::new("rabbitmqctl").args(["-q", "add_vhost", &vhost]),
            "rabbitmqctl add_vhost (RabbitMQ must run here)",
        )?;
        run(
            Command::new("rabbitmqctl").args([
                "-q",
                "set_permissions",
                "-p",
                &vhost,
                "guest",
                ".*",
                ".*",
                ".*",
            ]),
            "rabbitmqctl set_permissions",
        )?;
        let transport_url = format!("rabbit://guest:guest@127.0.0.1:5672/{vhost}");
        let ports = crate::ports::free_ports(5)?;
        let [ks, placement, glance, neutron, nova] = ports.as_slice() else {
            bail!("could not pick five free ports");
        };
        let (ks, placement, glance, neutron, nova) = (*ks, *placement, *glance, *neutron, *nova);
        run(
            Command::new(scripts().join("full/setup.sh"))
                .arg(&dir)
                .env("KS_PORT", ks.to_string())
                .env("PLACEMENT_PORT", placement.to_string())
                .env("GLANCE_PORT", glance.to_string())
                .env("NEUTRON_PORT", neutron.to_string())
                .env("NOVA_PORT", nova.to_string())
                .env("DB_PREFIX", &prefix)
                .env("DB_URL", "mysql+pymysql://root@127.0.0.1:3306")
                .env("TRANSPORT_URL", &transport_url),
            "tests/openstack/full/setup.sh",
        )?;
        let keystone = start_http(&dir, "keystone", "keystone_app", ks, "/v3")?;
        run(
            Command::new(venv.join("bin/python"))
                .arg(scripts().join("full/seed.py"))
                .arg(format!("http://127.0.0.1:{ks}"))
                .args([nova, placement, glance, neutron].map(|p| p.to_string())),
            "seeding Keystone (tests/openstack/full/seed.py)",
        )?;
        // The HTTP services are independent: start them at once.
        let specs = [
            ("placement", "placement_app", placement, "/"),
            ("glance", "glance_app", glance, "/healthcheck"),
            ("neutron", "neutron_app", neutron, "/"),
            ("nova-api", "nova_api_app", nova, "/"),
        ];
        let started = std::thread::scope(|s| {
            let handles: Vec<_> = specs
                .iter()
                .map(|(name, module, port, path)| {
                    let dir = &dir;
                    s.spawn(move || start_http(dir, name, module, *port, path))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow!("a start-up thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut others = started;
        let nova_api = others.pop().context("nova-api")?;
        // Conductor and scheduler exit on a 401 unless Keystone is seeded and Placement
        // answers, which is now the case.
        let etc = dir.join("etc/nova");
        let mut daemons = vec![
            Daemon::start(
                &dir,
                "nova-conductor",
                "nova-conductor",
                &etc.join("nova-conductor.conf"),
            )?,
            Daemon::start(
                &dir,
                "nova-scheduler",
                "nova-scheduler",
                &etc.join("nova-scheduler.conf"),
            )?,
        ];
        for host in ["compute1", "compute2"] {
            daemons.push(Daemon::start(
                &dir,
                &format!("nova-{host}"),
                "nova-compute",
                &etc.join(format!("nova-{host}.conf")),
            )?);
        }
        let mut stack = FullStack {
            dir,
            keystone,
            nova: nova_api,
            transport_url,
            image_id: String::new(),
            flavor_id: String::new(),
            _others: others,
            _daemons: daemons,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(stack.finish_start(placement, glance))?;
        Ok(stack)
    }

    /// Waits for every Nova service, maps the compute hosts, waits for their resource
    /// providers, and makes the image and the flavor.
    async fn finish_start(&mut self, placement: u16, glance: u16) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        let admin = self.admin_token().await?;
        let client = reqwest::Client::new();
        loop {
            for daemon in &mut self._daemons {
                daemon.check_alive(&self.dir)?;
            }
            let services = self
                .compute(&admin, reqwest::Method::GET, "/os-services", None)
                .await
                .unwrap_or(Value::Null);
            let up = field(&services, "/services")
                .as_array()
                .map(|all| {
                    all.iter()
                        .filter(|s| field(s, "/state") == "up" && field(s, "/status") == "enabled")
                        .count()
                })
                .unwrap_or(0);
            if up >= 4 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the Nova services did not all report up: {services}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        run(
            Command::new(venv().join("bin/nova-manage"))
                .arg("--config-file")
                .arg(self.dir.join("etc/nova/nova.conf"))
                .args(["cell_v2", "discover_hosts"])
                .env("PYTHONWARNINGS", "ignore"),
            "nova-manage cell_v2 discover_hosts",
        )?;
        loop {
            let providers: Value = client
                .get(format!("http://127.0.0.1:{placement}/resource_providers"))
                .header("X-Auth-Token", &admin)
                .send()
                .await?
                .json()
                .await
                .unwrap_or(Value::Null);
            let count = field(&providers, "/resource_providers")
                .as_array()
                .map_or(0, Vec::len);
            if count >= 2 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the compute hosts never appeared in Placement: {providers}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let flavor = self
            .compute(
                &admin,
                reqwest::Method::POST,
                "/flavors",
                Some(
                    json!({"flavor": {"name": "kerbside-tiny", "ram": 64, "vcpus": 1,
                    "disk": 1, "id": "kerbside-tiny"}}),
                ),
            )
            .await?;
        self.flavor_id = field(&flavor, "/flavor/id")
            .as_str()
            .context("no flavor id")?
            .to_owned();
        let glance_url = format!("http://127.0.0.1:{glance}/v2/images");
        let image: Value = client
            .post(&glance_url)
            .header("X-Auth-Token", &admin)
            .json(&json!({"name": "kerbside-blank", "disk_format": "raw",
                "container_format": "bare", "visibility": "public"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = field(&image, "/id")
            .as_str()
            .context("no image id")?
            .to_owned();
        client
            .put(format!("{glance_url}/{id}/file"))
            .header("X-Auth-Token", &admin)
            .header("Content-Type", "application/octet-stream")
            .body(vec![0u8; 1 << 20])
            .send()
            .await?
            .error_for_status()
            .context("uploading the image to Glance")?;
        self.image_id = id;
        Ok(())
    }

    /// Keystone's URL without a version.
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

    /// A project-scoped token of `user`.
    ///
    /// # Errors
    /// Keystone refused.
    pub async fn token(&self, user: &str, password: &str, project: &str) -> Result<String> {
        token_at(&self.keystone_v3(), user, password, project).await
    }

    /// An admin token.
    ///
    /// # Errors
    /// Keystone refused.
    pub async fn admin_token(&self) -> Result<String> {
        self.token("admin", "adminpass", "admin").await
    }

    /// kerbside's `[keystone_authtoken]` and `[nova]` for this stack (service user
    /// `kerbside`), with the fake console host mapped to 127.0.0.1, and its notification
    /// consumer on Nova's exchange with its own pool `pool`.
    pub fn kerbside_ini(&self, pool: &str) -> String {
        format!(
            "[api]\nbind_host = 127.0.0.1\nbind_port = 0\nworkers = 1\npolicy_file = /nonexistent/policy.yaml\n\n\
             [keystone_authtoken]\nwww_authenticate_uri = {root}\nauth_url = {root}\n\
             username = kerbside\npassword = kerbsidepass\nproject_name = service\n\
             region_name = RegionOne\ntoken_cache_time = 300\n\n\
             [nova]\ntimeout = 60\nconsole_host_map = {FAKE_CONSOLE_HOST}:127.0.0.1\n\n\
             [oslo_messaging_notifications]\ntransport_url = {url}\ntopics = versioned_notifications\n\n\
             [notifications]\nexchange = nova\npool_name = {pool}\n",
            root = self.keystone_root(),
            url = self.transport_url,
        )
    }

    /// A compute API call with `token` at [`COMPUTE_VERSION`]; the JSON body of a 2xx
    /// answer (`null` when empty).
    ///
    /// # Errors
    /// Transport failures and non-2xx answers (with the body).
    pub async fn compute(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", self.nova_url()))
            .header("X-Auth-Token", token)
            .header("OpenStack-API-Version", COMPUTE_VERSION)
            .timeout(Duration::from_secs(120));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {text}");
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// Boots a server (no network) as the owner of `token` and waits until it is ACTIVE;
    /// returns its id.
    ///
    /// # Errors
    /// Nova refused, or the server went to ERROR or did not become ACTIVE in time.
    pub async fn boot(&self, token: &str, name: &str) -> Result<String> {
        self.boot_flavor(token, name, &self.flavor_id).await
    }

    /// Creates a flavor the size of [`FullStack::flavor_id`]'s, as the admin, with these
    /// extra specs (e.g. `{"kerbside:firewall_profile": "no-usb"}`); returns its id.
    ///
    /// # Errors
    /// Nova refused.
    pub async fn flavor(&self, name: &str, extra_specs: Value) -> Result<String> {
        let admin = self.admin_token().await?;
        let flavor = self
            .compute(
                &admin,
                reqwest::Method::POST,
                "/flavors",
                Some(json!({"flavor": {"name": name, "ram": 64, "vcpus": 1, "disk": 1}})),
            )
            .await?;
        let id = field(&flavor, "/flavor/id")
            .as_str()
            .context("no flavor id")?
            .to_owned();
        self.compute(
            &admin,
            reqwest::Method::POST,
            &format!("/flavors/{id}/os-extra_specs"),
            Some(json!({ "extra_specs": extra_specs })),
        )
        .await?;
        Ok(id)
    }

    /// Boots a server of `flavor` (no network) as the owner of `token` and waits until it is
    /// ACTIVE; returns its id.
    ///
    /// # Errors
    /// Nova refused, or the server went to ERROR or did not become ACTIVE in time.
    pub async fn boot_flavor(&self, token: &str, name: &str, flavor: &str) -> Result<String> {
        let created = self
            .compute(
                token,
                reqwest::Method::POST,
                "/servers",
                Some(json!({"server": {"name": name, "imageRef": self.image_id,
                    "flavorRef": flavor, "networks": "none"}})),
            )
            .await?;
        let id = field(&created, "/server/id")
            .as_str()
            .context("no server id")?
            .to_owned();
        self.wait_status(token, &id, "ACTIVE").await?;
        Ok(id)
    }

    /// The server as its owner (or an admin) sees it.
    ///
    /// # Errors
    /// Nova refused (404 once it is gone).
    pub async fn server(&self, token: &str, id: &str) -> Result<Value> {
        let mut body = self
            .compute(token, reqwest::Method::GET, &format!("/servers/{id}"), None)
            .await?;
        Ok(body
            .get_mut("server")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    /// Waits until the server has `status` and no task; `DELETED` waits until Nova no
    /// longer lists it.
    ///
    /// # Errors
    /// It went to ERROR, or did not get there within [`SERVER_DEADLINE`].
    pub async fn wait_status(&self, token: &str, id: &str, status: &str) -> Result<Value> {
        let deadline = Instant::now() + SERVER_DEADLINE;
        loop {
            let server = match self.server(token, id).await {
                Ok(server) => server,
                Err(e) if status == "DELETED" && format!("{e}").contains("404") => {
                    return Ok(Value::Null);
                }
                Err(e) => return Err(e),
            };
            if field(&server, "/status") == status
                && field(&server, "/OS-EXT-STS:task_state").is_null()
            {
                return Ok(server);
            }
            if field(&server, "/status") == "ERROR" {
                bail!("server {id} went to ERROR: {}", field(&server, "/fault"));
            }
            if Instant::now() > deadline {
                bail!(
                    "server {id} did not become {status} within {} s: {server}",
                    SERVER_DEADLINE.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Runs a server action (`POST /servers/{id}/action`).
    ///
    /// # Errors
    /// Nova refused.
    pub async fn action(&self, token: &str, id: &str, body: Value) -> Result<()> {
        self.compute(
            token,
            reqwest::Method::POST,
            &format!("/servers/{id}/action"),
            Some(body),
        )
        .await?;
        Ok(())
    }

    /// Deletes a server.
    ///
    /// # Errors
    /// Nova refused.
    pub async fn delete(&self, token: &str, id: &str) -> Result<()> {
        self.compute(
            token,
            reqwest::Method::DELETE,
            &format!("/servers/{id}"),
            None,
        )
        .await?;
        Ok(())
    }
}

/// Exclusive use of the fake driver's console ports (6969/6970) for a test: a process-wide
/// async mutex, and a file lock against other test processes. Released when dropped.
pub struct ConsolePorts {
    _local: tokio::sync::MutexGuard<'static, ()>,
    _file: std::fs::File,
}

static PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for exclusive use of ports 6969/6970.
///
/// # Errors
/// The lock file cannot be opened or locked.
pub async fn console_ports() -> Result<ConsolePorts> {
    let local = PORTS.lock().await;
    let path = std::env::temp_dir().join("kerbside-fake-console-ports.lock");
    let file = tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    })
    .await??;
    Ok(ConsolePorts {
        _local: local,
        _file: file,
    })
}

/// Removes state directories of earlier test processes that are gone (their reaper drops
/// their schemas and vhosts; this catches a reaper that was killed too).
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("kerbside-os-full-")
            && pid.parse::<u32>().is_ok()
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = Command::new(scripts().join("full/reap.sh"))
                .arg(pid)
                .arg(entry.path())
                .arg(format!("ksos_{pid}_"))
                .arg(format!("kerbside-os-{pid}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn();
        }
    }
}
