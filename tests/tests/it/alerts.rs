//! Alert delivery seen from the outside: retries, dead letters and test
//! alerts through the real notifier, with every attempt visible through the
//! API, and webhook signatures verified with the secret the API handed out.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use lifeline_testkit::{Hit, Receiver, wait_for};
use lifeline_tests::Stack;
use reqwest::Method;
use serde_json::{Value, json};

/// A short retry schedule, so retries happen within the test.
fn short_retries(c: &mut lifeline_notifier::Config) {
    c.retry_schedule = "200ms*5".parse().expect("schedule");
}

/// Verifies a Standard Webhooks signature with a `whsec_…` secret.
fn verify(secret: &str, hit: &Hit) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let (Some(id), Some(ts), Some(sig)) = (&hit.id, &hit.timestamp, &hit.signature) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&hit.raw);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    sig.split(' ').any(|s| s == format!("v1,{expected}"))
}

/// Makes a monitor with `timeout` on `channel` time out once; returns its alert id.
async fn one_timeout(stack: &Stack, channel: &str) -> String {
    let m = stack.monitor("job", 1, &[channel]).await;
    let (id, token) = (m["id"].as_str().unwrap(), m["token"].as_str().unwrap());
    assert_eq!(stack.push(token, "").await.0, 200);
    wait_for(Duration::from_secs(10), "the timeout alert", || async {
        let events = stack
            .get_json(&format!("/api/v1/monitors/{id}/events"))
            .await;
        events["events"]
            .as_array()?
            .iter()
            .find(|e| e["reason"] == "timeout")
            .and_then(|e| e["alert_id"].as_str().map(str::to_owned))
    })
    .await
}

/// `GET /api/v1/alerts/{id}`: `None` while it answers 404, as it does
/// until the notifier has recorded the alert's first delivery or attempt.
async fn delivery_log(stack: &Stack, alert_id: &str) -> Option<Value> {
    let r = stack
        .api(Method::GET, &format!("/api/v1/alerts/{alert_id}"))
        .send()
        .await
        .expect("api get");
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200, "GET /api/v1/alerts/{alert_id}");
    Some(r.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_one_delivery_and_the_api_shows_every_attempt() {
    let stack = Stack::start_tuned("retry3", short_retries).await;
    let hook = Receiver::start_failing(3, 500).await;
    let channel = stack
        .channel(json!({"type": "webhook", "name": "flaky", "url": hook.url}))
        .await;
    let secret = channel["secret"].as_str().unwrap().to_owned();
    let alert_id = one_timeout(&stack, channel["id"].as_str().unwrap()).await;

    hook.wait_events("monitor.down", 1, Duration::from_secs(20))
        .await;
    let alert = wait_for(
        Duration::from_secs(10),
        "the delivery recorded as succeeded",
        || async {
            let v = delivery_log(&stack, &alert_id).await?;
            (v["deliveries"][0]["outcome"] == "succeeded").then_some(v)
        },
    )
    .await;
    let attempts = alert["attempts"].as_array().unwrap();
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retrying", "retrying", "retrying", "succeeded"]);
    assert!(
        attempts[..3]
            .iter()
            .all(|a| a["http_status"] == 500 && a["next_retry_at"].is_string())
    );
    assert_eq!(attempts[3]["http_status"], 200);
    assert_eq!(alert["deliveries"][0]["attempts"], 4);
    // One successful delivery; every attempt carried the same webhook-id.
    let hits = hook.hits();
    assert_eq!(hits.len(), 1);
    let started = hook.started();
    assert_eq!(started.len(), 4);
    assert!(started.iter().all(|id| *id == hits[0].id && id.is_some()));
    assert!(
        verify(&secret, &hits[0]),
        "signature verifies with the channel's secret"
    );
    // The monitor's events show the same log.
    let m_id = alert_id.rsplit_once('.').unwrap().0;
    let events = stack
        .get_json(&format!("/api/v1/monitors/{m_id}/events"))
        .await;
    let timeout = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["alert_id"] == alert_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(timeout["attempts"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_404_is_dead_lettered_after_one_attempt() {
    let stack = Stack::start_tuned("dead404", short_retries).await;
    let hook = Receiver::start_failing(usize::MAX / 2, 404).await;
    let channel = stack.webhook_channel(&hook.url).await;
    let alert_id = one_timeout(&stack, &channel).await;
    let alert = wait_for(
        Duration::from_secs(10),
        "the delivery recorded as failed",
        || async {
            let v = delivery_log(&stack, &alert_id).await?;
            (v["deliveries"][0]["outcome"] == "failed").then_some(v)
        },
    )
    .await;
    let attempts = alert["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{alert}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["http_status"], 404);
    // No retry follows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.started().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_alert_goes_through_the_real_notifier_signed() {
    let stack = Stack::start("testalert").await;
    let hook = Receiver::start().await;
    let channel = stack
        .channel(json!({"type": "webhook", "name": "ops", "url": hook.url}))
        .await;
    let (id, secret) = (
        channel["id"].as_str().unwrap(),
        channel["secret"].as_str().unwrap(),
    );
    let r = stack
        .api(Method::POST, &format!("/api/v1/channels/{id}/test"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let result: Value = r.json().await.unwrap();
    assert_eq!(result["outcome"], "succeeded", "{result}");
    assert_eq!(result["http_status"], 200);
    let hits = hook.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].body["event"], "test");
    assert!(verify(secret, &hits[0]));
    // A rotated secret signs the next test alert; the old one no longer verifies.
    let r = stack
        .api(Method::POST, &format!("/api/v1/channels/{id}/secret"))
        .send()
        .await
        .unwrap();
    let rotated: Value = r.json().await.unwrap();
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    let r = stack
        .api(Method::POST, &format!("/api/v1/channels/{id}/test"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "succeeded");
    let hits = hook.hits();
    assert!(verify(new_secret, &hits[1]) && !verify(secret, &hits[1]));
}
