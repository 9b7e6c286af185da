//! The per-token push rate limit, counted across ingest replicas: two
//! in-process ingest replicas under one prefix, hammered at once with one
//! monitor's token, together admit no more than the configured rate plus the
//! burst; the rest is refused 429 with `Retry-After`, publishes nothing, and
//! a client that waits `Retry-After` is admitted again.

use std::time::{Duration, Instant};

use lifeline_ingest::RateLimit;
use lifeline_testkit::wait_for;
use lifeline_tests::Stack;
use redis::AsyncCommands;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// 10 pushes per second sustained, bursts of 8 (leases of up to 2 tokens).
const LIMIT: RateLimit = RateLimit {
    count: 10,
    period: Duration::from_secs(1),
    burst: 8,
};

/// How long the token is hammered.
const HAMMER: Duration = Duration::from_secs(3);

/// Concurrent clients per replica.
const CLIENTS: usize = 4;

/// One push's answer.
#[derive(Debug)]
struct Pushed {
    replica: usize,
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

async fn push(http: &reqwest::Client, base: &str, replica: usize, token: &str) -> Pushed {
    let r = http
        .post(format!("{base}/api/push/{token}"))
        .send()
        .await
        .expect("push answered");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    Pushed {
        replica,
        status,
        retry_after,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_rate_limit_holds_across_two_ingest_replicas() {
    let stack = Stack::start("limits").await;
    // Two more ingest replicas, sharing the stack's prefix, with a low limit.
    let shutdown = CancellationToken::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        replicas.push(format!("http://{}", listener.local_addr().unwrap()));
        let config = lifeline_ingest::Config {
            push_limit: Some(LIMIT),
            ..lifeline_ingest::Config::local(&stack.prefix)
        };
        tokio::spawn(lifeline_ingest::run(config, listener, shutdown.clone()));
    }
    stack.wait_ready(&replicas).await;
    let m = stack.monitor("hammered", 3600, &[]).await;
    let (id, token) = (
        m["id"].as_str().unwrap().to_owned(),
        m["token"].as_str().unwrap().to_owned(),
    );

    // Hammer the token through both replicas at once.
    let started = Instant::now();
    let mut clients = Vec::new();
    for (replica, base) in replicas.iter().enumerate() {
        for _ in 0..CLIENTS {
            let (http, base, token) = (stack.http.clone(), base.clone(), token.clone());
            clients.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                while started.elapsed() < HAMMER {
                    answers.push(push(&http, &base, replica, &token).await);
                }
                answers
            }));
        }
    }
    let mut answers: Vec<Pushed> = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    let span = started.elapsed();

    let accepted = answers.iter().filter(|a| a.status == 200).count();
    let refused: Vec<&Pushed> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(
        accepted + refused.len(),
        answers.len(),
        "only 200 and 429: {:?}",
        answers.iter().find(|a| ![200, 429].contains(&a.status))
    );
    // GCRA: over a span S at most burst + S / T pass, whichever replica.
    let ceiling = f64::from(LIMIT.burst) + span.as_secs_f64() * f64::from(LIMIT.count);
    println!(
        "limits: {} pushes in {span:?}, {accepted} accepted (ceiling {ceiling:.1}), {} refused",
        answers.len(),
        refused.len()
    );
    assert!(
        accepted as f64 <= ceiling.floor(),
        "{accepted} accepted over {span:?} across both replicas: more than {ceiling:.1}"
    );
    // Leases can leave a few tokens unused, never many.
    assert!(
        accepted as f64 >= ceiling * 0.6,
        "{accepted} accepted over {span:?}: far below the limit {ceiling:.1}"
    );
    for replica in 0..2 {
        assert!(
            answers
                .iter()
                .any(|a| a.replica == replica && a.status == 200),
            "replica {replica} accepted nothing"
        );
        assert!(
            refused.iter().any(|a| a.replica == replica),
            "replica {replica} refused nothing"
        );
    }
    for a in &refused {
        let secs: u64 = a
            .retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("429 without Retry-After in seconds: {a:?}"));
        assert!(secs >= 1, "{a:?}");
        assert_eq!(a.body["ok"], false, "{a:?}");
        assert!(
            a.body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("rate limit exceeded")),
            "{a:?}"
        );
    }

    // Refused pushes published nothing and no accepted one was lost: the
    // evaluator recorded exactly one beat per 200.
    let recorded = || async {
        let history = stack
            .get_json(&format!("/api/v1/monitors/{id}/beats?limit=1000"))
            .await;
        history["beats"].as_array().map_or(0, Vec::len)
    };
    wait_for(
        Duration::from_secs(10),
        "a recorded beat per accepted push",
        || {
            let recorded = recorded();
            async move { (recorded.await >= accepted).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        recorded().await,
        accepted,
        "beats recorded vs pushes accepted"
    );

    // The shared bucket lives in the monitor's shard and expires by itself.
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = lifeline_shared::store::Keys::new(&stack.names()).push_rate(&id);
    let ttl: i64 = redis.pttl(key).await.unwrap();
    assert!(ttl > 0, "push-rate key without expiry: {ttl}");

    // A client that waits Retry-After is admitted again, on either replica.
    for (replica, base) in replicas.iter().enumerate() {
        let wait = loop {
            let a = push(&stack.http, base, replica, &token).await;
            if a.status == 429 {
                break a.retry_after.unwrap().parse::<u64>().unwrap();
            }
            assert_eq!(a.status, 200, "{a:?}");
        };
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let a = push(&stack.http, base, replica, &token).await;
        assert_eq!(a.status, 200, "after waiting Retry-After {wait} s: {a:?}");
    }
    shutdown.cancel();
}
