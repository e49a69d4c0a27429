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

/// The inodes of the TCP sockets listening on `port` on any address (`/proc/net/tcp` and
/// `tcp6`, this network namespace).
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A"
                && local_port == Some(port)
                && let Ok(inode) = inode.parse()
            {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// Whether process `pid` holds the socket with `inode` among its file descriptors.
pub fn process_holds_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
        })
    })
}

/// Who listens on `port`, in words, for diagnostics: `nobody`, or each listening socket's
/// owner (process id and command name), found by scanning `/proc`.
pub fn who_listens(port: u16) -> String {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return "nobody".to_owned();
    }
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    inodes
        .iter()
        .map(|inode| {
            let owners: Vec<String> = pids
                .iter()
                .filter(|pid| process_holds_socket(**pid, *inode))
                .map(|pid| {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    format!("pid {pid} ({})", comm.trim())
                })
                .collect();
            if owners.is_empty() {
                format!("socket {inode} (owner not found)")
            } else {
                owners.join(", ")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_is_found_and_gone_once_closed() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let inodes = listening_inodes(port);
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        assert!(process_holds_socket(std::process::id(), inodes[0]));
        assert!(who_listens(port).contains(&format!("pid {}", std::process::id())));
        drop(listener);
        assert!(listening_inodes(port).is_empty());
        assert_eq!(who_listens(port), "nobody");
    }
}
