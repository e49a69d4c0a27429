//! Relaying a linked channel between client and hypervisor.
//!
//! Most channels are copied as opaque bytes with bounded buffers, backpressure (each write
//! completes before the next read) and half-close. Only the main channel is framed, because the
//! proxy must see two kinds of message there: `MAIN_INIT`, whose session id is replaced by the
//! proxy's own connection id, and the migration messages that carry hypervisor addresses, which
//! are replaced one for one by an empty message list (so the client's message count, which ACKs
//! and serials depend on, stays right) and answered upstream so the hypervisor does not wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{ProxyError, Side};
use crate::spice::consts::{
    MSG_MAIN_INIT, MSG_MAIN_MIGRATE_BEGIN, MSG_MAIN_MIGRATE_BEGIN_SEAMLESS,
    MSGC_MAIN_MIGRATE_CONNECT_ERROR,
};
use crate::spice::{
    ChannelType, Framer, HeaderKind, encode_client_message, is_migration_message, noop_message,
    set_main_init_session_id,
};

/// Largest main-channel message body either side may send through the proxy. spice-gtk and
/// spice-server chunk agent data at 2 KiB; anything near this limit is hostile.
pub const MAIN_MAX_BODY: u32 = 1024 * 1024;

/// Initial buffer size for the framed main channel, which carries small messages (agent data
/// comes in 2 KiB chunks). A buffer that grew for a large message is given back once empty.
const MAIN_BUFFER: usize = 4 * 1024;

/// Largest buffer capacity the main channel keeps once its buffer is empty.
const MAIN_BUFFER_KEEP: usize = 16 * 1024;

/// Replaces an empty buffer that grew past [`MAIN_BUFFER_KEEP`] with a fresh small one.
fn shrink_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > MAIN_BUFFER_KEEP {
        *buf = Vec::with_capacity(MAIN_BUFFER);
    }
}

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

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached end of stream (or the client closed).
    Closed(Side),
    /// No data in either direction for the idle timeout.
    Idle,
    /// Cancelled: terminated, or the process is stopping.
    Cancelled,
    /// A socket or framing error.
    Failed(ProxyError),
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

/// Copies an opaque channel both ways until both sides close, the channel idles out, or
/// `cancel` fires.
pub async fn relay_opaque<C, U>(
    client: C,
    upstream: U,
    meter: Arc<Meter>,
    idle_timeout: Duration,
    cancel: CancellationToken,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
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
    let copy = super::copy::copy_bidirectional(&mut client, &mut upstream);
    tokio::select! {
        result = copy => match result {
            Ok(_) => RelayEnd::Closed(Side::Client),
            Err(e) => RelayEnd::Failed(ProxyError::ClientIo(e)),
        },
        () = idle_watch(&meter, idle_timeout) => RelayEnd::Idle,
        () = cancel.cancelled() => RelayEnd::Cancelled,
    }
}

/// A callback run when the hypervisor's `MAIN_INIT` arrives, with its session id, before the
/// rewritten message reaches the client (so other channels can be routed as soon as the
/// client learns the id).
pub type MainInitHook<'a> = Box<
    dyn FnOnce(u32) -> Pin<Box<dyn Future<Output = Result<(), ProxyError>> + Send + 'a>>
        + Send
        + 'a,
>;

/// Relays the main channel with the framing described in the module documentation.
#[expect(
    clippy::too_many_arguments,
    reason = "the relay needs each of these and nothing else"
)]
pub async fn relay_main<C, U>(
    client: C,
    upstream: U,
    kind: HeaderKind,
    proxy_connection_id: u32,
    on_init: MainInitHook<'_>,
    meter: Arc<Meter>,
    idle_timeout: Duration,
    cancel: CancellationToken,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    meter.touch();
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    let framer = Framer::new(kind, MAIN_MAX_BODY);
    // Messages the proxy sends the hypervisor on the client's behalf.
    let (inject_tx, inject_rx) = mpsc::channel::<Vec<u8>>(8);

    let down = server_to_client(
        &mut up_rd,
        &mut client_wr,
        framer,
        proxy_connection_id,
        on_init,
        inject_tx,
        &meter,
    );
    let up = client_to_server(&mut client_rd, &mut up_wr, framer, inject_rx, &meter);
    tokio::select! {
        end = down => end,
        end = up => end,
        () = idle_watch(&meter, idle_timeout) => RelayEnd::Idle,
        () = cancel.cancelled() => RelayEnd::Cancelled,
    }
}

async fn server_to_client<R, W>(
    upstream: &mut R,
    client: &mut W,
    framer: Framer,
    proxy_connection_id: u32,
    on_init: MainInitHook<'_>,
    inject: mpsc::Sender<Vec<u8>>,
    meter: &Meter,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut on_init = Some(on_init);
    let mut buf: Vec<u8> = Vec::with_capacity(MAIN_BUFFER);
    let mut out: Vec<u8> = Vec::with_capacity(MAIN_BUFFER);
    loop {
        match upstream.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = client.shutdown().await;
                return RelayEnd::Closed(Side::Server);
            }
            Ok(n) => meter.add(Direction::ToClient, n),
            Err(e) => {
                return RelayEnd::Failed(ProxyError::HypervisorProtocol {
                    addr: String::new(),
                    reason: format!("read failed: {e}"),
                });
            }
        }
        let mut frames = framer.frames(&buf);
        for frame in frames.by_ref() {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    return RelayEnd::Failed(ProxyError::Framing {
                        side: Side::Server,
                        error,
                    });
                }
            };
            let msg_type = frame.header.msg_type;
            if msg_type == MSG_MAIN_INIT && on_init.is_some() {
                let start = out.len();
                out.extend_from_slice(frame.bytes);
                let body = out.get_mut(start + frame.header_len..).unwrap_or_default();
                let upstream_id = crate::spice::main_init_session_id(body);
                if let (Some(upstream_id), Some(hook)) = (upstream_id, on_init.take()) {
                    if let Err(e) = hook(upstream_id).await {
                        return RelayEnd::Failed(e);
                    }
                    set_main_init_session_id(body, proxy_connection_id);
                }
                continue;
            }
            if is_migration_message(ChannelType::Main, msg_type) {
                // Never let a client learn (or be sent to) a hypervisor address. The client's
                // migration state machine never starts, so the address-free follow-ups are
                // replaced too.
                tracing::warn!(
                    msg_type,
                    "hypervisor sent a migration message: not forwarded to the client"
                );
                out.extend_from_slice(&noop_message(framer.kind, frame.header.serial));
                if matches!(
                    msg_type,
                    MSG_MAIN_MIGRATE_BEGIN | MSG_MAIN_MIGRATE_BEGIN_SEAMLESS
                ) {
                    // The hypervisor waits up to 10 s for an answer: say now that the client
                    // cannot follow.
                    let reply =
                        encode_client_message(framer.kind, 0, MSGC_MAIN_MIGRATE_CONNECT_ERROR, &[]);
                    let _ = inject.try_send(reply);
                }
                continue;
            }
            out.extend_from_slice(frame.bytes);
        }
        let consumed = frames.consumed();
        buf.drain(..consumed);
        shrink_if_empty(&mut buf);
        if !out.is_empty() {
            if let Err(e) = client.write_all(&out).await {
                return RelayEnd::Failed(ProxyError::ClientIo(e));
            }
            out.clear();
            shrink_if_empty(&mut out);
        }
    }
}

async fn client_to_server<R, W>(
    client: &mut R,
    upstream: &mut W,
    framer: Framer,
    mut inject: mpsc::Receiver<Vec<u8>>,
    meter: &Meter,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(MAIN_BUFFER);
    loop {
        tokio::select! {
            // Only whole client messages are ever written upstream, so an injected message
            // always lands on a message boundary.
            Some(message) = inject.recv() => {
                if let Err(e) = upstream.write_all(&message).await {
                    return RelayEnd::Failed(ProxyError::HypervisorProtocol { addr: String::new(), reason: format!("write failed: {e}") });
                }
            }
            read = client.read_buf(&mut buf) => {
                match read {
                    Ok(0) => {
                        let _ = upstream.shutdown().await;
                        return RelayEnd::Closed(Side::Client);
                    }
                    Ok(n) => meter.add(Direction::ToServer, n),
                    Err(e) => return RelayEnd::Failed(ProxyError::ClientIo(e)),
                }
                let mut whole = 0;
                let mut frames = framer.frames(&buf);
                for frame in frames.by_ref() {
                    if let Err(error) = frame {
                        return RelayEnd::Failed(ProxyError::Framing { side: Side::Client, error });
                    }
                }
                whole += frames.consumed();
                if whole > 0 {
                    if let Err(e) = upstream.write_all(buf.get(..whole).unwrap_or_default()).await {
                        return RelayEnd::Failed(ProxyError::HypervisorProtocol { addr: String::new(), reason: format!("write failed: {e}") });
                    }
                    buf.drain(..whole);
                    shrink_if_empty(&mut buf);
                }
            }
        }
    }
}
