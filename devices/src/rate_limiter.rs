//! Token-bucket rate limiting of device I/O (bytes and operations).
//!
//! A device charges each request against up to two buckets (bandwidth in
//! bytes, operations). When a bucket runs dry the limiter becomes *blocked*:
//! every further request is refused until its timer fd fires, so requests are
//! never reordered. The device registers that fd with its event loop and calls
//! [`RateLimiter::event_handler`] when it is readable, then retries.
//!
//! All arithmetic is integer (u128 where products can be large, checked
//! where they can still overflow), and the fractional tokens of a partial
//! refill are carried over exactly, so long runs do not drift.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

const NANOS_PER_MILLI: u128 = 1_000_000;
/// Shortest timer we arm: a zero duration would disarm a timerfd instead.
const MIN_WAIT: Duration = Duration::from_micros(1);

/// How one bucket is sized, as the VM configuration gives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full; 0 disables the bucket (unlimited).
    pub size: u64,
    /// Extra tokens usable once (e.g. a fast boot), spent before the budget.
    pub one_time_burst: u64,
    /// Time to refill an empty bucket completely; 0 disables the bucket.
    pub refill_time_ms: u64,
}

/// Which bucket a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The bandwidth bucket (tokens are bytes).
    Bytes,
    /// The operations bucket (tokens are requests).
    Ops,
}

/// Outcome of charging a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The tokens were taken.
    Taken,
    /// Not enough tokens; enough will have refilled after this long (capped
    /// at the refill time, so an oversized request retries at least that often).
    Wait(Duration),
}

/// A token bucket: `size` tokens refilled linearly over `refill_time_ms`.
///
/// A request larger than `size` could never fit, so it is allowed as soon as
/// the bucket is full: it empties the bucket and the excess becomes a debt
/// that later refills pay off first. The long-run rate therefore stays exact.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    burst: u64,
    refill_ns: u128,
    budget: u64,
    debt: u64,
    /// Refill progress below one token, in units of token/`refill_ns`.
    carry: u128,
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` if the config disables it (size or refill 0).
    pub fn new(config: BucketConfig, now: Instant) -> Option<Self> {
        if config.size == 0 || config.refill_time_ms == 0 {
            return None;
        }
        Some(Self {
            size: config.size,
            burst: config.one_time_burst,
            refill_ns: u128::from(config.refill_time_ms) * NANOS_PER_MILLI,
            budget: config.size,
            debt: 0,
            carry: 0,
            last_update: now,
        })
    }

    /// What a snapshot keeps of the bucket: what is left to spend.
    pub fn state(&self) -> BucketState {
        BucketState {
            budget: self.budget,
            one_time_burst: self.burst,
            debt: self.debt,
        }
    }

    /// Puts saved levels back (clamped to this bucket's size); refilling
    /// continues from now.
    pub fn restore_state(&mut self, state: &BucketState, now: Instant) {
        self.budget = state.budget.min(self.size);
        self.burst = state.one_time_burst;
        self.debt = state.debt;
        self.carry = 0;
        self.last_update = now;
    }

    /// Regular tokens available now (not counting the one-time burst).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// One-time burst tokens not yet spent.
    pub fn one_time_burst(&self) -> u64 {
        self.burst
    }

    /// Adds the tokens that refilled between the last update and `now`.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        self.last_update = now;
        let total = elapsed
            .checked_mul(u128::from(self.size))
            .and_then(|p| p.checked_add(self.carry));
        let Some(total) = total else {
            // Centuries have passed: the bucket is certainly full.
            self.fill();
            return;
        };
        let mut tokens = total / self.refill_ns;
        self.carry = total % self.refill_ns;
        let paid = tokens.min(u128::from(self.debt));
        self.debt -= paid as u64; // paid <= debt, a u64
        tokens -= paid;
        let room = u128::from(self.size - self.budget);
        if tokens >= room {
            self.fill();
        } else {
            self.budget += tokens as u64; // tokens < room <= u64::MAX
        }
    }

    fn fill(&mut self) {
        self.budget = self.size;
        self.debt = 0;
        self.carry = 0;
    }

    /// Takes `tokens` as of `now` (burst first, then the budget), or says how
    /// long to wait. A refused request takes nothing.
    pub fn reduce_at(&mut self, tokens: u64, now: Instant) -> Reduction {
        self.refill(now);
        if tokens <= self.burst {
            self.burst -= tokens;
            return Reduction::Taken;
        }
        let rest = tokens - self.burst;
        if self.debt == 0 && rest <= self.budget {
            self.burst = 0;
            self.budget -= rest;
            return Reduction::Taken;
        }
        if rest > self.size && self.budget == self.size {
            self.burst = 0;
            self.budget = 0;
            self.debt = rest - self.size;
            return Reduction::Taken;
        }
        Reduction::Wait(self.wait_for(rest.min(self.size)))
    }

    /// How long until the budget holds `want` tokens (with no debt left).
    fn wait_for(&self, want: u64) -> Duration {
        let cap = nanos_to_duration(self.refill_ns);
        let missing = u128::from(want.saturating_sub(self.budget)) + u128::from(self.debt);
        let ns = missing
            .checked_mul(self.refill_ns)
            .map(|n| n.saturating_sub(self.carry))
            .map(|n| n.div_ceil(u128::from(self.size)));
        match ns {
            Some(ns) => nanos_to_duration(ns).min(cap).max(MIN_WAIT),
            None => cap,
        }
    }

    /// Gives back `tokens` (never beyond a full bucket); debt is repaid first.
    pub fn replenish(&mut self, tokens: u64) {
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        self.budget = self.budget.saturating_add(tokens - paid).min(self.size);
    }
}

fn nanos_to_duration(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

/// A bucket's levels in a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketState {
    /// Regular tokens left.
    pub budget: u64,
    /// One-time burst tokens left.
    pub one_time_burst: u64,
    /// Tokens owed by an oversize request.
    pub debt: u64,
}

/// A limiter's levels in a snapshot (`None`: that bucket is unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateLimiterState {
    /// The bandwidth bucket.
    pub bandwidth: Option<BucketState>,
    /// The operations bucket.
    pub ops: Option<BucketState>,
}

/// A limiter's two buckets, as a run-time update gives them.
pub type Limits = (Option<BucketConfig>, Option<BucketConfig>);

/// Limits a device direction (e.g. net TX) in bandwidth and operations.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// Set while the timer is armed: requests are refused until it fires.
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with the given buckets (`None` or size 0: unlimited).
    pub fn new(bandwidth: Option<BucketConfig>, ops: Option<BucketConfig>) -> io::Result<Self> {
        let now = Instant::now();
        Ok(Self {
            bandwidth: bandwidth.and_then(|c| TokenBucket::new(c, now)),
            ops: ops.and_then(|c| TokenBucket::new(c, now)),
            timer: TimerFd::new().map_err(io::Error::from)?,
            blocked: false,
        })
    }

    /// Replaces the buckets (a run-time `PATCH` of the limits). The timer fd
    /// stays the same, so the device's event loop registration stays valid;
    /// new buckets start full.
    pub fn update_buckets(&mut self, bandwidth: Option<BucketConfig>, ops: Option<BucketConfig>) {
        let now = Instant::now();
        self.bandwidth = bandwidth.and_then(|c| TokenBucket::new(c, now));
        self.ops = ops.and_then(|c| TokenBucket::new(c, now));
    }

    /// The buckets' levels, for a snapshot.
    pub fn state(&self) -> RateLimiterState {
        RateLimiterState {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::state),
            ops: self.ops.as_ref().map(TokenBucket::state),
        }
    }

    /// Puts saved levels back into the buckets this limiter has (a restored
    /// VM keeps what it had left to spend instead of starting full).
    pub fn restore_state(&mut self, state: &RateLimiterState) {
        let now = Instant::now();
        if let (Some(bucket), Some(saved)) = (self.bandwidth.as_mut(), state.bandwidth.as_ref()) {
            bucket.restore_state(saved, now);
        }
        if let (Some(bucket), Some(saved)) = (self.ops.as_mut(), state.ops.as_ref()) {
            bucket.restore_state(saved, now);
        }
    }

    fn bucket_mut(&mut self, kind: TokenKind) -> Option<&mut TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_mut(),
            TokenKind::Ops => self.ops.as_mut(),
        }
    }

    /// The bucket for `kind`, if it is limited (for inspection and snapshots).
    pub fn bucket(&self, kind: TokenKind) -> Option<&TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_ref(),
            TokenKind::Ops => self.ops.as_ref(),
        }
    }

    /// Charges `tokens` to the `kind` bucket. `false`: refused (the limiter
    /// is blocked, or now becomes blocked with its timer armed for when the
    /// request will fit); the caller retries after [`Self::event_handler`].
    pub fn consume(&mut self, tokens: u64, kind: TokenKind) -> bool {
        if self.blocked {
            return false;
        }
        let Some(bucket) = self.bucket_mut(kind) else {
            return true;
        };
        match bucket.reduce_at(tokens, Instant::now()) {
            Reduction::Taken => true,
            Reduction::Wait(wait) => {
                match self.timer.reset(wait, None) {
                    Ok(()) => self.blocked = true,
                    // Without a timer nothing would ever unblock us: refuse
                    // this once and let the next event retry.
                    Err(e) => log::error!("rate limiter: arming the timer: {e}"),
                }
                false
            }
        }
    }

    /// Gives back tokens charged for an operation that could not run.
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenKind) {
        if let Some(bucket) = self.bucket_mut(kind) {
            bucket.replenish(tokens);
        }
    }

    /// Whether requests are refused until the timer fires.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Handles the timer fd becoming readable: consumes the expiration and
    /// unblocks. A spurious call (timer not armed or not yet expired) does
    /// nothing and never blocks the caller.
    pub fn event_handler(&mut self) -> io::Result<()> {
        if !self.blocked {
            return Ok(());
        }
        // The timerfd is blocking: only read it once it has expired.
        if self.timer.is_armed().map_err(io::Error::from)? {
            log::debug!("rate limiter: timer event before expiry; still blocked");
            return Ok(());
        }
        self.timer.wait().map_err(io::Error::from)?;
        self.blocked = false;
        Ok(())
    }
}

impl AsRawFd for RateLimiter {
    /// The timer fd, to register with epoll (readable when it unblocks).
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn levels_survive_a_snapshot_round_trip() {
        let cfg = BucketConfig {
            size: 1000,
            one_time_burst: 0,
            refill_time_ms: 60_000,
        };
        let mut limiter = RateLimiter::new(Some(cfg), None).unwrap();
        assert!(limiter.consume(900, TokenKind::Bytes));
        let saved = limiter.state();
        assert!(saved.ops.is_none());
        let mut restored = RateLimiter::new(Some(cfg), None).unwrap();
        restored.restore_state(&saved);
        assert!(
            !restored.consume(500, TokenKind::Bytes),
            "only ~100 tokens were left"
        );
        // Hostile levels are clamped to the bucket's size.
        let mut clamped = RateLimiter::new(Some(cfg), None).unwrap();
        clamped.restore_state(&RateLimiterState {
            bandwidth: Some(BucketState {
                budget: u64::MAX,
                one_time_burst: 0,
                debt: 0,
            }),
            ops: None,
        });
        assert_eq!(clamped.bucket(TokenKind::Bytes).unwrap().budget(), 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: u64, one_time_burst: u64, refill_time_ms: u64) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn half_the_refill_time_refills_half_the_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(1000, 0, 100), t0).unwrap();
        assert_eq!(b.reduce_at(1000, t0), Reduction::Taken);
        assert_eq!(b.reduce_at(1, t0), Reduction::Wait(ms(100) / 1000));
        assert_eq!(b.reduce_at(500, t0 + ms(50)), Reduction::Taken);
        assert_eq!(b.budget(), 0);
        // Never more than full.
        assert_eq!(b.reduce_at(0, t0 + ms(10_000)), Reduction::Taken);
        assert_eq!(b.budget(), 1000);
    }

    #[test]
    fn fractional_refills_do_not_drift() {
        // 3 tokens per 10 ms: 1 ms steps give 0.3 tokens each.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(3, 0, 10), t0).unwrap();
        assert_eq!(b.reduce_at(3, t0), Reduction::Taken);
        let mut got = 0;
        for i in 1..=1000 {
            if b.reduce_at(1, t0 + ms(i)) == Reduction::Taken {
                got += 1;
            }
        }
        assert_eq!(got, 300);
    }

    #[test]
    fn burst_is_used_first_then_the_budget() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(100, 50, 1000), t0).unwrap();
        assert_eq!(b.reduce_at(30, t0), Reduction::Taken);
        assert_eq!((b.one_time_burst(), b.budget()), (20, 100));
        assert_eq!(b.reduce_at(70, t0), Reduction::Taken);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 50));
        assert!(matches!(b.reduce_at(51, t0), Reduction::Wait(_)));
        assert_eq!(b.budget(), 50, "a refused request takes nothing");
        // The burst never comes back.
        assert_eq!(b.reduce_at(0, t0 + ms(5000)), Reduction::Taken);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 100));
    }

    #[test]
    fn oversized_request_passes_when_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(cfg(100, 0, 100), t0).unwrap();
        assert_eq!(b.reduce_at(10, t0), Reduction::Taken);
        // Not full: wait, capped at the refill time.
        assert_eq!(b.reduce_at(250, t0), Reduction::Wait(ms(10)));
        assert_eq!(b.reduce_at(250, t0 + ms(10)), Reduction::Taken);
        // 150 tokens of debt: 1.5 refills before the next token.
        assert_eq!(b.reduce_at(1, t0 + ms(10)), Reduction::Wait(ms(100)));
        assert!(matches!(b.reduce_at(1, t0 + ms(155)), Reduction::Wait(_)));
        assert_eq!(b.reduce_at(1, t0 + ms(161)), Reduction::Taken);
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let t0 = Instant::now();
        let big = cfg(u64::MAX, u64::MAX, u64::MAX);
        let mut b = TokenBucket::new(big, t0).unwrap();
        assert_eq!(b.reduce_at(u64::MAX, t0), Reduction::Taken);
        assert_eq!(b.reduce_at(u64::MAX, t0), Reduction::Taken);
        assert!(matches!(b.reduce_at(u64::MAX, t0), Reduction::Wait(_)));
        assert_eq!(b.reduce_at(1, t0 + ms(1)), Reduction::Taken);
        let later = t0 + Duration::from_secs(100 * 365 * 86_400);
        assert!(matches!(b.reduce_at(u64::MAX, later), Reduction::Wait(_)));
        b.replenish(u64::MAX);
        assert_eq!(b.budget(), u64::MAX);
        // Tiny refill time, huge size.
        let mut b = TokenBucket::new(cfg(u64::MAX, 0, 1), t0).unwrap();
        assert_eq!(b.reduce_at(u64::MAX, t0), Reduction::Taken);
        assert_eq!(b.reduce_at(u64::MAX, later), Reduction::Taken);
        // So much time that elapsed * size overflows u128: simply full.
        let mut b = TokenBucket::new(cfg(u64::MAX, 0, u64::MAX), t0).unwrap();
        assert_eq!(b.reduce_at(u64::MAX, t0), Reduction::Taken);
        let much_later = t0 + Duration::from_secs(1000 * 365 * 86_400);
        assert_eq!(b.reduce_at(u64::MAX, much_later), Reduction::Taken);
    }

    #[test]
    fn unlimited_buckets_never_block() {
        let mut rl = RateLimiter::new(None, Some(cfg(0, 0, 100))).unwrap();
        let mut rl2 = RateLimiter::new(Some(cfg(100, 0, 0)), None).unwrap();
        for _ in 0..1000 {
            assert!(rl.consume(u64::MAX, TokenKind::Bytes));
            assert!(rl.consume(u64::MAX, TokenKind::Ops));
            assert!(rl2.consume(u64::MAX, TokenKind::Bytes));
        }
        assert!(!rl.is_blocked() && !rl2.is_blocked());
        rl.event_handler().unwrap(); // spurious: returns at once
    }

    #[test]
    fn blocked_limiter_arms_its_timer_and_the_event_unblocks_it() {
        let mut rl = RateLimiter::new(Some(cfg(1000, 0, 40)), Some(cfg(10, 0, 1000))).unwrap();
        assert!(rl.consume(1000, TokenKind::Bytes));
        assert!(!rl.consume(500, TokenKind::Bytes));
        assert!(rl.is_blocked());
        assert!(rl.timer.is_armed().unwrap());
        // While blocked even the other bucket refuses (keeps order).
        assert!(!rl.consume(1, TokenKind::Ops));
        rl.event_handler().unwrap();
        assert!(rl.is_blocked(), "an early event does not unblock");
        std::thread::sleep(ms(25));
        rl.event_handler().unwrap();
        assert!(!rl.is_blocked());
        assert!(rl.consume(500, TokenKind::Bytes));
        assert!(rl.consume(1, TokenKind::Ops));
    }

    #[test]
    fn manual_replenish_gives_tokens_back() {
        let mut rl = RateLimiter::new(Some(cfg(100, 0, 100_000)), None).unwrap();
        assert!(rl.consume(100, TokenKind::Bytes));
        rl.manual_replenish(60, TokenKind::Bytes);
        rl.manual_replenish(60, TokenKind::Ops); // unlimited: no-op
        assert!(rl.consume(60, TokenKind::Bytes));
        assert!(!rl.consume(1, TokenKind::Bytes));
    }

    #[test]
    fn request_larger_than_the_bucket_completes_eventually() {
        let mut rl = RateLimiter::new(Some(cfg(100, 0, 20)), None).unwrap();
        assert!(rl.consume(1, TokenKind::Bytes));
        let start = Instant::now();
        while !rl.consume(1000, TokenKind::Bytes) {
            assert!(rl.is_blocked());
            std::thread::sleep(ms(5));
            rl.event_handler().unwrap();
            assert!(start.elapsed() < Duration::from_secs(5), "deadlocked");
        }
        // Its debt (900 tokens = 180 ms) delays the next request.
        assert!(!rl.consume(1, TokenKind::Bytes));
    }
}
