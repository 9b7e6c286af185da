//! The per-token push rate limit, counted across every ingest replica.
//!
//! A monitor's push token may push `n` times per second (or minute, or hour)
//! sustained, with bursts of `b` (`LIFELINE_PUSH_RATE=10/s`,
//! `LIFELINE_PUSH_BURST=20`). A push over the limit is answered 429 with a
//! `Retry-After` and publishes nothing (invariant 7).
//!
//! # The shared bucket
//!
//! The authority is one generic cell rate algorithm (GCRA) bucket per
//! monitor in Redis ([`Store::take_push_tokens`]): a single number, the
//! "theoretical arrival time" (TAT, Redis clock, ms). Each push moves it on
//! by the emission interval `T = period / n`; a push is admitted while
//! `TAT + T - now <= b × T`. So from an idle start `b` pushes pass at once,
//! then one per `T`, and over any span `D` at most `b + D / T` pass, however
//! many replicas share the work. The script (in the store) reads the time
//! from Redis, so replicas' clocks do not matter, and touches one key, so it
//! is ready for Redis Cluster.
//!
//! # Local leases: no Redis round trip per push at high rates
//!
//! A replica does not ask Redis for every push. It *leases* tokens: one
//! script call takes up to `k` tokens from the shared bucket at once (fewer
//! if fewer are left), and the replica admits the next `k - 1` pushes of
//! that monitor from the lease, in memory. A lease lives as long as the
//! bucket takes to refill the burst (`b × T`, from 1 to 5 s: 2 s at the
//! default 10/s, bursts of 20). `k` starts at 1; a lease used up within its
//! life (a monitor pushing more often than that) makes the next one as large
//! as the pace seen would use in a lease's life, up to a quarter of the
//! burst and of what the bucket refills in that time; a lease that expires
//! with tokens left makes the next one half as large, and a monitor pushing
//! less often than a lease lives asks for one token a time. When the
//! bucket is empty the script says how long until the next token, and the
//! replica refuses that monitor's pushes locally until then. One push per
//! monitor and replica asks at a time; concurrent pushes of that monitor
//! use leased tokens or wait for its answer, so they cannot lease the
//! bucket empty between them and be refused while a lease holds tokens for
//! them. Costs: a cron job pushing every minute pays one script call per
//! push (beside the token lookup it pays anyway); one pushing twice a
//! second, about one call per four pushes; a monitor hammering far above
//! its limit costs one call per refusal period per replica, not one per
//! push.
//!
//! # Precision
//!
//! Leased tokens are charged to the shared bucket when taken, so the limit
//! is never exceeded across replicas — not even by a burst arriving on all
//! of them at once. The error is on the strict side: tokens a replica
//! leased but did not use (its traffic moved to another replica, or
//! stopped) are dropped when the lease expires and never returned, so for up
//! to a lease's life a monitor may be refused up to `k - 1` pushes per
//! replica that a single exact counter would have admitted; since `k` is at
//! most a quarter of what the bucket refills meanwhile, a monitor pushing
//! below 75 % of its rate through one replica is not refused for it.
//! `Retry-After` is the exact wait rounded up to whole seconds (at least 1):
//! a client that waits it is admitted, unless the monitor's other clients
//! used the token first.
//!
//! While Redis is unreachable (a call fails or takes longer than
//! [`REDIS_TIMEOUT`]) a replica stops asking it for [`REDIS_BACKOFF`] and
//! enforces the limit on its own with a local bucket: the limit then holds
//! per replica, not across them. (Pushes of tokens not cached already answer
//! 503 then anyway: resolving a token needs Redis.)

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lifeline_shared::store::Store;
use tokio::sync::{Notify, futures::OwnedNotified};

/// Longest wait for the shared bucket before deciding locally.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// After a failed call, how long the shared bucket is not asked.
pub(crate) const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// The tracked monitors, and the size at which idle ones are next swept.
struct Tracked {
    map: HashMap<String, Entry>,
    sweep_at: usize,
}

/// Monitors tracked before idle ones are first swept.
const SWEEP_AT: usize = 10_000;

/// A monitor not pushed for this long is forgotten (its shared bucket is
/// empty again by then, or still holds what it owes).
const IDLE: Duration = Duration::from_secs(60);

/// The configured limit: `count` pushes per `period` sustained, bursts of
/// `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Pushes per `period`.
    pub count: u32,
    /// One second, minute or hour.
    pub period: Duration,
    /// Pushes admitted at once from idle.
    pub burst: u32,
}

impl RateLimit {
    /// The default: 10 pushes per second, bursts of 20.
    pub const DEFAULT: Self = Self {
        count: 10,
        period: Duration::from_secs(1),
        burst: 20,
    };

    /// Largest count or burst accepted.
    pub const MAX: u32 = 1_000_000;

    /// Parses a rate `<n>/s`, `<n>/m` or `<n>/h` (`n` from 1 to 1000000),
    /// or `off` (no limit: `None`), with a burst from 1 to 1000000.
    pub fn parse(rate: &str, burst: u32) -> Result<Option<Self>, String> {
        let rate = rate.trim();
        if rate.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let syntax = || format!("{rate:?} must be <n>/s, <n>/m, <n>/h or off, e.g. 10/s");
        let (n, unit) = rate.split_once('/').ok_or_else(syntax)?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(syntax()),
        };
        let count: u32 = n.trim().parse().map_err(|_| syntax())?;
        if !(1..=Self::MAX).contains(&count) {
            return Err(format!(
                "{rate:?}: the count must be from 1 to {}",
                Self::MAX
            ));
        }
        if !(1..=Self::MAX).contains(&burst) {
            return Err(format!("burst {burst} must be from 1 to {}", Self::MAX));
        }
        Ok(Some(Self {
            count,
            period,
            burst,
        }))
    }

    /// The emission interval `T`, in ms.
    fn interval_ms(&self) -> f64 {
        self.period.as_secs_f64() * 1000.0 / f64::from(self.count)
    }

    /// `b × T`, in ms.
    fn tolerance_ms(&self) -> f64 {
        self.interval_ms() * f64::from(self.burst)
    }

    /// How long leased tokens may be used: the time the bucket takes to
    /// refill the burst, from 1 to 5 s. A lease used up within it makes the
    /// next one larger.
    fn lease_ttl(&self) -> Duration {
        Duration::from_secs_f64(self.tolerance_ms() / 1000.0)
            .clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Largest lease: a quarter of the burst, and a quarter of what the
    /// bucket refills while a lease lives (so tokens a lease drops unused
    /// cost a monitor at most a quarter of its rate); at least 1.
    fn max_lease(&self) -> u32 {
        let refill = self.lease_ttl().as_secs_f64() * 1000.0 / self.interval_ms();
        let quarter = (refill / 4.0).floor() as u32;
        (self.burst / 4).min(quarter).max(1)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            _ => "hour",
        };
        write!(
            f,
            "at most {} pushes per {unit} (bursts of {})",
            self.count, self.burst
        )
    }
}

/// A refused push: how long until the next one may pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Refused {
    /// The exact wait.
    pub(crate) wait: Duration,
}

impl Refused {
    /// The `Retry-After` value: the wait in whole seconds, rounded up, ≥ 1.
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let ms = self.wait.as_millis();
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1)
    }
}

/// A local GCRA bucket (the fallback while Redis is unreachable). Pure:
/// times are ms on any monotonic clock.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Gcra {
    tat: f64,
}

/// Slack for float rounding in bucket arithmetic, in ms.
const EPSILON_MS: f64 = 1e-6;

impl Gcra {
    /// Admits one push at `now`, or says how long until one may pass.
    pub(crate) fn admit(&mut self, limit: &RateLimit, now: f64) -> Result<(), Refused> {
        let interval = limit.interval_ms();
        let next = self.tat.max(now) + interval;
        let over = next - now - limit.tolerance_ms();
        if over <= EPSILON_MS {
            self.tat = next;
            Ok(())
        } else {
            Err(Refused {
                wait: Duration::from_secs_f64(over / 1000.0),
            })
        }
    }
}

/// What the shared bucket answered to a lease request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Grant {
    /// Tokens granted (0: the bucket is empty).
    pub(crate) granted: u32,
    /// `TAT - now` after the grant, in ms.
    pub(crate) debt_ms: f64,
}

impl Grant {
    /// For an empty grant: how long until one token is back.
    fn refused(&self, limit: &RateLimit) -> Refused {
        let over = (self.debt_ms + limit.interval_ms() - limit.tolerance_ms()).max(1.0);
        Refused {
            wait: Duration::from_secs_f64(over / 1000.0),
        }
    }
}

/// What a replica knows of one monitor's bucket.
#[derive(Debug)]
struct Entry {
    /// Tokens leased from the shared bucket and not used yet.
    leased: u32,
    /// When the last lease was taken (`None`: never).
    leased_at: Option<Instant>,
    /// Tokens the next lease asks for.
    lease_size: u32,
    /// Refused locally until then (the shared bucket is empty).
    blocked_until: Option<Instant>,
    /// The replica's own bucket, used while Redis is unreachable.
    fallback: Gcra,
    /// The last push checked.
    last_used: Instant,
    /// Set while a push of this monitor asks the shared bucket.
    asking: Option<Arc<Notify>>,
}

impl Entry {
    /// Uses one leased token, if a fresh one is left.
    fn take_leased(&mut self, now: Instant, limit: &RateLimit) -> bool {
        let fresh = self
            .leased_at
            .is_some_and(|at| now.duration_since(at) < limit.lease_ttl());
        if self.leased > 0 && fresh {
            self.leased -= 1;
            true
        } else {
            false
        }
    }

    fn new(now: Instant) -> Self {
        Self {
            leased: 0,
            leased_at: None,
            lease_size: 1,
            blocked_until: None,
            fallback: Gcra::default(),
            last_used: now,
            asking: None,
        }
    }
}

/// What the in-memory state decided for a push.
#[derive(Debug, PartialEq)]
enum Local {
    /// Admitted from a lease.
    Admit,
    /// Refused: the shared bucket said it is empty.
    Refuse(Refused),
    /// Ask the shared bucket for a lease of this many tokens.
    Ask(u32),
}

/// What [`Limiter::local`] decided.
enum Decision {
    /// Decided (or: ask the shared bucket).
    Now(Local),
    /// Wait for the push asking the shared bucket, then decide again.
    Wait(OwnedNotified),
}

/// Marks the push asking the shared bucket for a monitor; dropping it lets
/// the pushes waiting for that answer decide again.
struct Asking<'a> {
    limiter: &'a Limiter,
    monitor_id: &'a str,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut entries = self.limiter.entries.lock().expect("limiter lock");
        if let Some(asking) = entries
            .map
            .get_mut(self.monitor_id)
            .and_then(|e| e.asking.take())
        {
            asking.notify_waiters();
        }
    }
}

/// The rate limiter of one ingest replica.
pub(crate) struct Limiter {
    limit: RateLimit,
    store: Store,
    epoch: Instant,
    entries: Mutex<Tracked>,
    redis_down_until: Mutex<Option<Instant>>,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit, store: Store) -> Self {
        Self {
            limit,
            store,
            epoch: Instant::now(),
            entries: Mutex::new(Tracked {
                map: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
            redis_down_until: Mutex::new(None),
        }
    }

    /// The configured limit.
    pub(crate) fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Admits one push of `monitor_id`, or says how long to wait.
    pub(crate) async fn check(&self, monitor_id: &str) -> Result<(), Refused> {
        let want = loop {
            match self.local(monitor_id, Instant::now()) {
                Decision::Now(Local::Admit) => return Ok(()),
                Decision::Now(Local::Refuse(r)) => return Err(r),
                Decision::Now(Local::Ask(want)) => break want,
                // Another push of this monitor is asking the shared
                // bucket: decide again once its answer is in.
                Decision::Wait(answered) => answered.await,
            }
        };
        // However this ends (even dropped mid-way: the client went away),
        // pushes waiting for this answer are woken.
        let _asking = Asking {
            limiter: self,
            monitor_id,
        };
        let down = self
            .redis_down_until
            .lock()
            .expect("limiter lock")
            .is_some_and(|t| Instant::now() < t);
        let grant = if down {
            None
        } else {
            self.take(monitor_id, want).await
        };
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("limiter lock");
        let entry = entries
            .map
            .entry(monitor_id.to_owned())
            .or_insert_with(|| Entry::new(now));
        let ms = now.duration_since(self.epoch).as_secs_f64() * 1000.0;
        match grant {
            // Redis unreachable: this replica's own bucket decides.
            None => entry.fallback.admit(&self.limit, ms),
            // Empty, but a concurrent push of this monitor leased tokens
            // meanwhile: use one of those.
            Some(g) if g.granted == 0 && entry.take_leased(now, &self.limit) => Ok(()),
            Some(g) if g.granted == 0 => {
                let refused = g.refused(&self.limit);
                entry.blocked_until = Some(now + refused.wait);
                Err(refused)
            }
            Some(g) => {
                entry.leased = entry.leased.saturating_add(g.granted - 1);
                entry.leased_at = Some(now);
                Ok(())
            }
        }
    }

    /// Decides from memory when it can. One push per monitor at a time asks
    /// the shared bucket; others arriving meanwhile use leased tokens or
    /// wait for its answer, so concurrent pushes of one monitor never lease
    /// its bucket empty between them (and are refused while a lease holds
    /// tokens for them).
    fn local(&self, monitor_id: &str, now: Instant) -> Decision {
        let mut entries = self.entries.lock().expect("limiter lock");
        if !entries.map.contains_key(monitor_id) && entries.map.len() >= entries.sweep_at {
            entries
                .map
                .retain(|_, e| now.duration_since(e.last_used) < IDLE);
            // Next sweep once the map has doubled: amortised O(1) per push
            // even when every tracked monitor is active.
            entries.sweep_at = (entries.map.len() * 2).max(SWEEP_AT);
        }
        let entry = entries
            .map
            .entry(monitor_id.to_owned())
            .or_insert_with(|| Entry::new(now));
        entry.last_used = now;
        if let Some(asking) = entry.asking.clone() {
            if entry.take_leased(now, &self.limit) {
                return Decision::Now(Local::Admit);
            }
            return Decision::Wait(asking.notified_owned());
        }
        let local = decide(entry, &self.limit, now);
        if matches!(local, Local::Ask(_)) {
            entry.asking = Some(Arc::new(Notify::new()));
        }
        Decision::Now(local)
    }

    /// Takes up to `want` tokens from the shared bucket; `None` when Redis
    /// did not answer (it is then not asked for [`REDIS_BACKOFF`]).
    async fn take(&self, monitor_id: &str, want: u32) -> Option<Grant> {
        let call = self.store.take_push_tokens(
            monitor_id,
            self.limit.interval_ms(),
            self.limit.tolerance_ms(),
            want,
        );
        let error = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(taken)) => {
                return Some(Grant {
                    granted: taken.granted,
                    debt_ms: taken.debt_ms as f64,
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", REDIS_TIMEOUT.as_millis()),
        };
        let mut down = self.redis_down_until.lock().expect("limiter lock");
        if down.is_none_or(|t| Instant::now() >= t) {
            tracing::warn!(
                %error,
                "push rate limit: shared bucket unreachable, limiting per replica for now"
            );
        }
        *down = Some(Instant::now() + REDIS_BACKOFF);
        None
    }
}

/// The in-memory decision for one push (pure, apart from updating `entry`).
fn decide(entry: &mut Entry, limit: &RateLimit, now: Instant) -> Local {
    // Tokens already leased come first: concurrent pushes of one monitor
    // may have leased the bucket empty between them, and one of them
    // finding it empty must not strand the tokens the others hold.
    if entry.take_leased(now, limit) {
        return Local::Admit;
    }
    if let Some(until) = entry.blocked_until {
        if now < until {
            return Local::Refuse(Refused { wait: until - now });
        }
        entry.blocked_until = None;
    }
    let lease_age = entry.leased_at.map(|at| now.duration_since(at));
    // The last lease is used up (or expired): size the next one by how fast
    // the last one went.
    let ttl = limit.lease_ttl();
    entry.lease_size = match lease_age {
        // Expired with tokens left: too large for this monitor's pace.
        _ if entry.leased > 0 => (entry.lease_size / 2).max(1),
        // Used up: `k` pushes in `age` (this one included), one every
        // `age / k`; if that is shorter than a lease lives, the next lease
        // is what this pace uses in a lease's life.
        Some(age) if age / entry.lease_size < ttl => {
            let every = age.as_secs_f64() / f64::from(entry.lease_size);
            let fit = ttl.as_secs_f64() / every;
            if fit.is_finite() {
                (fit.floor() as u32).clamp(1, limit.max_lease())
            } else {
                limit.max_lease()
            }
        }
        _ => 1,
    };
    entry.leased = 0;
    Local::Ask(entry.lease_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PER_S: RateLimit = RateLimit::DEFAULT;

    #[test]
    fn parses_rates() {
        let p = |r: &str, b| RateLimit::parse(r, b);
        assert_eq!(p("10/s", 20).unwrap(), Some(TEN_PER_S));
        assert_eq!(
            p(" 6/m ", 3).unwrap(),
            Some(RateLimit {
                count: 6,
                period: Duration::from_secs(60),
                burst: 3
            })
        );
        assert_eq!(
            p("100/h", 1).unwrap().unwrap().period,
            Duration::from_secs(3600)
        );
        assert_eq!(p("off", 20).unwrap(), None);
        assert_eq!(p("OFF", 0).unwrap(), None);
        for bad in [
            "",
            "10",
            "10/d",
            "/s",
            "x/s",
            "0/s",
            "-1/s",
            "1.5/s",
            "2000000/s",
        ] {
            assert!(p(bad, 20).is_err(), "{bad}");
        }
        assert!(p("10/s", 0).is_err());
        assert_eq!(
            TEN_PER_S.to_string(),
            "at most 10 pushes per second (bursts of 20)"
        );
    }

    #[test]
    fn gcra_admits_a_burst_then_the_rate() {
        let mut b = Gcra::default();
        let t0 = 1_000_000.0;
        for i in 0..20 {
            assert_eq!(b.admit(&TEN_PER_S, t0), Ok(()), "push {i} of the burst");
        }
        let refused = b.admit(&TEN_PER_S, t0).unwrap_err();
        assert_eq!(refused.wait, Duration::from_millis(100));
        assert_eq!(refused.retry_after_secs(), 1);
        // One more every 100 ms.
        assert!(b.admit(&TEN_PER_S, t0 + 99.0).is_err());
        assert!(b.admit(&TEN_PER_S, t0 + 100.0).is_ok());
        assert!(b.admit(&TEN_PER_S, t0 + 100.0).is_err());
        // Over any span D at most burst + D / T pass.
        let mut b = Gcra::default();
        let admitted = (0..10_000)
            .filter(|i| b.admit(&TEN_PER_S, t0 + f64::from(*i)).is_ok())
            .count();
        assert_eq!(admitted, 20 + 99, "10 s at one push per ms");
    }

    #[test]
    fn gcra_refills_fully_after_idle() {
        let mut b = Gcra::default();
        for _ in 0..20 {
            b.admit(&TEN_PER_S, 0.0).unwrap();
        }
        assert!(b.admit(&TEN_PER_S, 0.0).is_err());
        for _ in 0..20 {
            b.admit(&TEN_PER_S, 2000.0).unwrap();
        }
        assert!(b.admit(&TEN_PER_S, 2000.0).is_err());
    }

    #[test]
    fn slow_rates_wait_whole_seconds() {
        let limit = RateLimit::parse("6/m", 1).unwrap().unwrap();
        let mut b = Gcra::default();
        b.admit(&limit, 0.0).unwrap();
        let r = b.admit(&limit, 1500.0).unwrap_err();
        assert_eq!(r.wait, Duration::from_millis(8500));
        assert_eq!(r.retry_after_secs(), 9);
        assert!(b.admit(&limit, 10_000.0).is_ok());
    }

    #[test]
    fn retry_after_is_at_least_one_second_rounded_up() {
        let s = |ms| {
            Refused {
                wait: Duration::from_millis(ms),
            }
            .retry_after_secs()
        };
        assert_eq!((s(0), s(1), s(1000), s(1001), s(2500)), (1, 1, 1, 2, 3));
    }

    #[test]
    fn an_empty_grant_says_when_a_token_is_back() {
        // Bucket full: TAT = now + b × T.
        let g = Grant {
            granted: 0,
            debt_ms: 2000.0,
        };
        assert_eq!(g.refused(&TEN_PER_S).wait, Duration::from_millis(100));
        let g = Grant {
            granted: 0,
            debt_ms: 4000.0,
        };
        assert_eq!(g.refused(&TEN_PER_S).retry_after_secs(), 3);
    }

    #[test]
    fn leases_are_used_locally_fit_the_pace_and_expire() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut e = Entry::new(t0);
        // First push: ask for one token.
        assert_eq!(decide(&mut e, &TEN_PER_S, t0), Local::Ask(1));
        // Granted 1, used at once; the next push, 500 ms later, asks for
        // what that pace uses in a lease's life (2 s): 4.
        e.leased_at = Some(t0);
        assert_eq!(decide(&mut e, &TEN_PER_S, t0 + ms(500)), Local::Ask(4));
        // Granted 4: one admitted by the grant, three left in the lease.
        e.leased = 3;
        e.leased_at = Some(t0 + ms(500));
        for at in [1000, 1500, 2000] {
            assert_eq!(decide(&mut e, &TEN_PER_S, t0 + ms(at)), Local::Admit);
        }
        // Busy: up to a quarter of the burst (5).
        assert_eq!(decide(&mut e, &TEN_PER_S, t0 + ms(2010)), Local::Ask(5));
        e.leased_at = Some(t0 + ms(2010));
        // A lease left unused beyond its life (2 s here) is dropped, and the
        // next one is half as large.
        assert_eq!(TEN_PER_S.lease_ttl(), Duration::from_secs(2));
        e.leased = 3;
        let later = t0 + ms(2010) + Duration::from_secs(2);
        assert_eq!(decide(&mut e, &TEN_PER_S, later), Local::Ask(2));
        assert_eq!(e.leased, 0);
        // A monitor pushing less often than a lease lives: one token a time.
        e.leased_at = Some(later);
        let much_later = later + Duration::from_secs(3);
        assert_eq!(decide(&mut e, &TEN_PER_S, much_later), Local::Ask(1));
    }

    /// Shared-bucket calls of a monitor pushing every `every`, `n` times,
    /// each lease granted in full.
    fn asks(limit: &RateLimit, every: Duration, n: u32) -> u32 {
        let t0 = Instant::now();
        let mut e = Entry::new(t0);
        let mut asks = 0;
        for i in 0..n {
            let now = t0 + every * i;
            match decide(&mut e, limit, now) {
                Local::Admit => {}
                Local::Ask(k) => {
                    asks += 1;
                    e.leased = k - 1;
                    e.leased_at = Some(now);
                }
                Local::Refuse(r) => panic!("push {i} refused: {r:?}"),
            }
        }
        asks
    }

    #[test]
    fn a_monitor_pushing_twice_a_second_asks_about_once_per_four_pushes() {
        let twice = asks(&TEN_PER_S, Duration::from_millis(500), 400);
        assert!(twice <= 110, "{twice} calls for 400 pushes");
        let every_3_s = asks(&TEN_PER_S, Duration::from_secs(3), 100);
        assert_eq!(every_3_s, 100, "slower than a lease lives: one each");
        let busy = asks(&TEN_PER_S, Duration::from_millis(120), 400);
        assert!(busy <= 90, "{busy} calls for 400 pushes at 8/s");
    }

    #[test]
    fn a_lease_drops_at_most_a_quarter_of_the_rate() {
        let lease = |rate: &str, burst| {
            let l = RateLimit::parse(rate, burst).unwrap().unwrap();
            (l.lease_ttl(), l.max_lease())
        };
        let s = Duration::from_secs;
        assert_eq!(lease("10/s", 20), (s(2), 5));
        assert_eq!(lease("10/s", 4), (s(1), 1), "a quarter of the burst");
        assert_eq!(lease("100/s", 400), (s(4), 100), "a quarter of the burst");
        assert_eq!(
            lease("100/s", 1000),
            (s(5), 125),
            "a quarter of 500 refilled"
        );
        assert_eq!(lease("1000/s", 100_000), (s(5), 1250));
        assert_eq!(lease("6/m", 20), (s(5), 1), "slow rates lease one");
        assert_eq!(lease("100/h", 1), (s(5), 1));
    }

    #[test]
    fn an_empty_bucket_refuses_locally_until_a_token_is_back() {
        let t0 = Instant::now();
        let mut e = Entry::new(t0);
        e.blocked_until = Some(t0 + Duration::from_millis(1500));
        match decide(&mut e, &TEN_PER_S, t0 + Duration::from_millis(200)) {
            Local::Refuse(r) => {
                assert_eq!(r.wait, Duration::from_millis(1300));
                assert_eq!(r.retry_after_secs(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(&mut e, &TEN_PER_S, t0 + Duration::from_millis(1500)),
            Local::Ask(1)
        );
        assert_eq!(e.blocked_until, None);
    }

    #[test]
    fn leased_tokens_are_used_before_a_refusal() {
        let t0 = Instant::now();
        let mut e = Entry::new(t0);
        // A concurrent push found the bucket empty after another leased 3.
        e.blocked_until = Some(t0 + Duration::from_millis(1500));
        e.leased = 3;
        e.leased_at = Some(t0);
        for _ in 0..3 {
            assert_eq!(
                decide(&mut e, &TEN_PER_S, t0 + Duration::from_millis(10)),
                Local::Admit
            );
        }
        assert!(matches!(
            decide(&mut e, &TEN_PER_S, t0 + Duration::from_millis(10)),
            Local::Refuse(_)
        ));
    }

    /// A limiter on `redis_url` under a fresh prefix.
    fn limiter(redis_url: &str, limit: RateLimit) -> Limiter {
        use lifeline_shared::{names::Names, store::Store, token};
        let names = Names::new(&format!("limit-test-{}", token::new_id())).unwrap();
        let store = Store::open(redis_url, names.clone(), Default::default()).unwrap();
        Limiter::new(limit, store)
    }

    /// A connection of the test's own, to look at the buckets and remove
    /// them.
    async fn redis() -> redis::aio::MultiplexedConnection {
        redis::Client::open("redis://127.0.0.1:6379")
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// One push a minute, bursts of 8: slow enough that nothing refills
    /// while the test runs.
    const SLOW: RateLimit = RateLimit {
        count: 1,
        period: Duration::from_secs(60),
        burst: 8,
    };

    #[tokio::test]
    async fn the_shared_bucket_leases_up_to_the_burst_then_says_when() {
        let l = limiter("redis://127.0.0.1:6379", SLOW);
        let g = l.take("m1", 3).await.expect("redis answers");
        assert_eq!(g.granted, 3);
        // Fewer than asked when fewer are left.
        assert_eq!(l.take("m1", 10).await.unwrap().granted, 5);
        let g = l.take("m1", 1).await.unwrap();
        assert_eq!(g.granted, 0);
        assert!((479_000.0..=480_001.0).contains(&g.debt_ms), "{g:?}");
        let wait = g.refused(&SLOW);
        assert!(wait.wait > Duration::from_secs(59), "{wait:?}");
        assert_eq!(wait.retry_after_secs(), 60);
        // Each monitor has its own bucket.
        assert_eq!(l.take("m2", 8).await.unwrap().granted, 8);

        // Through `check`: the burst passes, then 429s with the exact wait.
        for i in 0..8 {
            assert_eq!(l.check("m3").await, Ok(()), "push {i}");
        }
        let refused = l.check("m3").await.unwrap_err();
        assert_eq!(refused.retry_after_secs(), 60);
        assert!(l.check("m3").await.is_err());

        // The bucket expires by itself once it would be full again.
        let mut conn = redis().await;
        let key = l.store.keys().push_rate("m1");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((470_000..=481_000).contains(&ttl), "{ttl}");
        let keys = ["m1", "m2", "m3"].map(|m| l.store.keys().push_rate(m));
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// Concurrent pushes of one monitor within its burst all pass, and the
    /// burst still holds: one push at a time asks the shared bucket, so
    /// they never lease it empty between them while tokens sit in a lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pushes_within_the_burst_all_pass() {
        let l = std::sync::Arc::new(limiter("redis://127.0.0.1:6379", SLOW_20));
        for round in 0..20 {
            let monitor = format!("c{round}");
            let checks = (0..15).map(|_| {
                let (l, monitor) = (l.clone(), monitor.clone());
                tokio::spawn(async move { l.check(&monitor).await })
            });
            let results = futures::future::join_all(checks).await;
            let refused = results.iter().filter(|r| !matches!(r, Ok(Ok(())))).count();
            assert_eq!(refused, 0, "round {round}: {results:?}");
            // The bucket holds 20: at most 5 more pass, then 429.
            let mut more = 0;
            while l.check(&monitor).await.is_ok() {
                more += 1;
                assert!(more <= 5, "round {round}: over the burst");
            }
        }
        let mut conn = redis().await;
        let keys: Vec<String> = (0..20)
            .map(|r| l.store.keys().push_rate(&format!("c{r}")))
            .collect();
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// One push a minute, bursts of 20.
    const SLOW_20: RateLimit = RateLimit {
        count: 1,
        period: Duration::from_secs(60),
        burst: 20,
    };

    #[tokio::test]
    async fn without_redis_each_replica_limits_on_its_own() {
        let l = limiter("redis://127.0.0.1:1", SLOW);
        for i in 0..8 {
            assert_eq!(l.check("m").await, Ok(()), "push {i}");
        }
        let refused = l.check("m").await.unwrap_err();
        assert_eq!(refused.retry_after_secs(), 60);
    }
}
