//! Failure scenarios with the services as real processes: replicas, kill -9,
//! and broker restarts (private instances, so other tests are undisturbed).

use std::{collections::HashMap, time::Duration};

use lifeline_testkit::{Brokers, PrivateRabbit, PrivateServer, Receiver, wait_for};
use lifeline_tests::procs::ProcStack;
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
    let mut nats = PrivateServer::nats().await;
    let brokers = Brokers {
        nats_url: nats.url(),
        ..Brokers::local()
    };
    // 30 pushes within about a second: more than the default push rate limit.
    let no_limit = [("LIFELINE_PUSH_RATE", "off")];
    let stack = ProcStack::start("natsrestart", &brokers, (1, 1, 1), &no_limit).await;
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
    let mut redis = PrivateServer::redis().await;
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

/// Creates `n` monitors with `timeout` on `channel` and makes each up; returns (id, token).
async fn beating_monitors(
    stack: &ProcStack,
    n: usize,
    timeout: u64,
    channel: &str,
) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let m = stack.monitor(&format!("m{i}"), timeout, &[channel]).await;
        out.push((
            m["id"].as_str().unwrap().to_owned(),
            m["token"].as_str().unwrap().to_owned(),
        ));
    }
    for (_, token) in &out {
        assert_eq!(stack.push(token, "").await.0, 200);
    }
    out
}

async fn all_status(stack: &ProcStack, monitors: &[(String, String)], status: &str) -> bool {
    for (id, _) in monitors {
        if stack.get_json(&format!("/api/v1/monitors/{id}")).await["status"] != status {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_loses_no_alert_job() {
    let mut rabbit = PrivateRabbit::start().await;
    let brokers = Brokers {
        amqp_url: rabbit.url(),
        ..Brokers::local()
    };
    let mut stack = ProcStack::start("rabbitrestart", &brokers, (1, 1, 1), &[]).await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;

    // A: alert jobs queued in RabbitMQ (no notifier running) survive its restart.
    stack.notifiers[0].proc.kill9();
    let queued = beating_monitors(&stack, 10, 1, &channel).await;
    wait_for(Duration::from_secs(20), "10 monitors down", || async {
        all_status(&stack, &queued, "down").await.then_some(())
    })
    .await;
    let names = stack.names();
    let depth = || async {
        let conn = lapin::Connection::connect(&rabbit.url(), Default::default())
            .await
            .ok()?;
        let ch = conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                names.alerts_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .ok()?;
        let n = q.message_count();
        let _ = conn.close(200, "done".into()).await;
        Some(n)
    };
    wait_for(Duration::from_secs(20), "10 alert jobs queued", || async {
        (depth().await == Some(10)).then_some(())
    })
    .await;
    rabbit.kill();
    rabbit.restart().await;
    stack.spawn_notifier();
    hook.wait_events("monitor.down", 10, Duration::from_secs(60))
        .await;

    // B: alerts raised while RabbitMQ is down wait in the outbox, then go out.
    let during = beating_monitors(&stack, 10, 2, &channel).await;
    wait_for(Duration::from_secs(10), "10 more monitors up", || async {
        all_status(&stack, &during, "up").await.then_some(())
    })
    .await;
    rabbit.kill();
    wait_for(
        Duration::from_secs(20),
        "their deadlines fired while RabbitMQ is down",
        || async { all_status(&stack, &during, "down").await.then_some(()) },
    )
    .await;
    assert_eq!(
        hook.events("monitor.down").len(),
        10,
        "nothing can be delivered yet"
    );
    rabbit.restart().await;
    hook.wait_events("monitor.down", 20, Duration::from_secs(90))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let received = hook.received();
    let ids: std::collections::HashSet<&str> = received
        .iter()
        .map(|v| v["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!((received.len(), ids.len()), (20, 20), "every alert once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluators_killed_in_a_loop_still_alert_every_change_exactly_once() {
    let mut stack = ProcStack::start("evalkill", &Brokers::local(), (1, 3, 1), &[]).await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let monitors = beating_monitors(&stack, 50, 1, &channel).await;

    // For ~12 s: every 300 ms a random half of the monitors beat (others
    // time out and recover, over and over), and every 2 s one evaluator is
    // killed with SIGKILL and replaced.
    let started = std::time::Instant::now();
    let mut round = 0usize;
    let mut next_kill = 0usize;
    while started.elapsed() < Duration::from_secs(12) {
        round += 1;
        for (i, (_, token)) in monitors.iter().enumerate() {
            if (i + round / 5).is_multiple_of(2) {
                let query = if i.is_multiple_of(7) && round.is_multiple_of(9) {
                    "status=down&msg=failed"
                } else {
                    ""
                };
                assert_eq!(stack.push(token, query).await.0, 200);
            }
        }
        if started.elapsed() > Duration::from_secs(2 * (next_kill as u64 + 1)) {
            let victim = next_kill % stack.evaluators.len();
            stack.evaluators[victim].proc.kill9();
            let i = stack.spawn_evaluator();
            stack.wait_ready(&[stack.evaluators[i].url()]).await;
            next_kill += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(next_kill >= 4, "killed {next_kill} evaluators");
    // Settle: every monitor ends up down (no more beats) and every alert is out.
    wait_for(Duration::from_secs(30), "every monitor down", || async {
        all_status(&stack, &monitors, "down").await.then_some(())
    })
    .await;
    let expected: usize = {
        let mut n = 0;
        for (id, _) in &monitors {
            let events = stack
                .get_json(&format!("/api/v1/monitors/{id}/events?limit=1000"))
                .await;
            n += events["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["alert_id"].is_string())
                .count();
        }
        n
    };
    wait_for(
        Duration::from_secs(60),
        "every state change delivered",
        || async { (hook.received().len() >= expected).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let received = hook.received();
    let ids: std::collections::HashSet<&str> = received
        .iter()
        .map(|v| v["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), expected, "every alerting state change delivered");
    assert_eq!(received.len(), expected, "no alert delivered twice");
    println!(
        "evaluator kill loop: {next_kill} evaluators killed, {expected} state changes alerted exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_inside_a_nats_outage_are_extended_not_alerted() {
    push_path_outage(Break::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_inside_an_outage_of_every_ingest_replica_are_extended_not_alerted() {
    push_path_outage(Break::Ingest).await;
}

/// How the push path is broken.
#[derive(Clone, Copy, Debug)]
enum Break {
    /// NATS killed, then restarted.
    Nats,
    /// Every ingest replica killed, then started again.
    Ingest,
}

async fn push_path_outage(how: Break) {
    let mut nats = PrivateServer::nats().await;
    let brokers = Brokers {
        nats_url: nats.url(),
        ..Brokers::local()
    };
    let mut stack = ProcStack::start("outage", &brokers, (2, 1, 1), &[]).await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;

    // A real miss before the outage still alerts.
    let before = beating_monitors(&stack, 1, 1, &channel).await;
    hook.wait_events("monitor.down", 1, Duration::from_secs(10))
        .await;
    // These would time out in the middle of the outage.
    let inside = beating_monitors(&stack, 20, 3, &channel).await;
    wait_for(Duration::from_secs(10), "20 monitors up", || async {
        all_status(&stack, &inside, "up").await.then_some(())
    })
    .await;

    match how {
        Break::Nats => nats.kill(),
        Break::Ingest => stack.ingest.iter_mut().for_each(|s| s.proc.kill9()),
    }
    let outage_started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    match how {
        Break::Nats => nats.restart().await,
        Break::Ingest => {
            for i in 0..stack.ingest.len() {
                stack.respawn_ingest(i);
            }
        }
    }
    // Pushes get through again; the beats of the 20 come in right after.
    wait_for(
        Duration::from_secs(30),
        "ingest accepting again",
        || async { (stack.push(&inside[0].1, "msg=back").await.0 == 200).then_some(()) },
    )
    .await;
    for (_, token) in &inside[1..] {
        assert_eq!(stack.push(token, "msg=back").await.0, 200);
    }
    let outages = wait_for(Duration::from_secs(20), "the outage recorded", || async {
        let v = stack.get_json("/api/v1/outages").await;
        let list = v["outages"].as_array().cloned().unwrap_or_default();
        (!list.is_empty()).then_some(list)
    })
    .await;
    let ms = outages[0]["duration_ms"].as_i64().unwrap();
    assert!(
        ms >= 5_000 && ms <= outage_started.elapsed().as_millis() as i64 + 1_000,
        "outage of {ms} ms"
    );
    assert!(
        all_status(&stack, &inside, "up").await,
        "an outage deadline alerted"
    );
    assert_eq!(
        hook.events("monitor.down").len(),
        1,
        "{:?}",
        hook.received()
    );
    // (They would time out again 3 s after their last beat: pause them.)
    for (id, _) in &inside {
        let r = stack
            .api(
                reqwest::Method::POST,
                &format!("/api/v1/monitors/{id}/pause"),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    assert_eq!(
        hook.events("monitor.down").len(),
        1,
        "{:?}",
        hook.received()
    );
    // A monitor missing its beat after the outage still alerts.
    let after = beating_monitors(&stack, 1, 1, &channel).await;
    let downs = hook
        .wait_events("monitor.down", 2, Duration::from_secs(10))
        .await;
    assert_eq!(downs[0]["monitor"]["id"], before[0].0.as_str());
    assert_eq!(downs[1]["monitor"]["id"], after[0].0.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_delivery_still_delivers_with_the_same_webhook_id() {
    let mut stack = ProcStack::start(
        "killnotifier",
        &Brokers::local(),
        (1, 1, 1),
        &[
            ("LIFELINE_WEBHOOK_TIMEOUT_MS", "2000"),
            ("LIFELINE_RETRY_SCHEDULE", "500ms*5"),
        ],
    )
    .await;
    let hook = Receiver::start_hanging(1).await;
    let channel = stack.webhook_channel(&hook.url).await;
    beating_monitors(&stack, 1, 1, &channel).await;
    // The notifier is in the middle of the (hanging) POST: kill it.
    let first = wait_for(Duration::from_secs(10), "the delivery to begin", || async {
        hook.started().first().cloned()
    })
    .await;
    stack.notifiers[0].proc.kill9();
    stack.spawn_notifier();
    let downs = hook
        .wait_events("monitor.down", 1, Duration::from_secs(60))
        .await;
    assert_eq!(downs.len(), 1);
    assert!(first.is_some(), "webhook-id header sent");
    assert_eq!(
        hook.webhook_ids()[0],
        first,
        "the redelivery carries the same webhook-id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keys_and_secrets_never_reach_logs_or_redis() {
    let stack = ProcStack::start(
        "secrets",
        &Brokers::local(),
        (1, 1, 1),
        &[("RUST_LOG", "debug")],
    )
    .await;
    let hook = Receiver::start().await;
    let channel = stack
        .channel(serde_json::json!({"type": "webhook", "name": "ops", "url": hook.url}))
        .await;
    let secret = channel["secret"].as_str().unwrap().to_owned();
    let m = stack
        .monitor("job", 1, &[channel["id"].as_str().unwrap()])
        .await;
    let (id, token) = (
        m["id"].as_str().unwrap().to_owned(),
        m["token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(stack.push(&token, "msg=hello").await.0, 200);
    assert_eq!(stack.push(&token, "status=bogus").await.0, 400);
    let rotated = stack
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/monitors/{id}/token"),
        )
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(stack.push(&new_token, "").await.0, 200);
    wait_for(Duration::from_secs(2), "old token refused", || async {
        (stack.push(&token, "").await.0 == 404).then_some(())
    })
    .await;
    let r = stack
        .http
        .get(format!("{}/api/v1/monitors", stack.api_url))
        .bearer_auth("wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // An alert goes out through the signed webhook.
    hook.wait_events("monitor.down", 1, Duration::from_secs(10))
        .await;

    let logs = stack.logs();
    assert!(logs.len() > 1000, "the services logged (debug)");
    let secret_key = secret.trim_start_matches("whsec_");
    for (what, value) in [
        ("push token", token.as_str()),
        ("rotated push token", new_token.as_str()),
        ("API key", lifeline_tests::API_KEY),
        ("webhook secret", secret_key),
    ] {
        assert!(!logs.contains(value), "the {what} appears in the logs");
    }
    // A Redis dump does not reveal push tokens (stored hashed).
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(stack.names().redis_pattern())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let dump = String::from_utf8_lossy(&dump.unwrap_or_default()).into_owned();
        for t in [&token, &new_token] {
            assert!(
                !key.contains(t.as_str()) && !dump.contains(t.as_str()),
                "a push token is readable in Redis key {key}"
            );
        }
    }
}
