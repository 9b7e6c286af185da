//! `drain`: the evaluator's capacity, and how it changes with replicas.
//!
//! For each replica count K: ingest runs alone (no evaluator) while a
//! closed-loop push load writes a backlog of accepted beats into the
//! stream; then K evaluator replicas start, and the time from the first
//! beat applied to the last gives the rate at which K replicas work off a
//! backlog — what they can sustain, with nothing else competing for the
//! cores but the brokers. Every accepted push must be processed exactly
//! once: the evaluators' beat counters (every result) summed over the
//! replicas equal the 200 answers. Replicas draining one backlog together
//! take a monitor's beats out of order now and then; a beat older than one
//! already applied is recorded in the history as `late` and moves no state
//! (invariant 5), so those are counted apart.

use std::time::{Duration, Instant};

use super::{
    Record, cpu_groups,
    push::{BEATS_TOTAL, push_requests},
};
use crate::{
    cli::DrainOpts,
    fixtures::{self, Stores},
    histogram::fmt_duration,
    load,
    machine::{CpuUsage, CpuWatch},
    report::{Section, Table, fmt_int, fmt_rate},
    stack::{Env, Spec, Stack},
};

/// What one replica count measured.
struct DrainRun {
    replicas: usize,
    backlog: u64,
    /// From spawning the replicas until they answered `/readyz`.
    start: Duration,
    /// From the first beat processed to the last; `None`: not drained
    /// within the limit.
    drain: Option<Duration>,
    /// Beats counted by the evaluators, whatever the result.
    processed: u64,
    /// Of those, beats found older than one already applied.
    late: u64,
    cpu: CpuUsage,
}

impl DrainRun {
    fn rate(&self) -> Option<f64> {
        self.drain
            .map(|d| self.backlog as f64 / d.as_secs_f64().max(1e-6))
    }
}

/// Writes a backlog on a fresh prefix, then drains it with `replicas`.
async fn measure(env: &Env, opts: &DrainOpts, replicas: usize) -> anyhow::Result<DrainRun> {
    let names = env.scope("drain");
    let stores = Stores::open(&env.brokers.redis_url, &names)?;
    let (monitors, _) = fixtures::create_up(&stores, opts.monitors, 3600).await?;
    let spec = Spec {
        evaluators: Some(0),
        ..Spec::default()
    };
    let mut stack = Stack::start(env, &names, &spec).await?;
    eprintln!(
        "bench: drain: writing a backlog ({} connections for {} s, no evaluator)",
        opts.connections,
        opts.fill.as_secs()
    );
    let fill = load::closed_loop(
        &stack.ingest_addrs(),
        opts.connections,
        opts.fill,
        push_requests(&monitors.tokens),
    )
    .await?;
    let backlog = fill.counts.ok();
    eprintln!(
        "bench: drain: {} accepted; starting {replicas} evaluator(s)",
        fmt_int(backlog)
    );
    let spawned = Instant::now();
    stack.add_evaluators(env, &names, &spec, replicas).await?;
    let start = spawned.elapsed();
    let cpu = CpuWatch::start(cpu_groups(Some(&stack)));
    let limit = Duration::from_secs(60) + opts.fill * 10;
    let deadline = Instant::now() + limit;
    let mut first = None;
    let mut done = None;
    while Instant::now() < deadline {
        let n = processed(env, &stack, "").await?;
        if n > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if n >= backlog {
            done = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu.stop();
    let drain = done.zip(first).map(|(end, first)| end - first);
    // Anything applied beyond the backlog shows after a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = processed(env, &stack, "").await?;
    let late = processed(env, &stack, "result=\"late\"").await?;
    stack.check_alive()?;
    drop(stack);
    env.release(&names).await;
    Ok(DrainRun {
        replicas,
        backlog,
        start,
        drain,
        processed: total,
        late,
        cpu,
    })
}

/// Beats the evaluator replicas counted with `label` (any result if empty).
async fn processed(env: &Env, stack: &Stack, label: &str) -> anyhow::Result<u64> {
    Ok(stack
        .evaluator_metric(&env.http, BEATS_TOTAL, label)
        .await? as u64)
}

/// Runs `drain` for each replica count and reports them together.
pub(crate) async fn run(env: &Env, opts: &DrainOpts) -> anyhow::Result<Section> {
    let record = Record::begin();
    let mut runs = Vec::new();
    for &k in &opts.replicas {
        runs.push(measure(env, opts, k).await?);
    }
    let base = runs.first().and_then(DrainRun::rate);
    let mut t = Table::new(&[
        "evaluator replicas",
        "backlog",
        "drained in",
        "beats processed/s",
        "vs 1st row",
        "exactly once",
        "late",
        "CPU while draining (100 % = one core)",
        "CPU time per beat",
    ]);
    for r in &runs {
        let rate = r.rate();
        t.row([
            r.replicas.to_string(),
            fmt_int(r.backlog),
            r.drain.map_or("**not drained**".into(), fmt_duration),
            rate.map_or("–".into(), |x| format!("**{}**", fmt_rate(x))),
            match (rate, base) {
                (Some(x), Some(b)) => format!("{:.2}×", x / b),
                _ => "–".into(),
            },
            if r.processed == r.backlog {
                "yes".to_owned()
            } else {
                format!("**no**: {} processed", fmt_int(r.processed))
            },
            fmt_int(r.late),
            r.cpu.describe(),
            rate.map_or("–".into(), |x| r.cpu.per_event(x)),
        ]);
    }
    let starts = runs
        .iter()
        .map(|r| fmt_duration(r.start))
        .collect::<Vec<_>>()
        .join(", ");
    let redis = runs
        .first()
        .and_then(|r| r.cpu.groups.iter().find(|(l, _)| l == "redis-server"))
        .map_or(0.0, |(_, p)| *p);
    let bound = if redis >= 85.0 {
        format!("Redis is what bounds it: {redis:.0} % of its one core while one replica drained")
    } else {
        format!("Redis used {redis:.0} % of its one core while one replica drained")
    };
    let body = format!(
        "{}\n* Setup: {} monitors written straight into Redis (see Method); for each row, ingest alone takes a closed-loop push load ({} connections, {} s) into the stream, then the evaluator replicas start ({} to ready) and work off the backlog; the rate counts from the first beat processed to the last. *Late*: beats a replica took after another replica had applied a newer beat of the same monitor; recorded in the history as late, they move no state (invariant 5). {} runtime thread(s) per service (TOKIO_WORKER_THREADS).\n\n{}\nOne evaluator replica works off beats at {} the push target (30,000/s). {bound} (Redis runs one thread; every beat is one commit script in a pipelined batch). Replicas pull from one shared durable consumer and commit with version-checked scripts, so any number of them process each beat exactly once; on this machine they share Redis and two cores, so a second replica adds no capacity here: it is there for availability. Past one Redis, the keys are laid out for Redis Cluster (DESIGN.md).\n",
        record.header(env, runs.last().map(|r| &r.cpu)),
        fmt_int(opts.monitors as u64),
        opts.connections,
        opts.fill.as_secs(),
        starts,
        env.worker_threads,
        t.markdown(),
        base.map_or("–".into(), |b| format!("{:.1}×", b / 30_000.0)),
    );
    Ok(Section {
        key: "drain".into(),
        title: "Evaluator capacity: a backlog drained by 1, 2 … replicas".into(),
        body,
    })
}
