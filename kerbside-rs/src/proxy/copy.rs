//! Bidirectional copying of one SPICE channel through the firewall: every byte read is fed to
//! that direction's `kerbside_spice::firewall::DirectionFilter`, and what the filter says is
//! written, in order (passed bytes, firewall-made bytes, compensations for the other peer at
//! its next message boundary, the `MAIN_INIT` hook, a close). The copy holds no buffer while a
//! direction is idle, ends as soon as either side closes, and keeps TLS records towards the
//! client on SPICE message boundaries.
//!
//! It does not decide anything itself (the filters do), log end reasons or close legs (the
//! `relay` module does).
//!
//! `tokio::io::copy_bidirectional_with_sizes` gives each direction its own buffer for the
//! connection's lifetime, so every idle channel of every session costs two buffers. Here a
//! direction borrows a buffer from a per-thread free list only for the duration of a read
//! attempt: when the read is not ready the buffer goes straight back, and when bytes arrive it
//! is kept until they are written and then returned. Idle channels, the common case for
//! inputs, cursor, audio and USB, hold none; the free list keeps the memory of busy ones
//! reusable.
//!
//! Backpressure as in tokio's copy: a read only happens once the previous bytes are written,
//! and the writer is flushed whenever the reader has nothing more. A reader's end of stream
//! (including a TLS peer that closes without `close_notify`, which spice-gtk always does) shuts
//! the other side's writer down, and then the copy ends: SPICE channels never half-close, and
//! the caller must learn which side went first.
//!
//! Message boundaries: spice-gtk reads one message, then reads the next only while its
//! *socket* is readable; it never looks at what OpenSSL has already decrypted. So when the
//! last TLS record on the wire holds the end of one message and more bytes after it, those
//! bytes are stranded in OpenSSL's buffer until the peer happens to send again, which a
//! hypervisor with a static screen never does. Earlier records may hold many messages: while
//! a later record is on its way, spice-gtk keeps reading. So towards a spice-gtk client, the
//! bytes of each read are written in up to three pieces (rustls makes one or more records per
//! write, the last ending where the write ends): the messages up to the second-to-last message
//! end, the last complete message, and the start of an incomplete one. The pieces are sealed
//! into records without a socket write each ([`RecordWrite`]) and sent together when the copy
//! flushes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ProxyError;
use crate::spice::firewall::{
    Action, ChannelFilters, DirectionFilter, FirewallError, Injection, Output, Rule, Summary,
};
use crate::spice::{HeaderKind, parse_header};

/// Size of a relay buffer: one TLS record's worth of plaintext.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// Free buffers kept per runtime thread; more are freed.
const KEEP_PER_THREAD: usize = 256;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    FREE.with(|free| free.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

fn give_buffer(buffer: Box<[u8]>) {
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEEP_PER_THREAD {
            free.push(buffer);
        }
    });
}

/// Free buffers on this thread (tests).
#[cfg(test)]
fn free_buffers() -> usize {
    FREE.with(|free| free.borrow().len())
}

/// A writer whose writes can each end a TLS record without being sent at once.
///
/// Writing each message with its own `poll_write` gives it its own records, but tokio-rustls
/// then makes one socket write per message: 25 times slower for bursts of 100-byte messages.
/// `poll_write_record` only seals the bytes into records; they go out together, in vectored
/// writes, at the next flush (which the copy makes whenever its reader has nothing more) or
/// when the TLS buffer is full.
pub trait RecordWrite: AsyncWrite {
    /// Writes bytes that end a record: like `poll_write`, but they may wait for `poll_flush`.
    ///
    /// # Errors
    /// As `poll_write`.
    fn poll_write_record(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> RecordWrite for tokio_rustls::server::TlsStream<IO> {
    fn poll_write_record(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        use std::io::Write;
        let this = self.get_mut();
        loop {
            match this.get_mut().1.writer().write(buf) {
                // rustls's buffer of sealed records is full: send them, then try again.
                Ok(0) if !buf.is_empty() => ready!(Pin::new(&mut *this).poll_flush(cx))?,
                written => return Poll::Ready(written),
            }
        }
    }
}

/// A boxed stream (the proxy keeps each leg's TLS state on the heap, so that moving a leg
/// from the link stage into the relay moves a pointer).
impl<T: RecordWrite + Unpin + ?Sized> RecordWrite for Box<T> {
    fn poll_write_record(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self.get_mut()).poll_write_record(cx, buf)
    }
}

impl RecordWrite for tokio::io::DuplexStream {}
impl RecordWrite for tokio::net::TcpStream {}
impl<L: AsyncWrite, R: AsyncWrite> RecordWrite for tokio_util::either::Either<L, R> {}

/// Tracks SPICE message boundaries in one direction of a channel, so writes can stop at them.
#[derive(Clone, Copy, Debug)]
pub struct MessageCuts {
    kind: HeaderKind,
    /// Header bytes of the current message seen so far (when not in a body).
    header: [u8; 18],
    have: usize,
    /// Body bytes still to come; 0 when between messages or inside a header.
    body_left: u64,
}

impl MessageCuts {
    /// Boundaries of a stream that starts at a message start, with `kind` headers.
    pub fn new(kind: HeaderKind) -> Self {
        MessageCuts {
            kind,
            header: [0; 18],
            have: 0,
            body_left: 0,
        }
    }

    /// Takes in bytes up to and including the first message end in `data`: how many it took,
    /// and whether a message ended there.
    fn step(&mut self, data: &[u8]) -> (usize, bool) {
        let header_len = self.kind.len();
        let mut taken = 0;
        loop {
            let rest = data.get(taken..).unwrap_or_default();
            if self.body_left > 0 {
                let n = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                taken += n;
                self.body_left -= n as u64;
                return (taken, self.body_left == 0);
            }
            if rest.is_empty() {
                return (taken, false);
            }
            let n = (header_len - self.have).min(rest.len());
            if let (Some(slot), Some(bytes)) =
                (self.header.get_mut(self.have..self.have + n), rest.get(..n))
            {
                slot.copy_from_slice(bytes);
            }
            self.have += n;
            taken += n;
            if self.have < header_len {
                return (taken, false);
            }
            self.have = 0;
            let size = self
                .header
                .get(..header_len)
                .and_then(|h| parse_header(self.kind, h).ok())
                .map_or(0, |h| h.size);
            if size == 0 {
                return (taken, true);
            }
            self.body_left = u64::from(size);
        }
    }

    /// How much of `data` to write next, so that the last record of `data` holds exactly one
    /// message end: up to the second-to-last message end in `data` when there are two or more
    /// (those messages go out together), else up to the only one, else all of it.
    pub fn next_cut(&self, data: &[u8]) -> usize {
        let mut probe = *self;
        let mut at = 0;
        let (mut previous, mut last) = (None, None);
        while at < data.len() {
            let (taken, ended) = probe.step(data.get(at..).unwrap_or_default());
            if taken == 0 {
                break;
            }
            at += taken;
            if ended {
                previous = last;
                last = Some(at);
            }
        }
        previous.or(last).unwrap_or(data.len())
    }

    /// Records that `data` was written.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (taken, _) = self.step(data);
            if taken == 0 {
                return;
            }
            data = data.get(taken..).unwrap_or_default();
        }
    }
}

/// One of the two streams of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The first stream given to [`copy_filtered`]: the client.
    A,
    /// The second: the hypervisor.
    B,
}

/// Why a copy ended without an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyEnd {
    /// This stream reached end of stream first.
    Eof(Peer),
    /// A firewall rule closed the channel while reading from this stream.
    Closed(Peer, Rule),
}

/// A failed copy.
#[derive(Debug)]
pub enum CopyError {
    /// A read, write, flush or shutdown of this stream failed.
    Io {
        /// The stream that failed.
        peer: Peer,
        /// The error.
        error: io::Error,
    },
    /// A stream's bytes are not valid SPICE framing (the error names the sender).
    Framing(FirewallError),
    /// The `MAIN_INIT` hook failed.
    Hook(ProxyError),
}

/// A callback run when the hypervisor's `MAIN_INIT` arrives, with its session id, before the
/// rewritten message reaches the client (so other channels can be routed as soon as the
/// client learns the id).
pub type MainInitHook<'a> = Box<
    dyn FnOnce(u32) -> Pin<Box<dyn Future<Output = Result<(), ProxyError>> + Send + 'a>>
        + Send
        + 'a,
>;

/// What the firewall needs besides the filters: the verdict counter and the main hook.
pub struct FilterHooks<'h> {
    /// `kerbside_firewall_verdicts_total{channel,direction,rule,action}`.
    pub verdicts: IntCounterVec,
    /// Run at the hypervisor's `MAIN_INIT` (main channel only).
    pub on_main_init: Option<MainInitHook<'h>>,
}

/// Injections one direction may hold for the other before it stops reading (backpressure
/// on a sender whose messages keep being compensated while the other peer does not read).
const MAX_INBOX: usize = 256;

/// One thing to write, in order.
enum Piece<'h> {
    /// `buffer[from..to]` of the last read.
    Slice(usize, usize),
    /// Bytes the firewall made, and how many of them are written.
    Owned(Vec<u8>, usize),
    /// The `MAIN_INIT` hook, to finish before anything after it is written.
    Hook(Pin<Box<dyn Future<Output = Result<(), ProxyError>> + Send + 'h>>),
    /// A rule closed the channel: everything before is written, then the copy ends.
    Close(Rule),
}

/// Which operation of one direction failed.
enum Failure {
    Read(io::Error),
    Write(io::Error),
    Framing(FirewallError),
    Hook(ProxyError),
}

/// How one direction finished.
enum Finished {
    Eof,
    Closed(Rule),
}

/// How a copy treats a channel's bytes.
#[derive(Debug)]
pub enum Filtering {
    /// Both directions go through these firewall filters.
    Firewall(Box<ChannelFilters>),
    /// Bytes are copied as they are (`[firewall] mode = off` on channels whose fixed rules do
    /// not concern them). Writes towards the client still end at message boundaries.
    Opaque,
}

/// One direction of the copy with its firewall filter (`None`: opaque).
struct OneWay<'h> {
    filter: Option<DirectionFilter>,
    /// The last read's bytes, kept while slices of it are still to be written.
    buffer: Option<Box<[u8]>>,
    /// What to write, in order.
    queue: VecDeque<Piece<'h>>,
    /// Injections from the other direction, written to this direction's peer at the next
    /// message boundary.
    inbox: VecDeque<Injection>,
    read_done: bool,
    need_flush: bool,
    finished: Option<Finished>,
    /// Message boundaries to stop writes at, for a direction towards spice-gtk.
    cuts: Option<MessageCuts>,
    /// Run at `MainInit` (server to client on main).
    on_main_init: Option<MainInitHook<'h>>,
}

impl<'h> OneWay<'h> {
    fn new(filter: Option<DirectionFilter>) -> Self {
        OneWay {
            filter,
            buffer: None,
            queue: VecDeque::new(),
            inbox: VecDeque::new(),
            read_done: false,
            need_flush: false,
            finished: None,
            cuts: None,
            on_main_init: None,
        }
    }

    /// Turns the outputs of one read into pieces; injections go to `outbox`.
    fn take_outputs(
        &mut self,
        input: &[u8],
        outputs: Vec<Output<'_>>,
        outbox: &mut VecDeque<Injection>,
        verdicts: &IntCounterVec,
    ) {
        let base = input.as_ptr().addr();
        for output in outputs {
            match output {
                Output::Pass(bytes) => {
                    let from = bytes.as_ptr().addr().saturating_sub(base);
                    self.queue
                        .push_back(Piece::Slice(from, from.saturating_add(bytes.len())));
                }
                Output::Send(bytes) => self.queue.push_back(Piece::Owned(bytes, 0)),
                Output::Inject(injection) => outbox.push_back(injection),
                Output::MainInit {
                    upstream_session_id,
                } => {
                    if let Some(hook) = self.on_main_init.take() {
                        self.queue.push_back(Piece::Hook(hook(upstream_session_id)));
                    }
                }
                Output::Report(report) => {
                    verdicts
                        .with_label_values(&[
                            report.channel.name(),
                            report.direction.name(),
                            report.rule.name(),
                            report.action_label(),
                        ])
                        .inc();
                    if report.action == Action::Close {
                        tracing::info!(report = %report, "firewall rule hit");
                    } else {
                        tracing::debug!(report = %report, "firewall rule hit");
                    }
                }
                Output::Close(rule) => self.queue.push_back(Piece::Close(rule)),
                Output::Message {
                    msg_type,
                    name,
                    size,
                } => {
                    if let Some(filter) = &self.filter {
                        tracing::debug!(
                            channel.kind = filter.channel().name(),
                            direction = filter.direction().name(),
                            msg_type,
                            msg_name = name,
                            bytes = size,
                            "message"
                        );
                    }
                }
            }
        }
    }

    /// Writes `bytes` from `*pos` on, each write ending at the next cut when cutting.
    fn poll_write_bytes<W>(
        cuts: &mut Option<MessageCuts>,
        need_flush: &mut bool,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
        bytes: &[u8],
        pos: &mut usize,
    ) -> Poll<Result<(), Failure>>
    where
        W: RecordWrite + ?Sized,
    {
        while *pos < bytes.len() {
            let pending = bytes.get(*pos..).unwrap_or_default();
            let piece = match cuts {
                Some(cuts) => pending.get(..cuts.next_cut(pending)).unwrap_or(pending),
                None => pending,
            };
            let written = match cuts {
                Some(_) => writer.as_mut().poll_write_record(cx, piece),
                None => writer.as_mut().poll_write(cx, piece),
            };
            let n = ready!(written).map_err(Failure::Write)?;
            if n == 0 {
                return Poll::Ready(Err(Failure::Write(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the peer accepted no more bytes",
                ))));
            }
            if let Some(cuts) = cuts {
                cuts.advance(piece.get(..n).unwrap_or_default());
            }
            *pos += n;
            *need_flush = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the queue; `Ready(Ok(Some(rule)))` when a rule closed the channel.
    fn poll_drain<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut writer: Pin<&mut W>,
    ) -> Poll<Result<Option<Rule>, Failure>>
    where
        W: RecordWrite + ?Sized,
    {
        while let Some(piece) = self.queue.front_mut() {
            match piece {
                Piece::Slice(from, to) => {
                    let bytes = self
                        .buffer
                        .as_deref()
                        .and_then(|b| b.get(*from..*to))
                        .unwrap_or_default();
                    let mut pos = 0;
                    let poll = Self::poll_write_bytes(
                        &mut self.cuts,
                        &mut self.need_flush,
                        cx,
                        writer.as_mut(),
                        bytes,
                        &mut pos,
                    );
                    *from += pos;
                    ready!(poll)?;
                }
                Piece::Owned(bytes, pos) => {
                    ready!(Self::poll_write_bytes(
                        &mut self.cuts,
                        &mut self.need_flush,
                        cx,
                        writer.as_mut(),
                        bytes,
                        pos,
                    ))?;
                }
                Piece::Hook(future) => ready!(future.as_mut().poll(cx)).map_err(Failure::Hook)?,
                Piece::Close(rule) => {
                    let rule = *rule;
                    ready!(writer.as_mut().poll_flush(cx)).map_err(Failure::Write)?;
                    self.queue.clear();
                    return Poll::Ready(Ok(Some(rule)));
                }
            }
            self.queue.pop_front();
        }
        Poll::Ready(Ok(None))
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        outbox: &mut VecDeque<Injection>,
        verdicts: &IntCounterVec,
        now: Duration,
    ) -> Poll<Result<(), Failure>>
    where
        R: AsyncRead + ?Sized,
        W: RecordWrite + ?Sized,
    {
        if self.finished.is_some() {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(rule) = ready!(self.poll_drain(cx, writer.as_mut()))? {
                self.finished = Some(Finished::Closed(rule));
                return Poll::Ready(Ok(()));
            }
            if let Some(buffer) = self.buffer.take() {
                give_buffer(buffer);
            }
            // Compensations for this peer go in between two messages of this stream (only
            // filtered directions get any).
            if !self.inbox.is_empty()
                && let Some(filter) = &mut self.filter
                && filter.at_boundary()
            {
                while let Some(injection) = self.inbox.pop_front() {
                    let bytes = filter.encode_injection(&injection);
                    self.queue.push_back(Piece::Owned(bytes, 0));
                }
                continue;
            }
            if self.read_done {
                if let Some(Err(error)) = self.filter.as_ref().map(DirectionFilter::finish) {
                    tracing::debug!(error = %error, "stream ended inside a message");
                }
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(Failure::Write)?;
                self.finished = Some(Finished::Eof);
                return Poll::Ready(Ok(()));
            }
            if outbox.len() >= MAX_INBOX {
                // The other direction wakes this copy when its peer takes bytes again.
                return Poll::Pending;
            }
            let mut buffer = take_buffer();
            let mut read = ReadBuf::new(&mut buffer);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    give_buffer(buffer);
                    if self.need_flush {
                        ready!(writer.as_mut().poll_flush(cx)).map_err(Failure::Write)?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
                // A TLS peer that closes without close_notify has still closed.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    give_buffer(buffer);
                    self.read_done = true;
                }
                Poll::Ready(Err(e)) => {
                    give_buffer(buffer);
                    return Poll::Ready(Err(Failure::Read(e)));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.read_done = true;
                        give_buffer(buffer);
                    } else if let Some(filter) = &mut self.filter {
                        let input = buffer.get(..n).unwrap_or_default();
                        let mut outputs = Vec::new();
                        if let Err(error) = filter.feed(input, now, &mut outputs) {
                            give_buffer(buffer);
                            return Poll::Ready(Err(Failure::Framing(error)));
                        }
                        self.take_outputs(input, outputs, outbox, verdicts);
                        self.buffer = Some(buffer);
                    } else {
                        self.queue.push_back(Piece::Slice(0, n));
                        self.buffer = Some(buffer);
                    }
                }
            }
        }
    }
}

impl Drop for OneWay<'_> {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_buffer(buffer);
        }
    }
}

/// The summaries of both directions of a finished copy (empty for an opaque one).
fn merged_summary(a_to_b: Option<&DirectionFilter>, b_to_a: Option<&DirectionFilter>) -> Summary {
    let mut summary = Summary::default();
    for filter in [a_to_b, b_to_a].into_iter().flatten() {
        summary.merge(filter.summary());
    }
    summary
}

/// Copies client `a` to hypervisor `b` through `filters.client_to_server` and `b` to `a`
/// through `filters.server_to_client` (or as they are, when `filtering` is
/// [`Filtering::Opaque`]), writing what the filters say, until either stream
/// reaches end of stream (its bytes are then all written to the other, whose writer is shut
/// down), a rule closes the channel, or something fails. Every write to `a` ends at the next
/// message boundary of `kind` headers (see the module documentation).
///
/// Returns how it ended and the merged firewall summary of both directions.
///
/// # Cancel safety
/// Dropping the future loses bytes read and not yet written.
pub async fn copy_filtered<A, B>(
    a: &mut A,
    b: &mut B,
    kind: HeaderKind,
    filtering: Filtering,
    hooks: FilterHooks<'_>,
) -> (Result<CopyEnd, CopyError>, Summary)
where
    A: AsyncRead + RecordWrite + Unpin + ?Sized,
    B: AsyncRead + RecordWrite + Unpin + ?Sized,
{
    let (client_to_server, server_to_client) = match filtering {
        Filtering::Firewall(filters) => {
            let ChannelFilters {
                client_to_server,
                server_to_client,
            } = *filters;
            (Some(client_to_server), Some(server_to_client))
        }
        Filtering::Opaque => (None, None),
    };
    let FilterHooks {
        verdicts,
        on_main_init,
    } = hooks;
    let mut a_to_b = OneWay::new(client_to_server);
    let mut b_to_a = OneWay::new(server_to_client);
    b_to_a.cuts = Some(MessageCuts::new(kind));
    b_to_a.on_main_init = on_main_init;
    let started = tokio::time::Instant::now();
    let result = poll_fn(|cx| {
        let now = started.elapsed();
        // A direction's injections land in the other's inbox, so run both again while one
        // just handed the other something to write.
        for _ in 0..3 {
            let (a_inbox, b_inbox) = (a_to_b.inbox.len(), b_to_a.inbox.len());
            let forward = a_to_b
                .poll_copy(
                    cx,
                    Pin::new(&mut *a),
                    Pin::new(&mut *b),
                    &mut b_to_a.inbox,
                    &verdicts,
                    now,
                )
                .map_err(|f| failure(f, Peer::A))?;
            if forward.is_ready() {
                return Poll::Ready(Ok(end_of(&a_to_b, Peer::A)));
            }
            let backward = b_to_a
                .poll_copy(
                    cx,
                    Pin::new(&mut *b),
                    Pin::new(&mut *a),
                    &mut a_to_b.inbox,
                    &verdicts,
                    now,
                )
                .map_err(|f| failure(f, Peer::B))?;
            if backward.is_ready() {
                return Poll::Ready(Ok(end_of(&b_to_a, Peer::B)));
            }
            if a_to_b.inbox.len() <= a_inbox && b_to_a.inbox.len() == b_inbox {
                break;
            }
        }
        Poll::Pending
    })
    .await;
    (
        result,
        merged_summary(a_to_b.filter.as_ref(), b_to_a.filter.as_ref()),
    )
}

/// How a finished direction reading from `reader` ended.
fn end_of(direction: &OneWay<'_>, reader: Peer) -> CopyEnd {
    match direction.finished {
        Some(Finished::Closed(rule)) => CopyEnd::Closed(reader, rule),
        _ => CopyEnd::Eof(reader),
    }
}

/// The error of a direction reading from `reader`.
fn failure(failure: Failure, reader: Peer) -> CopyError {
    let other = match reader {
        Peer::A => Peer::B,
        Peer::B => Peer::A,
    };
    match failure {
        Failure::Read(error) => CopyError::Io {
            peer: reader,
            error,
        },
        Failure::Write(error) => CopyError::Io { peer: other, error },
        Failure::Framing(error) => CopyError::Framing(error),
        Failure::Hook(error) => CopyError::Hook(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::spice::ChannelType;
    use crate::spice::firewall::{Mode, Profile};

    fn counter() -> IntCounterVec {
        IntCounterVec::new(
            prometheus::Opts::new("verdicts", "test"),
            &["channel", "direction", "rule", "action"],
        )
        .unwrap()
    }

    fn hooks(verdicts: &IntCounterVec) -> FilterHooks<'static> {
        FilterHooks {
            verdicts: verdicts.clone(),
            on_main_init: None,
        }
    }

    fn filters(channel: ChannelType, mode: Mode) -> Filtering {
        Filtering::Firewall(Box::new(ChannelFilters::new(
            Arc::new(Profile::default_profile()),
            mode,
            channel,
            HeaderKind::Mini,
        )))
    }

    /// SPICE_MSGC_ACK (empty body), valid client to server on every channel.
    fn ack() -> Vec<u8> {
        mini(2, 0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn copies_both_ways_and_ends_when_one_side_closes() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_server, mut server) = tokio::io::duplex(1024);
        let verdicts = counter();
        let v = verdicts.clone();
        let relay = tokio::spawn(async move {
            let f = filters(ChannelType::Display, Mode::Enforce);
            copy_filtered(
                &mut proxy_client,
                &mut proxy_server,
                HeaderKind::Mini,
                f,
                hooks(&v),
            )
            .await
        });

        // More than the duplex capacity and more than one buffer, so backpressure is exercised.
        let big: Vec<u8> = (0..5).flat_map(|i| mini(302 + i, 40_000)).collect();
        let sent = big.clone();
        let reply = tokio::spawn(async move {
            let mut got = vec![0u8; ack().len()];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&sent).await.unwrap();
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            (got, rest)
        });
        client.write_all(&ack()).await.unwrap();
        let mut back = vec![0u8; big.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, big);
        let more: Vec<u8> = (0..1000).flat_map(|_| ack()).collect();
        client.write_all(&more).await.unwrap();
        client.shutdown().await.unwrap();
        let (got, rest) = reply.await.unwrap();
        assert_eq!(got, ack());
        // Everything written before the close arrives, then end of stream.
        assert_eq!(rest, more);
        let (end, summary) = relay.await.unwrap();
        assert_eq!(end.unwrap(), CopyEnd::Eof(Peer::A));
        assert_eq!(summary.messages, 1006);
        assert!(!summary.any_hits());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unknown_client_messages_are_dropped_in_enforce_and_passed_in_warn() {
        for (mode, expect_passed, action) in [
            (Mode::Enforce, false, "drop"),
            (Mode::Warn, true, "warn_drop"),
        ] {
            let (mut client, mut proxy_client) = tokio::io::duplex(1024);
            let (mut proxy_server, mut server) = tokio::io::duplex(1024);
            let verdicts = counter();
            let v = verdicts.clone();
            let relay = tokio::spawn(async move {
                let f = filters(ChannelType::Inputs, mode);
                copy_filtered(
                    &mut proxy_client,
                    &mut proxy_server,
                    HeaderKind::Mini,
                    f,
                    hooks(&v),
                )
                .await
            });
            let hostile = mini(9999, 10);
            client
                .write_all(&[hostile.clone(), ack()].concat())
                .await
                .unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            let expected = if expect_passed {
                [hostile.clone(), ack()].concat()
            } else {
                ack()
            };
            assert_eq!(got, expected, "{mode:?}");
            let (end, summary) = relay.await.unwrap();
            assert_eq!(end.unwrap(), CopyEnd::Eof(Peer::A));
            assert!(summary.any_hits());
            assert_eq!(
                verdicts
                    .with_label_values(&["inputs", "client_to_server", "unknown_type", action])
                    .get(),
                1,
                "{mode:?}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_side_that_closes_first_is_reported() {
        let (client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_server, mut server) = tokio::io::duplex(1024);
        let verdicts = counter();
        let relay = tokio::spawn(async move {
            let f = filters(ChannelType::Cursor, Mode::Enforce);
            copy_filtered(
                &mut proxy_client,
                &mut proxy_server,
                HeaderKind::Mini,
                f,
                hooks(&verdicts),
            )
            .await
        });
        server.write_all(&mini(101, 3)).await.unwrap();
        server.shutdown().await.unwrap();
        // The client is still open: the copy ends anyway, naming the server.
        assert_eq!(relay.await.unwrap().0.unwrap(), CopyEnd::Eof(Peer::B));
        drop(client);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_directions_hold_no_buffer() {
        let (mut client, mut proxy_client) = tokio::io::duplex(64 * 1024);
        let (mut proxy_server, mut server) = tokio::io::duplex(64 * 1024);
        let before = free_buffers();
        let verdicts = counter();
        let relay = tokio::spawn(async move {
            let f = filters(ChannelType::Display, Mode::Enforce);
            copy_filtered(
                &mut proxy_client,
                &mut proxy_server,
                HeaderKind::Mini,
                f,
                hooks(&verdicts),
            )
            .await
        });
        client.write_all(&ack()).await.unwrap();
        let mut got = vec![0u8; ack().len()];
        server.read_exact(&mut got).await.unwrap();
        tokio::task::yield_now().await;
        // Both directions are idle now: every buffer they used is back on the free list.
        let after = free_buffers();
        assert!(after > before, "{before} -> {after}");
        assert!(after <= before + 2);
        drop(client);
        drop(server);
        relay.await.unwrap().0.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn oversized_client_messages_are_skipped_without_buffering_them() {
        let (mut client, mut proxy_client) = tokio::io::duplex(4096);
        let (mut proxy_server, mut server) = tokio::io::duplex(4096);
        let verdicts = counter();
        let v = verdicts.clone();
        let relay = tokio::spawn(async move {
            let f = filters(ChannelType::Inputs, Mode::Enforce);
            copy_filtered(
                &mut proxy_client,
                &mut proxy_server,
                HeaderKind::Mini,
                f,
                hooks(&v),
            )
            .await
        });
        // INPUTS_KEY_DOWN is 4 bytes; this one is 1 MiB, far more than the duplex holds.
        let huge = mini(101, 1 << 20);
        let writer = tokio::spawn(async move {
            client.write_all(&[huge, ack()].concat()).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, ack());
        let (end, summary) = relay.await.unwrap();
        assert_eq!(end.unwrap(), CopyEnd::Eof(Peer::A));
        assert_eq!(summary.dropped, 1);
        assert_eq!(
            verdicts
                .with_label_values(&["inputs", "client_to_server", "oversize", "drop"])
                .get(),
            1
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_framing_blames_its_sender() {
        let (_client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_server, mut server) = tokio::io::duplex(1024);
        let verdicts = counter();
        let relay = tokio::spawn(async move {
            let f = Filtering::Firewall(Box::new(ChannelFilters::new(
                Arc::new(Profile::default_profile()),
                Mode::Enforce,
                ChannelType::Display,
                HeaderKind::Full,
            )));
            copy_filtered(
                &mut proxy_client,
                &mut proxy_server,
                HeaderKind::Full,
                f,
                hooks(&verdicts),
            )
            .await
        });
        // A full header whose sub-message list lies outside its 4-byte body.
        let mut bad = Vec::new();
        bad.extend_from_slice(&1u64.to_le_bytes());
        bad.extend_from_slice(&302u16.to_le_bytes());
        bad.extend_from_slice(&4u32.to_le_bytes());
        bad.extend_from_slice(&1000u32.to_le_bytes());
        bad.extend_from_slice(&[0; 4]);
        server.write_all(&bad).await.unwrap();
        match relay.await.unwrap().0 {
            Err(CopyError::Framing(e)) => assert!(e.blames_hypervisor()),
            Ok(end) => panic!("not a framing error: {end:?}"),
            Err(CopyError::Io { error, .. }) => panic!("I/O error: {error}"),
            Err(CopyError::Hook(e)) => panic!("hook: {e}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_opaque_copy_passes_every_byte_and_still_cuts_towards_the_client() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_server, mut server) = tokio::io::duplex(1024);
        let verdicts = counter();
        let v = verdicts.clone();
        let relay = tokio::spawn(async move {
            copy_filtered(
                &mut proxy_client,
                &mut proxy_server,
                HeaderKind::Mini,
                Filtering::Opaque,
                hooks(&v),
            )
            .await
        });
        // What the firewall would drop (an unknown type, an oversized KEY_DOWN) goes through.
        let hostile = [mini(9999, 10), mini(101, 4096), ack()].concat();
        let sent = hostile.clone();
        let server_side = tokio::spawn(async move {
            let mut got = vec![0u8; sent.len()];
            server.read_exact(&mut got).await.unwrap();
            let burst: Vec<u8> = (0..3).flat_map(|i| mini(302 + i, 30_000)).collect();
            server.write_all(&burst).await.unwrap();
            server.shutdown().await.unwrap();
            (got, burst)
        });
        client.write_all(&hostile).await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        let (got, burst) = server_side.await.unwrap();
        assert_eq!(got, hostile);
        assert_eq!(back, burst);
        let (end, summary) = relay.await.unwrap();
        assert_eq!(end.unwrap(), CopyEnd::Eof(Peer::B));
        assert_eq!(summary, Summary::default());
        assert!(
            prometheus::core::Collector::collect(&verdicts)
                .iter()
                .all(|f| f.get_metric().is_empty())
        );

        // Towards the client, writes still stop at message ends.
        let (mut hypervisor, mut upstream) = tokio::io::duplex(1 << 20);
        let burst = [mini(314, 20), mini(317, 32), mini(302, 41), mini(102, 0)].concat();
        hypervisor.write_all(&burst).await.unwrap();
        drop(hypervisor);
        let mut stub = Stub { writes: Vec::new() };
        let verdicts = counter();
        let (end, _) = copy_filtered(
            &mut stub,
            &mut upstream,
            HeaderKind::Mini,
            Filtering::Opaque,
            hooks(&verdicts),
        )
        .await;
        assert_eq!(end.unwrap(), CopyEnd::Eof(Peer::B));
        let ends: Vec<usize> = stub
            .writes
            .iter()
            .scan(0, |at, n| {
                *at += n;
                Some(*at)
            })
            .collect();
        assert!(ends.contains(&111), "no write ended at 111: {ends:?}");
    }

    /// A mini-header message of `size` body bytes.
    fn mini(msg_type: u16, size: usize) -> Vec<u8> {
        crate::spice::encode_message(HeaderKind::Mini, 0, msg_type, &vec![0xa5; size])
    }

    #[test]
    fn the_last_record_of_every_read_holds_one_message_end() {
        for kind in [HeaderKind::Mini, HeaderKind::Full] {
            let messages: Vec<Vec<u8>> = [0usize, 5, 1, 40_000, 0, 13, 2, 2]
                .iter()
                .enumerate()
                .map(|(i, size)| {
                    crate::spice::encode_message(kind, i as u64 + 1, 300, &vec![7; *size])
                })
                .collect();
            let stream: Vec<u8> = messages.concat();
            let mut ends = Vec::new();
            let mut at = 0;
            for m in &messages {
                at += m.len();
                ends.push(at);
            }
            // Feed the stream in reads of every awkward size, cutting as the copy does.
            for chunk in [1usize, 2, 5, 6, 17, 18, 19, 4096, 100_000] {
                let mut cuts = MessageCuts::new(kind);
                let mut start = 0;
                for piece in stream.chunks(chunk) {
                    let mut writes = Vec::new();
                    let mut rest = piece;
                    let mut at = start;
                    while !rest.is_empty() {
                        let n = cuts.next_cut(rest);
                        assert!(n > 0);
                        cuts.advance(&rest[..n]);
                        writes.push((at, at + n));
                        at += n;
                        rest = &rest[n..];
                    }
                    // The last write holding a message end holds only that one, and ends
                    // there; what follows holds none.
                    let ends_in = |(from, to): (usize, usize)| {
                        ends.iter().filter(|e| **e > from && **e <= to).count()
                    };
                    if let Some(last) = writes.iter().rposition(|w| ends_in(*w) > 0) {
                        assert_eq!(ends_in(writes[last]), 1, "{kind:?} chunk {chunk}");
                        assert!(ends.contains(&writes[last].1), "{kind:?} chunk {chunk}");
                        assert!(writes[last + 1..].iter().all(|w| ends_in(*w) == 0));
                    }
                    assert!(writes.len() <= 3, "{kind:?} chunk {chunk}: {writes:?}");
                    start = at;
                }
            }
        }
    }

    /// A stream that records the size of every write; reads never complete.
    struct Stub {
        writes: Vec<usize>,
    }

    impl AsyncRead for Stub {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Stub {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            // Take at most 7 bytes at a time, so partial writes happen mid-message.
            let n = buf.len().min(7);
            self.writes.push(n);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl RecordWrite for Stub {}

    #[tokio::test(flavor = "current_thread")]
    async fn writes_towards_a_stop_at_message_ends() {
        let (mut hypervisor, mut upstream) = tokio::io::duplex(1 << 20);
        let burst = [mini(314, 20), mini(317, 32), mini(302, 41), mini(102, 0)].concat();
        hypervisor.write_all(&burst).await.unwrap();
        drop(hypervisor);
        let mut client = Stub { writes: Vec::new() };
        let verdicts = counter();
        let f = filters(ChannelType::Display, Mode::Enforce);
        let (end, _) = copy_filtered(
            &mut client,
            &mut upstream,
            HeaderKind::Mini,
            f,
            hooks(&verdicts),
        )
        .await;
        assert_eq!(end.unwrap(), CopyEnd::Eof(Peer::B));
        // Message ends at 26, 64, 111, 117: the last message goes in a write of its own
        // (7-byte partial writes in between are fine), so the last record holds one end.
        let mut at = 0;
        let mut ends = Vec::new();
        for n in &client.writes {
            at += n;
            ends.push(at);
        }
        assert_eq!(at, burst.len());
        assert!(ends.contains(&111), "no write ended at 111: {ends:?}");
    }
}
