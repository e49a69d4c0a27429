//! Limits on clients that have not authenticated yet, and the log that reports refusals without
//! writing a line per refusal.
//!
//! Three mechanisms, all keyed by the client's address (an IPv4 address, or the /64 prefix of an
//! IPv6 address, since one host usually owns a whole /64):
//! - handshake slots: a connection holds one from accept until its link stage ends (TLS and
//!   link on the TLS listener, the link message on the plain one), bounded per address
//!   (`[proxy] max_handshakes_per_address`) and in total (`[proxy] max_handshakes`). A
//!   connection over either bound is closed at once, before TLS;
//! - failed links: a token bucket per address (`[proxy] failed_link_burst`,
//!   `failed_links_per_minute`). Each denied link, and each link that took an RSA ticket key
//!   and then went nowhere, takes a token; an address with no token left gets a link error right
//!   after its link message, before any key or database work;
//! - the refusal log: the first refusal of a kind from an address is logged at once, further
//!   ones only as a count once per `[proxy] refusal_log_interval`.
//!
//! It owns no sockets and does no I/O; the accept loop and the link stage call it. The
//! `max_sessions` slots are not here: they belong to authorized sessions (see `session`).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::ProxySection;

/// Most addresses tracked by the failed-link buckets. Past this, idle buckets are swept and, if
/// the map is still full, an arbitrary one is dropped: memory stays bounded whatever the number
/// of attacking addresses.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Most (address, kind) pairs the refusal log keeps; refusals of further pairs are counted
/// together per kind and reported as coming from other addresses.
const MAX_LOGGED_PAIRS: usize = 4_096;

/// How often the failed-link buckets are swept of entries that have refilled.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The unit the per-address limits count by: an IPv4 address (IPv4-mapped IPv6 included) or
/// the /64 prefix of an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                    ClientKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was refused before its link stage began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// `[proxy] max_handshakes` connections are already between accept and link.
    HandshakeLimit,
    /// `[proxy] max_handshakes_per_address` connections of this address already are.
    AddressHandshakeLimit,
}

impl Admission {
    /// The label of the refusal in `proxy_link_failures_total` and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::HandshakeLimit => "handshake_limit",
            Admission::AddressHandshakeLimit => "address_handshake_limit",
        }
    }

    /// What the log says.
    pub fn message(self) -> &'static str {
        match self {
            Admission::HandshakeLimit => "handshake limit reached: closing new connections",
            Admission::AddressHandshakeLimit => {
                "handshake limit of this address reached: closing its new connections"
            }
        }
    }
}

/// How loud a logged refusal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Expected now and then (a wrong token, a client that gave up).
    Info,
    /// The node is refusing work (a limit was reached).
    Warn,
}

/// Connections between accept and the end of their link stage.
struct Handshakes {
    /// All of them.
    total: usize,
    /// By client address; an address leaves the map with its last handshake.
    by_client: HashMap<ClientKey, u32>,
}

/// A handshake slot: held by a connection until its link stage ends, released on drop.
pub struct HandshakeSlot {
    handshakes: Arc<Mutex<Handshakes>>,
    client: ClientKey,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut h = lock(&self.handshakes);
        h.total = h.total.saturating_sub(1);
        if let Some(count) = h.by_client.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                h.by_client.remove(&self.client);
            }
        }
    }
}

/// One address's failed-link token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens left at `updated`.
    tokens: f64,
    /// When `tokens` was computed.
    updated: Instant,
}

/// The failed-link token buckets.
struct FailedLinks {
    /// Addresses that failed recently; an absent address has a full bucket.
    buckets: HashMap<ClientKey, Bucket>,
    /// Bucket size; 0 disables the limit.
    burst: f64,
    /// Tokens regained per second.
    per_second: f64,
    /// Last sweep of refilled buckets.
    swept: Instant,
}

impl FailedLinks {
    fn tokens(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    fn allows(&self, client: ClientKey, now: Instant) -> bool {
        if self.burst <= 0.0 {
            return true;
        }
        self.buckets
            .get(&client)
            .is_none_or(|b| self.tokens(b, now) >= 1.0)
    }

    fn record(&mut self, client: ClientKey, now: Instant) {
        if self.burst <= 0.0 {
            return;
        }
        if !self.buckets.contains_key(&client) && self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            self.sweep(now);
            if self.buckets.len() >= MAX_TRACKED_ADDRESSES
                && let Some(victim) = self.buckets.keys().next().copied()
            {
                self.buckets.remove(&victim);
            }
        }
        let tokens = match self.buckets.get(&client) {
            Some(bucket) => self.tokens(bucket, now),
            None => self.burst,
        };
        self.buckets.insert(
            client,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                updated: now,
            },
        );
    }

    /// Drops the buckets that have refilled: they mean the same as no entry.
    fn sweep(&mut self, now: Instant) {
        let full: Vec<ClientKey> = self
            .buckets
            .iter()
            .filter(|(_, b)| self.tokens(b, now) >= self.burst)
            .map(|(k, _)| *k)
            .collect();
        for key in full {
            self.buckets.remove(&key);
        }
        self.swept = now;
    }
}

/// One (address, kind) pair of the refusal log.
#[derive(Debug)]
struct LogEntry {
    /// Start of the current interval.
    since: Instant,
    /// Refusals in this interval not logged yet.
    pending: u64,
    /// The message of the first line, repeated in the summary.
    message: &'static str,
    /// Level of both lines.
    level: Level,
}

/// Refusals grouped by (address, kind).
struct RefusalLog {
    /// Pairs with a line in the current interval.
    entries: HashMap<(ClientKey, &'static str), LogEntry>,
    /// Refusals of pairs the map had no room for, by kind.
    overflow: HashMap<&'static str, (u64, &'static str, Level)>,
    /// Seconds per interval.
    interval: Duration,
}

/// Summary lines a maintenance pass produced, returned so they can be checked in tests.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// The address (`None` for the overflow count of other addresses).
    pub client: Option<ClientKey>,
    /// The kind.
    pub kind: &'static str,
    /// Refusals not logged individually.
    pub count: u64,
}

/// The numbers the limits work with (from `[proxy]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `max_handshakes`.
    pub max_handshakes: u32,
    /// `max_handshakes_per_address`.
    pub max_handshakes_per_address: u32,
    /// `failed_link_burst` (0 disables the failed-link limit).
    pub failed_link_burst: u32,
    /// `failed_links_per_minute`.
    pub failed_links_per_minute: u32,
    /// `refusal_log_interval`, seconds.
    pub refusal_log_interval: u64,
}

impl From<&ProxySection> for Settings {
    fn from(p: &ProxySection) -> Self {
        Settings {
            max_handshakes: p.max_handshakes,
            max_handshakes_per_address: p.max_handshakes_per_address,
            failed_link_burst: p.failed_link_burst,
            failed_links_per_minute: p.failed_links_per_minute,
            refusal_log_interval: p.refusal_log_interval,
        }
    }
}

/// The limits of one proxy process, shared by its listeners.
pub struct Limits {
    handshakes: Arc<Mutex<Handshakes>>,
    max_handshakes: usize,
    max_per_client: u32,
    failed: Mutex<FailedLinks>,
    log: Mutex<RefusalLog>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent, so a panic elsewhere while
    // holding the lock does not make it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limits {
    /// Limits with these settings.
    pub fn new(config: Settings) -> Self {
        let now = Instant::now();
        Limits {
            handshakes: Arc::new(Mutex::new(Handshakes {
                total: 0,
                by_client: HashMap::new(),
            })),
            max_handshakes: usize::try_from(config.max_handshakes).unwrap_or(usize::MAX),
            max_per_client: config.max_handshakes_per_address,
            failed: Mutex::new(FailedLinks {
                buckets: HashMap::new(),
                burst: f64::from(config.failed_link_burst),
                per_second: f64::from(config.failed_links_per_minute) / 60.0,
                swept: now,
            }),
            log: Mutex::new(RefusalLog {
                entries: HashMap::new(),
                overflow: HashMap::new(),
                interval: Duration::from_secs(config.refusal_log_interval.max(1)),
            }),
        }
    }

    /// Takes a handshake slot for a new connection from `ip`.
    ///
    /// # Errors
    /// The bound that is full; the caller closes the connection.
    pub fn admit(&self, ip: IpAddr) -> Result<HandshakeSlot, Admission> {
        let client = ClientKey::from(ip);
        let mut h = lock(&self.handshakes);
        if h.total >= self.max_handshakes {
            return Err(Admission::HandshakeLimit);
        }
        let count = h.by_client.entry(client).or_insert(0);
        if *count >= self.max_per_client {
            return Err(Admission::AddressHandshakeLimit);
        }
        *count += 1;
        h.total += 1;
        Ok(HandshakeSlot {
            handshakes: self.handshakes.clone(),
            client,
        })
    }

    /// Connections between accept and the end of their link stage.
    pub fn handshakes(&self) -> usize {
        lock(&self.handshakes).total
    }

    /// Whether `ip` may attempt a link: false once its failed links used up its bucket.
    pub fn link_allowed(&self, ip: IpAddr) -> bool {
        self.link_allowed_at(ip, Instant::now())
    }

    fn link_allowed_at(&self, ip: IpAddr, now: Instant) -> bool {
        lock(&self.failed).allows(ClientKey::from(ip), now)
    }

    /// Counts a failed link from `ip` against its bucket.
    pub fn link_failed(&self, ip: IpAddr) {
        self.link_failed_at(ip, Instant::now());
    }

    fn link_failed_at(&self, ip: IpAddr, now: Instant) {
        lock(&self.failed).record(ClientKey::from(ip), now);
    }

    /// Logs a refusal or failure of `kind` from `ip`: at once if it is the first of its kind
    /// from that address in the current interval, else only counted for the summary that
    /// [`Limits::maintain`] writes at the end of the interval. `detail` (an error) is only
    /// shown on the first line.
    pub fn log_refusal(
        &self,
        ip: IpAddr,
        kind: &'static str,
        level: Level,
        message: &'static str,
        detail: Option<&dyn fmt::Display>,
    ) {
        if self.count_refusal(ip, kind, level, message, Instant::now()) {
            let detail = detail.map(ToString::to_string);
            match level {
                Level::Info => {
                    tracing::info!(client.addr = %ip, reason = kind, error = detail, "{message}");
                }
                Level::Warn => {
                    tracing::warn!(client.addr = %ip, reason = kind, error = detail, "{message}");
                }
            }
        }
    }

    /// Records a refusal; true when it should be logged now.
    fn count_refusal(
        &self,
        ip: IpAddr,
        kind: &'static str,
        level: Level,
        message: &'static str,
        now: Instant,
    ) -> bool {
        let client = ClientKey::from(ip);
        let mut log = lock(&self.log);
        if let Some(entry) = log.entries.get_mut(&(client, kind)) {
            entry.pending += 1;
            return false;
        }
        if log.entries.len() >= MAX_LOGGED_PAIRS {
            let slot = log.overflow.entry(kind).or_insert((0, message, level));
            slot.0 += 1;
            return false;
        }
        log.entries.insert(
            (client, kind),
            LogEntry {
                since: now,
                pending: 0,
                message,
                level,
            },
        );
        true
    }

    /// Writes the summaries of intervals that ended and sweeps refilled failed-link buckets.
    /// Call it about every second.
    pub fn maintain(&self) -> Vec<Summary> {
        self.maintain_at(Instant::now())
    }

    fn maintain_at(&self, now: Instant) -> Vec<Summary> {
        {
            let mut failed = lock(&self.failed);
            if now.saturating_duration_since(failed.swept) >= SWEEP_INTERVAL {
                failed.sweep(now);
            }
        }
        let mut log = lock(&self.log);
        let interval = log.interval;
        let mut summaries = Vec::new();
        let mut quiet = Vec::new();
        for ((client, kind), entry) in &mut log.entries {
            if now.saturating_duration_since(entry.since) < interval {
                continue;
            }
            if entry.pending == 0 {
                quiet.push((*client, *kind));
                continue;
            }
            write_summary(
                &client.to_string(),
                kind,
                entry.pending,
                entry.message,
                entry.level,
                interval,
            );
            summaries.push(Summary {
                client: Some(*client),
                kind,
                count: entry.pending,
            });
            // Still going: stay in the map so the next refusals are only counted as well.
            entry.pending = 0;
            entry.since = now;
        }
        for key in quiet {
            log.entries.remove(&key);
        }
        // The overflow is summarised on the same rhythm as the oldest entries; every pass is
        // simpler and at most one line per kind.
        for (kind, (count, message, level)) in log.overflow.drain() {
            write_summary("other addresses", kind, count, message, level, interval);
            summaries.push(Summary {
                client: None,
                kind,
                count,
            });
        }
        summaries
    }
}

fn write_summary(
    client: &str,
    kind: &'static str,
    count: u64,
    message: &'static str,
    level: Level,
    interval: Duration,
) {
    let secs = interval.as_secs();
    match level {
        Level::Info => tracing::info!(
            client.addr = client,
            reason = kind,
            count,
            interval_s = secs,
            "{message}: {count} more from {client} in the last {secs} s"
        ),
        Level::Warn => tracing::warn!(
            client.addr = client,
            reason = kind,
            count,
            interval_s = secs,
            "{message}: {count} more from {client} in the last {secs} s"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Settings = Settings {
        max_handshakes: 1000,
        max_handshakes_per_address: 64,
        failed_link_burst: 20,
        failed_links_per_minute: 30,
        refusal_log_interval: 60,
    };

    fn limits(settings: Settings) -> Limits {
        Limits::new(settings)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_count_by_64_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            ClientKey::from(ip("2001:db8:1:2:aaaa::1")),
            ClientKey::from(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            ClientKey::from(ip("2001:db8:1:2::1")),
            ClientKey::from(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::from(ip("::ffff:192.0.2.7")),
            ClientKey::from(ip("192.0.2.7"))
        );
        assert_eq!(
            ClientKey::from(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn handshakes_are_bounded_per_address_and_in_total_and_released_on_drop() {
        let limits = limits(Settings {
            max_handshakes: 3,
            max_handshakes_per_address: 2,
            ..DEFAULTS
        });
        let a1 = limits.admit(ip("192.0.2.1")).unwrap();
        let _a2 = limits.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            limits.admit(ip("192.0.2.1")).err(),
            Some(Admission::AddressHandshakeLimit)
        );
        let _b1 = limits.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(
            limits.admit(ip("192.0.2.3")).err(),
            Some(Admission::HandshakeLimit)
        );
        assert_eq!(limits.handshakes(), 3);
        drop(a1);
        assert_eq!(limits.handshakes(), 2);
        let _a3 = limits.admit(ip("192.0.2.1")).unwrap();
    }

    #[test]
    fn failed_links_empty_the_bucket_which_refills_at_the_configured_rate() {
        let limits = limits(Settings {
            failed_link_burst: 3,
            failed_links_per_minute: 60,
            ..DEFAULTS
        });
        let t0 = Instant::now();
        let a = ip("198.51.100.1");
        for _ in 0..3 {
            assert!(limits.link_allowed_at(a, t0));
            limits.link_failed_at(a, t0);
        }
        assert!(!limits.link_allowed_at(a, t0), "burst used up");
        assert!(
            limits.link_allowed_at(ip("198.51.100.2"), t0),
            "other addresses are not affected"
        );
        // One per second comes back.
        assert!(!limits.link_allowed_at(a, t0 + Duration::from_millis(500)));
        assert!(limits.link_allowed_at(a, t0 + Duration::from_millis(1100)));
        limits.link_failed_at(a, t0 + Duration::from_millis(1100));
        assert!(!limits.link_allowed_at(a, t0 + Duration::from_millis(1200)));
        // Refilled buckets are swept away.
        limits.maintain_at(t0 + Duration::from_secs(60));
        assert!(lock(&limits.failed).buckets.is_empty());
    }

    #[test]
    fn a_zero_burst_disables_the_failed_link_limit() {
        let limits = limits(Settings {
            failed_link_burst: 0,
            ..DEFAULTS
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            limits.link_failed_at(ip("198.51.100.1"), t0);
        }
        assert!(limits.link_allowed_at(ip("198.51.100.1"), t0));
    }

    #[test]
    fn the_bucket_map_stays_bounded() {
        let limits = limits(Settings {
            failed_link_burst: 5,
            failed_links_per_minute: 1,
            ..DEFAULTS
        });
        let t0 = Instant::now();
        for n in 0..(MAX_TRACKED_ADDRESSES as u32 + 100) {
            limits.link_failed_at(IpAddr::from(std::net::Ipv4Addr::from(n)), t0);
        }
        assert!(lock(&limits.failed).buckets.len() <= MAX_TRACKED_ADDRESSES);
    }

    #[test]
    fn refusals_log_once_per_interval_with_a_count() {
        let limits = limits(DEFAULTS);
        let t0 = Instant::now();
        let a = ip("203.0.113.9");
        let logged: Vec<bool> = (0..50)
            .map(|_| limits.count_refusal(a, "unknown_token", Level::Info, "client denied", t0))
            .collect();
        assert_eq!(logged.iter().filter(|l| **l).count(), 1, "one line at once");
        assert!(logged[0]);
        assert!(
            limits.count_refusal(a, "handshake_limit", Level::Warn, "limit", t0),
            "another kind has its own line"
        );
        assert!(limits.maintain_at(t0 + Duration::from_secs(30)).is_empty());
        let summaries = limits.maintain_at(t0 + Duration::from_secs(61));
        assert_eq!(
            summaries,
            vec![Summary {
                client: Some(ClientKey::from(a)),
                kind: "unknown_token",
                count: 49
            }]
        );
        // Still flooding: counted, not logged, until the next interval's summary.
        assert!(!limits.count_refusal(
            a,
            "unknown_token",
            Level::Info,
            "client denied",
            t0 + Duration::from_secs(62)
        ));
        // A quiet interval forgets the pair; the next refusal is logged at once again.
        limits.maintain_at(t0 + Duration::from_secs(130));
        limits.maintain_at(t0 + Duration::from_secs(200));
        assert!(limits.count_refusal(
            a,
            "unknown_token",
            Level::Info,
            "client denied",
            t0 + Duration::from_secs(201)
        ));
    }

    #[test]
    fn the_refusal_log_stays_bounded_and_counts_the_rest_together() {
        let limits = limits(DEFAULTS);
        let t0 = Instant::now();
        let mut logged = 0;
        for n in 0..(MAX_LOGGED_PAIRS as u32 + 10) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(n));
            if limits.count_refusal(a, "handshake_limit", Level::Warn, "limit", t0) {
                logged += 1;
            }
        }
        assert_eq!(logged, MAX_LOGGED_PAIRS);
        let summaries = limits.maintain_at(t0);
        assert_eq!(
            summaries,
            vec![Summary {
                client: None,
                kind: "handshake_limit",
                count: 10
            }]
        );
    }
}
