//! Limits on what clients may take: token buckets per key, the connection gate (caps on
//! connections overall, per address and before hello), and the hello nonce cache.
//!
//! These are pure bookkeeping, tested with tables; the connection code decides what to
//! answer when a limit says no.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Tokens available at `now`.
    pub(crate) fn level(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens
    }

    /// Hold at most `tokens` at `now` (what the member had left where it was before).
    pub(crate) fn at_most(&mut self, tokens: f64, now: Instant) {
        let level = self.level(now);
        self.tokens = level.min(tokens.max(0.0));
    }

    /// Take one token, or say how long until one is available.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.take_n(1.0, now)
    }

    /// Take `n` tokens at once (a write that costs more, like a send to many members), or
    /// say how long until they are available.
    pub(crate) fn take_n(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let n = n.min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
        }
    }

    /// Like [`TokenBucket::take`], as a `retry_ms` hint for a refusal.
    pub(crate) fn take_or_retry_ms(&mut self, now: Instant) -> Result<(), u64> {
        self.take(now).map_err(|w| w.as_millis() as u64 + 1)
    }

    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Token buckets per key (e.g. per IP address), forgetting full buckets now and then.
#[derive(Debug)]
pub(crate) struct KeyedLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, TokenBucket>,
    last_sweep: Instant,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    pub(crate) fn take(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        if now.saturating_duration_since(self.last_sweep) > Duration::from_secs(60) {
            self.buckets.retain(|_, b| !b.is_full(now));
            self.last_sweep = now;
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take(now)
    }
}

/// The address a per-address limit counts: the IPv4 address, or the /64 of an IPv6 one
/// (one host is usually given a whole /64, so counting single v6 addresses counts nothing).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Caps on open connections (all of them, and those still before hello), overall and per
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GateLimits {
    pub(crate) total: usize,
    pub(crate) per_address: usize,
    pub(crate) preauth: usize,
    pub(crate) preauth_per_address: usize,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Total,
    PerAddress,
    Preauth,
    PreauthPerAddress,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Total => "the relay has as many connections as it allows (max_connections)",
            Self::PerAddress => {
                "this address has as many connections as allowed (max_connections_per_ip)"
            }
            Self::Preauth => {
                "too many connections are still before hello (max_preauth_connections)"
            }
            Self::PreauthPerAddress => {
                "this address has too many connections before hello (max_preauth_per_ip)"
            }
        })
    }
}

#[derive(Debug, Default)]
struct GateCounts {
    total: usize,
    preauth: usize,
    by_address: HashMap<IpAddr, (usize, usize)>,
}

/// Counts open connections against [`GateLimits`]. A connection holds a [`Slot`] from
/// accept to close; the slot stops counting as pre-auth once the connection said hello.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: GateLimits,
    counts: Mutex<GateCounts>,
}

impl Gate {
    pub(crate) fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::default(),
        })
    }

    /// Admit a new connection from `ip`, or say which cap is full.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let key = address_key(ip);
        let l = self.limits;
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (here, here_pre) = c.by_address.get(&key).copied().unwrap_or((0, 0));
        let full = if c.total >= l.total {
            Some(Full::Total)
        } else if here >= l.per_address {
            Some(Full::PerAddress)
        } else if c.preauth >= l.preauth {
            Some(Full::Preauth)
        } else if here_pre >= l.preauth_per_address {
            Some(Full::PreauthPerAddress)
        } else {
            None
        };
        if let Some(f) = full {
            return Err(f);
        }
        c.total += 1;
        c.preauth += 1;
        c.by_address.insert(key, (here + 1, here_pre + 1));
        Ok(Slot {
            gate: self.clone(),
            key,
            preauth: true,
        })
    }

    /// Open connections and those before hello.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (c.total, c.preauth)
    }

    fn release(&self, key: IpAddr, total: bool, preauth: bool) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let e = c.by_address.entry(key).or_insert((0, 0));
        if total {
            e.0 = e.0.saturating_sub(1);
        }
        if preauth {
            e.1 = e.1.saturating_sub(1);
        }
        if *e == (0, 0) {
            c.by_address.remove(&key);
        }
        if total {
            c.total = c.total.saturating_sub(1);
        }
        if preauth {
            c.preauth = c.preauth.saturating_sub(1);
        }
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Slot {
    gate: Arc<Gate>,
    key: IpAddr,
    preauth: bool,
}

impl Slot {
    /// The connection said hello (or holds a valid invite claim): it no longer counts
    /// against the pre-auth caps.
    pub(crate) fn authenticated(&mut self) {
        if std::mem::take(&mut self.preauth) {
            self.gate.release(self.key, false, true);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(self.key, true, self.preauth);
    }
}

/// Hello nonces seen within the replay window.
#[derive(Debug, Default)]
pub(crate) struct NonceCache {
    seen: HashMap<[u8; 16], i64>,
    order: VecDeque<([u8; 16], i64)>,
}

impl NonceCache {
    /// Record `nonce` (valid until `expires`, unix ms); false if it was already seen.
    pub(crate) fn insert(&mut self, nonce: [u8; 16], now: i64, expires: i64) -> bool {
        while let Some(&(n, exp)) = self.order.front() {
            if exp > now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&n) == Some(&exp) {
                self.seen.remove(&n);
            }
        }
        if self.seen.contains_key(&nonce) {
            return false;
        }
        self.seen.insert(nonce, expires);
        self.order.push_back((nonce, expires));
        true
    }
}

/// The store failing to take envelopes (a full disk): while it lasts, senders are told to
/// retry after a wait that doubles (1 s to 60 s) instead of every second, nothing is
/// forwarded for a send that cannot be stored (each resend would reach the recipient
/// again), and the fault is said at most once a minute.
#[derive(Debug, Default)]
pub(crate) struct StorageFault {
    /// Sends are refused until then (the first one after it is tried: the probe).
    until: Option<Instant>,
    wait: Duration,
    said: Option<Instant>,
}

impl StorageFault {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    /// A send now is refused for this long, ms (`None`: try it).
    pub(crate) fn refusing(&self, now: Instant) -> Option<u64> {
        self.until
            .filter(|u| *u > now)
            .map(|u| (u - now).as_millis() as u64 + 1)
    }

    /// A store write failed: how long senders wait (ms), and whether to say so now. Writes
    /// that were under way when the wait began fail within it and do not lengthen it:
    /// the wait doubles only when a probe after it fails.
    pub(crate) fn failed(&mut self, now: Instant) -> (u64, bool) {
        if let Some(ms) = self.refusing(now) {
            return (ms, false);
        }
        self.wait = if self.wait.is_zero() {
            Self::FIRST
        } else {
            (self.wait * 2).min(Self::MAX)
        };
        self.until = Some(now + self.wait);
        let say = self
            .said
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if say {
            self.said = Some(now);
        }
        (self.wait.as_millis() as u64, say)
    }

    /// A store write worked: true if that ends a fault.
    pub(crate) fn worked(&mut self) -> bool {
        self.until = None;
        !std::mem::take(&mut self.wait).is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn the_gate_counts_caps_in_order_and_frees_places() {
        let gate = Gate::new(GateLimits {
            total: 4,
            per_address: 3,
            preauth: 3,
            preauth_per_address: 2,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let mut a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        // (address, expected refusal) in order, with what is open at that point.
        assert_eq!(gate.admit(a).unwrap_err(), Full::PreauthPerAddress);
        a1.authenticated();
        assert_eq!(gate.counts(), (2, 1));
        let _a3 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Full::PerAddress);
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(c).unwrap_err(), Full::Total);
        drop(a1);
        assert_eq!(gate.counts(), (3, 3));
        assert_eq!(gate.admit(c).unwrap_err(), Full::Preauth);
        drop(_b1);
        let _c1 = gate.admit(c).unwrap();
        assert_eq!(gate.counts(), (3, 3));
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_v4_as_v4() {
        let cases = [
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::"),
            ("::ffff:10.1.2.3", "10.1.2.3"),
            ("192.0.2.7", "192.0.2.7"),
        ];
        for (ip, key) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            let key: IpAddr = key.parse().unwrap();
            assert_eq!(address_key(ip), key, "{ip}");
        }
    }

    #[test]
    fn nonces_are_single_use_within_window() {
        let mut c = NonceCache::default();
        assert!(c.insert([1; 16], 0, 100));
        assert!(!c.insert([1; 16], 50, 150));
        assert!(c.insert([2; 16], 50, 150));
        // After expiry the entry is forgotten (timestamps outside the window are refused
        // by the hello check before the nonce matters).
        assert!(c.insert([1; 16], 101, 201));
    }

    #[test]
    fn a_storage_fault_backs_senders_off_and_is_said_once_a_minute() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut f = StorageFault::default();
        assert_eq!(f.refusing(t0), None);
        assert_eq!(f.failed(t0), (1_000, true));
        assert!(f.refusing(t0).is_some_and(|ms| ms > 900 && ms <= 1_001));
        // Writes under way when it began fail inside the wait: it stays as it is.
        let (ms, say) = f.failed(t0 + Duration::from_millis(10));
        assert!(ms <= 991 && !say, "{ms}");
        assert_eq!(f.refusing(t0 + s(1)), None, "then one send probes");
        assert_eq!(f.failed(t0 + s(1)), (2_000, false));
        // Each probe after a wait fails: the wait doubles, up to a minute.
        let mut at = t0 + s(3);
        for want in [4_000, 8_000, 16_000, 32_000, 60_000, 60_000] {
            assert_eq!(f.failed(at).0, want);
            at += Duration::from_millis(want);
        }
        assert!(f.worked());
        assert_eq!(f.refusing(at), None);
        assert!(!f.worked(), "nothing to end");
        assert_eq!(f.failed(at).0, 1_000, "a new fault starts over");
        // Said at most once a minute, however many faults.
        let mut g = StorageFault::default();
        assert!(g.failed(t0).1);
        assert!(g.worked());
        assert!(!g.failed(t0 + s(30)).1);
        assert!(g.worked());
        assert!(g.failed(t0 + s(61)).1);
    }
}
