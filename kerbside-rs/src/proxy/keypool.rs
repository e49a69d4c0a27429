//! The RSA keys the proxy offers clients in its link replies, and how long each one serves.
//!
//! Generating an RSA-1024 key costs milliseconds of CPU, too much for the link path, so
//! dedicated threads (named `kerbside-keygen-N`) keep a bounded queue of fresh keys made by
//! OpenSSL. Links do not take a fresh key each: the pool hands out a *current* key until it
//! has served `[proxy] ticket_key_uses` links or `ticket_key_lifetime` seconds have passed
//! since its first link, then moves to the next fresh key. With `ticket_key_uses = 1` every
//! link gets a key of its own, as spice-server does.
//!
//! Why reuse is sound here (the README's security section says it for operators): kerbside
//! never reads a ticket outside TLS (its plain port answers NEED_SECURED first), so nobody but
//! the client sees an encrypted ticket; a client only ever holds ciphertexts it made itself,
//! so a decryption oracle against a shared key tells it nothing it did not know; decryption
//! is OpenSSL's (blinded, constant-time padding check); and the bound on uses and lifetime
//! caps whatever an oracle could still give.
//!
//! This module owns key generation threads and the reuse policy; it does not decrypt (that is
//! `spice::TicketKey`) and knows nothing of sessions or tokens.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::spice::TicketKey;

/// How many links a key serves and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Links one key serves at most (at least 1).
    pub uses: u32,
    /// Time a key serves at most, counted from its first link.
    pub lifetime: Duration,
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyPoolError {
    /// Every generator thread has stopped (key generation keeps failing).
    #[error("the RSA key generators have stopped")]
    Stopped,
}

/// The key in service: how many more links it may serve and until when.
struct Current {
    key: Arc<TicketKey>,
    uses_left: u32,
    expires: Instant,
}

/// A shared pool of ticket keys. Cheap to clone.
#[derive(Clone)]
pub struct KeyPool {
    /// Fresh keys from the generator threads.
    fresh: Arc<tokio::sync::Mutex<mpsc::Receiver<TicketKey>>>,
    /// The key being handed out, if any is still within its bounds.
    current: Arc<Mutex<Option<Current>>>,
    /// The reuse bounds.
    policy: KeyPolicy,
    /// Links served (keys handed out, counting reuse).
    taken: Arc<AtomicU64>,
    /// Keys taken into service.
    rotated: Arc<AtomicU64>,
    /// Set when the last handle is dropped: generator threads exit.
    stopped: Arc<AtomicBool>,
}

impl KeyPool {
    /// Starts `threads` generator threads keeping up to `size` fresh keys ready, handing them
    /// out under `policy`.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(size: usize, threads: usize, policy: KeyPolicy) -> std::io::Result<KeyPool> {
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
            fresh: Arc::new(tokio::sync::Mutex::new(rx)),
            current: Arc::default(),
            policy: KeyPolicy {
                uses: policy.uses.max(1),
                lifetime: policy.lifetime,
            },
            taken: Arc::default(),
            rotated: Arc::default(),
            stopped,
        })
    }

    /// A key for one link: the current key while it is within its bounds, else the next fresh
    /// one (waiting for it if the generators are behind).
    ///
    /// # Errors
    /// `Stopped` when every generator thread has stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: a fresh key is only taken from the queue when this returns it.
    pub async fn take(&self) -> Result<Arc<TicketKey>, KeyPoolError> {
        if let Some(key) = self.take_current(Instant::now()) {
            return Ok(key);
        }
        let mut fresh = self.fresh.lock().await;
        // Another link may have put a fresh key in service while this one waited.
        if let Some(key) = self.take_current(Instant::now()) {
            return Ok(key);
        }
        let key = Arc::new(fresh.recv().await.ok_or(KeyPoolError::Stopped)?);
        self.rotated.fetch_add(1, Ordering::Relaxed);
        self.taken.fetch_add(1, Ordering::Relaxed);
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *current = (self.policy.uses > 1).then(|| Current {
            key: key.clone(),
            uses_left: self.policy.uses - 1,
            expires: Instant::now() + self.policy.lifetime,
        });
        Ok(key)
    }

    /// The current key, counting one use, if it has uses and time left.
    fn take_current(&self, now: Instant) -> Option<Arc<TicketKey>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let usable = current
            .as_ref()
            .is_some_and(|c| c.uses_left > 0 && now < c.expires);
        if !usable {
            // Drop a spent key now rather than at the next rotation.
            *current = None;
            return None;
        }
        let c = current.as_mut()?;
        c.uses_left -= 1;
        self.taken.fetch_add(1, Ordering::Relaxed);
        Some(c.key.clone())
    }

    /// Links served so far (a key reused for ten links counts ten).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Keys put into service so far.
    pub fn rotated(&self) -> u64 {
        self.rotated.load(Ordering::Relaxed)
    }

    /// Number of fresh keys ready now.
    pub fn ready(&self) -> usize {
        self.fresh.try_lock().map_or(0, |rx| rx.len())
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
    let mut failures = 0u32;
    while !stopped.load(Ordering::Relaxed) {
        match TicketKey::generate() {
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

    fn policy(uses: u32, lifetime_ms: u64) -> KeyPolicy {
        KeyPolicy {
            uses,
            lifetime: Duration::from_millis(lifetime_ms),
        }
    }

    #[tokio::test]
    async fn one_use_keys_are_all_distinct() {
        let pool = KeyPool::start(2, 1, policy(1, 60_000)).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            let key = pool.take().await.unwrap();
            assert!(seen.insert(*key.public_der()), "a one-use key was reused");
        }
        assert_eq!(pool.taken(), 5);
        assert_eq!(pool.rotated(), 5);
    }

    #[tokio::test]
    async fn a_key_serves_exactly_its_uses() {
        let pool = KeyPool::start(2, 1, policy(3, 60_000)).unwrap();
        let mut keys = Vec::new();
        for _ in 0..7 {
            keys.push(*pool.take().await.unwrap().public_der());
        }
        assert_eq!(keys[0], keys[1]);
        assert_eq!(keys[1], keys[2]);
        assert_ne!(keys[2], keys[3]);
        assert_eq!(keys[3], keys[4]);
        assert_eq!(keys[4], keys[5]);
        assert_ne!(keys[5], keys[6]);
        assert_eq!(pool.taken(), 7);
        assert_eq!(pool.rotated(), 3);
    }

    #[tokio::test]
    async fn a_key_expires_after_its_lifetime_however_few_uses() {
        let pool = KeyPool::start(2, 1, policy(1000, 200)).unwrap();
        let first = *pool.take().await.unwrap().public_der();
        assert_eq!(*pool.take().await.unwrap().public_der(), first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = *pool.take().await.unwrap().public_der();
        assert_ne!(later, first, "a key outlived its lifetime");
        assert_eq!(pool.rotated(), 2);
    }

    #[tokio::test]
    async fn concurrent_links_share_the_bound() {
        let pool = KeyPool::start(4, 1, policy(4, 60_000)).unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { *pool.take().await.unwrap().public_der() })
            })
            .collect();
        let mut uses = std::collections::HashMap::<_, u32>::new();
        for task in tasks {
            *uses.entry(task.await.unwrap()).or_default() += 1;
        }
        assert!(
            uses.values().all(|n| *n <= 4),
            "a key served more than 4 links"
        );
        assert_eq!(uses.values().sum::<u32>(), 16);
        assert_eq!(pool.taken(), 16);
    }

    #[tokio::test]
    async fn reused_key_decrypts_every_links_ticket() {
        let pool = KeyPool::start(1, 1, policy(8, 60_000)).unwrap();
        for token in ["one", "two", "three"] {
            let key = pool.take().await.unwrap();
            let ciphertext =
                crate::spice::encrypt_ticket(key.public_der(), token.as_bytes()).unwrap();
            let ticket = key.decrypt_ticket(&ciphertext).unwrap();
            assert_eq!(ticket.as_str(), Some(token));
        }
        assert_eq!(pool.rotated(), 1);
    }
}
