//! End-to-end flows through the four services against the real brokers:
//! push → NATS → evaluator → RabbitMQ → notifier → webhook, managed through
//! the API. Each test runs its own stack under its own prefix.

use std::time::{Duration, Instant};

use lifeline_testkit::{Receiver, wait_for};
use lifeline_tests::{API_KEY, Stack};
use reqwest::Method;
use serde_json::{Value, json};

fn ms_of(rfc3339: &Value) -> i64 {
    let s = rfc3339.as_str().expect("a time string");
    chrono::DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .timestamp_millis()
}

async fn monitor_status(stack: &Stack, id: &str) -> String {
    stack.get_json(&format!("/api/v1/monitors/{id}")).await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_status(stack: &Stack, id: &str, status: &str) {
    wait_for(
        Duration::from_secs(5),
        &format!("monitor {status}"),
        || async { (monitor_status(stack, id).await == status).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_then_timeout_recovery_and_reported_down_reach_the_webhook() {
    let stack = Stack::start("e2e").await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let m = stack.monitor("nightly-backup", 2, &[&channel]).await;
    let (id, token) = (m["id"].as_str().unwrap(), m["token"].as_str().unwrap());
    assert_eq!(m["status"], "new");
    assert_eq!(
        m["push_url"],
        format!("{}/api/push/{token}", stack.ingest_url)
    );

    // A beat every second for 5 s: never late, so no alert.
    let mut last_beat = Instant::now();
    for _ in 0..6 {
        let (status, body) = stack.push(token, "").await;
        assert_eq!((status, &body), (200, &json!({"ok": true})));
        last_beat = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(monitor_status(&stack, id).await, "up");
    assert!(
        hook.received().is_empty(),
        "alert while beating: {:?}",
        hook.received()
    );

    // Beats stop: one timeout alert within timeout + 1.5 s of the last beat.
    let limit = Duration::from_millis(3500).saturating_sub(last_beat.elapsed());
    let downs = hook.wait_events("monitor.down", 1, limit).await;
    let down = &downs[0];
    assert_eq!(down["reason"], "timeout");
    assert_eq!(down["monitor"]["id"], id);
    assert_eq!(down["monitor"]["name"], "nightly-backup");
    assert!(down["alert_id"].is_string());
    let deadline = ms_of(&down["at"]);
    let last = ms_of(&down["last_beat_at"]);
    assert_eq!(
        deadline - last,
        2000,
        "the timeout alert is dated at the deadline"
    );
    assert_eq!(monitor_status(&stack, id).await, "down");

    // The next beat: one recovery.
    assert_eq!(stack.push(token, "msg=back").await.0, 200);
    let ups = hook
        .wait_events("monitor.up", 1, Duration::from_secs(2))
        .await;
    assert_eq!(ups[0]["reason"], "recovered");
    assert_eq!(ups[0]["msg"], "back");

    // A reported failure alerts at once, with its message.
    let sent = Instant::now();
    assert_eq!(
        stack.push(token, "status=down&msg=backup-failed").await.0,
        200
    );
    let downs = hook
        .wait_events("monitor.down", 2, Duration::from_secs(1))
        .await;
    assert!(sent.elapsed() <= Duration::from_secs(1));
    assert_eq!(downs[1]["reason"], "reported");
    assert_eq!(downs[1]["msg"], "backup-failed");
    // Further down beats while down: no new alert, and no timeout alert either.
    assert_eq!(
        stack.push(token, "status=down&msg=still-failing").await.0,
        200
    );
    wait_for(
        Duration::from_secs(5),
        "the last beat in the history",
        || async {
            let beats = stack
                .get_json(&format!("/api/v1/monitors/{id}/beats?limit=1"))
                .await;
            (beats["beats"][0]["msg"] == "still-failing").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the 2 s timeout
    assert_eq!(
        hook.events("monitor.down").len(),
        2,
        "{:?}",
        hook.received()
    );
    assert_eq!(hook.events("monitor.up").len(), 1, "{:?}", hook.received());
    let ids: std::collections::HashSet<_> = hook
        .received()
        .iter()
        .map(|v| v["alert_id"].clone())
        .collect();
    assert_eq!(ids.len(), 3, "every alert has its own id");

    // The history shows what happened.
    let events = stack
        .get_json(&format!("/api/v1/monitors/{id}/events"))
        .await;
    let reasons: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons, ["reported", "recovered", "timeout", "first_beat"]);
    let beats = stack
        .get_json(&format!("/api/v1/monitors/{id}/beats?limit=100"))
        .await;
    let beats = beats["beats"].as_array().unwrap();
    assert_eq!(beats.len(), 9);
    assert_eq!(beats[0]["status"], "down");
    assert_eq!(beats[0]["msg"], "still-failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_while_the_evaluator_is_stopped_is_still_alerted() {
    let mut stack = Stack::start("restart").await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let m = stack.monitor("nightly", 1, &[&channel]).await;
    let (id, token) = (m["id"].as_str().unwrap(), m["token"].as_str().unwrap());
    assert_eq!(stack.push(token, "").await.0, 200);
    wait_status(&stack, id, "up").await;
    let deadline = ms_of(&stack.get_json(&format!("/api/v1/monitors/{id}")).await["deadline"]);

    stack.stop_evaluator().await;
    // Let the deadline pass with no evaluator running.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(lifeline_shared::time::now_ms() > deadline);
    assert!(hook.received().is_empty());

    stack.start_evaluator().await;
    let downs = hook
        .wait_events("monitor.down", 1, Duration::from_secs(5))
        .await;
    assert_eq!(downs[0]["reason"], "timeout");
    assert_eq!(
        ms_of(&downs[0]["at"]),
        deadline,
        "dated at the missed deadline"
    );

    // Stopped again across the next deadline, and a beat arrives meanwhile:
    // the user still gets the missed timeout, then the recovery.
    assert_eq!(stack.push(token, "").await.0, 200);
    hook.wait_events("monitor.up", 1, Duration::from_secs(5))
        .await;
    stack.stop_evaluator().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stack.push(token, "msg=late-run").await.0, 200);
    stack.start_evaluator().await;
    let ups = hook
        .wait_events("monitor.up", 2, Duration::from_secs(5))
        .await;
    assert_eq!(ups[1]["msg"], "late-run");
    let downs = hook.events("monitor.down");
    assert_eq!(downs.len(), 2, "{:?}", hook.received());
    assert_eq!(downs[1]["reason"], "timeout");
    assert!(ms_of(&downs[1]["at"]) < ms_of(&ups[1]["at"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pushes_answer_4xx_json_and_publish_nothing() {
    let stack = Stack::start("refuse").await;
    let m = stack.monitor("job", 60, &[]).await;
    let token = m["token"].as_str().unwrap();
    assert_eq!(stack.push(token, "").await.0, 200);
    let before = stack.stream_messages().await;

    let (s, body) = stack.push("NoSuchToken0123456789abcdefghijk", "").await;
    assert_eq!(
        (s, body),
        (404, json!({"ok": false, "error": "unknown push token"}))
    );
    let (s, body) = stack.push("x", "").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("unknown push token"))
    );
    for (query, field) in [
        ("status=maybe", "status"),
        ("value=abc", "value"),
        ("value=NaN", "value"),
        ("value=1e999", "value"),
        ("status=up&ping=fast", "ping"),
    ] {
        let (s, body) = stack.push(token, query).await;
        assert_eq!(s, 400, "{query}");
        assert_eq!(body["ok"], false);
        assert_eq!(body["field"], field, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(field));
    }
    let r = stack
        .http
        .post(format!("{}/api/push/{token}", stack.ingest_url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = stack
        .http
        .put(format!("{}/api/push/{token}", stack.ingest_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(
        stack.stream_messages().await,
        before,
        "a refused push published a beat"
    );

    // A long message is accepted, truncated and marked.
    let long = "x".repeat(3000);
    assert_eq!(stack.push(token, &format!("msg={long}")).await.0, 200);
    let id = m["id"].as_str().unwrap();
    let beat = wait_for(Duration::from_secs(5), "the long beat", || async {
        let b = stack
            .get_json(&format!("/api/v1/monitors/{id}/beats?limit=1"))
            .await;
        let first = b["beats"][0].clone();
        (first["msg_truncated"] == true).then_some(first)
    })
    .await;
    assert_eq!(beat["msg"].as_str().unwrap().len(), 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_bad_requests_with_clear_errors() {
    let stack = Stack::start("apierr").await;
    let url = format!("{}/api/v1/monitors", stack.api_url);
    let r = stack.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = stack
        .http
        .get(&url)
        .bearer_auth("wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_ne!(API_KEY, "wrong-key");

    for (body, field) in [
        (json!({"name": "a", "timeout": 0}), "timeout"),
        (json!({"name": "a", "timeout": 2_678_401}), "timeout"),
        (json!({"name": "a", "timeout": "60"}), "timeout"),
        (json!({"name": "", "timeout": 60}), "name"),
        (json!({"timeout": 60}), "name"),
        (
            json!({"name": "a", "timeout": 60, "interval": 0}),
            "interval",
        ),
        (
            json!({"name": "a", "timeout": 60, "channels": ["nope"]}),
            "channels",
        ),
    ] {
        let r = stack
            .api(Method::POST, "/api/v1/monitors")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            matches!(r.status().as_u16(), 400 | 422),
            "{body}: {}",
            r.status()
        );
        let v: Value = r.json().await.unwrap();
        assert!(
            v["field"] == field || v["error"].as_str().unwrap().contains(field),
            "{body}: {v}"
        );
    }
    let r = stack
        .api(Method::POST, "/api/v1/monitors")
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = stack
        .api(Method::GET, "/api/v1/monitors/doesnotexist")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_client_examples_work_unchanged() {
    let stack = Stack::start("refex").await;
    let m = stack.monitor("sync", 3600, &[]).await;
    let (id, push_url) = (
        m["id"].as_str().unwrap(),
        m["push_url"].as_str().unwrap().to_owned(),
    );

    // Shell: curl -X POST "<push url>"
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-X", "POST", &push_url])
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"ok":true}"#);
    // Cron script: ?status=up&msg=backup-completed (and the failure form).
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            &format!("{push_url}?status=up&msg=backup-completed"),
        ])
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"ok":true}"#);
    // Node fetch(url, {method: 'POST'}) and Python requests.post(url, params=…).
    let r = stack.http.post(&push_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = stack
        .http
        .post(&push_url)
        .query(&[
            ("status", "up"),
            ("msg", "synced-1500-records"),
            ("value", "1500"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = stack
        .http
        .post(&push_url)
        .query(&[
            ("status", "down"),
            ("msg", "error-Connection refused: db:5432"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let beats = wait_for(
        Duration::from_secs(5),
        "five beats in the history",
        || async {
            let b = stack
                .get_json(&format!("/api/v1/monitors/{id}/beats"))
                .await;
            let list = b["beats"].as_array().unwrap().clone();
            (list.len() == 5).then_some(list)
        },
    )
    .await;
    assert_eq!(beats[0]["status"], "down");
    assert_eq!(beats[0]["msg"], "error-Connection refused: db:5432");
    assert_eq!(beats[1]["msg"], "synced-1500-records");
    assert_eq!(beats[1]["value"], 1500.0);
    assert_eq!(beats[3]["msg"], "backup-completed");
    assert!(
        beats
            .windows(2)
            .all(|w| ms_of(&w[0]["at"]) >= ms_of(&w[1]["at"])),
        "newest first"
    );
    wait_status(&stack, id, "down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_and_deleted_tokens_stop_working_within_a_second() {
    let stack = Stack::start("rotate").await;
    let m = stack.monitor("rotating", 3600, &[]).await;
    let (id, old) = (m["id"].as_str().unwrap(), m["token"].as_str().unwrap());
    assert_eq!(stack.push(old, "").await.0, 200);

    let r = stack
        .api(Method::POST, &format!("/api/v1/monitors/{id}/token"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let rotated: Value = r.json().await.unwrap();
    let new = rotated["token"].as_str().unwrap();
    assert_ne!(new, old);
    let rotated_at = Instant::now();
    assert_eq!(stack.push(new, "").await.0, 200);
    wait_for(Duration::from_secs(1), "old token refused", || async {
        (stack.push(old, "").await.0 == 404).then_some(())
    })
    .await;
    assert!(rotated_at.elapsed() <= Duration::from_secs(1));

    let r = stack
        .api(Method::DELETE, &format!("/api/v1/monitors/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_for(
        Duration::from_secs(1),
        "deleted monitor's token refused",
        || async { (stack.push(new, "").await.0 == 404).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_monitor_records_beats_but_never_alerts() {
    let stack = Stack::start("pause").await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let m = stack.monitor("paused-job", 1, &[&channel]).await;
    let (id, token) = (m["id"].as_str().unwrap(), m["token"].as_str().unwrap());
    assert_eq!(stack.push(token, "").await.0, 200);
    wait_status(&stack, id, "up").await;
    let r = stack
        .api(Method::POST, &format!("/api/v1/monitors/{id}/pause"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "paused");

    assert_eq!(
        stack.push(token, "status=down&msg=while-paused").await.0,
        200
    );
    wait_for(
        Duration::from_secs(5),
        "the paused beat in the history",
        || async {
            let b = stack
                .get_json(&format!("/api/v1/monitors/{id}/beats?limit=1"))
                .await;
            (b["beats"][0]["msg"] == "while-paused").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the 1 s timeout
    assert_eq!(monitor_status(&stack, id).await, "paused");
    assert!(hook.received().is_empty(), "{:?}", hook.received());

    // Resume starts the clock again: a missed deadline then alerts.
    let r = stack
        .api(Method::POST, &format!("/api/v1/monitors/{id}/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "up");
    let downs = hook
        .wait_events("monitor.down", 1, Duration::from_secs(3))
        .await;
    assert_eq!(downs[0]["reason"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_repeat_while_down_and_confirm_waits_for_missed_deadlines() {
    let stack = Stack::start("remind").await;
    let hook = Receiver::start().await;
    let channel = stack.webhook_channel(&hook.url).await;
    let create = |body: Value| {
        let rb = stack.api(Method::POST, "/api/v1/monitors").json(&body);
        async move {
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 201, "{body}");
            r.json::<Value>().await.unwrap()
        }
    };
    let reminded = create(json!({
        "name": "reminded", "timeout": 1, "remind_every": 1, "channels": [channel]
    }))
    .await;
    let confirmed = create(json!({
        "name": "confirmed", "timeout": 1, "confirm": 2, "channels": [channel]
    }))
    .await;
    assert_eq!(
        (&reminded["remind_every"], &reminded["confirm"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(
        (&confirmed["remind_every"], &confirmed["confirm"]),
        (&Value::Null, &json!(2))
    );
    let (rid, rtoken) = (
        reminded["id"].as_str().unwrap(),
        reminded["token"].as_str().unwrap(),
    );
    let (cid, ctoken) = (
        confirmed["id"].as_str().unwrap(),
        confirmed["token"].as_str().unwrap(),
    );
    let of = |id: &str, event: &str| -> Vec<Value> {
        hook.events(event)
            .into_iter()
            .filter(|v| v["monitor"]["id"] == id)
            .collect()
    };
    let events = |id: &str| {
        let path = format!("/api/v1/monitors/{id}/events");
        let stack = &stack;
        async move {
            stack.get_json(&path).await["events"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let reasons = |list: &[Value]| -> Vec<String> {
        list.iter()
            .map(|e| e["reason"].as_str().unwrap().to_owned())
            .collect()
    };

    // One beat each, then silence.
    assert_eq!(stack.push(rtoken, "").await.0, 200);
    assert_eq!(stack.push(ctoken, "").await.0, 200);
    wait_status(&stack, rid, "up").await;
    wait_status(&stack, cid, "up").await;

    // confirm = 2: the first missed deadline alerts nothing; the down comes
    // with the second, dated there and saying how many were missed.
    let downs = wait_for(
        Duration::from_secs(6),
        "the confirmed monitor's down alert",
        || async {
            let d = of(cid, "monitor.down");
            (!d.is_empty()).then_some(d)
        },
    )
    .await;
    assert_eq!(downs[0]["reason"], "timeout");
    assert_eq!(downs[0]["msg"], "missed 2 deadlines in a row");
    assert_eq!(
        ms_of(&downs[0]["at"]) - ms_of(&downs[0]["last_beat_at"]),
        2000,
        "dated at the second missed deadline, not the first"
    );
    assert_eq!(reasons(&events(cid).await), ["timeout", "first_beat"]);

    // remind_every = 1: the down, then a reminder every second.
    let downs = wait_for(
        Duration::from_secs(8),
        "the down alert and two reminders",
        || async {
            let d = of(rid, "monitor.down");
            (d.len() >= 3).then_some(d)
        },
    )
    .await;
    assert_eq!(downs[0]["reason"], "timeout");
    for r in &downs[1..] {
        assert_eq!(r["reason"], "reminder", "{r}");
        assert_eq!(
            r["at"], downs[0]["at"],
            "a reminder says since when it is down"
        );
    }
    let ids: std::collections::HashSet<_> = downs.iter().map(|d| d["alert_id"].clone()).collect();
    assert_eq!(
        ids.len(),
        downs.len(),
        "every reminder has its own alert id"
    );
    let history = events(rid).await;
    let reminders: Vec<i64> = history
        .iter()
        .filter(|e| e["reason"] == "reminder")
        .map(|e| ms_of(&e["at"]))
        .collect();
    assert!(reminders.len() >= 2, "{history:?}");
    let down_at = ms_of(&downs[0]["at"]);
    let mut due = reminders.clone();
    due.push(down_at);
    for pair in due.windows(2) {
        // Newest first, a period apart (more only if the ticker lagged).
        let gap = pair[0] - pair[1];
        assert!(
            (1000..3000).contains(&gap),
            "reminders {gap} ms apart: {history:?}"
        );
    }
    let fresh = stack.get_json(&format!("/api/v1/monitors/{rid}")).await;
    assert_eq!(fresh["status"], "down");
    assert!(fresh["next_reminder_at"].is_string(), "{fresh}");

    // An edit while down leaves the reminders running; then a beat: one
    // recovery, and no reminder after it (a long timeout keeps it up).
    let r = stack
        .api(Method::PATCH, &format!("/api/v1/monitors/{rid}"))
        .json(&json!({"timeout": 3600}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let sent = of(rid, "monitor.down").len();
    wait_for(
        Duration::from_secs(5),
        "a reminder after the edit",
        || async { (of(rid, "monitor.down").len() > sent).then_some(()) },
    )
    .await;
    assert_eq!(stack.push(rtoken, "msg=back").await.0, 200);
    let ups = wait_for(Duration::from_secs(5), "the recovery", || async {
        let u = of(rid, "monitor.up");
        (!u.is_empty()).then_some(u)
    })
    .await;
    assert_eq!(
        (&ups[0]["reason"], &ups[0]["msg"]),
        (&json!("recovered"), &json!("back"))
    );
    // Reminders raised before the recovery may still be on their way.
    let history = events(rid).await;
    assert_eq!(history[0]["reason"], "recovered");
    let raised = history.iter().filter(|e| e["to"] == "down").count();
    wait_for(
        Duration::from_secs(5),
        "every alert raised before the recovery",
        || async { (of(rid, "monitor.down").len() == raised).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // two periods
    assert_eq!(
        of(rid, "monitor.down").len(),
        raised,
        "{:?}",
        hook.received()
    );
    assert_eq!(of(rid, "monitor.up").len(), 1);
    assert_eq!(
        events(rid).await.len(),
        history.len(),
        "nothing happened after the recovery"
    );
    let fresh = stack.get_json(&format!("/api/v1/monitors/{rid}")).await;
    assert_eq!(
        (&fresh["status"], &fresh["next_reminder_at"]),
        (&json!("up"), &Value::Null)
    );
    // The confirmed monitor has no reminders: its one down alert only.
    assert_eq!(of(cid, "monitor.down").len(), 1, "{:?}", hook.received());
}

/// Ingest packs pushes that arrive together into one JetStream message and
/// the evaluator applies each lane's beats in one go: every push answered
/// 200 must still be recorded exactly once, for its own monitor, with its
/// own message, and a monitor whose pushes share a message must not see
/// any of them treated as late or duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_are_each_applied_once_to_their_monitor() {
    const MONITORS: usize = 4;
    const PUSHES: usize = 15; // within the default burst of 20 per token
    let stack = Stack::start("batch").await;
    let mut monitors = Vec::new();
    for i in 0..MONITORS {
        let m = stack.monitor(&format!("worker-{i}"), 3600, &[]).await;
        monitors.push((
            m["id"].as_str().unwrap().to_owned(),
            m["token"].as_str().unwrap().to_owned(),
        ));
    }
    let pushes = monitors.iter().enumerate().flat_map(|(i, (_, token))| {
        (0..PUSHES).map(move |j| (token.clone(), format!("msg=m{i}-b{j}&value={j}")))
    });
    let stack = &stack;
    let answers = futures::future::join_all(
        pushes.map(|(token, query)| async move { stack.push(&token, &query).await.0 }),
    )
    .await;
    assert!(answers.iter().all(|s| *s == 200), "answers: {answers:?}");

    for (i, (id, _)) in monitors.iter().enumerate() {
        let beats = wait_for(Duration::from_secs(5), "every beat recorded", || async {
            let v = stack
                .get_json(&format!("/api/v1/monitors/{id}/beats?limit=100"))
                .await;
            let beats = v["beats"].as_array().unwrap().clone();
            (beats.len() >= PUSHES).then_some(beats)
        })
        .await;
        let mut msgs: Vec<String> = beats
            .iter()
            .map(|b| b["msg"].as_str().unwrap().to_owned())
            .collect();
        msgs.sort();
        let mut sent: Vec<String> = (0..PUSHES).map(|j| format!("m{i}-b{j}")).collect();
        sent.sort();
        assert_eq!(msgs, sent, "monitor {i}: each beat once, its own");
        assert!(
            beats.iter().all(|b| b["late"] == json!(false)),
            "monitor {i}: no beat taken for late: {beats:?}"
        );
        assert_eq!(monitor_status(stack, id).await, "up");
    }
}
