//! `detection`: N monitors, up, whose deadlines are spread evenly over a
//! window; for each, the delay from its deadline to its alert job reaching
//! RabbitMQ.
//!
//! The monitors are written before any service runs (see
//! [`crate::fixtures`]): created as the API does, then put `up` with their
//! deadlines through the evaluator's commit script, earliest deadline first,
//! the first one far enough ahead for the writes to finish. Then ingest
//! (whose pulses move the watermark up to which deadlines fire — see the
//! evaluator's `deadlines` module) and the evaluator(s) start. No notifier
//! runs: this process consumes the alerts queue itself and takes, for each
//! alert job, `now - job.at` at receipt — `job.at` is the deadline for a
//! timeout. Both clocks are this machine's.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use lapin::{
    options::{BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use lifeline_shared::{
    model::{AlertEvent, AlertJob, Reason},
    names::SHARDS,
    time::now_ms,
};

use super::{Record, cpu_groups, verdict};
use crate::{
    cli::DetectionOpts,
    fixtures::{self, Stores},
    histogram::{Latency, fmt_duration},
    machine::{CpuUsage, CpuWatch},
    report::{Section, Table, fmt_int, fmt_rate},
    stack::{Env, Spec, Stack},
};

/// Timeout of the monitors (it only dates their last beat).
const TIMEOUT_S: u32 = 300;

/// What one detection run found.
struct DetectionRun {
    n: usize,
    create: Duration,
    deadlines: Duration,
    /// Deadlines already past when the services were ready.
    past_at_start: u64,
    latency: Latency,
    received: usize,
    duplicates: u64,
    other_alerts: u64,
    /// From the first deadline to the last alert received.
    span: Duration,
    cpu: CpuUsage,
    backlog: Backlog,
}

/// Where the work waited, sampled every second while detecting.
#[derive(Clone, Copy, Debug, Default)]
struct Backlog {
    /// Deadlines passed but still in the deadline index (not fired yet):
    /// the largest sample, and the sample at the last deadline.
    due_peak: u64,
    due_at_end: u64,
    /// Alert jobs in the outboxes (state changed, not yet confirmed by
    /// RabbitMQ): the largest sample, and the sample at the last deadline.
    outbox_peak: u64,
    outbox_at_end: u64,
}

/// Samples [`Backlog`] every second until aborted; the deadline index and
/// the outboxes are read in one pipelined round trip.
async fn sample_backlog(
    keys: lifeline_shared::store::Keys,
    mut conn: redis::aio::ConnectionManager,
    last_deadline: i64,
    out: std::sync::Arc<std::sync::Mutex<Backlog>>,
) {
    loop {
        let now = now_ms();
        let mut pipe = redis::pipe();
        for shard in 0..SHARDS {
            pipe.cmd("ZCOUNT")
                .arg(keys.deadlines(shard))
                .arg("-inf")
                .arg(now);
        }
        for shard in 0..SHARDS {
            pipe.cmd("HLEN").arg(keys.outbox(shard));
        }
        if let Ok(counts) = pipe.query_async::<Vec<u64>>(&mut conn).await {
            let (due, outbox) = counts.split_at(usize::from(SHARDS));
            let (due, outbox): (u64, u64) = (due.iter().sum(), outbox.iter().sum());
            let mut b = out.lock().expect("backlog lock");
            b.due_peak = b.due_peak.max(due);
            b.outbox_peak = b.outbox_peak.max(outbox);
            if now <= last_deadline + 1000 {
                b.due_at_end = due;
                b.outbox_at_end = outbox;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the alert consumer gathered.
struct Gathered {
    latency: Latency,
    received: usize,
    duplicates: u64,
    other: u64,
    last_ms: i64,
}

async fn one(env: &Env, n: usize, opts: &DetectionOpts) -> anyhow::Result<DetectionRun> {
    let names = env.scope("detect");
    let stores = Stores::open(&env.brokers.redis_url, &names)?;
    eprintln!(
        "bench: detection: writing {} monitors into Redis",
        fmt_int(n as u64)
    );
    let started = Instant::now();
    let monitors = fixtures::create(&stores, n, TIMEOUT_S, false).await?;
    let create = started.elapsed();
    // Writing the deadlines (one script call per monitor) takes about as
    // long as creating them (three commands): leave room for both.
    let lead = opts
        .lead
        .unwrap_or_else(|| create.mul_f64(1.5) + Duration::from_secs(5));
    let window_ms = opts.window.as_millis() as i64;
    let first = now_ms() + lead.as_millis() as i64;
    let deadline_of = |i: usize| first + window_ms * i as i64 / n as i64;
    eprintln!(
        "bench: detection: deadlines from {} s from now over {} s",
        lead.as_secs(),
        opts.window.as_secs()
    );
    let started = Instant::now();
    fixtures::set_up(&stores, &monitors.ids, TIMEOUT_S, deadline_of).await?;
    let deadlines = started.elapsed();
    drop(monitors);

    // Consume the alerts queue before anything can be published to it.
    let conn = lapin::Connection::connect(
        &env.brokers.amqp_url,
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let ch = conn.create_channel().await?;
    lifeline_shared::amqp::declare_alerts(&ch, &names).await?;
    ch.basic_qos(5000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            names.alerts_queue().as_str().into(),
            "lifeline-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let stop_ms = first + window_ms + opts.grace.as_millis() as i64;
    let stop_at =
        tokio::time::Instant::now() + Duration::from_millis((stop_ms - now_ms()).max(0) as u64);
    let gather = tokio::spawn(async move {
        let mut g = Gathered {
            latency: Latency::default(),
            received: 0,
            duplicates: 0,
            other: 0,
            last_ms: 0,
        };
        let mut seen: HashSet<String> = HashSet::with_capacity(n);
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(stop_at, consumer.next()).await {
            let now = now_ms();
            let Ok(job) = serde_json::from_slice::<AlertJob>(&delivery.data) else {
                g.other += 1;
                continue;
            };
            if !seen.insert(job.alert_id.into_string()) {
                g.duplicates += 1;
                continue;
            }
            if job.event != AlertEvent::Down || job.reason != Reason::Timeout {
                g.other += 1;
                continue;
            }
            g.latency.record_ms(now - job.at);
            g.last_ms = g.last_ms.max(now);
            g.received += 1;
            if g.received == n {
                break;
            }
        }
        g
    });

    let wait = first - now_ms();
    if wait > 1500 {
        tokio::time::sleep(Duration::from_millis(wait as u64 - 1000)).await;
    }
    let mut stack = Stack::start(env, &names, &Spec::default()).await?;
    let ready = now_ms();
    let past_at_start = if ready > first {
        (((ready - first) * n as i64 / window_ms) as u64 + 1).min(n as u64)
    } else {
        0
    };
    eprintln!("bench: detection: services ready; waiting for the alerts");
    let until_first = first - now_ms();
    if until_first > 0 {
        tokio::time::sleep(Duration::from_millis(until_first as u64)).await;
    }
    let cpu = CpuWatch::start(cpu_groups(Some(&stack)));
    let backlog = std::sync::Arc::new(std::sync::Mutex::new(Backlog::default()));
    let sampler = tokio::spawn(sample_backlog(
        stores.get(0).keys().clone(),
        stores.redis().await?,
        first + window_ms,
        backlog.clone(),
    ));
    let g = gather.await?;
    sampler.abort();
    let backlog = *backlog.lock().expect("backlog lock");
    let cpu = cpu.stop();
    stack.check_alive()?;
    drop(stack);
    let _ = conn.close(200, "bench done".into()).await;
    eprintln!("bench: detection: removing {} monitors", fmt_int(n as u64));
    env.release(&names).await;
    Ok(DetectionRun {
        n,
        create,
        deadlines,
        past_at_start,
        received: g.received,
        duplicates: g.duplicates,
        other_alerts: g.other,
        span: Duration::from_millis((g.last_ms - first).max(0) as u64),
        latency: g.latency,
        cpu,
        backlog,
    })
}

/// Runs `detection` at each monitor count.
pub(crate) async fn run(env: &Env, opts: &DetectionOpts) -> anyhow::Result<Section> {
    let record = Record::begin();
    let mut runs = Vec::new();
    for &n in &opts.monitors {
        runs.push(one(env, n.max(1), opts).await?);
    }
    let window = opts.window.as_secs_f64();
    let mut t = Table::new(&[
        "monitors",
        "deadlines/s",
        "alerts received",
        "delay p50",
        "p99",
        "max",
        "alerts/s sustained",
        "notes",
    ]);
    for r in &runs {
        let s = r.latency.summary();
        // Alerts that never came were each over `grace` late: they rank
        // as the slowest.
        let missing = (r.n - r.received) as u64;
        let q = |q: f64| {
            r.latency
                .quantile_with_missing(q, missing)
                .map_or_else(|| format!("> {}", fmt_duration(opts.grace)), fmt_duration)
        };
        let mut notes = Vec::new();
        if missing > 0 {
            notes.push(format!(
                "**{} alerts had not come {} s after the last deadline**; they count as the slowest",
                fmt_int(missing),
                opts.grace.as_secs()
            ));
        }
        if r.past_at_start > 0 {
            notes.push(format!(
                "{} deadlines had passed before the services were ready (setup overran; raise --lead)",
                fmt_int(r.past_at_start)
            ));
        }
        if r.duplicates > 0 {
            notes.push(format!(
                "{} duplicate jobs (same alert id)",
                fmt_int(r.duplicates)
            ));
        }
        if r.other_alerts > 0 {
            notes.push(format!("{} other alerts", fmt_int(r.other_alerts)));
        }
        notes.push(format!(
            "setup {:.1} s + {:.1} s",
            r.create.as_secs_f64(),
            r.deadlines.as_secs_f64()
        ));
        t.row([
            fmt_int(r.n as u64),
            fmt_rate(r.n as f64 / window),
            if r.received == r.n {
                fmt_int(r.received as u64)
            } else {
                format!(
                    "**{} of {}**",
                    fmt_int(r.received as u64),
                    fmt_int(r.n as u64)
                )
            },
            q(0.50),
            format!("**{}**", q(0.99)),
            if missing > 0 {
                format!("> {}", fmt_duration(opts.grace))
            } else {
                fmt_duration(s.max)
            },
            fmt_rate(r.received as f64 / r.span.as_secs_f64().max(window)),
            notes.join("; "),
        ]);
    }
    let mut cpu = Table::new(&[
        "monitors",
        "passed, not fired: at the last deadline / peak",
        "fired, not published (outbox): at the last deadline / peak",
        "CPU while detecting (100 % = one core)",
    ]);
    for r in &runs {
        let b = r.backlog;
        cpu.row([
            fmt_int(r.n as u64),
            format!("{} / {}", fmt_int(b.due_at_end), fmt_int(b.due_peak)),
            format!("{} / {}", fmt_int(b.outbox_at_end), fmt_int(b.outbox_peak)),
            r.cpu.describe(),
        ]);
    }
    let largest = runs.iter().max_by_key(|r| r.n);
    let met = !env.quick
        && largest.is_some_and(|r| {
            let s = r.latency.summary();
            r.n >= 1_000_000
                && r.received == r.n
                && s.p99 <= Duration::from_secs(1)
                && s.max <= Duration::from_secs(2)
        });
    let body = format!(
        "{}\n* Setup: monitors written straight into Redis (see Method), `up`, deadlines spread evenly over {} s; \
{} ingest (its pulses advance the watermark), {} evaluator(s), ticking every 100 ms (the default); no notifier — the alerts queue is read by this process.\n\
* Delay: receipt of the alert job (RabbitMQ → this process) minus `job.at`, the deadline. One clock: this machine's. \
It includes waiting for the watermark (ingest pulses every 250 ms) and for the next tick (100 ms).\n\
* Where the work waited, sampled every second from the deadline index (`ZCOUNT` of passed deadlines) and the outboxes (`HLEN`): \
deadlines passed but not yet fired by a tick, and alert jobs committed but not yet confirmed by RabbitMQ.\n\n{}\n{}\n\
Target at 1,000,000 monitors: p99 ≤ 1 s, max ≤ 2 s — {}.\n",
        record.header(env, runs.last().map(|r| &r.cpu)),
        opts.window.as_secs(),
        env.ingest_replicas,
        env.evaluator_replicas,
        t.markdown(),
        cpu.markdown(),
        if env.quick {
            "not judged (quick run)"
        } else {
            verdict(met)
        }
    );
    Ok(Section {
        key: "detection".into(),
        title: "Detection delay: deadline to alert job".into(),
        body,
    })
}
