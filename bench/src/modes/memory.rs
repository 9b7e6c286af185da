//! `memory`: what a monitor costs in Redis, what a stored beat costs, and
//! the resident memory of each service under push load.
//!
//! Redis: N monitors are written (see [`crate::fixtures`]), `up` with a
//! deadline. `MEMORY USAGE … SAMPLES 0` is taken of a sample of monitor
//! hashes and token keys, and of every deadline index and the monitors
//! index, whose size is shared out per member. The growth of `used_memory`
//! is given too, but Redis is shared with whatever else runs on the machine,
//! so it is only approximate. For beats, sampled monitors get 100 beats each
//! through the evaluator's commit script (what applying a push writes) and
//! their history lists are measured.
//!
//! Services: ingest, evaluator, API and notifier run; ingest and the
//! evaluator take a push load (the API and notifier idle), and each one's
//! `VmRSS` is sampled from `/proc` every 250 ms.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use lifeline_shared::{
    model::{BeatRecord, BeatStatus},
    names::{SHARDS, shard_of},
    store::{Commit, CommitResult},
    time::now_ms,
};

use super::{Record, cpu_groups, push::push_requests, verdict};
use crate::{
    cli::MemoryOpts,
    fixtures::{self, Stores, up_state},
    load,
    machine::{CpuWatch, RssWatch, fmt_mib, rss_kb},
    report::{Section, Table, fmt_int, fmt_rate},
    stack::{Env, Spec, Stack},
};

const TIMEOUT_S: u32 = 3600;

/// Beats stored per sampled monitor (the default history cap).
const BEATS: u64 = 100;

/// Monitors that get a beat history.
const BEAT_SAMPLE: usize = 100;

async fn memory_usage(conn: &mut redis::aio::ConnectionManager, key: &str) -> anyhow::Result<u64> {
    let n: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await?;
    Ok(n.unwrap_or(0))
}

async fn encoding(conn: &mut redis::aio::ConnectionManager, key: &str) -> String {
    redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query_async::<Option<String>>(conn)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| "?".into())
}

async fn used_memory(conn: &mut redis::aio::ConnectionManager) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// Runs `memory`.
pub(crate) async fn run(env: &Env, opts: &MemoryOpts) -> anyhow::Result<Section> {
    let record = Record::begin();
    let names = env.scope("memory");
    let stores = Stores::open(&env.brokers.redis_url, &names)?;
    let store = stores.get(0).clone();
    let mut conn = stores.redis().await?;
    let n = opts.monitors;
    let before = used_memory(&mut conn).await?;
    eprintln!(
        "bench: memory: writing {} monitors into Redis",
        fmt_int(n as u64)
    );
    let (monitors, _) = fixtures::create_up(&stores, n, TIMEOUT_S).await?;
    let after = used_memory(&mut conn).await?;

    // Per-key sizes over a sample, shared indexes over their members.
    let step = (n / opts.sample).max(1);
    let sample: Vec<&String> = monitors
        .ids
        .iter()
        .step_by(step)
        .take(opts.sample)
        .collect();
    let (mut hash, mut token_key) = (0u64, 0u64);
    for (k, id) in sample.iter().enumerate() {
        hash += memory_usage(&mut conn, &store.keys().monitor(id)).await?;
        let i = k * step;
        let token_hash = lifeline_shared::token::hash(&monitors.tokens[i]);
        token_key += memory_usage(&mut conn, &store.keys().token(&token_hash)).await?;
    }
    let sampled = sample.len();
    let per = |total: u64| total as f64 / sampled as f64;
    let (hash, token_key) = (per(hash), per(token_key));
    let mut deadlines = 0u64;
    for shard in 0..SHARDS {
        deadlines += memory_usage(&mut conn, &store.keys().deadlines(shard)).await?;
    }
    let deadline_share = deadlines as f64 / n as f64;
    let index_share =
        memory_usage(&mut conn, &store.keys().monitors_index()).await? as f64 / n as f64;
    let first = &monitors.ids[0];
    let hash_encoding = encoding(&mut conn, &store.keys().monitor(first)).await;
    let zset_encoding = encoding(&mut conn, &store.keys().deadlines(shard_of(first))).await;
    // The layout as stored: how many fields, and the longest value (Redis
    // keeps a hash as a listpack while every value is ≤ 64 B by default).
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(store.keys().monitor(first))
        .query_async(&mut conn)
        .await?;
    let longest = fields.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let field_count = fields.len();

    // Beats: 100 commits per sampled monitor, each with its beat record.
    eprintln!("bench: memory: storing {BEATS} beats for {BEAT_SAMPLE} monitors");
    let beat_ids: Vec<&String> = monitors.ids.iter().take(BEAT_SAMPLE.min(n)).collect();
    let now = now_ms();
    let beat_json_len = serde_json::to_string(&beat_record(1_000_000, now))?.len();
    futures::stream::iter(beat_ids.iter().enumerate())
        .map(|(k, id)| {
            let store = stores.get(k).clone();
            async move {
                for seq in 1..=BEATS {
                    // Realistic sequence numbers: a stream past a million.
                    let beat = beat_record(1_000_000 + seq, now + seq as i64);
                    let mut state = up_state(beat.at + i64::from(TIMEOUT_S) * 1000, TIMEOUT_S);
                    state.last_seq = beat.seq;
                    let commit = Commit {
                        prior: None,
                        state: &state,
                        cfg: None,
                        beat: Some(&beat),
                        changes: &[],
                        alerts: &[],
                    };
                    // Version 1 after the fixture's commit, +1 per beat.
                    match store.commit(id, seq, &commit).await? {
                        CommitResult::Committed => {}
                        other => anyhow::bail!("beat commit on {id}: {other:?}"),
                    }
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await?;
    let mut beats_total = 0u64;
    for id in &beat_ids {
        beats_total += memory_usage(&mut conn, &store.keys().beats(id)).await?;
    }
    let per_beat = beats_total as f64 / (beat_ids.len() as u64 * BEATS) as f64;
    let beats_encoding = encoding(&mut conn, &store.keys().beats(beat_ids[0])).await;
    let beat_monitors = beat_ids.len();

    // Resident memory of the services, idle then under push load.
    let spec = Spec {
        api: true,
        notifier: true,
        ..Spec::default()
    };
    let mut stack = Stack::start(env, &names, &spec).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle: Vec<(String, u64)> = stack
        .labelled_pids()
        .into_iter()
        .map(|(l, pid)| (l, rss_kb(pid).unwrap_or(0)))
        .collect();
    eprintln!(
        "bench: memory: push load, {} connections for {} s",
        opts.connections,
        opts.duration.as_secs()
    );
    let cpu = CpuWatch::start(cpu_groups(Some(&stack)));
    let rss = RssWatch::start(stack.labelled_pids(), Duration::from_millis(250));
    let load = load::closed_loop(
        &stack.ingest_addrs(),
        opts.connections,
        opts.duration,
        push_requests(&monitors.tokens),
    )
    .await?;
    let rss = rss.stop();
    let cpu = cpu.stop();
    stack.check_alive()?;
    drop(stack);
    drop(monitors);
    env.release(&names).await;

    let state_and_deadline = hash + deadline_share;
    let all = state_and_deadline + token_key + index_share;
    let mut t = Table::new(&["per monitor", "bytes", "how measured"]);
    t.row([
        "monitor hash (a field per setting and state value)".to_owned(),
        format!("{hash:.0}"),
        format!(
            "MEMORY USAGE of {sampled} sampled hashes; encoding `{hash_encoding}`; {field_count} fields, longest value {longest} B"
        ),
    ]);
    t.row([
        "deadline index entry".to_owned(),
        format!("{deadline_share:.0}"),
        format!("MEMORY USAGE of the {SHARDS} deadline sorted sets ÷ {} monitors; encoding `{zset_encoding}`", fmt_int(n as u64)),
    ]);
    t.row([
        "**state + deadline**".to_owned(),
        format!("**{state_and_deadline:.0}**"),
        "the two rows above".to_owned(),
    ]);
    t.row([
        "push token key".to_owned(),
        format!("{token_key:.0}"),
        format!("MEMORY USAGE of {sampled} sampled `token:<sha256>` keys"),
    ]);
    t.row([
        "monitors index entry".to_owned(),
        format!("{index_share:.0}"),
        "MEMORY USAGE of the monitors sorted set ÷ monitors".to_owned(),
    ]);
    t.row([
        "all of the above".to_owned(),
        format!("{all:.0}"),
        String::new(),
    ]);
    t.row([
        "growth of `used_memory` ÷ monitors".to_owned(),
        format!("{:.0}", after.saturating_sub(before) as f64 / n as f64),
        "approximate: Redis is shared with anything else running".to_owned(),
    ]);
    t.row([
        "**per stored beat**".to_owned(),
        format!("**{per_beat:.0}**"),
        format!(
            "{BEATS} beats on each of {beat_monitors} monitors through the commit script, MEMORY USAGE of the lists ÷ beats; encoding `{beats_encoding}`; one beat record is {beat_json_len} B of JSON"
        ),
    ]);
    let mut r = Table::new(&[
        "service",
        "idle",
        "peak under load",
        "at the end of the load",
    ]);
    for (label, idle_kb) in &idle {
        let (peak, last) = rss
            .iter()
            .find(|(l, _, _)| l == label)
            .map_or((0, 0), |(_, p, l)| (*p, *l));
        r.row([
            label.clone(),
            fmt_mib(*idle_kb),
            fmt_mib(peak),
            fmt_mib(last),
        ]);
    }
    let s = load.latency.summary();
    let met = !env.quick && state_and_deadline <= 512.0;
    let body = format!(
        "{}\n* Redis: {} monitors written straight into Redis (see Method), `up` with a deadline.\n\n{}\n\
Target: ≤ 512 bytes of Redis per monitor for state + deadline — {}.\n\n\
* Services: resident memory (VmRSS) while ingest and the evaluator took {} accepted pushes/s spread over all {} monitors ({} connections, {} s, p99 {}; each monitor pushes every few seconds, less often than a rate-limit lease lives, so every push asks Redis for a token — the `push` run's 10,000 monitors mostly use leased tokens); the API and notifier idle.\n\n{}\n* CPU during the load: {}\n",
        record.header(env, Some(&cpu)),
        fmt_int(n as u64),
        t.markdown(),
        if env.quick {
            "not judged (quick run)"
        } else {
            verdict(met)
        },
        fmt_rate(load.ok_rate()),
        fmt_int(n as u64),
        opts.connections,
        opts.duration.as_secs(),
        crate::histogram::fmt_duration(s.p99),
        r.markdown(),
        cpu.describe()
    );
    Ok(Section {
        key: "memory".into(),
        title: "Memory: Redis per monitor and per beat, services' resident memory".into(),
        body,
    })
}

fn beat_record(seq: u64, at: i64) -> BeatRecord {
    BeatRecord {
        seq,
        at,
        status: BeatStatus::Up,
        msg: None,
        msg_truncated: false,
        value: None,
        late: false,
    }
}
