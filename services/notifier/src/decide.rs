//! The delivery decision: after one attempt, is the delivery done, tried
//! again later (after how long), or given up (and dead-lettered or not)?
//!
//! A plain function of the attempt's result, whether the job is a test
//! alert, the attempt's number and the retry schedule, with no I/O: the
//! deliverer decides first, then acts on the decision (publishes the job to
//! a delay queue or the dead-letter queue), then records it. The rules:
//!
//! * a delivered attempt succeeds;
//! * a test alert gets exactly one attempt: a failed one fails, and is not
//!   dead-lettered (the operator who asked for it sees the answer at once);
//! * a failure that retrying cannot mend (a 4xx other than 408 and 429, a
//!   permanent SMTP reply, invalid settings) fails at once, dead-lettered;
//! * any other failure is retried after the schedule's next step, or after
//!   the receiver's `Retry-After` when that is longer (rounded up to a delay
//!   queue that exists, see [`with_retry_after`]); once the schedule is
//!   exhausted it fails, dead-lettered. A `Retry-After` never earns an
//!   attempt the schedule does not allow.

use std::time::Duration;

use lifeline_shared::model::DeliveryOutcome;

use crate::{
    channels::SendError,
    retry::{RetrySchedule, with_retry_after},
};

/// How an attempt ended, as far as the decision goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The receiver took the alert.
    Delivered,
    /// The receiver did not take it.
    Failed {
        /// Whether another attempt could succeed.
        retryable: bool,
        /// How long the receiver asked to wait, if it did.
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    /// The attempt a channel's answer describes.
    pub(crate) fn of<T>(result: &Result<T, SendError>) -> Self {
        match result {
            Ok(_) => Self::Delivered,
            Err(e) => Self::Failed {
                retryable: e.retryable(),
                retry_after: e.retry_after(),
            },
        }
    }
}

/// What becomes of a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Delivered: nothing more to do.
    Succeeded,
    /// Attempt again after this long (through the delay queue of exactly
    /// this length).
    Retry {
        /// The pause before the next attempt.
        after: Duration,
    },
    /// Given up for good.
    Failed {
        /// Whether the job goes to the dead-letter queue (all but test
        /// alerts).
        dead_letter: bool,
    },
}

impl Decision {
    /// The outcome recorded for this decision.
    pub(crate) fn outcome(self) -> DeliveryOutcome {
        match self {
            Self::Succeeded => DeliveryOutcome::Succeeded,
            Self::Retry { .. } => DeliveryOutcome::Retrying,
            Self::Failed { .. } => DeliveryOutcome::Failed,
        }
    }
}

/// Decides what becomes of a delivery whose attempt number `number` (1 for
/// the first) ended as `attempt`; `test` for a test alert.
pub(crate) fn decide(
    attempt: Attempt,
    test: bool,
    number: u32,
    schedule: &RetrySchedule,
) -> Decision {
    let Attempt::Failed {
        retryable,
        retry_after,
    } = attempt
    else {
        return Decision::Succeeded;
    };
    if test {
        return Decision::Failed { dead_letter: false };
    }
    let step = if retryable {
        schedule.delay_after(number)
    } else {
        None
    };
    match step {
        Some(step) => Decision::Retry {
            after: with_retry_after(step, retry_after),
        },
        None => Decision::Failed { dead_letter: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn schedule(s: &str) -> RetrySchedule {
        s.parse().unwrap()
    }

    /// A failure that retrying may mend.
    fn transient(retry_after: Option<Duration>) -> Attempt {
        Attempt::Failed {
            retryable: true,
            retry_after,
        }
    }

    /// A failure that retrying cannot mend.
    fn permanent(retry_after: Option<Duration>) -> Attempt {
        Attempt::Failed {
            retryable: false,
            retry_after,
        }
    }

    const GIVEN_UP: Decision = Decision::Failed { dead_letter: true };

    #[test]
    fn a_delivered_attempt_succeeds_whatever_else_holds() {
        for s in [
            schedule("none"),
            schedule("1s,2s"),
            RetrySchedule::default(),
        ] {
            for test in [false, true] {
                for number in [1, 2, 3, 13, 14, u32::MAX] {
                    assert_eq!(
                        decide(Attempt::Delivered, test, number, &s),
                        Decision::Succeeded
                    );
                }
            }
        }
    }

    #[test]
    fn a_transient_failure_waits_for_the_next_step() {
        let s = schedule("1s,2s,30s");
        assert_eq!(
            decide(transient(None), false, 1, &s),
            Decision::Retry { after: secs(1) }
        );
        assert_eq!(
            decide(transient(None), false, 2, &s),
            Decision::Retry { after: secs(2) }
        );
        assert_eq!(
            decide(transient(None), false, 3, &s),
            Decision::Retry { after: secs(30) }
        );
    }

    #[test]
    fn an_exhausted_schedule_fails_and_dead_letters() {
        let s = schedule("1s,2s");
        assert_eq!(s.max_attempts(), 3);
        assert_eq!(decide(transient(None), false, 3, &s), GIVEN_UP);
        assert_eq!(decide(transient(None), false, 4, &s), GIVEN_UP);
        assert_eq!(decide(transient(None), false, u32::MAX, &s), GIVEN_UP);
        // `none`: a single attempt.
        assert_eq!(
            decide(transient(None), false, 1, &schedule("none")),
            GIVEN_UP
        );
        // The default: 13 attempts.
        let d = RetrySchedule::default();
        assert_eq!(
            decide(transient(None), false, 12, &d),
            Decision::Retry {
                after: secs(3 * 3600)
            }
        );
        assert_eq!(decide(transient(None), false, 13, &d), GIVEN_UP);
    }

    #[test]
    fn a_permanent_failure_fails_at_once_and_dead_letters() {
        let s = schedule("1s,2s");
        for number in [1, 2, 3] {
            assert_eq!(decide(permanent(None), false, number, &s), GIVEN_UP);
            // Even when the receiver asked to wait.
            assert_eq!(
                decide(permanent(Some(secs(5))), false, number, &s),
                GIVEN_UP
            );
        }
    }

    #[test]
    fn a_test_alert_gets_one_attempt_and_no_dead_letter() {
        let once = Decision::Failed { dead_letter: false };
        let s = schedule("1s,2s");
        for failure in [
            transient(None),
            transient(Some(secs(5))),
            permanent(None),
            permanent(Some(secs(5))),
        ] {
            for number in [1, 2, 3, 4] {
                assert_eq!(
                    decide(failure, true, number, &s),
                    once,
                    "{failure:?} #{number}"
                );
            }
            assert_eq!(decide(failure, true, 1, &schedule("none")), once);
        }
    }

    #[test]
    fn retry_after_lengthens_the_wait_but_never_the_schedule() {
        let s = schedule("200ms,200ms");
        // Longer than the step: rounded up to a rung of the ladder.
        assert_eq!(
            decide(transient(Some(secs(3))), false, 1, &s),
            Decision::Retry { after: secs(5) }
        );
        assert_eq!(
            decide(transient(Some(secs(1))), false, 2, &s),
            Decision::Retry { after: secs(1) }
        );
        // Shorter than the step: the step.
        assert_eq!(
            decide(transient(Some(Duration::from_millis(50))), false, 1, &s),
            Decision::Retry {
                after: Duration::from_millis(200)
            }
        );
        assert_eq!(
            decide(transient(Some(secs(20))), false, 1, &schedule("30s")),
            Decision::Retry { after: secs(30) }
        );
        // Capped at the ladder's top.
        assert_eq!(
            decide(transient(Some(secs(86_400))), false, 1, &s),
            Decision::Retry {
                after: secs(6 * 3600)
            }
        );
        // No attempt beyond the schedule, however the receiver asks.
        assert_eq!(decide(transient(Some(secs(1))), false, 3, &s), GIVEN_UP);
    }

    /// Every combination of a small grid keeps the rules: a retry only
    /// while the schedule has steps left, never shorter than its step nor
    /// than the wait asked (up to the cap), always to a known delay queue;
    /// a test alert never retried nor dead-lettered; nothing else given up
    /// without a dead letter.
    #[test]
    fn every_combination_keeps_the_rules() {
        let attempts = [
            Attempt::Delivered,
            transient(None),
            transient(Some(Duration::from_millis(1))),
            transient(Some(secs(3))),
            transient(Some(secs(100_000))),
            permanent(None),
            permanent(Some(secs(3))),
        ];
        for s in [
            schedule("none"),
            schedule("200ms"),
            schedule("1s,2m,1h*3"),
            RetrySchedule::default(),
        ] {
            let queues = s.delay_queues_ms();
            for attempt in attempts {
                for test in [false, true] {
                    for number in 1..=s.max_attempts() + 1 {
                        let decision = decide(attempt, test, number, &s);
                        let what = format!("{attempt:?} test={test} #{number} {s} -> {decision:?}");
                        match decision {
                            Decision::Succeeded => {
                                assert_eq!(attempt, Attempt::Delivered, "{what}")
                            }
                            Decision::Retry { after } => {
                                let Attempt::Failed {
                                    retryable: true,
                                    retry_after,
                                } = attempt
                                else {
                                    panic!("{what}");
                                };
                                assert!(!test && number < s.max_attempts(), "{what}");
                                let step = s.delay_after(number).unwrap();
                                assert!(after >= step, "{what}");
                                let asked = retry_after.unwrap_or_default().min(secs(6 * 3600));
                                assert!(after >= asked, "{what}");
                                assert!(
                                    queues.contains(&(after.as_millis() as u64)),
                                    "{what}: no such delay queue"
                                );
                            }
                            Decision::Failed { dead_letter } => {
                                assert_ne!(attempt, Attempt::Delivered, "{what}");
                                assert_eq!(dead_letter, !test, "{what}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_recorded_outcome_follows_the_decision() {
        assert_eq!(Decision::Succeeded.outcome(), DeliveryOutcome::Succeeded);
        assert_eq!(
            Decision::Retry { after: secs(1) }.outcome(),
            DeliveryOutcome::Retrying
        );
        for dead_letter in [false, true] {
            assert_eq!(
                Decision::Failed { dead_letter }.outcome(),
                DeliveryOutcome::Failed
            );
        }
    }

    #[test]
    fn a_channel_answer_becomes_an_attempt() {
        let ok: Result<(), SendError> = Ok(());
        assert_eq!(Attempt::of(&ok), Attempt::Delivered);
        let busy: Result<(), SendError> = Err(SendError::Status {
            status: 429,
            retry_after: Some(secs(7)),
        });
        assert_eq!(Attempt::of(&busy), transient(Some(secs(7))));
        let gone: Result<(), SendError> = Err(SendError::Status {
            status: 410,
            retry_after: None,
        });
        assert_eq!(Attempt::of(&gone), permanent(None));
        let invalid: Result<(), SendError> = Err(SendError::Invalid("x".into()));
        assert_eq!(Attempt::of(&invalid), permanent(None));
        let timeout: Result<(), SendError> = Err(SendError::Timeout(secs(10)));
        assert_eq!(Attempt::of(&timeout), transient(None));
    }
}
