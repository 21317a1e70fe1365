//! Rate limits and replay protection: token buckets per key, and the hello nonce cache.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
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

    /// Take one token, or say how long until one is available.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
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
    fn nonces_are_single_use_within_window() {
        let mut c = NonceCache::default();
        assert!(c.insert([1; 16], 0, 100));
        assert!(!c.insert([1; 16], 50, 150));
        assert!(c.insert([2; 16], 50, 150));
        // After expiry the entry is forgotten (timestamps outside the window are refused
        // by the hello check before the nonce matters).
        assert!(c.insert([1; 16], 101, 201));
    }
}
