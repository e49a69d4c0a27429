//! Bidirectional copying that holds no buffer while a direction is idle.
//!
//! `tokio::io::copy_bidirectional_with_sizes` gives each direction its own buffer for the
//! connection's lifetime, so every idle channel of every session costs two buffers. Here a
//! direction borrows a buffer from a per-thread free list only for the duration of a read
//! attempt: when the read is not ready the buffer goes straight back, and when bytes arrive it
//! is kept until they are written and then returned. Idle channels, the common case for
//! inputs, cursor, audio and USB, hold none; the free list keeps the memory of busy ones
//! reusable.
//!
//! The semantics match tokio's: backpressure (a read only happens once the previous bytes are
//! written), the writer is flushed whenever the reader has nothing more, a reader's end of
//! stream shuts the other side's writer down, and the copy ends when both directions have.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// One direction of the copy.
#[derive(Default)]
struct OneWay {
    /// Bytes read and not yet written: `buffer[pos..end]`.
    buffer: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    read_done: bool,
    need_flush: bool,
    finished: bool,
}

impl OneWay {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.end && !self.read_done {
                let mut buffer = self.buffer.take().unwrap_or_else(take_buffer);
                let mut read = ReadBuf::new(&mut buffer);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Pending => {
                        give_buffer(buffer);
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        give_buffer(buffer);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            give_buffer(buffer);
                        } else {
                            self.pos = 0;
                            self.end = n;
                            self.buffer = Some(buffer);
                        }
                    }
                }
            }
            while self.pos < self.end {
                let pending = self
                    .buffer
                    .as_deref()
                    .and_then(|b| b.get(self.pos..self.end))
                    .unwrap_or_default();
                let n = ready!(writer.as_mut().poll_write(cx, pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the peer accepted no more bytes",
                    )));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if let Some(buffer) = self.buffer.take() {
                give_buffer(buffer);
            }
            if self.read_done {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl Drop for OneWay {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_buffer(buffer);
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both reach end of stream (or either fails).
///
/// # Errors
/// The first I/O error of either side.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = OneWay::default();
    let mut b_to_a = OneWay::default();
    poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let backward = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (forward, backward) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread")]
    async fn copies_both_ways_and_propagates_end_of_stream() {
        let (mut client, mut proxy_client) = tokio::io::duplex(1024);
        let (mut proxy_server, mut server) = tokio::io::duplex(1024);
        let relay =
            tokio::spawn(
                async move { copy_bidirectional(&mut proxy_client, &mut proxy_server).await },
            );

        // More than the duplex capacity and more than one buffer, so backpressure is exercised.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, big);
        // Half-closed: the other direction still flows.
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
        relay.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_directions_hold_no_buffer() {
        let (mut client, mut proxy_client) = tokio::io::duplex(64 * 1024);
        let (mut proxy_server, mut server) = tokio::io::duplex(64 * 1024);
        let before = free_buffers();
        let relay =
            tokio::spawn(
                async move { copy_bidirectional(&mut proxy_client, &mut proxy_server).await },
            );
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        tokio::task::yield_now().await;
        // Both directions are idle now: every buffer they used is back on the free list.
        let after = free_buffers();
        assert!(after > before, "{before} -> {after}");
        assert!(after <= before + 2);
        drop(client);
        drop(server);
        relay.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reports_errors() {
        /// A peer that accepts no bytes; its reads fail when `read_fails`, else never complete.
        struct Stub {
            read_fails: bool,
        }
        impl AsyncRead for Stub {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if self.read_fails {
                    Poll::Ready(Err(io::Error::other("reset")))
                } else {
                    Poll::Pending
                }
            }
        }
        impl AsyncWrite for Stub {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(0))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }

        // A read error on either side ends the copy with that error.
        let (mut a, _peer) = tokio::io::duplex(64);
        let mut broken = Stub { read_fails: true };
        let err = copy_bidirectional(&mut a, &mut broken).await.unwrap_err();
        assert_eq!(err.to_string(), "reset");

        // A writer that takes nothing is an error, not a busy loop.
        let (mut a, mut peer) = tokio::io::duplex(64);
        peer.write_all(b"x").await.unwrap();
        let mut full = Stub { read_fails: false };
        let err = copy_bidirectional(&mut a, &mut full).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }
}
