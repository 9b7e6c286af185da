//! The monitor state machine: a pure function of (state, rules, input) →
//! (new state, state changes, alerts). No I/O and no clock: callers pass the
//! time in, and the store applies the outcome atomically with a
//! version check (the store's commit script, `lifeline_shared::store`).
//!
//! A monitor's `deadline` is the next moment the clock acts on it: while up,
//! its next deadline (a timeout, or one more miss towards `confirm`); while
//! down with reminders, its next reminder. The store indexes it, and the
//! evaluator's ticker fires it as [`Input::Tick`].
//!
//! Invariants kept here:
//! * exactly one alert per alerting state change (alert ids are numbered by
//!   the monitor's change counter, so a retried write yields the same id);
//!   a reminder is recorded as a change from down to down, so it has its
//!   own id;
//! * a beat whose stream sequence is not newer than the last applied one
//!   never moves the state (duplicates and out-of-order redeliveries);
//! * a deadline is never skipped: a beat arriving after deadlines that
//!   passed unnoticed first counts them (and, once `confirm` of them are
//!   missed in a row, yields the `timeout` down, dated at the deadline that
//!   completed the count), then the recovery;
//! * reminders never come in bursts: after a long stop one reminder is
//!   sent, and the next is due a full period later.

use crate::model::{
    AlertEvent, AlertId, AlertJob, BeatRecord, BeatStatus, CONFIRM_MAX, MonitorConfig, MonitorId,
    MonitorRef, MonitorState, Outage, Reason, StateChange, Status, WIRE_VERSION,
};

/// The settings a step follows, taken from a monitor's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Longest wait between beats (ms).
    pub timeout_ms: i64,
    /// Period of the reminders sent while down (ms); `None`: no reminders.
    pub remind_every_ms: Option<i64>,
    /// Deadlines missed in a row before a timeout goes down (at least 1).
    pub confirm: u32,
}

impl Rules {
    /// A timeout only: the first missed deadline goes down, no reminders.
    pub fn timeout(timeout_ms: i64) -> Self {
        Self {
            timeout_ms,
            remind_every_ms: None,
            confirm: 1,
        }
    }

    /// The rules of a monitor's settings; `confirm` is held to
    /// 1..=[`CONFIRM_MAX`] and a zero reminder period means none.
    pub fn of(cfg: &MonitorConfig) -> Self {
        Self {
            timeout_ms: i64::from(cfg.timeout) * 1000,
            remind_every_ms: cfg
                .remind_every
                .filter(|&s| s > 0)
                .map(|s| i64::from(s) * 1000),
            confirm: cfg.confirm.clamp(1, CONFIRM_MAX),
        }
    }
}

/// Something that may move a monitor's state.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// A beat, in stream order.
    Beat(&'a BeatRecord),
    /// The clock: fires a passed deadline.
    Tick {
        /// Current time (ms): up to when the push path is known to have
        /// worked (the pulse watermark), not later than the wall clock.
        now: i64,
    },
    /// Pause through the API.
    Pause {
        /// Current time (ms).
        now: i64,
    },
    /// Resume through the API: the clock starts again from `now`.
    Resume {
        /// Current time (ms).
        now: i64,
    },
    /// The settings changed: an up monitor's deadline follows its last beat
    /// under the new timeout; a down monitor's reminders start, stop, or
    /// come no later than one new period from `now`.
    Retime {
        /// Current time (ms).
        now: i64,
    },
}

/// What happened to a beat input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeatDisposition {
    /// The input was not a beat.
    NotABeat,
    /// Newest beat: recorded and applied.
    Applied,
    /// Same sequence as the last applied beat: a redelivery, ignored.
    Duplicate,
    /// Older than the last applied beat: to be recorded (if not yet) but
    /// without effect on the state.
    Late,
}

/// An alert raised by a state change.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Stable id: `<monitor id>.<change number>`.
    pub alert_id: AlertId,
    /// Down or up.
    pub event: AlertEvent,
    /// Why.
    pub reason: Reason,
    /// When the change took effect (ms); for a reminder, when the monitor
    /// went down.
    pub at: i64,
    /// The beat's message; for a timeout after several missed deadlines,
    /// how many.
    pub msg: Option<String>,
    /// The beat's value.
    pub value: Option<f64>,
    /// Newest beat before the change (ms).
    pub last_beat_at: Option<i64>,
}

impl Alert {
    /// The job the notifier receives for this alert.
    pub fn to_job(&self, monitor_id: &str, cfg: &MonitorConfig) -> AlertJob {
        AlertJob {
            v: WIRE_VERSION,
            alert_id: self.alert_id.clone(),
            event: self.event,
            monitor: MonitorRef {
                id: MonitorId::new(monitor_id),
                name: cfg.name.clone(),
            },
            reason: self.reason,
            msg: self.msg.clone(),
            value: self.value,
            at: self.at,
            last_beat_at: self.last_beat_at,
            channels: cfg.channels.clone(),
        }
    }
}

/// The result of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The state after the input.
    pub state: MonitorState,
    /// State changes, oldest first.
    pub changes: Vec<StateChange>,
    /// Alerts, oldest first.
    pub alerts: Vec<Alert>,
    /// What became of a beat input.
    pub beat: BeatDisposition,
}

struct Stepper<'a> {
    id: &'a str,
    rules: Rules,
    s: MonitorState,
    changes: Vec<StateChange>,
    alerts: Vec<Alert>,
}

impl Stepper<'_> {
    /// Records a change to `to` at `at` and raises its alert, if it has one;
    /// a reminder (down to down) leaves the status and its start alone.
    /// Resets the miss count; the caller sets the deadline.
    fn change(
        &mut self,
        to: Status,
        reason: Reason,
        at: i64,
        msg: Option<String>,
        value: Option<f64>,
    ) {
        let from = self.s.status;
        self.s.changes += 1;
        let event = match (to, reason) {
            (Status::Down, Reason::Timeout | Reason::Reported | Reason::Reminder) => {
                Some(AlertEvent::Down)
            }
            (Status::Up, Reason::Recovered) => Some(AlertEvent::Up),
            _ => None,
        };
        let alert_id = event.map(|event| {
            let alert_id = AlertId::new(format!("{}.{}", self.id, self.s.changes));
            self.alerts.push(Alert {
                alert_id: alert_id.clone(),
                event,
                reason,
                // A reminder repeats the change that took the monitor down.
                at: if reason == Reason::Reminder {
                    self.s.since
                } else {
                    at
                },
                msg: msg.clone(),
                value,
                last_beat_at: self.s.last_beat_at,
            });
            alert_id
        });
        self.changes.push(StateChange {
            at,
            from,
            to,
            reason,
            msg,
            alert_id,
        });
        if reason != Reason::Reminder {
            self.s.status = to;
            self.s.since = at;
        }
        self.s.misses = 0;
    }

    /// Goes down at `at`, as seen at `now`, and schedules the first reminder.
    fn go_down(&mut self, reason: Reason, at: i64, now: i64, msg: Option<String>, v: Option<f64>) {
        self.change(Status::Down, reason, at, msg, v);
        self.s.deadline = self.next_reminder(at, now);
    }

    /// The reminder due one period after `from`, or one period after `now`
    /// when that has passed already (the clock was stopped: no burst).
    fn next_reminder(&self, from: i64, now: i64) -> Option<i64> {
        self.rules.remind_every_ms.map(|every| {
            let next = from.saturating_add(every);
            if next > now {
                next
            } else {
                now.saturating_add(every)
            }
        })
    }

    /// Fires every deadline that passed at or before `now`, each first
    /// extended by the push-path outages it fell into (see [`extend`]).
    /// While up, each passed deadline is a miss, and the `confirm`-th miss
    /// in a row goes down; while down, a passed reminder is sent when
    /// `reminders` is set (once, however many periods passed).
    fn fire_deadlines(&mut self, now: i64, outages: &[Outage], reminders: bool) {
        // Each round counts a miss, goes down or sends the one reminder:
        // `confirm` misses and one reminder check bound the loop.
        for _ in 0..=self.rules.confirm {
            let Some(deadline) = self.s.deadline else {
                return;
            };
            match self.s.status {
                Status::Up => {}
                Status::Down if !reminders => return,
                Status::Down if self.rules.remind_every_ms.is_some() => {}
                // Nothing is due in any other case: drop a stray deadline
                // rather than have the ticker find it again and again.
                Status::Down | Status::New | Status::Paused => {
                    self.s.deadline = None;
                    return;
                }
            }
            let at = extend(deadline, outages);
            self.s.deadline = Some(at);
            if at > now {
                return;
            }
            if self.s.status == Status::Down {
                self.change(Status::Down, Reason::Reminder, at, None, None);
                self.s.deadline = self.next_reminder(at, now);
                return;
            }
            self.s.misses += 1;
            if self.s.misses >= self.rules.confirm {
                let missed = self.s.misses;
                let msg = (missed > 1).then(|| format!("missed {missed} deadlines in a row"));
                self.go_down(Reason::Timeout, at, now, msg, None);
            } else {
                self.s.deadline = Some(at.saturating_add(self.rules.timeout_ms));
            }
        }
    }
}

/// `deadline` pushed back by the length of each outage it falls into
/// (`start < deadline <= end`), oldest first, so a deadline extended into a
/// later outage is extended again.
pub fn extend(deadline: i64, outages: &[Outage]) -> i64 {
    let mut sorted: Vec<&Outage> = outages.iter().collect();
    sorted.sort_by_key(|o| o.start);
    sorted.iter().fold(deadline, |d, o| {
        if o.start < d && d <= o.end {
            d + (o.end - o.start)
        } else {
            d
        }
    })
}

/// Applies `input` to `state` for monitor `id` following `rules`;
/// `outages` are the known push-path outages (see [`extend`]).
pub fn step(
    id: &str,
    state: &MonitorState,
    rules: &Rules,
    input: Input<'_>,
    outages: &[Outage],
) -> Outcome {
    let timeout_ms = rules.timeout_ms;
    let mut st = Stepper {
        id,
        rules: *rules,
        s: state.clone(),
        changes: Vec::new(),
        alerts: Vec::new(),
    };
    let mut disposition = BeatDisposition::NotABeat;
    match input {
        Input::Beat(b) if b.seq == st.s.last_seq => disposition = BeatDisposition::Duplicate,
        Input::Beat(b) if b.seq < st.s.last_seq => disposition = BeatDisposition::Late,
        Input::Beat(b) => {
            disposition = BeatDisposition::Applied;
            // Deadlines that passed before the beat count first; a due
            // reminder is left to the clock (a recovery makes it moot).
            st.fire_deadlines(b.at, outages, false);
            let beat_at = st.s.last_beat_at.map_or(b.at, |prev| prev.max(b.at));
            let (msg, value) = (b.msg.clone(), b.value);
            match (st.s.status, b.status) {
                // A down beat while down leaves the reminders running.
                (Status::Paused, _) | (Status::Down, BeatStatus::Down) => {}
                (Status::New, BeatStatus::Up) => {
                    st.change(Status::Up, Reason::FirstBeat, b.at, msg, value)
                }
                (Status::Down, BeatStatus::Up) => {
                    st.change(Status::Up, Reason::Recovered, b.at, msg, value)
                }
                (Status::Up, BeatStatus::Up) => {}
                // A report alerts at once, whatever `confirm` says.
                (Status::New | Status::Up, BeatStatus::Down) => {
                    st.go_down(Reason::Reported, b.at, b.at, msg, value)
                }
            }
            st.s.last_seq = b.seq;
            st.s.last_beat_at = Some(beat_at);
            if st.s.status == Status::Up {
                st.s.misses = 0;
                st.s.deadline = Some(beat_at + timeout_ms);
            }
        }
        Input::Tick { now } => st.fire_deadlines(now, outages, true),
        Input::Pause { now } => {
            if st.s.status != Status::Paused {
                st.change(Status::Paused, Reason::Paused, now, None, None);
                st.s.deadline = None;
            }
        }
        Input::Resume { now } => {
            if st.s.status == Status::Paused {
                if st.s.last_beat_at.is_some() {
                    st.change(Status::Up, Reason::Resumed, now, None, None);
                    st.s.deadline = Some(now + timeout_ms);
                } else {
                    st.change(Status::New, Reason::Resumed, now, None, None);
                    st.s.deadline = None;
                }
            }
        }
        Input::Retime { now } => match (st.s.status, st.s.last_beat_at) {
            // The k-th deadline after the last beat, k counting the misses.
            (Status::Up, Some(last)) => {
                let k = i64::from(st.s.misses) + 1;
                st.s.deadline = Some(last + k * timeout_ms);
            }
            (Status::Down, _) => {
                st.s.deadline = rules.remind_every_ms.map(|every| {
                    let latest = now.saturating_add(every);
                    st.s.deadline.map_or(latest, |d| d.min(latest))
                });
            }
            _ => {}
        },
    }
    Outcome {
        state: st.s,
        changes: st.changes,
        alerts: st.alerts,
        beat: disposition,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 10_000;

    fn beat(seq: u64, at: i64, status: BeatStatus) -> BeatRecord {
        BeatRecord {
            seq,
            at,
            status,
            msg: Some(format!("m{seq}")),
            msg_truncated: false,
            value: Some(seq as f64),
            late: false,
        }
    }

    fn up(seq: u64, at: i64) -> BeatRecord {
        beat(seq, at, BeatStatus::Up)
    }

    fn down(seq: u64, at: i64) -> BeatRecord {
        beat(seq, at, BeatStatus::Down)
    }

    fn run(state: &MonitorState, input: Input<'_>) -> Outcome {
        step("m", state, &Rules::timeout(T), input, &[])
    }

    fn state(
        status: Status,
        deadline: Option<i64>,
        last_beat: Option<i64>,
        seq: u64,
    ) -> MonitorState {
        MonitorState {
            status,
            deadline,
            last_beat_at: last_beat,
            last_seq: seq,
            since: 0,
            changes: 3,
            misses: 0,
        }
    }

    #[test]
    fn first_up_beat_makes_new_monitor_up_without_alert() {
        let o = run(&MonitorState::new(0), Input::Beat(&up(1, 100)));
        assert_eq!(o.state.status, Status::Up);
        assert_eq!(o.state.deadline, Some(100 + T));
        assert_eq!(o.state.last_beat_at, Some(100));
        assert_eq!(o.state.last_seq, 1);
        assert!(o.alerts.is_empty());
        assert_eq!(o.changes.len(), 1);
        assert_eq!(o.changes[0].reason, Reason::FirstBeat);
        assert_eq!(o.beat, BeatDisposition::Applied);
    }

    #[test]
    fn new_monitor_never_times_out() {
        let o = run(&MonitorState::new(0), Input::Tick { now: i64::MAX / 2 });
        assert_eq!(o.state, MonitorState::new(0));
        assert!(o.alerts.is_empty() && o.changes.is_empty());
    }

    #[test]
    fn up_beat_while_up_moves_deadline_only() {
        let s = state(Status::Up, Some(100 + T), Some(100), 1);
        let o = run(&s, Input::Beat(&up(2, 5_000)));
        assert_eq!(o.state.status, Status::Up);
        assert_eq!(o.state.deadline, Some(5_000 + T));
        assert!(o.alerts.is_empty() && o.changes.is_empty());
    }

    #[test]
    fn deadline_passing_alerts_down_once_dated_at_deadline() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        assert!(run(&s, Input::Tick { now: T - 1 }).alerts.is_empty());
        let o = run(&s, Input::Tick { now: T + 500 });
        assert_eq!(o.state.status, Status::Down);
        assert_eq!(o.state.deadline, None);
        assert_eq!(o.alerts.len(), 1);
        let a = &o.alerts[0];
        assert_eq!(
            (a.event, a.reason, a.at),
            (AlertEvent::Down, Reason::Timeout, T)
        );
        assert_eq!(a.alert_id, "m.4");
        assert_eq!(a.last_beat_at, Some(0));
        // A second tick while down raises nothing.
        let again = run(&o.state, Input::Tick { now: T + 10_000 });
        assert!(again.alerts.is_empty() && again.changes.is_empty());
    }

    #[test]
    fn up_beat_after_down_recovers_with_one_alert() {
        let s = state(Status::Down, None, Some(0), 1);
        let o = run(&s, Input::Beat(&up(2, 50_000)));
        assert_eq!(o.state.status, Status::Up);
        assert_eq!(o.state.deadline, Some(50_000 + T));
        assert_eq!(o.alerts.len(), 1);
        let a = &o.alerts[0];
        assert_eq!(
            (a.event, a.reason, a.at),
            (AlertEvent::Up, Reason::Recovered, 50_000)
        );
        assert_eq!(a.msg.as_deref(), Some("m2"));
        assert_eq!(a.last_beat_at, Some(0));
    }

    #[test]
    fn down_beat_alerts_at_once_with_message() {
        for s in [MonitorState::new(0), state(Status::Up, Some(T), Some(0), 1)] {
            let o = run(&s, Input::Beat(&down(2, 10)));
            assert_eq!(o.state.status, Status::Down);
            assert_eq!(o.state.deadline, None);
            assert_eq!(o.alerts.len(), 1);
            let a = &o.alerts[0];
            assert_eq!(
                (a.event, a.reason, a.at),
                (AlertEvent::Down, Reason::Reported, 10)
            );
            assert_eq!(a.msg.as_deref(), Some("m2"));
            assert_eq!(a.value, Some(2.0));
        }
    }

    #[test]
    fn down_beat_while_down_is_recorded_without_alert_or_timeout() {
        let s = state(Status::Down, None, Some(0), 1);
        let o = run(&s, Input::Beat(&down(2, 10)));
        assert_eq!(o.state.status, Status::Down);
        assert_eq!(o.state.last_beat_at, Some(10));
        assert_eq!(o.beat, BeatDisposition::Applied);
        assert!(o.alerts.is_empty() && o.changes.is_empty());
        assert!(
            run(&o.state, Input::Tick { now: 1_000_000 })
                .alerts
                .is_empty()
        );
    }

    #[test]
    fn beat_after_unnoticed_deadline_gives_timeout_then_recovery() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let o = run(&s, Input::Beat(&up(2, T + 5_000)));
        let got: Vec<_> = o.alerts.iter().map(|a| (a.event, a.reason, a.at)).collect();
        assert_eq!(
            got,
            vec![
                (AlertEvent::Down, Reason::Timeout, T),
                (AlertEvent::Up, Reason::Recovered, T + 5_000)
            ]
        );
        assert_ne!(o.alerts[0].alert_id, o.alerts[1].alert_id);
        assert_eq!(o.state.status, Status::Up);
        assert_eq!(o.state.deadline, Some(T + 5_000 + T));
    }

    #[test]
    fn down_beat_after_unnoticed_deadline_alerts_the_timeout_only() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let o = run(&s, Input::Beat(&down(2, T + 5_000)));
        assert_eq!(o.alerts.len(), 1);
        assert_eq!(o.alerts[0].reason, Reason::Timeout);
        assert_eq!(o.state.status, Status::Down);
    }

    #[test]
    fn beat_exactly_at_deadline_counts_as_late() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let o = run(&s, Input::Beat(&up(2, T)));
        assert_eq!(o.alerts.len(), 2);
    }

    #[test]
    fn duplicate_and_late_beats_never_move_state() {
        let s = state(Status::Down, None, Some(500), 7);
        let dup = run(&s, Input::Beat(&up(7, 900)));
        assert_eq!(dup.beat, BeatDisposition::Duplicate);
        assert_eq!(dup.state, s);
        let late = run(&s, Input::Beat(&up(3, 900)));
        assert_eq!(late.beat, BeatDisposition::Late);
        assert_eq!(late.state, s);
        assert!(late.alerts.is_empty() && late.changes.is_empty());
    }

    #[test]
    fn beat_with_older_clock_keeps_newest_beat_time() {
        let s = state(Status::Up, Some(1_000 + T), Some(1_000), 1);
        let o = run(&s, Input::Beat(&up(2, 990)));
        assert_eq!(o.state.last_beat_at, Some(1_000));
        assert_eq!(o.state.deadline, Some(1_000 + T));
    }

    #[test]
    fn paused_records_beats_and_never_alerts() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let p = run(&s, Input::Pause { now: 5 });
        assert_eq!(p.state.status, Status::Paused);
        assert_eq!(p.state.deadline, None);
        assert!(p.alerts.is_empty());
        assert_eq!(p.changes[0].reason, Reason::Paused);
        for b in [down(2, 50), up(3, 60)] {
            let o = run(&p.state, Input::Beat(&b));
            assert_eq!(o.state.status, Status::Paused);
            assert_eq!(o.beat, BeatDisposition::Applied);
            assert!(o.alerts.is_empty() && o.changes.is_empty());
        }
        assert!(run(&p.state, Input::Tick { now: 10 * T }).alerts.is_empty());
        assert!(run(&p.state, Input::Pause { now: 6 }).changes.is_empty());
    }

    #[test]
    fn resume_starts_the_clock_again() {
        let s = state(Status::Paused, None, Some(0), 1);
        let o = run(&s, Input::Resume { now: 100_000 });
        assert_eq!(o.state.status, Status::Up);
        assert_eq!(o.state.deadline, Some(100_000 + T));
        assert!(o.alerts.is_empty());
        assert_eq!(o.changes[0].reason, Reason::Resumed);
        // Never beaten: back to new, which never alerts.
        let never = state(Status::Paused, None, None, 0);
        let o = run(&never, Input::Resume { now: 5 });
        assert_eq!(o.state.status, Status::New);
        assert_eq!(o.state.deadline, None);
        // Resume of a monitor that is not paused changes nothing.
        let up_state = state(Status::Up, Some(T), Some(0), 1);
        assert_eq!(run(&up_state, Input::Resume { now: 5 }).state, up_state);
    }

    #[test]
    fn pause_from_down_and_new() {
        for s in [state(Status::Down, None, Some(0), 1), MonitorState::new(0)] {
            let o = run(&s, Input::Pause { now: 7 });
            assert_eq!(o.state.status, Status::Paused);
            assert!(o.alerts.is_empty());
        }
    }

    #[test]
    fn retime_moves_deadline_from_last_beat() {
        let s = state(Status::Up, Some(T), Some(1_000), 1);
        let o = step(
            "m",
            &s,
            &Rules::timeout(60_000),
            Input::Retime { now: 5_000 },
            &[],
        );
        assert_eq!(o.state.deadline, Some(61_000));
        let d = state(Status::Down, None, Some(1_000), 1);
        assert_eq!(
            step(
                "m",
                &d,
                &Rules::timeout(60_000),
                Input::Retime { now: 5_000 },
                &[]
            )
            .state,
            d
        );
    }

    #[test]
    fn a_deadline_inside_an_outage_is_extended_by_its_length() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let outage = Outage {
            start: T - 3_000,
            end: T + 5_000,
        };
        // At the end of the outage: nothing fires, the deadline moved by 8 s.
        let o = step(
            "m",
            &s,
            &Rules::timeout(T),
            Input::Tick { now: T + 5_000 },
            &[outage],
        );
        assert!(o.alerts.is_empty());
        assert_eq!(o.state.deadline, Some(T + 8_000));
        // Once the extended deadline passes, the timeout fires, dated at it.
        let o = step(
            "m",
            &o.state,
            &Rules::timeout(T),
            Input::Tick { now: T + 8_000 },
            &[outage],
        );
        assert_eq!(o.alerts.len(), 1);
        assert_eq!(o.alerts[0].at, T + 8_000);
        // A beat arriving right after the outage is no late beat.
        let o = step(
            "m",
            &s,
            &Rules::timeout(T),
            Input::Beat(&up(2, T + 5_100)),
            &[outage],
        );
        assert!(o.alerts.is_empty(), "{:?}", o.alerts);
        assert_eq!(o.state.status, Status::Up);
    }

    #[test]
    fn a_deadline_outside_an_outage_still_fires() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let before = Outage {
            start: T - 9_000,
            end: T - 1,
        };
        let after = Outage {
            start: T,
            end: T + 5_000,
        };
        let o = step(
            "m",
            &s,
            &Rules::timeout(T),
            Input::Tick { now: T },
            &[before, after],
        );
        assert_eq!(
            o.alerts.len(),
            1,
            "a deadline at the outage's first instant was missed before it"
        );
        assert_eq!(o.alerts[0].at, T);
    }

    #[test]
    fn chained_outages_extend_again() {
        let a = Outage {
            start: 90,
            end: 110,
        };
        let b = Outage {
            start: 115,
            end: 200,
        };
        assert_eq!(extend(100, &[b, a]), 120 + 85);
        assert_eq!(extend(50, &[a, b]), 50);
    }

    #[test]
    fn alert_ids_are_unique_per_change() {
        let mut s = MonitorState::new(0);
        let mut ids = std::collections::HashSet::new();
        for i in 0..20u64 {
            let b = if i % 2 == 0 {
                down(i + 1, i as i64)
            } else {
                up(i + 1, i as i64)
            };
            let o = run(&s, Input::Beat(&b));
            for a in &o.alerts {
                assert!(ids.insert(a.alert_id.clone()));
            }
            s = o.state;
        }
        assert_eq!(ids.len(), 20);
    }

    // --- reminders and confirm ---

    const R: i64 = 60_000;

    fn rules(remind: Option<i64>, confirm: u32) -> Rules {
        Rules {
            timeout_ms: T,
            remind_every_ms: remind,
            confirm,
        }
    }

    fn with(r: Rules, s: &MonitorState, input: Input<'_>) -> Outcome {
        step("m", s, &r, input, &[])
    }

    fn reasons(o: &Outcome) -> Vec<(AlertEvent, Reason, i64)> {
        o.alerts.iter().map(|a| (a.event, a.reason, a.at)).collect()
    }

    /// Up since its beat at 0, deadline at `T`; gone down at `T` when ticked.
    fn down_by_timeout(r: Rules) -> MonitorState {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let o = with(r, &s, Input::Tick { now: T + 100 });
        assert_eq!(o.state.status, Status::Down);
        o.state
    }

    #[test]
    fn rules_follow_the_settings() {
        let mut cfg = MonitorConfig {
            name: "n".into(),
            timeout: 30,
            interval: 30,
            channels: vec![],
            created_at: 0,
            token_hash: String::new(),
            token_hint: String::new(),
            remind_every: Some(600),
            confirm: 3,
        };
        assert_eq!(
            Rules::of(&cfg),
            Rules {
                timeout_ms: 30_000,
                remind_every_ms: Some(600_000),
                confirm: 3
            }
        );
        cfg.remind_every = Some(0);
        cfg.confirm = 0;
        assert_eq!(Rules::of(&cfg), Rules::timeout(30_000));
        cfg.confirm = 1000;
        assert_eq!(Rules::of(&cfg).confirm, CONFIRM_MAX);
    }

    #[test]
    fn going_down_schedules_the_first_reminder_a_period_later() {
        let s = down_by_timeout(rules(Some(R), 1));
        assert_eq!(s.since, T);
        assert_eq!(s.deadline, Some(T + R));
        // Without reminders, a down monitor has no deadline.
        assert_eq!(down_by_timeout(rules(None, 1)).deadline, None);
    }

    #[test]
    fn a_reminder_fires_once_per_period_without_drift() {
        let r = rules(Some(R), 1);
        let mut s = down_by_timeout(r);
        let mut ids = vec![s.changes];
        assert!(
            with(r, &s, Input::Tick { now: T + R - 1 })
                .alerts
                .is_empty()
        );
        for n in 1..=3 {
            let due = T + n * R;
            // Ticked a little late: still scheduled from the due time.
            let o = with(r, &s, Input::Tick { now: due + 150 });
            assert_eq!(
                reasons(&o),
                [(AlertEvent::Down, Reason::Reminder, T)],
                "a reminder is dated at the change that took the monitor down"
            );
            assert_eq!(o.alerts[0].last_beat_at, Some(0));
            assert_eq!(o.alerts[0].msg, None);
            let c = &o.changes[0];
            assert_eq!(
                (c.at, c.from, c.to, c.reason),
                (due, Status::Down, Status::Down, Reason::Reminder)
            );
            assert_eq!(c.alert_id.as_deref(), Some(o.alerts[0].alert_id.as_str()));
            assert_eq!(o.state.status, Status::Down);
            assert_eq!(o.state.since, T, "a reminder is not a new down");
            assert_eq!(o.state.deadline, Some(due + R));
            // Ticked again at once: nothing more.
            let again = with(r, &o.state, Input::Tick { now: due + 150 });
            assert_eq!(again.state, o.state);
            assert!(again.alerts.is_empty() && again.changes.is_empty());
            s = o.state;
            ids.push(s.changes);
        }
        assert_eq!(ids, [4, 5, 6, 7]);
    }

    #[test]
    fn a_long_stop_sends_one_reminder_then_a_period_from_now() {
        let r = rules(Some(R), 1);
        let s = down_by_timeout(r);
        let now = T + 10 * R + 5;
        let o = with(r, &s, Input::Tick { now });
        assert_eq!(reasons(&o), [(AlertEvent::Down, Reason::Reminder, T)]);
        assert_eq!(o.changes[0].at, T + R, "dated when it was due");
        assert_eq!(o.state.deadline, Some(now + R));
        // The same for a timeout found late: the down alert, no reminder yet.
        let up = state(Status::Up, Some(T), Some(0), 1);
        let o = with(r, &up, Input::Tick { now });
        assert_eq!(reasons(&o), [(AlertEvent::Down, Reason::Timeout, T)]);
        assert_eq!(o.state.deadline, Some(now + R));
    }

    #[test]
    fn recovery_stops_the_reminders() {
        let r = rules(Some(R), 1);
        let s = down_by_timeout(r);
        // Even with a reminder due, the recovering beat raises only the recovery.
        for at in [T + 5, T + 3 * R] {
            let o = with(r, &s, Input::Beat(&up(2, at)));
            assert_eq!(reasons(&o), [(AlertEvent::Up, Reason::Recovered, at)]);
            assert_eq!(o.state.status, Status::Up);
            assert_eq!(o.state.deadline, Some(at + T));
            // Beating on: never a reminder.
            let o = with(r, &o.state, Input::Beat(&up(3, at + T - 1)));
            let o = with(
                r,
                &o.state,
                Input::Tick {
                    now: at + 2 * T - 2,
                },
            );
            assert!(o.alerts.is_empty() && o.changes.is_empty());
        }
    }

    #[test]
    fn pause_stops_the_reminders() {
        let r = rules(Some(R), 1);
        let s = down_by_timeout(r);
        let p = with(r, &s, Input::Pause { now: T + 7 });
        assert_eq!(p.state.status, Status::Paused);
        assert_eq!(p.state.deadline, None);
        assert!(p.alerts.is_empty());
        assert!(
            with(r, &p.state, Input::Tick { now: T + 5 * R })
                .alerts
                .is_empty()
        );
        let o = with(r, &p.state, Input::Resume { now: T + 5 * R });
        assert_eq!(o.state.status, Status::Up);
        assert_eq!(o.state.deadline, Some(T + 5 * R + T));
    }

    #[test]
    fn a_reported_down_gets_reminders_and_down_beats_do_not_reset_them() {
        let r = rules(Some(R), 3);
        let s = state(Status::Up, Some(100 + T), Some(100), 1);
        let o = with(r, &s, Input::Beat(&down(2, 200)));
        assert_eq!(reasons(&o), [(AlertEvent::Down, Reason::Reported, 200)]);
        assert_eq!(o.state.deadline, Some(200 + R));
        // More down beats: recorded, the schedule stays.
        let o = with(r, &o.state, Input::Beat(&down(3, 200 + R / 2)));
        assert!(o.alerts.is_empty() && o.changes.is_empty());
        assert_eq!(o.state.deadline, Some(200 + R));
        // A down beat after the reminder fell due leaves it to the clock.
        let o = with(r, &o.state, Input::Beat(&down(4, 200 + R + 10)));
        assert!(o.alerts.is_empty());
        assert_eq!(o.state.deadline, Some(200 + R));
        let o = with(r, &o.state, Input::Tick { now: 200 + R + 20 });
        assert_eq!(reasons(&o), [(AlertEvent::Down, Reason::Reminder, 200)]);
        assert_eq!(o.state.deadline, Some(200 + 2 * R));
        assert_eq!(o.state.last_beat_at, Some(200 + R + 10));
        assert_eq!(o.alerts[0].last_beat_at, Some(200 + R + 10));
    }

    #[test]
    fn a_reminder_deadline_inside_an_outage_is_extended() {
        let r = rules(Some(R), 1);
        let s = down_by_timeout(r);
        let due = T + R;
        let outage = Outage {
            start: due - 1_000,
            end: due + 2_000,
        };
        let o = step("m", &s, &r, Input::Tick { now: due + 2_000 }, &[outage]);
        assert!(o.alerts.is_empty());
        assert_eq!(o.state.deadline, Some(due + 3_000));
        let o = step(
            "m",
            &o.state,
            &r,
            Input::Tick { now: due + 3_000 },
            &[outage],
        );
        assert_eq!(reasons(&o), [(AlertEvent::Down, Reason::Reminder, T)]);
        assert_eq!(o.state.deadline, Some(due + 3_000 + R));
    }

    #[test]
    fn changed_settings_start_stop_or_pull_in_the_reminders() {
        let off = rules(None, 1);
        let s = down_by_timeout(off);
        assert_eq!(s.deadline, None);
        // Turned on while down: the first reminder a period from now.
        let on = with(rules(Some(R), 1), &s, Input::Retime { now: 50_000 });
        assert_eq!(on.state.deadline, Some(50_000 + R));
        assert!(on.alerts.is_empty() && on.changes.is_empty());
        // Another edit (same period): the schedule stays.
        let same = with(rules(Some(R), 1), &on.state, Input::Retime { now: 70_000 });
        assert_eq!(same.state.deadline, Some(50_000 + R));
        // A shorter period: due no later than one new period from now.
        let shorter = with(
            rules(Some(1_000), 1),
            &on.state,
            Input::Retime { now: 70_000 },
        );
        assert_eq!(shorter.state.deadline, Some(71_000));
        // Turned off: no deadline.
        let stopped = with(off, &on.state, Input::Retime { now: 70_000 });
        assert_eq!(stopped.state.deadline, None);
        // A stray reminder deadline without reminders is dropped by the clock.
        let stray = with(off, &on.state, Input::Tick { now: 50_000 + R });
        assert!(stray.alerts.is_empty());
        assert_eq!(stray.state.deadline, None);
    }

    #[test]
    fn stray_deadlines_of_new_and_paused_monitors_are_dropped() {
        for status in [Status::New, Status::Paused] {
            let s = state(status, Some(T), None, 0);
            let o = run(&s, Input::Tick { now: T });
            assert_eq!(o.state.status, status);
            assert_eq!(o.state.deadline, None);
            assert!(o.alerts.is_empty() && o.changes.is_empty());
        }
    }

    #[test]
    fn confirm_three_needs_three_missed_deadlines_in_a_row() {
        let r = rules(None, 3);
        let s = state(Status::Up, Some(T), Some(0), 1);
        let o1 = with(r, &s, Input::Tick { now: T });
        assert!(o1.alerts.is_empty() && o1.changes.is_empty());
        assert_eq!(
            (o1.state.status, o1.state.misses, o1.state.deadline),
            (Status::Up, 1, Some(2 * T))
        );
        assert!(
            with(r, &o1.state, Input::Tick { now: 2 * T - 1 })
                .alerts
                .is_empty()
        );
        let o2 = with(r, &o1.state, Input::Tick { now: 2 * T + 50 });
        assert!(o2.alerts.is_empty() && o2.changes.is_empty());
        assert_eq!(
            (o2.state.misses, o2.state.deadline),
            (2, Some(3 * T)),
            "the next deadline follows the missed one, not the tick"
        );
        let o3 = with(r, &o2.state, Input::Tick { now: 3 * T });
        assert_eq!(reasons(&o3), [(AlertEvent::Down, Reason::Timeout, 3 * T)]);
        assert_eq!(
            o3.alerts[0].msg.as_deref(),
            Some("missed 3 deadlines in a row")
        );
        assert_eq!(o3.changes[0].msg, o3.alerts[0].msg);
        assert_eq!(o3.alerts[0].last_beat_at, Some(0));
        assert_eq!(o3.alerts[0].alert_id, "m.4");
        assert_eq!(
            (o3.state.status, o3.state.misses, o3.state.deadline),
            (Status::Down, 0, None)
        );
        // With confirm 1 the timeout message stays empty.
        let o = run(&s, Input::Tick { now: T });
        assert_eq!(o.alerts[0].msg, None);
    }

    #[test]
    fn any_beat_resets_the_miss_count() {
        let r = rules(None, 2);
        let s = state(Status::Up, Some(T), Some(0), 1);
        let missed = with(r, &s, Input::Tick { now: T });
        assert_eq!(missed.state.misses, 1);
        let o = with(r, &missed.state, Input::Beat(&up(2, T + 500)));
        assert!(o.alerts.is_empty() && o.changes.is_empty());
        assert_eq!((o.state.misses, o.state.deadline), (0, Some(T + 500 + T)));
        // The count starts again: one miss alone never alerts.
        let o = with(r, &o.state, Input::Tick { now: 2 * T + 500 });
        assert!(o.alerts.is_empty());
        assert_eq!(o.state.misses, 1);
    }

    #[test]
    fn a_down_report_alerts_at_once_whatever_confirm_says() {
        let r = rules(None, 10);
        let s = state(Status::Up, Some(T), Some(0), 1);
        let missed = with(r, &s, Input::Tick { now: T });
        for s in [s, missed.state, MonitorState::new(0)] {
            let o = with(r, &s, Input::Beat(&down(2, T + 10)));
            assert_eq!(reasons(&o), [(AlertEvent::Down, Reason::Reported, T + 10)]);
            assert_eq!(o.state.misses, 0);
        }
    }

    #[test]
    fn a_beat_after_unnoticed_deadlines_counts_them_first() {
        let r = rules(None, 2);
        let s = state(Status::Up, Some(T), Some(0), 1);
        // One deadline passed unnoticed: one miss of two, no alert at all.
        let o = with(r, &s, Input::Beat(&up(2, T + 500)));
        assert!(o.alerts.is_empty() && o.changes.is_empty(), "{o:?}");
        assert_eq!(
            (o.state.status, o.state.misses, o.state.deadline),
            (Status::Up, 0, Some(T + 500 + T))
        );
        // Two passed: the timeout (dated at the second), then the recovery.
        let o = with(r, &s, Input::Beat(&up(2, 2 * T + 1)));
        assert_eq!(
            reasons(&o),
            [
                (AlertEvent::Down, Reason::Timeout, 2 * T),
                (AlertEvent::Up, Reason::Recovered, 2 * T + 1)
            ]
        );
        assert_eq!(
            o.alerts[0].msg.as_deref(),
            Some("missed 2 deadlines in a row")
        );
        assert_ne!(o.alerts[0].alert_id, o.alerts[1].alert_id);
        // A down beat after two: the timeout only, then reminders from it.
        let rr = rules(Some(R), 2);
        let o = with(rr, &s, Input::Beat(&down(2, 2 * T + 1)));
        assert_eq!(reasons(&o), [(AlertEvent::Down, Reason::Timeout, 2 * T)]);
        assert_eq!(o.state.deadline, Some(2 * T + R));
    }

    #[test]
    fn a_tick_after_a_long_stop_counts_every_missed_deadline() {
        let r = rules(Some(R), 3);
        let s = state(Status::Up, Some(T), Some(0), 1);
        let now = 100 * T;
        let o = with(r, &s, Input::Tick { now });
        assert_eq!(
            reasons(&o),
            [(AlertEvent::Down, Reason::Timeout, 3 * T)],
            "one alert, dated at the deadline that completed the count"
        );
        assert_eq!(o.state.deadline, Some(now + R), "no reminder burst");
        // Confirm at its maximum with a zero timeout still ends.
        let zero = Rules {
            timeout_ms: 0,
            remind_every_ms: Some(R),
            confirm: CONFIRM_MAX,
        };
        let o = step("m", &s, &zero, Input::Tick { now }, &[]);
        assert_eq!(o.alerts.len(), 1);
    }

    #[test]
    fn a_missed_deadline_inside_an_outage_is_extended() {
        let r = rules(None, 2);
        let s = state(Status::Up, Some(T), Some(0), 1);
        let outage = Outage {
            start: T - 1_000,
            end: T + 4_000,
        };
        let o = step("m", &s, &r, Input::Tick { now: T + 4_000 }, &[outage]);
        assert_eq!((o.state.misses, o.state.deadline), (0, Some(T + 5_000)));
        let o = step("m", &o.state, &r, Input::Tick { now: T + 5_000 }, &[outage]);
        assert_eq!((o.state.misses, o.state.deadline), (1, Some(2 * T + 5_000)));
        assert!(o.alerts.is_empty());
        let o = step(
            "m",
            &o.state,
            &r,
            Input::Tick { now: 2 * T + 5_000 },
            &[outage],
        );
        assert_eq!(
            reasons(&o),
            [(AlertEvent::Down, Reason::Timeout, 2 * T + 5_000)]
        );
    }

    #[test]
    fn retime_keeps_counting_misses_from_the_last_beat() {
        let r = rules(None, 3);
        let s = state(Status::Up, Some(T), Some(1_000), 1);
        let missed = with(r, &s, Input::Tick { now: T + 1_000 });
        assert_eq!(missed.state.misses, 1);
        let o = step(
            "m",
            &missed.state,
            &Rules {
                timeout_ms: 60_000,
                ..r
            },
            Input::Retime { now: 20_000 },
            &[],
        );
        assert_eq!(o.state.deadline, Some(1_000 + 2 * 60_000));
        assert_eq!(o.state.misses, 1);
        assert!(o.alerts.is_empty() && o.changes.is_empty());
    }

    #[test]
    fn alert_ids_stay_unique_with_reminders_and_confirm() {
        let r = rules(Some(R), 2);
        let mut s = state(Status::Up, Some(T), Some(0), 1);
        let mut ids = std::collections::HashSet::new();
        let mut alerts = 0;
        let mut now = 0;
        let mut seq = 1;
        for round in 0..5 {
            // Silence: one miss, the down (the second miss), four reminders.
            for _ in 0..6 {
                now = s.deadline.expect("a deadline while up or reminding");
                let o = with(r, &s, Input::Tick { now });
                for a in &o.alerts {
                    assert!(ids.insert(a.alert_id.clone()), "{a:?}");
                    alerts += 1;
                }
                s = o.state;
            }
            assert_eq!(s.status, Status::Down, "round {round}");
            seq += 1;
            let o = with(r, &s, Input::Beat(&up(seq, now + 1)));
            for a in &o.alerts {
                assert!(ids.insert(a.alert_id.clone()), "{a:?}");
                alerts += 1;
            }
            s = o.state;
        }
        // Per round: one down, four reminders, one recovery.
        assert_eq!((ids.len(), alerts), (30, 30));
    }
}
