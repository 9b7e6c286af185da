//! What a person reads in an alert, independent of where it is shown: the
//! headline (`nightly-backup is DOWN`), the reason in words, and the facts
//! (message, since when, for how long, last beat, monitor id). Email and
//! Slack render the same [`Summary`]; the webhook sends the raw job instead.
//!
//! Durations are computed when the attempt is made, so an alert delivered
//! late by retries still says how long the monitor has really been down.

use chrono::DateTime;
use lifeline_shared::model::{AlertEvent, AlertJob, Reason};

/// One labelled line of an alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fact {
    /// E.g. `Down since`.
    pub(crate) label: &'static str,
    /// Plain text; renderers escape it for their format.
    pub(crate) value: String,
}

/// An alert in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Down, up or test.
    pub(crate) event: AlertEvent,
    /// `nightly-backup is DOWN`, `nightly-backup is UP` or `Test alert`.
    pub(crate) headline: String,
    /// The reason in words.
    pub(crate) reason: &'static str,
    /// Everything else worth knowing, in display order.
    pub(crate) facts: Vec<Fact>,
}

impl Summary {
    /// Summarises `job` as of `now` (ms). `down_since` is when the monitor
    /// went down, for a recovery alert (the job itself does not carry it).
    pub(crate) fn new(job: &AlertJob, down_since: Option<i64>, now: i64) -> Self {
        let name = one_line(&job.monitor.name);
        let mut facts = vec![Fact {
            label: "Reason",
            value: reason_text(job.reason).to_owned(),
        }];
        if let Some(msg) = job.msg.as_deref().filter(|m| !m.trim().is_empty()) {
            facts.push(Fact {
                label: "Message",
                value: msg.to_owned(),
            });
        }
        if let Some(value) = job.value {
            facts.push(Fact {
                label: "Value",
                value: value.to_string(),
            });
        }
        let headline = match job.event {
            AlertEvent::Down => {
                facts.push(Fact {
                    label: "Down since",
                    value: format!("{} ({} ago)", when(job.at), human_duration(now - job.at)),
                });
                facts.push(last_beat(job.last_beat_at));
                format!("{name} is DOWN")
            }
            AlertEvent::Up => {
                facts.push(Fact {
                    label: "Recovered at",
                    value: when(job.at),
                });
                facts.push(Fact {
                    label: "Downtime",
                    value: match down_since {
                        Some(since) if since <= job.at => format!(
                            "{} (down since {})",
                            human_duration(job.at - since),
                            when(since)
                        ),
                        _ => "unknown".to_owned(),
                    },
                });
                // A recovery is itself a beat; otherwise (resumed) the newest
                // beat is the one before the change.
                facts.push(last_beat(if job.reason == Reason::Recovered {
                    Some(job.at)
                } else {
                    job.last_beat_at
                }));
                format!("{name} is UP")
            }
            AlertEvent::Test => {
                facts.push(Fact {
                    label: "Sent at",
                    value: when(job.at),
                });
                "Test alert".to_owned()
            }
        };
        if !job.monitor.id.is_empty() {
            facts.push(Fact {
                label: "Monitor",
                value: if name.is_empty() || job.event != AlertEvent::Test {
                    job.monitor.id.to_string()
                } else {
                    format!("{name} ({})", job.monitor.id)
                },
            });
        }
        facts.push(Fact {
            label: "Alert id",
            value: job.alert_id.to_string(),
        });
        Self {
            event: job.event,
            headline,
            reason: reason_text(job.reason),
            facts,
        }
    }

    /// The email subject: `[Lifeline] nightly-backup is DOWN`.
    pub(crate) fn subject(&self) -> String {
        match self.event {
            AlertEvent::Test => "[Lifeline] test alert".to_owned(),
            _ => format!("[Lifeline] {}", self.headline),
        }
    }

    /// One line for notifications: headline and reason.
    pub(crate) fn one_liner(&self) -> String {
        format!("{}: {}", self.headline, self.reason)
    }
}

fn last_beat(at: Option<i64>) -> Fact {
    Fact {
        label: "Last beat",
        value: at.map_or_else(|| "never".to_owned(), when),
    }
}

/// The reason in words.
fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::Timeout => "no heartbeat arrived before the deadline",
        Reason::Reported => "the job reported status=down",
        Reason::Recovered => "heartbeats are arriving again",
        Reason::FirstBeat => "first heartbeat received",
        Reason::Paused => "monitoring was paused",
        Reason::Resumed => "monitoring was resumed",
        Reason::Test => "a test alert sent through the API; nothing is wrong",
        Reason::Reminder => "still down (reminder)",
    }
}

/// Control characters (line breaks included) as spaces: names go into
/// subjects and headlines.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// `2023-11-14 22:13:20 UTC`.
pub(crate) fn when(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// `3m 20s`, `1h 2m`, `2d 3h`: the two largest units.
pub(crate) fn human_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use lifeline_shared::model::{MonitorRef, WIRE_VERSION};

    use super::*;

    fn job(event: AlertEvent, reason: Reason) -> AlertJob {
        AlertJob {
            v: WIRE_VERSION,
            alert_id: "m1.2".into(),
            event,
            monitor: MonitorRef {
                id: "m1".into(),
                name: "nightly\nbackup".into(),
            },
            reason,
            msg: Some("disk full".into()),
            value: None,
            at: 1_700_000_060_000,
            last_beat_at: Some(1_700_000_000_000),
            channels: vec![],
        }
    }

    fn fact<'a>(s: &'a Summary, label: &str) -> &'a str {
        &s.facts.iter().find(|f| f.label == label).unwrap().value
    }

    #[test]
    fn a_down_alert_says_since_when_and_for_how_long() {
        let s = Summary::new(
            &job(AlertEvent::Down, Reason::Reported),
            None,
            1_700_000_260_000,
        );
        assert_eq!(s.subject(), "[Lifeline] nightly backup is DOWN");
        assert_eq!(fact(&s, "Reason"), "the job reported status=down");
        assert_eq!(fact(&s, "Message"), "disk full");
        assert_eq!(
            fact(&s, "Down since"),
            "2023-11-14 22:14:20 UTC (3m 20s ago)"
        );
        assert_eq!(fact(&s, "Last beat"), "2023-11-14 22:13:20 UTC");
        assert_eq!(fact(&s, "Monitor"), "m1");
    }

    #[test]
    fn a_recovery_says_how_long_it_was_down() {
        let mut j = job(AlertEvent::Up, Reason::Recovered);
        j.msg = None;
        let s = Summary::new(&j, Some(1_700_000_060_000 - 3_723_000), 1_700_000_070_000);
        assert_eq!(s.subject(), "[Lifeline] nightly backup is UP");
        assert_eq!(
            fact(&s, "Downtime"),
            "1h 2m (down since 2023-11-14 21:12:17 UTC)"
        );
        assert_eq!(fact(&s, "Last beat"), "2023-11-14 22:14:20 UTC");
        assert!(s.facts.iter().all(|f| f.label != "Message"));
        let s = Summary::new(&j, None, 1_700_000_070_000);
        assert_eq!(fact(&s, "Downtime"), "unknown");
    }

    #[test]
    fn a_reminder_says_since_when_the_monitor_is_down() {
        let mut j = job(AlertEvent::Down, Reason::Reminder);
        j.msg = None;
        let s = Summary::new(&j, None, 1_700_003_660_000);
        assert_eq!(s.subject(), "[Lifeline] nightly backup is DOWN");
        assert_eq!(fact(&s, "Reason"), "still down (reminder)");
        assert_eq!(
            fact(&s, "Down since"),
            "2023-11-14 22:14:20 UTC (1h 0m ago)"
        );
    }

    #[test]
    fn a_test_alert_is_labelled_as_such() {
        let s = Summary::new(&job(AlertEvent::Test, Reason::Test), None, 0);
        assert_eq!(s.subject(), "[Lifeline] test alert");
        assert!(s.reason.contains("test"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(-5), "0s");
        assert_eq!(human_duration(59_999), "59s");
        assert_eq!(human_duration(61_000), "1m 1s");
        assert_eq!(human_duration(3_600_000), "1h 0m");
        assert_eq!(human_duration(90_061_000), "1d 1h");
    }
}
