//! Firecracker's rate limiters (`rate_limiter` of `PUT`/`PATCH /drives`): a token bucket for
//! bytes (`bandwidth`) and one for requests (`ops`), each `size` tokens refilled in
//! `refill_time` ms, plus a `one_time_burst` spent first and never refilled. A request that
//! finds too few tokens waits: the device leaves it on the queue and arms a timerfd (its
//! backend descriptor in the event loop) for when the tokens will be there. No busy waiting.
//!
//! A request larger than the bucket is let through when the bucket is full and leaves it in
//! debt, so that the long-run rate is still `size` per `refill_time`.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// One bucket as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub size: u64,
    pub one_time_burst: u64,
    pub refill_time_ms: u64,
}

impl Bucket {
    /// What the API accepts (`types::rate_limit_of`): tokens fit an i64, time in ns a u64,
    /// and neither size nor refill time is 0 (such a bucket is no bucket).
    fn is_valid(&self) -> bool {
        (1..=i64::MAX as u64).contains(&self.size)
            && self.one_time_burst <= i64::MAX as u64
            && (1..=u64::MAX / 1_000_000).contains(&self.refill_time_ms)
    }
}

/// Both buckets; `None` is no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub bandwidth: Option<Bucket>,
    pub ops: Option<Bucket>,
}

/// A change (`PATCH`): `Some` replaces that bucket (`Some(None)` removes it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitUpdate {
    pub bandwidth: Option<Option<Bucket>>,
    pub ops: Option<Option<Bucket>>,
}

/// A bucket in a snapshot: its configuration and where it had got to (as Firecracker keeps
/// it: the budget, and the time since its last refill, so that the time the snapshot spent on
/// disk adds no tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    pub config: Bucket,
    /// Tokens; negative after a request larger than the bucket.
    pub budget: i64,
    /// What is left of `one_time_burst`.
    pub burst: u64,
    pub since_refill_ns: u64,
}

/// A limiter in a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterState {
    pub bandwidth: Option<BucketState>,
    pub ops: Option<BucketState>,
}

#[derive(Debug)]
struct TokenBucket {
    config: Bucket,
    /// Tokens now; negative after a request larger than the bucket.
    budget: i128,
    burst: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(config: Bucket, now: Instant) -> Self {
        Self {
            config,
            budget: i128::from(config.size),
            burst: config.one_time_burst,
            last: now,
        }
    }

    fn state(&self, now: Instant) -> BucketState {
        let since = now.saturating_duration_since(self.last).as_nanos();
        BucketState {
            config: self.config,
            budget: i64::try_from(self.budget).unwrap_or(if self.budget < 0 {
                i64::MIN
            } else {
                i64::MAX
            }),
            burst: self.burst,
            since_refill_ns: u64::try_from(since).unwrap_or(u64::MAX),
        }
    }

    /// The bucket of `s`, its last refill `s.since_refill_ns` before `now`. `Err` for values
    /// the API would not have taken (a damaged or hand-made file).
    fn from_state(s: &BucketState, now: Instant) -> Result<Self, String> {
        let c = s.config;
        if !c.is_valid() || s.burst > c.one_time_burst {
            return Err(format!("a rate limiter bucket out of range: {s:?}"));
        }
        let since = Duration::from_nanos(s.since_refill_ns);
        Ok(Self {
            config: c,
            budget: i128::from(s.budget).min(i128::from(c.size)),
            burst: s.burst,
            last: now.checked_sub(since).unwrap_or(now),
        })
    }

    fn refill_ns(&self) -> u128 {
        u128::from(self.config.refill_time_ms) * 1_000_000
    }

    fn refill(&mut self, now: Instant) {
        let size = i128::from(self.config.size);
        if self.budget >= size {
            self.last = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let tokens = elapsed * u128::from(self.config.size) / self.refill_ns();
        if tokens == 0 {
            return;
        }
        let tokens = i128::try_from(tokens).unwrap_or(i128::MAX);
        self.budget = self.budget.saturating_add(tokens);
        if self.budget >= size {
            self.budget = size;
            self.last = now;
        } else {
            // Keep the remainder: move `last` by exactly the time these tokens took.
            let used = tokens as u128 * self.refill_ns() / u128::from(self.config.size);
            self.last += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
        }
    }

    /// What of `n` the bucket itself must cover after the burst, and whether it can now.
    fn can(&self, n: u64) -> bool {
        let rest = n.saturating_sub(self.burst);
        rest == 0 || self.budget >= i128::from(rest.min(self.config.size))
    }

    fn take(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(n - from_burst);
    }

    /// How long until [`Self::can`] holds for `n`.
    fn wait_for(&self, n: u64) -> Duration {
        let rest = n.saturating_sub(self.burst).min(self.config.size);
        let missing = (i128::from(rest) - self.budget).max(0) as u128;
        let ns = (missing * self.refill_ns()).div_ceil(u128::from(self.config.size).max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(Duration::from_micros(50))
    }
}

/// A device's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: Option<TimerFd>,
    /// A request is waiting for the timer.
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with `limit` (none: every request passes). Its timer is made now, so that its
    /// descriptor is the device's for its whole life.
    pub fn new(limit: RateLimit) -> Self {
        let timer = TimerFd::new()
            .map_err(|e| log::warn!("cannot create a rate limiter timer (no limits): {e}"))
            .ok();
        let now = Instant::now();
        Self {
            bandwidth: limit.bandwidth.map(|b| TokenBucket::new(b, now)),
            ops: limit.ops.map(|b| TokenBucket::new(b, now)),
            timer,
            blocked: false,
        }
    }

    /// The timer's descriptor, readable when a waiting request may go on.
    pub fn fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Take one request of `bytes` if both buckets allow it now; otherwise arm the timer and
    /// return false (the caller leaves the request on the queue).
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.timer.is_none() || (self.bandwidth.is_none() && self.ops.is_none()) {
            return true;
        }
        let now = Instant::now();
        let bw_ok = self.bandwidth.as_mut().is_none_or(|b| {
            b.refill(now);
            b.can(bytes)
        });
        let ops_ok = self.ops.as_mut().is_none_or(|b| {
            b.refill(now);
            b.can(1)
        });
        if bw_ok && ops_ok {
            if let Some(b) = &mut self.bandwidth {
                b.take(bytes);
            }
            if let Some(b) = &mut self.ops {
                b.take(1);
            }
            return true;
        }
        let wait = [
            self.bandwidth.as_ref().map(|b| b.wait_for(bytes)),
            self.ops.as_ref().map(|b| b.wait_for(1)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default();
        self.arm(wait);
        false
    }

    fn arm(&mut self, after: Duration) {
        if let Some(t) = &mut self.timer {
            match t.reset(after, None) {
                Ok(()) => self.blocked = true,
                Err(e) => log::warn!("cannot arm the rate limiter timer: {e}"),
            }
        }
    }

    /// Look at the queue again very soon (work was left after a spent budget).
    pub fn wake_soon(&mut self) {
        self.arm(Duration::from_micros(1));
    }

    /// The timer fired: clear it. True if a request was waiting.
    pub fn expired(&mut self) -> bool {
        if let Some(t) = &mut self.timer {
            let _ = t.wait();
        }
        std::mem::take(&mut self.blocked)
    }

    /// The buckets as configured (none: no limit of that kind).
    #[cfg(test)]
    pub fn limit(&self) -> RateLimit {
        RateLimit {
            bandwidth: self.bandwidth.as_ref().map(|b| b.config),
            ops: self.ops.as_ref().map(|b| b.config),
        }
    }

    /// The buckets and their budgets, for a snapshot.
    pub fn state(&self) -> LimiterState {
        let now = Instant::now();
        LimiterState {
            bandwidth: self.bandwidth.as_ref().map(|b| b.state(now)),
            ops: self.ops.as_ref().map(|b| b.state(now)),
        }
    }

    /// Take up the buckets of a snapshot (the timer stays this limiter's; a request that was
    /// waiting is looked at again when the queues are served after the restore).
    pub fn restore(&mut self, s: &LimiterState) -> Result<(), String> {
        let now = Instant::now();
        let bucket = |b: &Option<BucketState>| b.as_ref().map(|b| TokenBucket::from_state(b, now));
        let (bandwidth, ops) = (
            bucket(&s.bandwidth).transpose()?,
            bucket(&s.ops).transpose()?,
        );
        self.bandwidth = bandwidth;
        self.ops = ops;
        self.blocked = false;
        Ok(())
    }

    /// `PATCH`: replace the buckets it names (they start full, as new ones do); a waiting
    /// request is looked at again at once.
    pub fn update(&mut self, u: RateLimitUpdate) {
        let now = Instant::now();
        if let Some(b) = u.bandwidth {
            self.bandwidth = b.map(|b| TokenBucket::new(b, now));
        }
        if let Some(b) = u.ops {
            self.ops = b.map(|b| TokenBucket::new(b, now));
        }
        if self.blocked {
            self.arm(Duration::from_micros(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, ms: u64) -> Bucket {
        Bucket {
            size,
            one_time_burst: burst,
            refill_time_ms: ms,
        }
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(1000, 0, 100), t0);
        assert!(b.can(1000));
        b.take(1000);
        assert!(!b.can(1));
        b.refill(t0 + Duration::from_millis(50));
        assert_eq!(b.budget, 500);
        assert!(b.can(500) && !b.can(501));
        let w = b.wait_for(1000);
        assert!(
            w >= Duration::from_millis(49) && w <= Duration::from_millis(51),
            "{w:?}"
        );
        b.refill(t0 + Duration::from_millis(500));
        assert_eq!(b.budget, 1000, "capped at the size");
    }

    #[test]
    fn burst_first_and_oversized_requests_go_into_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(100, 50, 10), t0);
        b.take(120);
        assert_eq!((b.burst, b.budget), (0, 30));
        b.refill(t0 + Duration::from_millis(10));
        assert!(b.can(250), "a full bucket lets a larger request through");
        b.take(250);
        assert_eq!(b.budget, -150);
        assert!(b.wait_for(250) >= Duration::from_millis(25));
    }

    #[test]
    fn a_limiter_restored_from_its_state_has_its_buckets_and_budgets() {
        let limit = RateLimit {
            bandwidth: Some(bucket(1000, 300, 100)),
            ops: Some(bucket(4, 0, 1000)),
        };
        let mut l = RateLimiter::new(limit);
        assert!(l.consume(700), "300 from the burst, 400 from the bucket");
        assert!(l.consume(100));
        let state = l.state();
        let bw = state.bandwidth.unwrap();
        assert_eq!((bw.budget, bw.burst), (500, 0));
        assert_eq!(state.ops.unwrap().budget, 2);
        // The state goes through the snapshot file's encoding.
        let bytes = postcard::to_stdvec(&state).unwrap();
        let back: LimiterState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, state);

        let mut restored = RateLimiter::new(RateLimit::default());
        restored.restore(&back).unwrap();
        assert_eq!(restored.limit(), limit);
        let again = restored.state();
        assert_eq!(again.bandwidth.unwrap().budget, 500);
        assert_eq!(again.ops.unwrap().budget, 2);
        // The restored buckets limit: two more requests, then the ops bucket is empty.
        assert!(restored.consume(10) && restored.consume(10));
        assert!(!restored.consume(10), "the ops bucket was spent");

        // What the API would refuse is refused here too.
        let mut bad = state;
        bad.ops.as_mut().unwrap().config.refill_time_ms = 0;
        assert!(restored.restore(&bad).is_err());
        let mut bad = state;
        bad.bandwidth.as_mut().unwrap().burst = 301;
        assert!(restored.restore(&bad).is_err());
        assert_eq!(restored.limit(), limit, "a refused state changes nothing");
    }

    #[test]
    fn the_limiter_blocks_and_arms_its_timer() {
        let mut l = RateLimiter::new(RateLimit {
            bandwidth: None,
            ops: Some(bucket(2, 0, 1000)),
        });
        assert!(l.consume(0) && l.consume(0));
        assert!(!l.consume(0));
        assert!(l.blocked);
        l.update(RateLimitUpdate {
            bandwidth: None,
            ops: Some(None),
        });
        std::thread::sleep(Duration::from_millis(2));
        assert!(l.expired());
        assert!(l.consume(0), "no ops bucket any more");
        assert!(RateLimiter::new(RateLimit::default()).consume(u64::MAX));
    }
}
