//! Every Prometheus metric Lifeline exports, in one catalogue, and the
//! process-wide recorder that renders them at `/metrics`.
//!
//! A service names a metric by its constant here
//! (`metrics::counter!(metric::INGEST_PUSHES, "result" => …)`), so each one
//! has its `# HELP` text and, for a histogram, its buckets in one place.
//! Latencies and sizes are Prometheus **histograms with explicit buckets**,
//! not summaries: bucket counts can be summed across replicas, quantiles
//! cannot. `lifeline_build_info{service,version}` is always 1 and tells
//! which build each process runs.
//!
//! The exporter keeps each histogram's recent samples until they are folded
//! into the buckets. It does that on every scrape, and — so that a process
//! nobody scrapes does not grow — on an upkeep thread every
//! [`UPKEEP_EVERY`].

use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted into buckets (upper bounds, ascending).
    Histogram(&'static [f64]),
}

/// One metric of the catalogue.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Its name in the exposition.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
}

/// How often histogram samples are folded into buckets when nobody scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Seconds, for latencies from well under a millisecond to seconds.
const FAST_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Seconds, for what takes from tens of milliseconds to minutes.
const SLOW_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Counts of items, in powers of two up to a batch's largest (512).
const BATCH_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// `lifeline_build_info{service,version}`.
pub const BUILD_INFO: &str = "lifeline_build_info";

/// `lifeline_ingest_pushes_total{result}`.
pub const INGEST_PUSHES: &str = "lifeline_ingest_pushes_total";
/// `lifeline_ingest_publish_seconds`.
pub const INGEST_PUBLISH_SECONDS: &str = "lifeline_ingest_publish_seconds";
/// `lifeline_ingest_batch_beats`.
pub const INGEST_BATCH_BEATS: &str = "lifeline_ingest_batch_beats";

/// `lifeline_evaluator_beats_total{result}`.
pub const EVALUATOR_BEATS: &str = "lifeline_evaluator_beats_total";
/// `lifeline_evaluator_consumer_pending`.
pub const EVALUATOR_CONSUMER_PENDING: &str = "lifeline_evaluator_consumer_pending";
/// `lifeline_evaluator_consumer_unacked`.
pub const EVALUATOR_CONSUMER_UNACKED: &str = "lifeline_evaluator_consumer_unacked";
/// `lifeline_evaluator_deadlines_due`.
pub const EVALUATOR_DEADLINES_DUE: &str = "lifeline_evaluator_deadlines_due";
/// `lifeline_evaluator_deadlines_overdue_seconds`.
pub const EVALUATOR_DEADLINES_OVERDUE: &str = "lifeline_evaluator_deadlines_overdue_seconds";
/// `lifeline_evaluator_detection_delay_seconds`.
pub const EVALUATOR_DETECTION_DELAY: &str = "lifeline_evaluator_detection_delay_seconds";
/// `lifeline_evaluator_alerts_published_total{event}`.
pub const EVALUATOR_ALERTS_PUBLISHED: &str = "lifeline_evaluator_alerts_published_total";
/// `lifeline_evaluator_outbox_jobs`.
pub const EVALUATOR_OUTBOX_JOBS: &str = "lifeline_evaluator_outbox_jobs";
/// `lifeline_evaluator_watermark_lag_seconds`.
pub const EVALUATOR_WATERMARK_LAG: &str = "lifeline_evaluator_watermark_lag_seconds";
/// `lifeline_evaluator_outages_total`.
pub const EVALUATOR_OUTAGES: &str = "lifeline_evaluator_outages_total";

/// `lifeline_notifier_deliveries_total{channel_type,outcome}`.
pub const NOTIFIER_DELIVERIES: &str = "lifeline_notifier_deliveries_total";
/// `lifeline_notifier_delivery_seconds{channel_type}`.
pub const NOTIFIER_DELIVERY_SECONDS: &str = "lifeline_notifier_delivery_seconds";
/// `lifeline_notifier_dead_lettered_total{channel_type}`.
pub const NOTIFIER_DEAD_LETTERED: &str = "lifeline_notifier_dead_lettered_total";

/// `lifeline_api_requests_total{method,route,status}`.
pub const API_REQUESTS: &str = "lifeline_api_requests_total";
/// `lifeline_api_test_alerts_total{outcome}`.
pub const API_TEST_ALERTS: &str = "lifeline_api_test_alerts_total";

/// Every metric a Lifeline service exports.
pub const CATALOGUE: &[Metric] = &[
    Metric {
        name: BUILD_INFO,
        kind: Kind::Gauge,
        help: "Always 1; the labels name the service and the version it was built from.",
    },
    Metric {
        name: INGEST_PUSHES,
        kind: Kind::Counter,
        help: "Pushes answered, by result: accepted, or why refused (unknown_token, bad_request, too_large, rate_limited, unavailable).",
    },
    Metric {
        name: INGEST_PUBLISH_SECONDS,
        kind: Kind::Histogram(FAST_SECONDS),
        help: "Seconds from publishing a batch of beats to JetStream's acknowledgement.",
    },
    Metric {
        name: INGEST_BATCH_BEATS,
        kind: Kind::Histogram(BATCH_SIZES),
        help: "Beats carried per JetStream message.",
    },
    Metric {
        name: EVALUATOR_BEATS,
        kind: Kind::Counter,
        help: "Beats processed, by result (applied, late, duplicate, unknown_monitor, malformed, ...).",
    },
    Metric {
        name: EVALUATOR_CONSUMER_PENDING,
        kind: Kind::Gauge,
        help: "Beat messages in the stream not yet delivered to any evaluator.",
    },
    Metric {
        name: EVALUATOR_CONSUMER_UNACKED,
        kind: Kind::Gauge,
        help: "Beat messages delivered to an evaluator and not yet committed.",
    },
    Metric {
        name: EVALUATOR_DEADLINES_DUE,
        kind: Kind::Gauge,
        help: "Passed deadlines found by the last tick.",
    },
    Metric {
        name: EVALUATOR_DEADLINES_OVERDUE,
        kind: Kind::Gauge,
        help: "Seconds the oldest passed deadline of the last tick was overdue.",
    },
    Metric {
        name: EVALUATOR_DETECTION_DELAY,
        kind: Kind::Histogram(SLOW_SECONDS),
        help: "Seconds from a missed deadline to its state change being written.",
    },
    Metric {
        name: EVALUATOR_ALERTS_PUBLISHED,
        kind: Kind::Counter,
        help: "Alert jobs confirmed by RabbitMQ, by event.",
    },
    Metric {
        name: EVALUATOR_OUTBOX_JOBS,
        kind: Kind::Gauge,
        help: "Alert jobs waiting in the outbox for RabbitMQ.",
    },
    Metric {
        name: EVALUATOR_WATERMARK_LAG,
        kind: Kind::Gauge,
        help: "Seconds the newest pulse of the push path trails the clock.",
    },
    Metric {
        name: EVALUATOR_OUTAGES,
        kind: Kind::Counter,
        help: "Push-path outages recorded (deadlines inside one are extended by its length).",
    },
    Metric {
        name: NOTIFIER_DELIVERIES,
        kind: Kind::Counter,
        help: "Delivery attempts, by channel type and outcome (succeeded, retrying, failed).",
    },
    Metric {
        name: NOTIFIER_DELIVERY_SECONDS,
        kind: Kind::Histogram(SLOW_SECONDS),
        help: "Seconds one delivery attempt took, by channel type.",
    },
    Metric {
        name: NOTIFIER_DEAD_LETTERED,
        kind: Kind::Counter,
        help: "Deliveries that failed for good and went to the dead-letter queue, by channel type.",
    },
    Metric {
        name: API_REQUESTS,
        kind: Kind::Counter,
        help: "Management API requests answered, by method, route and status.",
    },
    Metric {
        name: API_TEST_ALERTS,
        kind: Kind::Counter,
        help: "Test alerts sent through the API, by outcome.",
    },
];

/// The process-wide Prometheus recorder, installed on first use with every
/// metric of the catalogue described, its histograms' buckets set, the
/// upkeep thread running, and `lifeline_build_info` set for `service`.
pub fn install(service: &'static str) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for m in CATALOGUE {
            if let Kind::Histogram(buckets) = m.kind {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(m.name.to_owned()), buckets)
                    .expect("catalogue buckets are not empty");
            }
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test's): then this
        // handle renders nothing, which is acceptable there.
        if metrics::set_global_recorder(recorder).is_ok() {
            for m in CATALOGUE {
                match m.kind {
                    Kind::Counter => metrics::describe_counter!(m.name, m.help),
                    Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
                    Kind::Histogram(_) => metrics::describe_histogram!(m.name, m.help),
                }
            }
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawn the metrics upkeep thread");
        }
        handle
    });
    // Several services may share a process (the tests run all four in one).
    static SERVICES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut services = SERVICES.lock().expect("services lock");
    if !services.contains(&service) {
        services.push(service);
        metrics::gauge!(BUILD_INFO, "service" => service, "version" => env!("CARGO_PKG_VERSION"))
            .set(1.0);
    }
    handle.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_histogram_buckets_ascend() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a metric is in the catalogue twice");
        for m in CATALOGUE {
            assert!(m.name.starts_with("lifeline_"), "{}", m.name);
            assert!(!m.help.is_empty(), "{} has no help", m.name);
            if let Kind::Histogram(b) = m.kind {
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{} buckets", m.name);
            }
            if let Kind::Counter = m.kind {
                assert!(
                    m.name.ends_with("_total"),
                    "counter {} lacks _total",
                    m.name
                );
            }
        }
    }
}
