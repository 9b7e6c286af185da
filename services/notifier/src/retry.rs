//! When a failed delivery is tried again: the retry schedule and the delay
//! queues it needs.
//!
//! A retry never holds a consumer: the job is published to the delay queue
//! `P.retry.<ms>` (per-queue TTL, dead-lettered back to `P.deliveries`) and
//! the message being handled is acked. So every delay actually used must be
//! one of a small, known set of queues: the schedule's steps, the one-second
//! recheck (rate limit, another replica holding the claim), and for a
//! `Retry-After` longer than the schedule's step, the first rung of a fixed
//! ladder (1 s, 2 s, 5 s, … 6 h, the cap) at least as long as asked.
//!
//! The schedule is written `5s,30s,2m,10m,1h,3h*7`: comma-separated delays
//! with a unit (`ms`, `s`, `m`, `h`), each optionally repeated with `*N`.
//! Step `i` is the pause after attempt `i + 1` fails, so a schedule of `n`
//! steps allows `n + 1` attempts; `none` allows a single attempt.

use std::{fmt, str::FromStr, time::Duration};

/// The default schedule: about 5 s, 30 s, 2 min, 10 min, 1 h, then every
/// 3 h, 13 attempts over about 22 h 13 min (within 24 h).
pub const DEFAULT_SCHEDULE: &str = "5s,30s,2m,10m,1h,3h*7";

/// Longest single step accepted in a schedule.
const MAX_STEP: Duration = Duration::from_secs(24 * 3600);
/// Most steps accepted in a schedule.
const MAX_STEPS: usize = 100;

/// Delay before looking again at a delivery that could not be attempted yet
/// (the Slack rate-limit slot is taken, or another replica holds the claim).
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// The delays a `Retry-After` is rounded up to, so that however many values
/// receivers send, only these delay queues exist. The last rung caps it.
const RETRY_AFTER_LADDER: [Duration; 16] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(6 * 3600),
];

/// The pauses between the attempts of one delivery.
#[derive(Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    steps: Vec<Duration>,
}

impl RetrySchedule {
    /// A schedule of the given steps (each at least 1 ms).
    pub fn new(steps: Vec<Duration>) -> Result<Self, String> {
        if steps.len() > MAX_STEPS {
            return Err(format!("at most {MAX_STEPS} steps"));
        }
        for s in &steps {
            if s.is_zero() || *s > MAX_STEP {
                return Err(format!(
                    "each delay must be between 1ms and 24h, not {}",
                    fmt_step(*s)
                ));
            }
        }
        Ok(Self { steps })
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Duration] {
        &self.steps
    }

    /// Most attempts one delivery gets.
    pub fn max_attempts(&self) -> u32 {
        self.steps.len() as u32 + 1
    }

    /// The pause after `attempts` failed attempts, or `None` once the
    /// schedule is exhausted.
    pub fn delay_after(&self, attempts: u32) -> Option<Duration> {
        let i = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.steps.get(i).copied()
    }

    /// Every delay queue this schedule may publish to: its steps, the
    /// recheck delay and the `Retry-After` ladder, in milliseconds, sorted
    /// and without duplicates.
    pub fn delay_queues_ms(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .steps
            .iter()
            .chain([RECHECK].iter())
            .chain(RETRY_AFTER_LADDER.iter())
            .map(|d| d.as_millis() as u64)
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The delay queues declared when the notifier starts: the schedule's
    /// steps and the recheck delay (the ladder's are declared on first use).
    pub(crate) fn startup_queues_ms(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .steps
            .iter()
            .chain([RECHECK].iter())
            .map(|d| d.as_millis() as u64)
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        DEFAULT_SCHEDULE
            .parse()
            .expect("the default schedule parses")
    }
}

/// The delay before retrying after a receiver asked to wait `retry_after`
/// and the schedule's own step is `step`: the longer of the two, with a
/// `Retry-After` rounded up to a rung of the ladder (capped at its top).
pub(crate) fn with_retry_after(step: Duration, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(wait) if wait > step => RETRY_AFTER_LADDER
            .iter()
            .copied()
            .find(|rung| *rung >= wait)
            .unwrap_or(RETRY_AFTER_LADDER[RETRY_AFTER_LADDER.len() - 1])
            .max(step),
        _ => step,
    }
}

impl FromStr for RetrySchedule {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("none") {
            return Self::new(Vec::new());
        }
        let mut steps = Vec::new();
        for part in raw.split(',') {
            let part = part.trim();
            let (delay, times) = match part.split_once('*') {
                Some((d, n)) => {
                    let n: usize = n.trim().parse().map_err(|_| {
                        format!("{part:?}: the repeat count after '*' must be a whole number")
                    })?;
                    if n == 0 || n > MAX_STEPS {
                        return Err(format!(
                            "{part:?}: the repeat count must be 1 to {MAX_STEPS}"
                        ));
                    }
                    (d.trim(), n)
                }
                None => (part, 1),
            };
            let delay = parse_step(delay).map_err(|e| format!("{part:?}: {e}"))?;
            if steps.len() + times > MAX_STEPS {
                return Err(format!("at most {MAX_STEPS} steps"));
            }
            steps.extend(std::iter::repeat_n(delay, times));
        }
        Self::new(steps)
    }
}

fn parse_step(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("a unit is required (ms, s, m or h)")?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| "expected a number followed by ms, s, m or h".to_owned())?;
    let ms_per_unit = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| "too long".to_owned())
}

fn fmt_step(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

impl fmt::Display for RetrySchedule {
    /// The schedule in the form it is configured in, runs folded (`3h*7`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        let mut i = 0;
        while i < self.steps.len() {
            let run = self.steps[i..]
                .iter()
                .take_while(|s| **s == self.steps[i])
                .count();
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(&fmt_step(self.steps[i]))?;
            if run > 1 {
                write!(f, "*{run}")?;
            }
            i += run;
        }
        Ok(())
    }
}

impl fmt::Debug for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_schedule_fits_within_a_day() {
        let s = RetrySchedule::default();
        assert_eq!(s.steps().len(), 12);
        assert_eq!(s.max_attempts(), 13);
        assert_eq!(
            &s.steps()[..6],
            &[
                secs(5),
                secs(30),
                secs(120),
                secs(600),
                secs(3600),
                secs(3 * 3600)
            ]
        );
        let total: Duration = s.steps().iter().sum();
        assert!(
            total > secs(22 * 3600) && total < secs(24 * 3600),
            "{total:?}"
        );
        assert_eq!(s.to_string(), DEFAULT_SCHEDULE);
    }

    #[test]
    fn units_and_repeats_parse() {
        let s: RetrySchedule = " 200ms, 1s ,2m,1h*2 ".parse().unwrap();
        assert_eq!(
            s.steps(),
            &[
                Duration::from_millis(200),
                secs(1),
                secs(120),
                secs(3600),
                secs(3600)
            ]
        );
        assert_eq!(s.to_string(), "200ms,1s,2m,1h*2");
        assert!("none".parse::<RetrySchedule>().unwrap().steps().is_empty());
        assert_eq!(
            "1500ms".parse::<RetrySchedule>().unwrap().to_string(),
            "1500ms"
        );
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in [
            "", "5", "5x", "s", "0s", "25h", "1s*0", "1s*x", "1s,", "1s*1000", "-1s",
        ] {
            assert!(bad.parse::<RetrySchedule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn delays_follow_the_attempt_count() {
        let s: RetrySchedule = "1s,2s".parse().unwrap();
        assert_eq!(s.delay_after(0), None);
        assert_eq!(s.delay_after(1), Some(secs(1)));
        assert_eq!(s.delay_after(2), Some(secs(2)));
        assert_eq!(s.delay_after(3), None);
    }

    #[test]
    fn retry_after_rounds_up_to_a_known_queue() {
        let step = Duration::from_millis(200);
        assert_eq!(with_retry_after(step, None), step);
        assert_eq!(
            with_retry_after(step, Some(Duration::from_millis(100))),
            step
        );
        assert_eq!(with_retry_after(step, Some(secs(1))), secs(1));
        assert_eq!(with_retry_after(step, Some(secs(3))), secs(5));
        assert_eq!(with_retry_after(secs(30), Some(secs(20))), secs(30));
        assert_eq!(with_retry_after(secs(30), Some(secs(31))), secs(60));
        assert_eq!(with_retry_after(step, Some(secs(86_400))), secs(6 * 3600));
        // Whatever is asked, the result is a queue the schedule knows of.
        let s: RetrySchedule = "200ms*3".parse().unwrap();
        let known = s.delay_queues_ms();
        for wait in [0, 1, 999, 1000, 1001, 7000, 90_000, 100_000_000] {
            let d = with_retry_after(step, Some(Duration::from_millis(wait)));
            assert!(known.contains(&(d.as_millis() as u64)), "{wait} -> {d:?}");
            assert!(d >= Duration::from_millis(wait).min(secs(6 * 3600)));
        }
    }
}
