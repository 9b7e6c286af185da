//! The monitor state machine: a pure function of (state, input, timeout) →
//! (new state, state changes, alerts). No I/O and no clock: callers pass the
//! time in, and the store applies the outcome atomically with a
//! version check (see [`crate::store::Store::commit`]).
//!
//! Invariants kept here:
//! * exactly one alert per alerting state change (alert ids are numbered by
//!   the monitor's change counter, so a retried write yields the same id);
//! * a beat whose stream sequence is not newer than the last applied one
//!   never moves the state (duplicates and out-of-order redeliveries);
//! * a deadline is never skipped: a beat arriving after a deadline that
//!   passed unnoticed first yields the `timeout` down (dated at the
//!   deadline), then the recovery.

use crate::model::{
    AlertEvent, AlertJob, BeatRecord, BeatStatus, MonitorConfig, MonitorRef, MonitorState, Outage,
    Reason, StateChange, Status, WIRE_VERSION,
};

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
    /// The timeout was changed: the deadline follows the last beat.
    Retime,
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
    pub alert_id: String,
    /// Down or up.
    pub event: AlertEvent,
    /// Why.
    pub reason: Reason,
    /// When the change took effect (ms).
    pub at: i64,
    /// The beat's message.
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
                id: monitor_id.to_owned(),
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
    s: MonitorState,
    changes: Vec<StateChange>,
    alerts: Vec<Alert>,
}

impl Stepper<'_> {
    fn change(&mut self, to: Status, reason: Reason, at: i64, beat: Option<&BeatRecord>) {
        let from = self.s.status;
        self.s.changes += 1;
        let alert = match (to, reason) {
            (Status::Down, Reason::Timeout | Reason::Reported) => Some(AlertEvent::Down),
            (Status::Up, Reason::Recovered) => Some(AlertEvent::Up),
            _ => None,
        };
        let msg = beat.and_then(|b| b.msg.clone());
        let alert_id = alert.map(|event| {
            let alert_id = format!("{}.{}", self.id, self.s.changes);
            self.alerts.push(Alert {
                alert_id: alert_id.clone(),
                event,
                reason,
                at,
                msg: msg.clone(),
                value: beat.and_then(|b| b.value),
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
        self.s.status = to;
        self.s.since = at;
        if to != Status::Up {
            self.s.deadline = None;
        }
    }

    /// Fires the deadline if it passed at or before `now`, after extending
    /// it by every push-path outage it fell into.
    fn fire_deadline(&mut self, now: i64, outages: &[Outage]) {
        if let (Status::Up, Some(deadline)) = (self.s.status, self.s.deadline) {
            let extended = extend(deadline, outages);
            self.s.deadline = Some(extended);
            if extended <= now {
                self.change(Status::Down, Reason::Timeout, extended, None);
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

/// Applies `input` to `state` for monitor `id` whose timeout is `timeout_ms`;
/// `outages` are the known push-path outages (see [`extend`]).
pub fn step(
    id: &str,
    state: &MonitorState,
    timeout_ms: i64,
    input: Input<'_>,
    outages: &[Outage],
) -> Outcome {
    let mut st = Stepper {
        id,
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
            st.fire_deadline(b.at, outages);
            let beat_at = st.s.last_beat_at.map_or(b.at, |prev| prev.max(b.at));
            match (st.s.status, b.status) {
                (Status::Paused, _) | (Status::Down, BeatStatus::Down) => {}
                (Status::New, BeatStatus::Up) => {
                    st.change(Status::Up, Reason::FirstBeat, b.at, Some(b))
                }
                (Status::Down, BeatStatus::Up) => {
                    st.change(Status::Up, Reason::Recovered, b.at, Some(b))
                }
                (Status::Up, BeatStatus::Up) => {}
                (Status::New | Status::Up, BeatStatus::Down) => {
                    st.change(Status::Down, Reason::Reported, b.at, Some(b))
                }
            }
            st.s.last_seq = b.seq;
            st.s.last_beat_at = Some(beat_at);
            if st.s.status == Status::Up {
                st.s.deadline = Some(beat_at + timeout_ms);
            }
        }
        Input::Tick { now } => st.fire_deadline(now, outages),
        Input::Pause { now } => {
            if st.s.status != Status::Paused {
                st.change(Status::Paused, Reason::Paused, now, None);
            }
        }
        Input::Resume { now } => {
            if st.s.status == Status::Paused {
                if st.s.last_beat_at.is_some() {
                    st.change(Status::Up, Reason::Resumed, now, None);
                    st.s.deadline = Some(now + timeout_ms);
                } else {
                    st.change(Status::New, Reason::Resumed, now, None);
                }
            }
        }
        Input::Retime => {
            if let (Status::Up, Some(last)) = (st.s.status, st.s.last_beat_at) {
                st.s.deadline = Some(last + timeout_ms);
            }
        }
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
        step("m", state, T, input, &[])
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
        let o = step("m", &s, 60_000, Input::Retime, &[]);
        assert_eq!(o.state.deadline, Some(61_000));
        let d = state(Status::Down, None, Some(1_000), 1);
        assert_eq!(step("m", &d, 60_000, Input::Retime, &[]).state, d);
    }

    #[test]
    fn a_deadline_inside_an_outage_is_extended_by_its_length() {
        let s = state(Status::Up, Some(T), Some(0), 1);
        let outage = Outage {
            start: T - 3_000,
            end: T + 5_000,
        };
        // At the end of the outage: nothing fires, the deadline moved by 8 s.
        let o = step("m", &s, T, Input::Tick { now: T + 5_000 }, &[outage]);
        assert!(o.alerts.is_empty());
        assert_eq!(o.state.deadline, Some(T + 8_000));
        // Once the extended deadline passes, the timeout fires, dated at it.
        let o = step("m", &o.state, T, Input::Tick { now: T + 8_000 }, &[outage]);
        assert_eq!(o.alerts.len(), 1);
        assert_eq!(o.alerts[0].at, T + 8_000);
        // A beat arriving right after the outage is no late beat.
        let o = step("m", &s, T, Input::Beat(&up(2, T + 5_100)), &[outage]);
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
        let o = step("m", &s, T, Input::Tick { now: T }, &[before, after]);
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
}
