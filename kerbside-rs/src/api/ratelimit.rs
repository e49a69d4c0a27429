//! A per-client-address token bucket for the unauthenticated Nova token exchange, and the
//! client address itself (the peer, or X-Forwarded-For behind a trusted reverse proxy).
//!
//! Owns only the arithmetic and the table of buckets; the route answers 429 with
//! `Retry-After` from what [`RateLimiter::check`] returns.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;

/// Most addresses tracked; beyond this, buckets that have refilled are forgotten (they are
/// the same as new ones).
const MAX_TRACKED: usize = 50_000;

/// One address's bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tokens left (fractional: it refills continuously).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// Token buckets by client address (IPv6 by /64): `burst` requests at once, then
/// `per_minute` a minute.
pub struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Bucket size.
    burst: f64,
    /// The buckets.
    buckets: std::sync::Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// A limiter allowing `burst` requests, then `per_minute` a minute; `None` when
    /// `per_minute` is 0 (no limit).
    pub fn new(per_minute: u32, burst: u32) -> Option<Self> {
        (per_minute > 0).then(|| RateLimiter {
            rate: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Takes one request from `addr`'s bucket at `now`.
    ///
    /// # Errors
    /// The bucket is empty: the whole seconds until it holds a request again (at least 1).
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let addr = bucket_key(addr);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&addr) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, rate, burst, now) < burst);
            // Still full of busy addresses: forget them rather than grow without bound.
            if buckets.len() >= MAX_TRACKED {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, self.rate, self.burst, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate);
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Err(secs.max(1))
        }
    }
}

/// The bucket of an address: IPv4 addresses have their own; IPv6 ones share one per /64,
/// the block a single host or site normally holds (it can rotate within it at will).
fn bucket_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The tokens in `b` at `now`.
fn refilled(b: &Bucket, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

/// The client's address: the peer's, or, when the peer is one of `trusted` reverse proxies,
/// the rightmost X-Forwarded-For entry that is not itself trusted. `None` without a peer
/// (never for a TCP listener).
pub fn client_addr(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in forwarded.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => {}
            Ok(ip) => return Some(ip),
            // Garbage from the client's side of the header: stop at the proxy's view.
            Err(_) => break,
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let limiter = RateLimiter::new(60, 3).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(a, t0).is_ok());
        }
        assert_eq!(limiter.check(a, t0), Err(1));
        // Another address has its own bucket.
        assert!(limiter.check(b, t0).is_ok());
        // One a second refills.
        assert!(limiter.check(a, t0 + Duration::from_millis(1_100)).is_ok());
        assert!(limiter.check(a, t0 + Duration::from_millis(1_100)).is_err());
        assert!(RateLimiter::new(0, 5).is_none());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        use actix_web::test::TestRequest;
        let haproxy: IpAddr = "10.0.0.5".parse().unwrap();
        let inner: IpAddr = "10.0.0.6".parse().unwrap();
        let trusted = [haproxy, inner];
        let req = |peer: &str, xff: Option<&str>| {
            let mut r = TestRequest::default().peer_addr(peer.parse().unwrap());
            if let Some(v) = xff {
                r = r.insert_header(("X-Forwarded-For", v));
            }
            r.to_http_request()
        };
        // Not from a trusted proxy: the header is the client's own claim, ignored.
        assert_eq!(
            client_addr(&req("192.0.2.9:4000", Some("198.51.100.1")), &trusted),
            Some("192.0.2.9".parse().unwrap())
        );
        // From HAProxy: the rightmost untrusted entry (what the client cannot forge).
        assert_eq!(
            client_addr(
                &req(
                    "10.0.0.5:4000",
                    Some("203.0.113.66, 198.51.100.1, 10.0.0.6")
                ),
                &trusted
            ),
            Some("198.51.100.1".parse().unwrap())
        );
        // No header, or garbage: the proxy's own address.
        assert_eq!(
            client_addr(&req("10.0.0.5:4000", None), &trusted),
            Some(haproxy)
        );
        assert_eq!(
            client_addr(&req("10.0.0.5:4000", Some("not-an-ip")), &trusted),
            Some(haproxy)
        );
    }

    #[test]
    fn ipv6_addresses_share_a_bucket_per_64() {
        let limiter = RateLimiter::new(60, 1).unwrap();
        let t0 = Instant::now();
        assert!(
            limiter
                .check("2001:db8:1:2::1".parse().unwrap(), t0)
                .is_ok()
        );
        assert!(
            limiter
                .check("2001:db8:1:2::ffff".parse().unwrap(), t0)
                .is_err()
        );
        assert!(
            limiter
                .check("2001:db8:1:3::1".parse().unwrap(), t0)
                .is_ok()
        );
        assert!(
            limiter
                .check("::ffff:192.0.2.1".parse().unwrap(), t0)
                .is_ok()
        );
        assert!(limiter.check("192.0.2.1".parse().unwrap(), t0).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        let limiter = RateLimiter::new(6, 1).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(limiter.check(a, t0).is_ok());
        assert_eq!(limiter.check(a, t0), Err(10));
        assert_eq!(limiter.check(a, t0 + Duration::from_millis(500)), Err(10));
    }
}
