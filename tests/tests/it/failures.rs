//! Failure scenarios with the services as real processes: replicas, kill -9,
//! and broker restarts (private instances, so other tests are undisturbed).

use std::{collections::HashMap, time::Duration};

use lifeline_tests::{
    Receiver,
    procs::{Brokers, PrivateNats, PrivateRedis, ProcStack},
    wait_for,
};
use serde_json::Value;

/// Beats in a monitor's history.
async fn beat_count(stack: &ProcStack, id: &str) -> usize {
    stack
        .get_json(&format!("/api/v1/monitors/{id}/beats?limit=1000"))
        .await["beats"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_answered_200_survives_ingest_killed_right_after() {
    let mut stack = ProcStack::start("killingest", &Brokers::local(), (1, 1, 1), &[]).await;
    let m = stack.monitor("job", 3600, &[]).await;
    let (id, token) = (
        m["id"].as_str().unwrap().to_owned(),
        m["token"].as_str().unwrap().to_owned(),
    );
    for round in 1..=3 {
        let (status, _) = stack.push(&token, &format!("msg=round-{round}")).await;
        assert_eq!(status, 200);
        stack.ingest[0].proc.kill9();
        let (status, _) = stack.push(&token, "").await;
        assert_eq!(status, 0, "ingest is dead: no answer");
        wait_for(
            Duration::from_secs(10),
            "the beat answered 200 in the history",
            || async { (beat_count(&stack, &id).await == round).then_some(()) },
        )
        .await;
        stack.respawn_ingest(0);
        stack.wait_ready(&[stack.ingest[0].url()]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_gives_503_meanwhile_and_loses_no_acknowledged_beat() {
    let mut nats = PrivateNats::start().await;
    let brokers = Brokers {
        nats_url: nats.url(),
        ..Brokers::local()
    };
    let stack = ProcStack::start("natsrestart", &brokers, (1, 1, 1), &[]).await;
    let m = stack.monitor("job", 3600, &[]).await;
    let (id, token) = (
        m["id"].as_str().unwrap().to_owned(),
        m["token"].as_str().unwrap().to_owned(),
    );

    let mut accepted = 0;
    for _ in 0..20 {
        assert_eq!(stack.push(&token, "").await.0, 200);
        accepted += 1;
    }
    nats.kill();
    // While NATS is down: 503 (never 200), answered promptly.
    let mut refused = 0;
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let (status, body) = stack.push(&token, "").await;
        assert_eq!(status, 503, "{body}");
        assert!(started.elapsed() < Duration::from_secs(4));
        refused += 1;
    }
    nats.restart().await;
    // Ingest recovers by itself.
    wait_for(
        Duration::from_secs(30),
        "ingest accepting again",
        || async { (stack.push(&token, "").await.0 == 200).then_some(()) },
    )
    .await;
    accepted += 1;
    for _ in 0..9 {
        assert_eq!(stack.push(&token, "").await.0, 200);
        accepted += 1;
    }
    wait_for(
        Duration::from_secs(30),
        "every acknowledged beat applied",
        || async { (beat_count(&stack, &id).await == accepted).then_some(()) },
    )
    .await;
    assert_eq!(refused, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_monitors_states_and_deadlines() {
    let mut redis = PrivateRedis::start().await;
    let brokers = Brokers {
        redis_url: redis.url(),
        ..Brokers::local()
    };
    let stack = ProcStack::start("redisrestart", &brokers, (1, 1, 1), &[]).await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let m = stack.monitor("job", 4, &[&channel]).await;
    let (id, token) = (
        m["id"].as_str().unwrap().to_owned(),
        m["token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(stack.push(&token, "").await.0, 200);
    wait_for(Duration::from_secs(5), "monitor up", || async {
        (stack.get_json(&format!("/api/v1/monitors/{id}")).await["status"] == "up").then_some(())
    })
    .await;
    let before: Value = stack.get_json(&format!("/api/v1/monitors/{id}")).await;

    redis.kill();
    let r = stack
        .api(reqwest::Method::GET, &format!("/api/v1/monitors/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "API answers 503 while Redis is down");
    redis.restart().await;

    // Services reconnect by themselves; the monitor, its state and deadline survived.
    let after = wait_for(
        Duration::from_secs(20),
        "API reading Redis again",
        || async {
            let r = stack
                .api(reqwest::Method::GET, &format!("/api/v1/monitors/{id}"))
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json::<Value>().await.ok()
        },
    )
    .await;
    for field in ["status", "deadline", "last_beat_at", "name", "timeout"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    // The deadline still fires, once.
    let downs = hook
        .wait_events("monitor.down", 1, Duration::from_secs(15))
        .await;
    assert_eq!(downs[0]["reason"], "timeout");
    // Pushing works again through the restarted Redis.
    wait_for(Duration::from_secs(10), "push accepted", || async {
        (stack.push(&token, "").await.0 == 200).then_some(())
    })
    .await;
    hook.wait_events("monitor.up", 1, Duration::from_secs(10))
        .await;
    assert_eq!(hook.events("monitor.down").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_out_a_thousand_monitors_alert_exactly_once_each_way() {
    const N: usize = 1000;
    let stack = ProcStack::start("scaled", &Brokers::local(), (2, 3, 2), &[]).await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let mut tokens = Vec::with_capacity(N);
    for i in 0..N {
        let m = stack.monitor(&format!("m{i}"), 2, &[&channel]).await;
        tokens.push(m["token"].as_str().unwrap().to_owned());
    }
    let push_all = |query: &'static str| {
        let tokens = tokens.clone();
        let stack = &stack;
        async move {
            futures_util_join(tokens.iter().map(|t| async move {
                let (status, _) = stack.push(t, query).await;
                assert_eq!(status, 200);
            }))
            .await;
        }
    };
    push_all("").await;
    hook.wait_events("monitor.down", N, Duration::from_secs(60))
        .await;
    push_all("msg=back").await;
    hook.wait_events("monitor.up", N, Duration::from_secs(60))
        .await;
    // No more beats: every monitor times out once more, then stays down.
    hook.wait_events("monitor.down", 2 * N, Duration::from_secs(60))
        .await;
    // Long enough for a stray duplicate (e.g. an outbox republish) to show.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let received = hook.received();
    let alert_ids: std::collections::HashSet<&str> = received
        .iter()
        .map(|v| v["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        alert_ids.len(),
        received.len(),
        "an alert was delivered twice"
    );
    let (downs, ups) = (hook.events("monitor.down"), hook.events("monitor.up"));
    assert_eq!((downs.len(), ups.len()), (2 * N, N));
    let per_monitor = |alerts: &[Value]| -> HashMap<String, usize> {
        alerts.iter().fold(HashMap::new(), |mut m, v| {
            *m.entry(v["monitor"]["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
            m
        })
    };
    let (d, u) = (per_monitor(&downs), per_monitor(&ups));
    assert_eq!((d.len(), u.len()), (N, N), "every monitor alerted");
    assert!(d.values().all(|&c| c == 2) && u.values().all(|&c| c == 1));
    println!(
        "scaled out 2/3/2: {N} monitors, {} downs, {} ups, 0 duplicates",
        downs.len(),
        ups.len()
    );
}
/// Runs futures concurrently, 64 at a time.
async fn futures_util_join<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    use futures::StreamExt as _;
    futures::stream::iter(futs)
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}
