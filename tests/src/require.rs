//! Preconditions: the real peers and services the tests drive must be present.
//!
//! A missing peer or service is always a test FAILURE whose message says how to fix
//! it, never a silent skip: a green run must mean the tests really ran. Results are
//! cached per process, so calling [`require`] at the top of every test is cheap.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// How to install every SPICE peer and build dependency.
const INSTALL_HINT: &str = "run `tools/install-test-deps.sh` (as root) from the repository root";

/// Names [`require`] understands.
pub const KNOWN: &[&str] = &[
    "qemu",
    "spicy-screenshot",
    "spice-probe",
    "remote-viewer",
    "xvfb",
    "xwd",
    "mariadb",
    "rabbitmq",
    "nasm",
    "ryll",
    "chromium",
];

/// Fail unless `what` is usable. `what` is one of [`KNOWN`]:
/// - `qemu`: `qemu-system-x86_64` with SPICE (`password-secret=`) and QXL;
/// - `spicy-screenshot`, `remote-viewer`, `xvfb` (`Xvfb`), `xwd`: the program is on PATH;
/// - `spice-probe`: `/usr/bin/python3` can load SpiceClientGLib 2.0;
/// - `nasm`: on PATH (assembles the test guests, see [`crate::guests`]);
/// - `ryll`: the pinned ryll runs from its venv (see [`crate::ryll`]);
/// - `chromium`: Debian's `chromium` and `chromium-driver` of the same version, for
///   [`crate::browser`];
/// - `mariadb` (127.0.0.1:3306, or `KERBSIDE_TEST_MARIADB_ADDR`) and `rabbitmq`
///   (127.0.0.1:5672, or `KERBSIDE_TEST_AMQP_ADDR`): the TCP port accepts.
///
/// # Errors
/// `what` is missing (the message says how to install or start it) or unknown.
pub fn require(what: &str) -> Result<()> {
    static CACHE: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(cached) = cache
        .lock()
        .map_err(|_| anyhow!("require cache lock poisoned"))?
        .get(what)
    {
        return cached.clone().map_err(|e| anyhow!(e));
    }
    let outcome = check(what).map_err(|e| format!("required test peer `{what}` missing: {e:#}"));
    cache
        .lock()
        .map_err(|_| anyhow!("require cache lock poisoned"))?
        .insert(what.to_owned(), outcome.clone());
    outcome.map_err(|e| anyhow!(e))
}

/// [`require`] for each name in turn.
///
/// # Errors
/// The first missing one.
pub fn require_all(what: &[&str]) -> Result<()> {
    what.iter().try_for_each(|w| require(w))
}

fn check(what: &str) -> Result<()> {
    match what {
        "qemu" => check_qemu(),
        "spicy-screenshot" => on_path("spicy-screenshot", "spice-client-gtk"),
        "remote-viewer" => on_path("remote-viewer", "virt-viewer"),
        "xvfb" => on_path("Xvfb", "xvfb"),
        "xwd" => on_path("xwd", "x11-apps"),
        "spice-probe" => check_python_spice(),
        "nasm" => on_path("nasm", "nasm"),
        "ryll" => crate::ryll::check_installed(),
        "chromium" => check_chromium(),
        "mariadb" => check_tcp("MariaDB", "KERBSIDE_TEST_MARIADB_ADDR", "127.0.0.1:3306"),
        "rabbitmq" => check_tcp("RabbitMQ", "KERBSIDE_TEST_AMQP_ADDR", "127.0.0.1:5672"),
        other => bail!(
            "unknown requirement `{other}` (known: {})",
            KNOWN.join(", ")
        ),
    }
}

/// The full path of `program` if it is an executable file on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn on_path(program: &str, package: &str) -> Result<()> {
    match find_on_path(program) {
        Some(_) => Ok(()),
        None => bail!("`{program}` is not on PATH (Debian package {package}); {INSTALL_HINT}"),
    }
}

fn check_qemu() -> Result<()> {
    on_path("qemu-system-x86_64", "qemu-system-x86")?;
    let spice = Command::new("qemu-system-x86_64")
        .args(["-spice", "help"])
        .output()
        .context("running qemu-system-x86_64 -spice help")?;
    let devices = Command::new("qemu-system-x86_64")
        .args(["-device", "help"])
        .output()
        .context("running qemu-system-x86_64 -device help")?;
    let spice = String::from_utf8_lossy(&spice.stdout).into_owned()
        + &String::from_utf8_lossy(&spice.stderr);
    let devices = String::from_utf8_lossy(&devices.stdout);
    if !spice.contains("password-secret") {
        bail!(
            "qemu-system-x86_64 has no SPICE with password-secret= \
             (Debian package qemu-system-modules-spice); {INSTALL_HINT}"
        );
    }
    if !devices.contains("\"qxl\"") {
        bail!(
            "qemu-system-x86_64 has no qxl device (Debian package qemu-system-modules-spice); \
             {INSTALL_HINT}"
        );
    }
    Ok(())
}

fn check_chromium() -> Result<()> {
    on_path("chromium", "chromium")?;
    on_path("chromedriver", "chromium-driver")?;
    let version = |program: &str| -> Result<String> {
        let out = Command::new(program)
            .arg("--version")
            .output()
            .with_context(|| format!("running {program} --version"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "Chromium 140.0.7339.185 built on Debian ..." / "ChromeDriver 140.0.7339.185 (...)"
        text.split_whitespace()
            .nth(1)
            .map(str::to_owned)
            .with_context(|| format!("{program} --version printed {:?}", text.trim()))
    };
    let (browser, driver) = (version("chromium")?, version("chromedriver")?);
    if browser != driver {
        bail!(
            "chromium {browser} and chromedriver {driver} differ (Debian packages chromium \
             and chromium-driver must be upgraded together); {INSTALL_HINT}"
        );
    }
    Ok(())
}

fn check_python_spice() -> Result<()> {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import gi; gi.require_version('SpiceClientGLib', '2.0'); \
             from gi.repository import SpiceClientGLib",
        ])
        .output()
        .context("running /usr/bin/python3")?;
    if !out.status.success() {
        bail!(
            "/usr/bin/python3 cannot load SpiceClientGLib 2.0 (Debian packages \
             gir1.2-spiceclientglib-2.0 python3-gi): {}; {INSTALL_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn check_tcp(name: &str, env: &str, default: &str) -> Result<()> {
    let addr = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {name} address {addr} (from {env})"))?
        .collect();
    for a in &addrs {
        if TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok() {
            return Ok(());
        }
    }
    bail!(
        "{name} is not reachable at {addr}; start the service (check with \
         `tools/check-services.sh`) or point {env} at it"
    )
}
