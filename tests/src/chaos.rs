//! `ChaosProxy`: a TCP relay between kerbside and a service (RabbitMQ, MariaDB, a SPICE
//! server) that a test can sever and restore mid-test.
//!
//! While severed, every relayed connection is closed and new ones are accepted and closed at
//! once, which is what a client sees when the service or the path to it goes away and comes
//! back (connection refused or reset). The relay runs on the test's runtime and stops when
//! the proxy is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A severable TCP relay on 127.0.0.1.
pub struct ChaosProxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// `true` while severed.
    severed: watch::Sender<bool>,
    /// Connections relayed end to end so far.
    relayed: Arc<AtomicUsize>,
    /// Connections closed at once because the relay was severed.
    refused: Arc<AtomicUsize>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl ChaosProxy {
    /// Starts relaying a free local port to `upstream` (`host:port`).
    ///
    /// # Errors
    /// The local port cannot be bound.
    pub async fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the chaos proxy")?;
        let addr = listener.local_addr()?;
        let (severed, rx) = watch::channel(false);
        let relayed = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream.to_owned(),
            rx,
            relayed.clone(),
            refused.clone(),
        ));
        Ok(ChaosProxy {
            addr,
            severed,
            relayed,
            refused,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and refuses new ones until [`ChaosProxy::restore`].
    pub fn sever(&self) {
        self.severed.send_replace(true);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.severed.send_replace(false);
    }

    /// How many connections were relayed end to end so far.
    pub fn relayed(&self) -> usize {
        self.relayed.load(Ordering::SeqCst)
    }

    /// How many connection attempts were refused while severed.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.severed.send_replace(true);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    severed: watch::Receiver<bool>,
    relayed: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if *severed.borrow() {
            refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        let upstream = upstream.clone();
        let mut severed = severed.clone();
        let relayed = relayed.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            relayed.fetch_add(1, Ordering::SeqCst);
            let mut client = client;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = severed.wait_for(|s| *s) => {}
            }
            // Both sockets close here.
        });
    }
}
