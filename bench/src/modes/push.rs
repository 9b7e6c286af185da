//! `push`: accepted pushes per second and their latency, over `C` keep-alive
//! connections for `D` seconds, against ingest and evaluator processes —
//! then proof that every accepted push reached the evaluator.
//!
//! The proof is exact, in two parts:
//! * the evaluators' counter `lifeline_evaluator_beats_total{result="applied"}`
//!   (summed over replicas; the prefix is fresh, so it starts at zero) must
//!   equal the number of 200 answers, once the evaluator has drained the
//!   stream (waited for, bounded);
//! * each monitor's beat history must hold exactly as many beats as it got
//!   200 answers, up to the history cap (100): the pushes were spread over
//!   the right monitors.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use lifeline_testkit::poll;

use super::{Record, cpu_groups, verdict};
use crate::{
    cli::PushOpts,
    fixtures::{self, Stores},
    histogram::fmt_duration,
    http,
    load::{self, LoadResult},
    machine::{CpuUsage, CpuWatch, RssWatch, fmt_mib},
    report::{Section, Table, fmt_int, fmt_rate},
    stack::{Env, Spec, Stack},
};

/// Timeout of the bench monitors: nothing fires during a run.
const TIMEOUT_S: u32 = 3600;

/// Beats kept per monitor (the evaluator's default `LIFELINE_HISTORY_BEATS`).
const HISTORY_CAP: u32 = 100;

/// The applied counter.
pub(crate) const BEATS_TOTAL: &str = "lifeline_evaluator_beats_total";
pub(crate) const APPLIED: &str = "result=\"applied\"";

/// What one push measurement found.
pub(crate) struct PushRun {
    pub(crate) opts: PushOpts,
    pub(crate) load: LoadResult,
    pub(crate) setup: Duration,
    pub(crate) cpu: CpuUsage,
    pub(crate) rss: Vec<(String, u64, u64)>,
    /// Applied when the load stopped.
    pub(crate) applied_at_end: u64,
    /// The evaluator's lag during the load, in beats: the largest and the
    /// mean of samples of (accepted − applied), each an upper bound.
    pub(crate) lag: Lag,
    /// Applied after draining, and how long the drain took (None: not
    /// drained within the limit).
    pub(crate) applied: u64,
    pub(crate) drained_after: Option<Duration>,
    /// Beats the evaluator counted otherwise (late, duplicate, unknown).
    pub(crate) other_results: u64,
    /// Monitors whose history length is not min(200s, cap).
    pub(crate) history_mismatches: usize,
}

impl PushRun {
    pub(crate) fn exact(&self) -> bool {
        self.drained_after.is_some()
            && self.applied == self.load.counts.ok()
            && self.history_mismatches == 0
    }
}

/// The evaluator's lag behind the accepted pushes, sampled during a load.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lag {
    pub(crate) max: u64,
    pub(crate) mean: f64,
    pub(crate) samples: u64,
}

/// Samples (accepted − applied) every [`LAG_EVERY`] until `done` is set:
/// `applied` is read first, so each sample is an upper bound.
async fn sample_lag(env: &Env, stack: &Stack, accepted: &AtomicU64, done: &AtomicBool) -> Lag {
    let mut lag = Lag::default();
    let mut sum = 0u64;
    while !done.load(Ordering::Acquire) {
        tokio::time::sleep(LAG_EVERY).await;
        let Ok(a) = applied(env, stack).await else {
            continue;
        };
        let behind = accepted.load(Ordering::Relaxed).saturating_sub(a);
        lag.max = lag.max.max(behind);
        sum += behind;
        lag.samples += 1;
    }
    lag.mean = sum as f64 / lag.samples.max(1) as f64;
    lag
}

/// How often the lag is sampled during a push load.
const LAG_EVERY: Duration = Duration::from_millis(250);

/// The request of a push: a body-less POST, as `curl -X POST <push_url>`.
pub(crate) fn push_requests(tokens: &[String]) -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        tokens
            .iter()
            .map(|t| http::post(&format!("/api/push/{t}"), "127.0.0.1"))
            .collect(),
    )
}

/// Beats applied so far, over every evaluator replica.
pub(crate) async fn applied(env: &Env, stack: &Stack) -> anyhow::Result<u64> {
    Ok(stack
        .evaluator_metric(&env.http, BEATS_TOTAL, APPLIED)
        .await? as u64)
}

/// Runs one push measurement on a fresh prefix.
pub(crate) async fn measure(env: &Env, opts: &PushOpts) -> anyhow::Result<PushRun> {
    let names = env.scope("push");
    let stores = Stores::open(&env.brokers.redis_url, &names)?;
    eprintln!(
        "bench: push: writing {} monitors into Redis",
        fmt_int(opts.monitors as u64)
    );
    let (monitors, setup) = fixtures::create_up(&stores, opts.monitors, TIMEOUT_S).await?;
    let mut spec = Spec::default();
    if let Some(rate) = &opts.push_rate {
        spec.env.push(("LIFELINE_PUSH_RATE".into(), rate.clone()));
    }
    let mut stack = Stack::start(env, &names, &spec).await?;
    let requests = push_requests(&monitors.tokens);
    eprintln!(
        "bench: push: {} connections for {} s",
        opts.connections,
        opts.duration.as_secs()
    );
    let cpu = CpuWatch::start(cpu_groups(Some(&stack)));
    let rss = RssWatch::start(stack.labelled_pids(), Duration::from_millis(500));
    let accepted_so_far = Arc::new(AtomicU64::new(0));
    let load_done = AtomicBool::new(false);
    let (load, lag) = tokio::join!(
        async {
            let r = load::closed_loop_counted(
                &stack.ingest_addrs(),
                opts.connections,
                opts.duration,
                requests,
                accepted_so_far.clone(),
            )
            .await;
            load_done.store(true, Ordering::Release);
            r
        },
        sample_lag(env, &stack, &accepted_so_far, &load_done),
    );
    let load = load?;
    let cpu = cpu.stop();
    let rss = rss.stop();
    stack.check_alive()?;
    let applied_at_end = applied(env, &stack).await?;
    let accepted = load.counts.ok();
    eprintln!(
        "bench: push: {} accepted; waiting for the evaluator to apply them",
        fmt_int(accepted)
    );
    let ended = std::time::Instant::now();
    let limit = Duration::from_secs(60) + opts.duration * 3;
    let drained = poll(limit, Duration::from_millis(100), || async {
        match applied(env, &stack).await {
            Ok(n) if n >= accepted => Some(n),
            _ => None,
        }
    })
    .await;
    let drained_after = drained.map(|_| ended.elapsed());
    // Anything applied beyond the accepted count shows after a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let applied = applied(env, &stack).await?;
    let all = stack
        .evaluator_metric(&env.http, BEATS_TOTAL, "")
        .await
        .map(|v| v as u64)?;
    let history_mismatches = check_histories(&stores, &monitors.ids, &load.ok_per_request).await?;
    stack.check_alive()?;
    drop(stack);
    env.release(&names).await;
    Ok(PushRun {
        opts: opts.clone(),
        load,
        setup,
        cpu,
        rss,
        applied_at_end,
        lag,
        applied,
        drained_after,
        other_results: all.saturating_sub(applied),
        history_mismatches,
    })
}

/// Monitors whose beat history does not hold min(200 answers, cap) beats.
async fn check_histories(
    stores: &Stores,
    ids: &[String],
    ok_per_monitor: &[u32],
) -> anyhow::Result<usize> {
    let store = stores.get(0);
    let mut conn = stores.redis().await?;
    let mut mismatches = 0;
    for (chunk_ids, chunk_ok) in ids.chunks(1000).zip(ok_per_monitor.chunks(1000)) {
        let mut pipe = redis::pipe();
        for id in chunk_ids {
            pipe.cmd("LLEN").arg(store.keys().beats(id));
        }
        let lens: Vec<u32> = pipe.query_async(&mut conn).await?;
        mismatches += lens
            .iter()
            .zip(chunk_ok)
            .filter(|(len, ok)| **len != (**ok).min(HISTORY_CAP))
            .count();
    }
    Ok(mismatches)
}

/// Runs `push` and reports it.
pub(crate) async fn run(env: &Env, opts: &PushOpts) -> anyhow::Result<(Section, PushRun)> {
    let record = Record::begin();
    let r = measure(env, opts).await?;
    let body = format!(
        "{}\n{}",
        record.header(env, Some(&r.cpu)),
        describe(env, &r)
    );
    let (key, title) = section_names(env);
    Ok((Section { key, title, body }, r))
}

/// The key and title of a push section: `push`, or `push-<i>i-<e>e` for a
/// run with other replica counts than one each, so that such a run has its
/// own section beside the default one.
fn section_names(env: &Env) -> (String, String) {
    let (i, e) = (env.ingest_replicas, env.evaluator_replicas);
    let title = "Push throughput and latency";
    if i == 1 && e == 1 {
        ("push".into(), title.into())
    } else {
        (
            format!("push-{i}i-{e}e"),
            format!("{title}: {i} ingest, {e} evaluator replicas"),
        )
    }
}

/// The tables of a push run.
pub(crate) fn describe(env: &Env, r: &PushRun) -> String {
    let o = &r.opts;
    let l = &r.load;
    let s = l.latency.summary();
    let accepted = l.counts.ok();
    let (lo, hi) = l.per_second_range();
    let secs = l.elapsed.as_secs_f64();
    let mut t = Table::new(&["", "measured"]);
    t.row([
        "accepted pushes/s".to_owned(),
        format!(
            "**{}** ({} answered 200 in {secs:.1} s)",
            fmt_rate(l.ok_rate()),
            fmt_int(accepted)
        ),
    ]);
    t.row([
        "accepted in one full second".to_owned(),
        format!("{} – {}", fmt_int(lo), fmt_int(hi)),
    ]);
    t.row([
        "latency of 200s: p50 / p99 / max".to_owned(),
        format!(
            "{} / **{}** / {}",
            fmt_duration(s.p50),
            fmt_duration(s.p99),
            fmt_duration(s.max)
        ),
    ]);
    t.row(["errors".to_owned(), l.counts.describe_errors()]);
    let reached = match r.drained_after {
        Some(after) if r.exact() => format!(
            "**all**: {} applied = {} accepted (exact), drained {} after the load; every monitor's history holds min(its 200s, 100) beats",
            fmt_int(r.applied),
            fmt_int(accepted),
            fmt_duration(after)
        ),
        Some(after) => format!(
            "**MISMATCH**: {} applied vs {} accepted (drained after {}); {} monitors with a wrong history length",
            fmt_int(r.applied),
            fmt_int(accepted),
            fmt_duration(after),
            fmt_int(r.history_mismatches as u64)
        ),
        None => format!(
            "**not drained**: {} of {} applied when the wait ended",
            fmt_int(r.applied),
            fmt_int(accepted)
        ),
    };
    t.row(["reached the evaluator".to_owned(), reached]);
    if r.other_results > 0 {
        t.row([
            "beats counted not applied (late, duplicate, unknown)".to_owned(),
            fmt_int(r.other_results),
        ]);
    }
    t.row([
        "evaluator during the load".to_owned(),
        format!(
            "applied {}/s; lag (accepted − applied, {} samples every {} ms): max **{}** beats, mean {}; {} behind when the load stopped",
            fmt_rate(r.applied_at_end as f64 / secs.max(1e-9)),
            r.lag.samples,
            LAG_EVERY.as_millis(),
            fmt_int(r.lag.max),
            fmt_int(r.lag.mean.round() as u64),
            fmt_int(accepted.saturating_sub(r.applied_at_end))
        ),
    ]);
    t.row(["CPU during the load".to_owned(), r.cpu.describe()]);
    t.row([
        "CPU time per accepted push".to_owned(),
        r.cpu.per_event(r.load.ok_rate()),
    ]);
    t.row([
        "resident memory, peak".to_owned(),
        r.rss
            .iter()
            .map(|(l, peak, _)| format!("{l} {}", fmt_mib(*peak)))
            .collect::<Vec<_>>()
            .join(", "),
    ]);

    let mut peers = Table::new(&["", "pushes/s", "how"]);
    peers.row([
        "**Lifeline** (this run)".to_owned(),
        format!("**{}**", fmt_rate(l.ok_rate())),
        format!(
            "lifeline-bench, {} keep-alive connections, {} s; the load generator on the same cores",
            o.connections,
            o.duration.as_secs()
        ),
    ]);
    peers.row([
        "Healthchecks",
        "240–340",
        "wrk, 32 connections, 10 s, same machine class (figures quoted in issue 5)",
    ]);
    peers.row([
        "Uptime Kuma",
        "335–367",
        "wrk, 32 connections, 10 s, same machine class (figures quoted in issue 5)",
    ]);

    let target = !env.quick
        && o.duration >= Duration::from_secs(60)
        && l.ok_rate() >= 30_000.0
        && s.p99 <= Duration::from_millis(20)
        && r.exact();
    format!(
        "* Setup: {} monitors written straight into Redis ({:.1} s; see Method), each pushed in turn; \
{} keep-alive connections for {} s, one request in flight each: `POST /api/push/<token>` without a body; \
{} ingest, {} evaluator process(es), {} runtime thread(s) each (TOKIO_WORKER_THREADS); LIFELINE_PUSH_RATE {}.\n\n{}\n{}\nTarget (2 cores, load generator included): ≥ 30,000 accepted/s for 60 s with p99 ≤ 20 ms, every push applied — {}.\n",
        fmt_int(o.monitors as u64),
        r.setup.as_secs_f64(),
        o.connections,
        o.duration.as_secs(),
        env.ingest_replicas,
        env.evaluator_replicas,
        env.worker_threads,
        o.push_rate.as_deref().map_or(
            "ingest's default (10/s per token, bursts of 20)".to_owned(),
            |r| format!("`{r}`")
        ),
        t.markdown(),
        peers.markdown(),
        if env.quick {
            "not judged (quick run)"
        } else {
            verdict(target)
        }
    )
}
