//! `ceilings`: what ingest could at best reach on this machine, measured
//! in the same run with the same tool, so its cost is a ratio against both:
//!
//! * **bare HTTP** — a trivial axum handler (`lifeline-bench serve-trivial`,
//!   its own process) answering the same requests with ingest's success
//!   body, driven by the same client over the same number of connections;
//! * **raw JetStream** — publishing to a scratch stream with the beats
//!   stream's settings (`beats_stream_config` under a scratch prefix),
//!   payloads the size of a real beat event, with many acks in flight from
//!   one task (a `FuturesUnordered` of ack futures topped up as they
//!   complete).

use std::time::{Duration, Instant};

use async_nats::{Subject, jetstream};
use futures::{StreamExt as _, stream::FuturesUnordered};
use lifeline_shared::{
    model::{BeatEvent, BeatStatus, WIRE_VERSION},
    names::SHARDS,
    nats::beats_stream_config,
    time::now_ms,
    token,
};

use super::{
    Record, cpu_groups,
    push::{self, PushRun},
};
use crate::{
    cli::{CeilingOpts, PushOpts},
    histogram::fmt_duration,
    load::{self, LoadResult},
    machine::{CpuUsage, CpuWatch},
    report::{Section, Table, fmt_int, fmt_rate},
    stack::{self, Env, READY_LIMIT},
};

/// One JetStream measurement.
struct JsRun {
    inflight: usize,
    acked: u64,
    failed: u64,
    elapsed: Duration,
    cpu: CpuUsage,
}

impl JsRun {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Drives the trivial handler.
async fn trivial(env: &Env, opts: &CeilingOpts) -> anyhow::Result<(LoadResult, CpuUsage)> {
    let port = lifeline_testkit::free_port();
    let exe = std::env::current_exe()?;
    let addr = format!("127.0.0.1:{port}");
    let mut server = stack::spawn(
        env,
        "trivial",
        &exe,
        &["serve-trivial", "--addr", &addr],
        &Default::default(),
        port,
    )?;
    server
        .wait_ready(&env.http, "/healthz", READY_LIMIT)
        .await?;
    // The same requests as a push run: distinct 32-character tokens.
    let tokens: Vec<String> = (0..opts.monitors).map(|_| token::generate()).collect();
    let requests = push::push_requests(&tokens);
    eprintln!(
        "bench: ceilings: trivial axum handler, {} connections for {} s",
        opts.connections,
        opts.duration.as_secs()
    );
    let mut groups = cpu_groups(None);
    groups.retain(|(l, _)| l == "lifeline-bench");
    groups.push(("trivial handler".into(), vec![server.proc.pid()]));
    let cpu = CpuWatch::start(groups);
    let result =
        load::closed_loop(&[server.addr()], opts.connections, opts.duration, requests).await?;
    let cpu = cpu.stop();
    server.check_alive()?;
    Ok((result, cpu))
}

/// Publishes to a scratch stream with `inflight` acks outstanding.
async fn jetstream_runs(env: &Env, opts: &CeilingOpts) -> anyhow::Result<(Vec<JsRun>, usize)> {
    let names = env.scope("js");
    let client = async_nats::connect(env.brokers.nats_url.as_str()).await?;
    let js = jetstream::new(client.clone());
    let stream = js.create_stream(beats_stream_config(&names)).await?;
    let payload = bytes::Bytes::from(serde_json::to_vec(&BeatEvent {
        v: WIRE_VERSION,
        monitor_id: token::new_id().into(),
        status: BeatStatus::Up,
        msg: None,
        msg_truncated: false,
        value: None,
        at: now_ms(),
    })?);
    let subjects: Vec<Subject> = (0..SHARDS)
        .map(|s| Subject::from(names.beats_subject(s)))
        .collect();
    let mut runs = Vec::new();
    for &inflight in &opts.inflight {
        let _ = stream.purge().await;
        eprintln!(
            "bench: ceilings: JetStream publish, {inflight} acks in flight for {} s",
            opts.js_duration.as_secs()
        );
        let mut groups = cpu_groups(None);
        groups.retain(|(l, _)| l == "lifeline-bench" || l == "nats-server");
        let cpu = CpuWatch::start(groups);
        let started = Instant::now();
        let end = started + opts.js_duration;
        let mut pending = FuturesUnordered::new();
        let (mut acked, mut failed, mut i) = (0u64, 0u64, 0usize);
        loop {
            while pending.len() < inflight && Instant::now() < end {
                let subject = subjects[i % subjects.len()].clone();
                i += 1;
                match js.publish(subject, payload.clone()).await {
                    Ok(ack) => pending.push(ack.into_future()),
                    Err(_) => failed += 1,
                }
            }
            match pending.next().await {
                Some(Ok(_)) => acked += 1,
                Some(Err(_)) => failed += 1,
                None => break,
            }
        }
        runs.push(JsRun {
            inflight,
            acked,
            failed,
            elapsed: started.elapsed(),
            cpu: cpu.stop(),
        });
    }
    drop(stream);
    env.release(&names).await;
    Ok((runs, payload.len()))
}

/// Runs `ceilings`; measures a push run too unless `push` is given.
pub(crate) async fn run(
    env: &Env,
    opts: &CeilingOpts,
    push: Option<&PushRun>,
) -> anyhow::Result<Section> {
    let record = Record::begin();
    let own_push;
    let push = match push {
        Some(p) => p,
        None => {
            let p = PushOpts {
                monitors: opts.monitors,
                connections: opts.connections,
                duration: opts.duration,
                push_rate: None,
            };
            own_push = push::measure(env, &p).await?;
            &own_push
        }
    };
    let (trivial, trivial_cpu) = trivial(env, opts).await?;
    let (js, payload_len) = jetstream_runs(env, opts).await?;

    let ingest = push.load.ok_rate();
    let share = |ceiling: f64| {
        if ceiling > 0.0 {
            format!("{:.0} %", ingest / ceiling * 100.0)
        } else {
            "–".into()
        }
    };
    let mut t = Table::new(&["", "per second", "ingest's rate as a share", "how"]);
    let ts = trivial.latency.summary();
    t.row([
        "trivial axum handler (bare HTTP)".to_owned(),
        format!("**{}**", fmt_rate(trivial.ok_rate())),
        share(trivial.ok_rate()),
        format!(
            "same client and requests, {} connections, {} s; p50 {} / p99 {} / max {}; errors: {}",
            opts.connections,
            opts.duration.as_secs(),
            fmt_duration(ts.p50),
            fmt_duration(ts.p99),
            fmt_duration(ts.max),
            trivial.counts.describe_errors()
        ),
    ]);
    for j in &js {
        t.row([
            format!("JetStream publish, {} acks in flight", j.inflight),
            format!("**{}**", fmt_rate(j.rate())),
            share(j.rate()),
            format!(
                "{} messages of {payload_len} bytes acknowledged in {:.1} s{}",
                fmt_int(j.acked),
                j.elapsed.as_secs_f64(),
                if j.failed > 0 {
                    format!(", **{} failed**", fmt_int(j.failed))
                } else {
                    String::new()
                }
            ),
        ]);
    }
    let ps = push.load.latency.summary();
    t.row([
        "**Lifeline ingest** (push run)".to_owned(),
        format!("**{}**", fmt_rate(ingest)),
        "100 %".to_owned(),
        format!(
            "{} connections, {} s, {} monitors; p50 {} / p99 {}",
            push.opts.connections,
            push.opts.duration.as_secs(),
            fmt_int(push.opts.monitors as u64),
            fmt_duration(ps.p50),
            fmt_duration(ps.p99)
        ),
    ]);
    let mut cpu = Table::new(&["measurement", "CPU (100 % = one core)"]);
    cpu.row(["trivial axum handler".to_owned(), trivial_cpu.describe()]);
    for j in &js {
        cpu.row([
            format!("JetStream, {} in flight", j.inflight),
            j.cpu.describe(),
        ]);
    }
    cpu.row(["Lifeline push run".to_owned(), push.cpu.describe()]);
    let body = format!(
        "{}\n* Ingest holds at most one publish per connection in flight ({} here); the JetStream rows show what the same stream does with more.\n\
* The JetStream publisher is one task in this process; the stream is a scratch copy of the beats stream (work queue, file storage, 2 min duplicate window) with no consumer, purged between levels.\n\n{}\n{}",
        record.header(env, Some(&trivial_cpu)),
        push.opts.connections,
        t.markdown(),
        cpu.markdown()
    );
    Ok(Section {
        key: "ceilings".into(),
        title: "Ceilings: bare HTTP and raw JetStream".into(),
        body,
    })
}
