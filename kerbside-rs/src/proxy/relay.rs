//! Relaying a linked channel between client and hypervisor: every channel goes through the
//! same filtered copy (see the `copy` module), whose firewall filters frame both directions,
//! apply the channel's profile, replace `MAIN_INIT`'s session id by the proxy's own connection
//! id, and replace migration messages (which carry hypervisor addresses) by no-ops while
//! telling the hypervisor the client cannot follow. With `[firewall] mode = off` the channels
//! those fixed rules do not concern are copied opaquely instead (still with writes towards the
//! client ending at message boundaries). Buffers are bounded and each write completes before
//! the next read (backpressure).
//!
//! A relay ends when either side closes (SPICE never half-closes), fails, idles out or is
//! cancelled; [`RelayEnd`] says which, naming the side and keeping a failure's cause, and both
//! legs are then closed with a TLS `close_notify`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::copy::{CopyEnd, CopyError, Peer, copy_filtered};
pub use super::copy::{FilterHooks, Filtering, MainInitHook, RecordWrite};
use super::error::{ProxyError, Side, io_words};
use crate::spice::HeaderKind;
use crate::spice::firewall::{FirewallError, Rule, Summary};

/// Live byte counters and activity time of one channel, shared with the session registry.
#[derive(Debug)]
pub struct Meter {
    to_client: AtomicU64,
    to_server: AtomicU64,
    /// The process-wide counters of this channel type, (to client, to hypervisor).
    exported: (IntCounter, IntCounter),
    started: Instant,
    last_activity_ms: AtomicU64,
}

/// Which way bytes flow.
#[derive(Clone, Copy, Debug)]
enum Direction {
    ToClient,
    ToServer,
}

impl Meter {
    /// A meter that also adds to the exported (to client, to hypervisor) counters.
    pub fn new(exported: (IntCounter, IntCounter)) -> Self {
        Meter {
            to_client: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            exported,
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        }
    }

    fn add(&self, direction: Direction, n: usize) {
        let n = n as u64;
        match direction {
            Direction::ToClient => {
                self.to_client.fetch_add(n, Ordering::Relaxed);
                self.exported.0.inc_by(n);
            }
            Direction::ToServer => {
                self.to_server.fetch_add(n, Ordering::Relaxed);
                self.exported.1.inc_by(n);
            }
        }
        self.touch();
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since either side last sent anything.
    pub fn idle_for(&self) -> Duration {
        let now = self.started.elapsed();
        now.saturating_sub(Duration::from_millis(
            self.last_activity_ms.load(Ordering::Relaxed),
        ))
    }

    /// (to client, to hypervisor) byte totals.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.to_client.load(Ordering::Relaxed),
            self.to_server.load(Ordering::Relaxed),
        )
    }
}

/// Why a relay ended. Every end that one side caused names that side; a failure keeps its
/// cause (the `io::Error` or framing error) for logs, while `Display` gives the words users
/// read in end reasons.
#[derive(Debug)]
pub enum RelayEnd {
    /// This side closed its connection (with or without a TLS `close_notify`) first.
    Closed(Side),
    /// No data in either direction for the idle timeout.
    Idle,
    /// Cancelled: terminated, or the process is stopping.
    Cancelled,
    /// A firewall rule closed the channel on a message from this side.
    Blocked {
        /// The rule.
        rule: Rule,
        /// Who sent the message.
        side: Side,
    },
    /// A read, write, flush or shutdown of this side's connection failed (socket or TLS).
    Io {
        /// Whose connection failed.
        side: Side,
        /// The error.
        error: io::Error,
    },
    /// This side's bytes are not valid SPICE framing.
    Framing {
        /// Who sent them.
        side: Side,
        /// What is wrong with them.
        error: FirewallError,
    },
    /// Kerbside's own bookkeeping failed during the relay (recording the hypervisor's session
    /// id at `MAIN_INIT`).
    Internal(ProxyError),
}

impl RelayEnd {
    /// The side that ended the relay, when one did (`Internal` for kerbside's own failures).
    pub fn side(&self) -> Option<Side> {
        match self {
            RelayEnd::Closed(side)
            | RelayEnd::Blocked { side, .. }
            | RelayEnd::Io { side, .. }
            | RelayEnd::Framing { side, .. } => Some(*side),
            RelayEnd::Internal(_) => Some(Side::Internal),
            RelayEnd::Idle | RelayEnd::Cancelled => None,
        }
    }

    /// The underlying error of a failure, for logs (its library details stay out of the end
    /// reason).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RelayEnd::Io { error, .. } => Some(error),
            RelayEnd::Framing { error, .. } => Some(error),
            RelayEnd::Internal(error) => Some(error),
            _ => None,
        }
    }
}

impl std::fmt::Display for RelayEnd {
    /// The end reason users read: words that name the side, never a library's error text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayEnd::Closed(Side::Client) => f.write_str("the client closed the connection"),
            RelayEnd::Closed(Side::Server) => f.write_str("the hypervisor closed the connection"),
            RelayEnd::Closed(Side::Internal) => f.write_str("kerbside closed the connection"),
            RelayEnd::Idle => f.write_str("idle timeout"),
            RelayEnd::Cancelled => f.write_str("cancelled"),
            RelayEnd::Blocked { rule, side } => write!(
                f,
                "the firewall closed the channel (rule {rule}) on a message from the {}",
                side.as_str()
            ),
            RelayEnd::Io {
                side: Side::Client,
                error,
            } => write!(f, "client connection failed: {}", io_words(error)),
            RelayEnd::Io {
                side: Side::Server,
                error,
            } => write!(f, "hypervisor connection failed: {}", io_words(error)),
            RelayEnd::Io {
                side: Side::Internal,
                error,
            } => write!(f, "kerbside's connection failed: {}", io_words(error)),
            RelayEnd::Framing { side, error } => {
                write!(f, "{} sent invalid framing: {error}", side.as_str())
            }
            RelayEnd::Internal(error) => error.fmt(f),
        }
    }
}

/// Time allowed for closing both legs cleanly once a relay ends.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The side a stream of the copy stands for.
fn side_of(peer: Peer) -> Side {
    match peer {
        Peer::A => Side::Client,
        Peer::B => Side::Server,
    }
}

/// Closes both legs of an ended relay: a TLS `close_notify` (then FIN) to each, then reads
/// and drops whatever the client still sends until it closes too, all within [`CLOSE_GRACE`].
///
/// Reading on is what lets the client see the `close_notify`: a socket closed with unread
/// bytes is answered by the kernel with a reset, which can overtake the alert.
///
/// # Cancel safety
/// Dropping the future drops nothing but time; the caller drops the streams.
async fn close_legs<C, U>(client: &mut C, upstream: &mut U)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = tokio::join!(client.shutdown(), upstream.shutdown());
        let mut scratch = [0u8; 1024];
        while let Ok(n) = client.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Counts the bytes read through a stream into one of the meter's counters.
struct Metered<'a, S> {
    inner: S,
    meter: &'a Meter,
    direction: Direction,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.meter.add(self.direction, read);
        }
        poll
    }
}

impl<S: RecordWrite + Unpin> RecordWrite for Metered<'_, S> {
    fn poll_write_record(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_record(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves when the channel has been idle for `limit` (never when `limit` is zero).
async fn idle_watch(meter: &Meter, limit: Duration) {
    if limit.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let idle = meter.idle_for();
        if idle >= limit {
            return;
        }
        tokio::time::sleep(limit.saturating_sub(idle).max(Duration::from_millis(100))).await;
    }
}

/// Relays one channel through its firewall filters, or opaquely (see the `copy` module),
/// until either side closes, a rule or malformed framing ends it, the channel idles out, or
/// `cancel` fires, then closes both legs cleanly. Returns how it ended and the merged firewall
/// summary.
#[expect(
    clippy::too_many_arguments,
    reason = "the relay needs each of these and nothing else"
)]
pub async fn relay_channel<C, U>(
    client: C,
    upstream: U,
    kind: HeaderKind,
    filtering: Filtering,
    hooks: FilterHooks<'_>,
    meter: Arc<Meter>,
    idle_timeout: Duration,
    cancel: CancellationToken,
) -> (RelayEnd, Summary)
where
    C: AsyncRead + RecordWrite + Unpin,
    U: AsyncRead + RecordWrite + Unpin,
{
    meter.touch();
    let mut client = Metered {
        inner: client,
        meter: &meter,
        direction: Direction::ToServer,
    };
    let mut upstream = Metered {
        inner: upstream,
        meter: &meter,
        direction: Direction::ToClient,
    };
    let (end, summary) = {
        let copy = copy_filtered(&mut client, &mut upstream, kind, filtering, hooks);
        tokio::pin!(copy);
        let mut summary = None;
        let end = tokio::select! {
            (result, s) = &mut copy => {
                summary = Some(s);
                match result {
                    Ok(CopyEnd::Eof(peer)) => RelayEnd::Closed(side_of(peer)),
                    Ok(CopyEnd::Closed(peer, rule)) => RelayEnd::Blocked { rule, side: side_of(peer) },
                    Err(CopyError::Io { peer, error }) => RelayEnd::Io { side: side_of(peer), error },
                    Err(CopyError::Framing(error)) => RelayEnd::Framing {
                        side: if error.blames_hypervisor() { Side::Server } else { Side::Client },
                        error,
                    },
                    Err(CopyError::Hook(error)) => RelayEnd::Internal(error),
                }
            },
            () = idle_watch(&meter, idle_timeout) => RelayEnd::Idle,
            () = cancel.cancelled() => RelayEnd::Cancelled,
        };
        (end, summary.unwrap_or_default())
    };
    close_legs(&mut client, &mut upstream).await;
    (end, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_name_their_side_and_keep_their_cause() {
        let reset = RelayEnd::Io {
            side: Side::Server,
            error: io::Error::from(io::ErrorKind::ConnectionReset),
        };
        assert_eq!(
            reset.to_string(),
            "hypervisor connection failed: connection reset"
        );
        assert_eq!(reset.side(), Some(Side::Server));
        let cause = reset.cause().and_then(|c| c.downcast_ref::<io::Error>());
        assert_eq!(
            cause.map(io::Error::kind),
            Some(io::ErrorKind::ConnectionReset)
        );
        // What tokio-rustls returns when a client vanishes without close_notify: the reason
        // has words, the cause keeps the library's text.
        let eof = RelayEnd::Io {
            side: Side::Client,
            error: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed connection without sending TLS close_notify: \
                 https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
            ),
        };
        assert_eq!(
            eof.to_string(),
            "client connection failed: connection closed unexpectedly"
        );
        assert!(
            eof.cause()
                .is_some_and(|c| c.to_string().contains("close_notify"))
        );
        assert_eq!(RelayEnd::Idle.side(), None);
        assert!(RelayEnd::Cancelled.cause().is_none());
        assert_eq!(
            RelayEnd::Closed(Side::Client).to_string(),
            "the client closed the connection"
        );
    }
}
