//! `burst`: every one of N monitors pushes once, the pushes arriving evenly
//! within one second (cron jobs at the top of the minute): how long until
//! all are accepted, and until the evaluator has applied them all.
//!
//! The monitors are `up` already (they beat before), so each push is an
//! ordinary beat. The pushes share `C` keep-alive connections opened
//! beforehand: a real burst of separate clients would add a TCP handshake
//! per push. Latency counts from each push's arrival time, so pushes
//! waiting for a free connection are charged for the wait. A `503` is
//! retried after a second, as `Retry-After: 1` says.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lifeline_testkit::poll;

use super::{
    Record, cpu_groups,
    push::{applied, push_requests},
    verdict,
};
use crate::{
    cli::BurstOpts,
    fixtures::{self, Stores},
    histogram::fmt_duration,
    load,
    machine::CpuWatch,
    report::{Section, Table, fmt_int},
    stack::{Env, Spec, Stack},
};

/// Runs `burst`.
pub(crate) async fn run(env: &Env, opts: &BurstOpts) -> anyhow::Result<Section> {
    let record = Record::begin();
    let names = env.scope("burst");
    let stores = Stores::open(&env.brokers.redis_url, &names)?;
    eprintln!(
        "bench: burst: writing {} monitors into Redis",
        fmt_int(opts.monitors as u64)
    );
    let (monitors, setup) = fixtures::create_up(&stores, opts.monitors, 3600).await?;
    let mut spec = Spec::default();
    if let Some(rate) = &opts.push_rate {
        spec.env.push(("LIFELINE_PUSH_RATE".into(), rate.clone()));
    }
    let mut stack = Stack::start(env, &names, &spec).await?;
    let requests = push_requests(&monitors.tokens);
    let addrs = stack.ingest_addrs();
    let conns = load::connect_all(&addrs, opts.connections).await?;
    let start = Instant::now() + Duration::from_millis(100);
    eprintln!(
        "bench: burst: {} pushes within {} ms over {} connections",
        fmt_int(opts.monitors as u64),
        opts.spread.as_millis(),
        opts.connections
    );
    let cpu = CpuWatch::start(cpu_groups(Some(&stack)));
    // u64::MAX until the load knows how many were accepted.
    let accepted_final = Arc::new(AtomicU64::new(u64::MAX));
    let n = opts.monitors as u64;
    let limit = Duration::from_secs(300);
    let watch_applied = {
        let accepted_final = accepted_final.clone();
        let stack = &stack;
        async move {
            poll(limit, Duration::from_millis(50), || async {
                let target = accepted_final.load(Ordering::Acquire).min(n);
                match applied(env, stack).await {
                    Ok(a) if a >= target => Some(start.elapsed()),
                    _ => None,
                }
            })
            .await
        }
    };
    let burst = async {
        let r = load::open_loop(conns, &addrs, start, opts.spread, requests).await;
        accepted_final.store(r.as_ref().map_or(0, |r| r.accepted), Ordering::Release);
        r
    };
    let (burst, all_applied) = tokio::join!(burst, watch_applied);
    let burst = burst?;
    let cpu = cpu.stop();
    let applied_n = applied(env, &stack).await?;
    stack.check_alive()?;
    drop(stack);
    env.release(&names).await;

    let s = burst.latency.summary();
    let mut t = Table::new(&["", "measured"]);
    t.row([
        "accepted".to_owned(),
        format!(
            "{} of {}{}",
            fmt_int(burst.accepted),
            fmt_int(n),
            if burst.given_up > 0 {
                format!(" (**{} never accepted**)", fmt_int(burst.given_up))
            } else {
                String::new()
            }
        ),
    ]);
    t.row([
        "all accepted after".to_owned(),
        format!("**{}**", fmt_duration(burst.last_accepted)),
    ]);
    t.row([
        "all applied by the evaluator after".to_owned(),
        match all_applied {
            Some(d) => format!("**{}** ({} applied)", fmt_duration(d), fmt_int(applied_n)),
            None => format!(
                "**not within {} s** ({} of {} applied)",
                limit.as_secs(),
                fmt_int(applied_n),
                fmt_int(burst.accepted)
            ),
        },
    ]);
    t.row([
        "push latency from arrival: p50 / p99 / max".to_owned(),
        format!(
            "{} / {} / {}",
            fmt_duration(s.p50),
            fmt_duration(s.p99),
            fmt_duration(s.max)
        ),
    ]);
    t.row([
        "answers other than 200, failures".to_owned(),
        format!(
            "{}; {} retries",
            burst.counts.describe_errors(),
            fmt_int(burst.retries)
        ),
    ]);
    t.row(["CPU during the burst".to_owned(), cpu.describe()]);
    let ten = Duration::from_secs(10);
    let met = !env.quick
        && opts.monitors >= 100_000
        && burst.given_up == 0
        && burst.last_accepted <= ten
        && all_applied.is_some_and(|d| d <= ten);
    let body = format!(
        "{}\n* Setup: {} monitors, up, written straight into Redis ({:.1} s); each pushes once (`POST /api/push/<token>`), \
arrivals spread evenly over {} ms, sent over {} keep-alive connections opened beforehand; times count from the first arrival; LIFELINE_PUSH_RATE {}.\n\n{}\n\
Target: 100,000 accepted and applied within 10 s — {}.\n",
        record.header(env, Some(&cpu)),
        fmt_int(n),
        setup.as_secs_f64(),
        opts.spread.as_millis(),
        opts.connections,
        opts.push_rate
            .as_deref()
            .map_or("ingest's default".to_owned(), |r| format!("`{r}`")),
        t.markdown(),
        if env.quick {
            "not judged (quick run)"
        } else {
            verdict(met)
        }
    );
    Ok(Section {
        key: "burst".into(),
        title: "Burst: every monitor pushes within one second".into(),
        body,
    })
}
