//! The pool of one-time RSA keys for the link stage.
//!
//! RSA-1024 key generation costs milliseconds of CPU, too much for the connection path, so
//! dedicated threads keep a bounded queue of fresh keys. Each link takes one key and the key is
//! consumed by the ticket decryption: no key ever decrypts two tickets, which leaves a timing
//! attacker a single sample per key. When links arrive faster than keys are made, links wait
//! for the next key instead of generating one on the async runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Mutex, mpsc};

use crate::spice::TicketKey;

/// A shared queue of pre-generated one-time keys. Cheap to clone.
#[derive(Clone)]
pub struct KeyPool {
    keys: Arc<Mutex<mpsc::Receiver<TicketKey>>>,
    stopped: Arc<AtomicBool>,
}

impl KeyPool {
    /// Starts `threads` generator threads keeping up to `size` keys ready.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(size: usize, threads: usize) -> std::io::Result<KeyPool> {
        let (tx, rx) = mpsc::channel(size.max(1));
        let stopped = Arc::new(AtomicBool::new(false));
        for n in 0..threads.max(1) {
            let tx = tx.clone();
            let stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("kerbside-keygen-{n}"))
                .spawn(move || generate_keys(&tx, &stopped))?;
        }
        Ok(KeyPool {
            keys: Arc::new(Mutex::new(rx)),
            stopped,
        })
    }

    /// Takes a fresh key, waiting for one if the pool is empty.
    ///
    /// # Errors
    /// When every generator thread has stopped (key generation keeps failing).
    ///
    /// # Cancel safety
    /// Cancel safe: a key is only removed from the queue when this returns it.
    pub async fn take(&self) -> Result<TicketKey, &'static str> {
        self.keys
            .lock()
            .await
            .recv()
            .await
            .ok_or("the RSA key generators have stopped")
    }

    /// Number of keys ready now.
    pub fn ready(&self) -> usize {
        self.keys.try_lock().map_or(0, |rx| rx.len())
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        // The last handle stops the threads; they exit at their next send.
        if Arc::strong_count(&self.stopped) == 1 {
            self.stopped.store(true, Ordering::Relaxed);
        }
    }
}

fn generate_keys(tx: &mpsc::Sender<TicketKey>, stopped: &AtomicBool) {
    let mut rng = rand::rngs::OsRng;
    let mut failures = 0u32;
    while !stopped.load(Ordering::Relaxed) {
        match TicketKey::generate(&mut rng) {
            Ok(key) => {
                failures = 0;
                if tx.blocking_send(key).is_err() {
                    return; // the pool is gone
                }
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "RSA key generation failed");
                if failures > 10 {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_distinct_and_refilled() {
        let pool = KeyPool::start(2, 1).unwrap();
        let a = pool.take().await.unwrap();
        let b = pool.take().await.unwrap();
        let c = pool.take().await.unwrap();
        assert_ne!(a.public_der(), b.public_der());
        assert_ne!(b.public_der(), c.public_der());
    }
}
