//! Orderly shutdown shared by every component.
//!
//! `main` owns the only signal handler. It creates one [`Shutdown`] and hands clones to the
//! components: each long-running loop selects on [`Shutdown::token`] and every spawned task is
//! tracked so the process can wait for them. SIGTERM starts a graceful drain bounded by a
//! deadline; a second signal (or SIGINT) stops at once.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the process is in its life; published so tests can assert the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Components are starting.
    Starting,
    /// Serving.
    Running,
    /// No new work is accepted; existing sessions are draining.
    Draining,
    /// Everything has stopped.
    Stopped,
}

/// The shutdown handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// Cancelled when components must stop accepting new work.
    drain: CancellationToken,
    /// Cancelled when everything must close now (the drain deadline passed or a second signal).
    stop: CancellationToken,
    /// Every task a component spawned; a drain waits for these.
    tracker: TaskTracker,
    /// Servers that answer until the very end (the metrics endpoint, so a drain can be
    /// watched): they stop on [`Shutdown::stop_token`], and [`Shutdown::stop_now`] waits for them.
    servers: TaskTracker,
    phase: watch::Sender<Phase>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new handle in phase `Starting`.
    pub fn new() -> Self {
        let (phase, _) = watch::channel(Phase::Starting);
        Shutdown {
            drain: CancellationToken::new(),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            servers: TaskTracker::new(),
            phase,
        }
    }

    /// Cancelled when new work must no longer be accepted (listeners select on it).
    pub fn token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Cancelled when existing work must end now (sessions select on it).
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// The tracker every component spawns its tasks on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// The tracker of servers that keep answering while the others drain (see
    /// [`Shutdown::stop_token`]); a drain does not wait for them, a stop does.
    pub fn servers(&self) -> &TaskTracker {
        &self.servers
    }

    /// Publishes that components are up.
    pub fn set_running(&self) {
        self.phase.send_replace(Phase::Running);
    }

    /// The current phase, and a receiver to watch changes.
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Graceful shutdown: stop accepting, wait up to `grace` for tracked tasks, then stop
    /// everything and wait for the tasks to finish closing.
    pub async fn drain(&self, grace: Duration) {
        self.phase.send_replace(Phase::Draining);
        self.drain.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "drain deadline passed: closing what is left"
            );
        }
        self.stop_now().await;
    }

    /// Immediate shutdown: everything is told to close now.
    pub async fn stop_now(&self) {
        self.drain.cancel();
        self.stop.cancel();
        self.tracker.close();
        self.servers.close();
        // Tasks close their sockets as soon as they see the token; give them a moment.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            self.tracker.wait().await;
            self.servers.wait().await;
        })
        .await;
        self.phase.send_replace(Phase::Stopped);
    }
}

/// Waits for SIGTERM or SIGINT. Returns which arrived.
///
/// # Errors
/// When signal handlers cannot be installed.
pub async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_then_stops() {
        let s = Shutdown::new();
        let phase = s.phase();
        let token = s.token().clone();
        s.tracker().spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        s.set_running();
        assert_eq!(*phase.borrow(), Phase::Running);
        s.drain(Duration::from_secs(5)).await;
        assert_eq!(*phase.borrow(), Phase::Stopped);
        assert!(s.tracker().is_empty());
    }

    #[tokio::test]
    async fn phases_are_published_in_order() {
        let s = Shutdown::new();
        let mut phase = s.phase();
        assert_eq!(*phase.borrow_and_update(), Phase::Starting);
        // The tracked task outlives the drain's start until the watcher has seen Draining, so
        // the test does not depend on scheduling.
        let (seen_draining, draining_seen) = tokio::sync::oneshot::channel::<()>();
        let token = s.token().clone();
        s.tracker().spawn(async move {
            token.cancelled().await;
            let _ = tokio::time::timeout(Duration::from_secs(30), draining_seen).await;
        });
        s.set_running();
        assert_eq!(*phase.borrow_and_update(), Phase::Running);
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut seen_draining = Some(seen_draining);
            while phase.changed().await.is_ok() {
                let now = *phase.borrow_and_update();
                seen.push(now);
                if now == Phase::Draining
                    && let Some(tx) = seen_draining.take()
                {
                    let _ = tx.send(());
                }
                if now == Phase::Stopped {
                    break;
                }
            }
            seen
        });
        s.drain(Duration::from_secs(5)).await;
        assert_eq!(
            watcher.await.unwrap(),
            vec![Phase::Draining, Phase::Stopped]
        );
    }

    #[tokio::test]
    async fn drain_deadline_cancels_stragglers() {
        let s = Shutdown::new();
        let stop = s.stop_token().clone();
        s.tracker().spawn(async move { stop.cancelled().await });
        s.drain(Duration::from_millis(10)).await;
        assert!(s.stop_token().is_cancelled());
        assert!(s.tracker().is_empty());
    }
}
