//! Free TCP ports on 127.0.0.1 for test servers.
//!
//! A port is found by binding `127.0.0.1:0`, reading the port the kernel picked and
//! closing the socket again. A process-wide set makes sure two tests in this binary
//! never get the same number. Another process can still take the port before the test
//! server binds it; callers that start external servers retry on "address in use".

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};

/// Ports already handed out by this process.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before.
///
/// # Errors
/// Binding failed, or 100 attempts only found ports already handed out.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding 127.0.0.1:0 to find a free port")?;
        let port = listener.local_addr().context("local_addr")?.port();
        drop(listener);
        let mut set = handed_out()
            .lock()
            .map_err(|_| anyhow!("free-port registry lock poisoned"))?;
        if set.insert(port) {
            return Ok(port);
        }
    }
    bail!("no unused free port found after 100 attempts")
}

/// `n` distinct free ports (see [`free_port`]).
///
/// # Errors
/// As [`free_port`].
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    (0..n).map(|_| free_port()).collect()
}
