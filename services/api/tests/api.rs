//! The management API served on a port-0 listener against the real Redis on
//! 127.0.0.1:6379, each test under its own prefix, cleaned up on drop.

use std::time::Duration;

use lifeline_api::Config;
use lifeline_shared::{
    model::{BeatRecord, BeatStatus, DeliveryRecord},
    names::{Names, shard_of},
    state::Input,
    store::Store,
    time::{now_ms, rfc3339},
    token,
};
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-api-key-0123456789";
const PUBLIC_URL: &str = "http://push.example:8080";

/// One API instance on port 0 with a fresh prefix.
struct TestApp {
    base: String,
    http: reqwest::Client,
    store: Store,
    names: Names,
    shutdown: CancellationToken,
}

impl TestApp {
    async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let prefix = format!("api-{}", token::new_id());
        let mut config = Config::local(&prefix, KEY, &format!("{PUBLIC_URL}/"));
        adjust(&mut config);
        let store = Store::open(
            &config.common.redis_url,
            config.common.names.clone(),
            config.caps,
        )
        .unwrap();
        let names = config.common.names.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(lifeline_api::run(config, listener, shutdown.clone()));
        Self {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            store,
            names,
            shutdown,
        }
    }

    /// An authenticated request.
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    /// Sends a request; returns the status and the JSON body (`null` if empty).
    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("non-JSON body ({e}): {bytes:?}"))
        };
        (status, body)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.req(method, path);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        self.send(rb).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn channel(&self, name: &str) -> String {
        let (s, v) = self
            .post(
                "/api/v1/channels",
                json!({"type": "webhook", "name": name, "url": "http://127.0.0.1:9/hook"}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn monitor(&self, body: Value) -> Value {
        let (s, v) = self.post("/api/v1/monitors", body).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Applies a beat directly through the store, as the evaluator would.
    async fn beat(&self, id: &str, seq: u64, at: i64, status: BeatStatus, msg: Option<&str>) {
        let b = BeatRecord {
            seq,
            at,
            status,
            msg: msg.map(Into::into),
            msg_truncated: false,
            value: Some(seq as f64),
            late: false,
        };
        self.store
            .apply(id, Input::Beat(&b))
            .await
            .unwrap()
            .expect("monitor exists");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Best effort: delete every key of this test's prefix.
        let Ok(client) = redis::Client::open("redis://127.0.0.1:6379") else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> =
            match redis::Commands::scan_match(&mut conn, self.names.redis_pattern()) {
                Ok(iter) => iter.filter_map(Result::ok).collect(),
                Err(_) => return,
            };
        for key in keys {
            let _: Result<(), _> = redis::Commands::del(&mut conn, key);
        }
    }
}

fn field(v: &Value) -> &str {
    v["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no field in {v}"))
}

#[tokio::test]
async fn requests_without_the_right_key_are_refused() {
    let app = TestApp::spawn().await;
    let url = format!("{}/api/v1/monitors", app.base);

    let r = app.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    for auth in [
        "Bearer wrong-key-0123456789",
        "Basic dGVzdDp0ZXN0",
        &format!("Bearer {KEY}x"),
    ] {
        let r = app
            .http
            .get(&url)
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }
    // Nothing was created by a refused write.
    let r = app
        .http
        .post(&url)
        .json(&json!({"name": "x", "timeout": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(app.store.monitor_ids().await.unwrap().is_empty());

    let (s, v) = app.get("/api/v1/monitors").await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"monitors": []}));
}

#[tokio::test]
async fn ops_routes_need_no_key_and_unknown_routes_answer_json() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz"] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["ok"], true);
    }
    app.get("/api/v1/channels").await;
    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("lifeline_api_requests_total")
    );

    let (s, v) = app.get("/api/v1/nothing-here").await;
    assert_eq!((s, v), (404, json!({"error": "not found"})));
    let (s, v) = app.call(Method::PUT, "/api/v1/monitors", None).await;
    assert_eq!(s, 405);
    assert!(v["error"].is_string());
}

#[tokio::test]
async fn channels_can_be_created_listed_read_and_deleted() {
    let app = TestApp::spawn().await;
    let (s, c) = app
        .post(
            "/api/v1/channels",
            json!({"type": "webhook", "name": "ops", "url": "https://hooks.example.com/x?y=1"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["type"], "webhook");
    assert_eq!(c["name"], "ops");
    assert_eq!(c["url"], "https://hooks.example.com/x?y=1");
    assert!(c["created_at"].as_str().unwrap().ends_with('Z'));

    let second = app.channel("second").await;
    let (s, list) = app.get("/api/v1/channels").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&id.as_str()) && ids.contains(&second.as_str()));

    let (s, got) = app.get(&format!("/api/v1/channels/{id}")).await;
    assert_eq!((s, &got), (200, &c));

    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{id}"), None)
        .await;
    assert_eq!((s, v), (204, Value::Null));
    let (s, v) = app.get(&format!("/api/v1/channels/{id}")).await;
    assert_eq!((s, v), (404, json!({"error": "channel not found"})));
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn bad_channels_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    for (body, name) in [
        (
            json!({"type": "email", "name": "a", "to": "x@example.com"}),
            "type",
        ),
        (
            json!({"type": "slack", "name": "a", "url": "https://hooks.slack.com/x"}),
            "type",
        ),
        (json!({"type": "pager", "name": "a"}), "type"),
        (json!({"name": "a", "url": "http://x"}), "type"),
        (
            json!({"type": "webhook", "name": "", "url": "http://x"}),
            "name",
        ),
        (
            json!({"type": "webhook", "name": "a".repeat(201), "url": "http://x"}),
            "name",
        ),
        (
            json!({"type": "webhook", "name": "a", "url": "ftp://x"}),
            "url",
        ),
        (
            json!({"type": "webhook", "name": "a", "url": "http://"}),
            "url",
        ),
        (json!({"type": "webhook", "name": "a"}), "url"),
        (
            json!({"type": "webhook", "name": "a", "url": "http://x", "secret": 1}),
            "secret",
        ),
    ] {
        let (s, v) = app.post("/api/v1/channels", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
    }
    let (_, v) = app
        .post("/api/v1/channels", json!({"type": "email", "name": "a"}))
        .await;
    assert!(
        v["error"].as_str().unwrap().contains("not supported yet"),
        "{v}"
    );
    assert!(app.store.channels().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_channel_in_use_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let m = app
        .monitor(json!({"name": "a", "timeout": 60, "channels": [ch]}))
        .await;
    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{ch}"), None)
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["monitors"], json!([m["id"]]));
    assert!(v["error"].is_string());

    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/monitors/{}", m["id"].as_str().unwrap()),
            Some(json!({"channels": []})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{ch}"), None)
        .await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn creating_a_monitor_returns_its_token_once() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let m = app
        .monitor(json!({"name": "nightly-backup", "timeout": 3600, "channels": [ch, ch]}))
        .await;
    let id = m["id"].as_str().unwrap();
    let tok = m["token"].as_str().unwrap();
    assert_eq!(tok.len(), token::TOKEN_LEN);
    assert_eq!(m["push_url"], format!("{PUBLIC_URL}/api/push/{tok}"));
    assert_eq!(m["status"], "new");
    assert_eq!(m["name"], "nightly-backup");
    assert_eq!(
        (m["timeout"].as_u64(), m["interval"].as_u64()),
        (Some(3600), Some(3600))
    );
    assert_eq!(m["channels"], json!([ch]));
    assert_eq!(m["last_beat_at"], Value::Null);
    assert_eq!(m["deadline"], Value::Null);
    assert!(m["created_at"].is_string());
    assert_eq!(m["token_hint"], token::hint(tok));

    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(tok))
            .await
            .unwrap()
            .as_deref(),
        Some(id)
    );

    let (s, got) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(s, 200);
    assert!(
        got.get("token").is_none() && got.get("push_url").is_none(),
        "{got}"
    );
    assert!(!got.to_string().contains(tok));
    for key in [
        "id",
        "name",
        "status",
        "timeout",
        "interval",
        "channels",
        "created_at",
        "last_beat_at",
        "deadline",
        "status_since",
        "token_hint",
    ] {
        assert_eq!(got[key], m[key], "{key}");
    }

    tokio::time::sleep(Duration::from_millis(3)).await;
    let second = app
        .monitor(json!({"name": "b", "timeout": 60, "interval": 30}))
        .await;
    assert_eq!(second["interval"], 30);
    assert_eq!(second["channels"], json!([]));
    let (_, list) = app.get("/api/v1/monitors").await;
    let ids: Vec<&Value> = list["monitors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids, [&m["id"], &second["id"]]);
    assert!(!list.to_string().contains(tok));
}

#[tokio::test]
async fn bad_monitor_bodies_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    for (body, name) in [
        (json!({"name": "a", "timeout": 0}), "timeout"),
        (json!({"name": "a", "timeout": 2_678_401}), "timeout"),
        (json!({"name": "a", "timeout": "60"}), "timeout"),
        (json!({"name": "a", "timeout": 1.5}), "timeout"),
        (json!({"name": "a"}), "timeout"),
        (json!({"name": "", "timeout": 60}), "name"),
        (json!({"name": "   ", "timeout": 60}), "name"),
        (json!({"name": 5, "timeout": 60}), "name"),
        (json!({"timeout": 60}), "name"),
        (
            json!({"name": "a", "timeout": 60, "interval": 0}),
            "interval",
        ),
        (
            json!({"name": "a", "timeout": 60, "channels": ["nope"]}),
            "channels",
        ),
        (
            json!({"name": "a", "timeout": 60, "channels": "nope"}),
            "channels",
        ),
        (
            json!({"name": "a", "timeout": 60, "colour": "red"}),
            "colour",
        ),
    ] {
        let (s, v) = app.post("/api/v1/monitors", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(name), "{body}: {v}");
    }
    let (_, v) = app
        .post(
            "/api/v1/monitors",
            json!({"name": "a", "timeout": 60, "channels": ["nope"]}),
        )
        .await;
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");

    for raw in ["{oops", "", "[1, 2]", "\"text\"", "null"] {
        let rb = app
            .req(Method::POST, "/api/v1/monitors")
            .header("content-type", "application/json")
            .body(raw);
        let (s, v) = app.send(rb).await;
        assert_eq!(s, 400, "{raw:?}: {v}");
        assert!(v["error"].is_string());
    }
    let (s, v) = app
        .send(
            app.req(Method::POST, "/api/v1/monitors")
                .body(format!("{{\"name\":\"{}\"}}", "x".repeat(100_000))),
        )
        .await;
    assert_eq!(s, 413, "{v}");

    assert!(app.store.monitor_ids().await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_ids_answer_404() {
    let app = TestApp::spawn().await;
    for (method, path) in [
        (Method::GET, "/api/v1/monitors/doesnotexist"),
        (Method::DELETE, "/api/v1/monitors/doesnotexist"),
        (Method::POST, "/api/v1/monitors/doesnotexist/pause"),
        (Method::POST, "/api/v1/monitors/doesnotexist/resume"),
        (Method::POST, "/api/v1/monitors/doesnotexist/token"),
        (Method::GET, "/api/v1/monitors/doesnotexist/beats"),
        (Method::GET, "/api/v1/monitors/doesnotexist/events"),
        (Method::GET, "/api/v1/monitors/not%20an%20id"),
    ] {
        let (s, v) = app.call(method.clone(), path, None).await;
        assert_eq!(
            (s, v),
            (404, json!({"error": "monitor not found"})),
            "{method} {path}"
        );
    }
    let (s, v) = app
        .call(
            Method::PATCH,
            "/api/v1/monitors/doesnotexist",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!((s, v), (404, json!({"error": "monitor not found"})));
    for path in ["/api/v1/alerts/doesnotexist.1", "/api/v1/alerts/garbage"] {
        let (s, v) = app.get(path).await;
        assert_eq!((s, v), (404, json!({"error": "alert not found"})), "{path}");
    }
}

#[tokio::test]
async fn pause_and_resume_change_the_status() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();

    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/pause"), json!({}))
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("paused")), "{v}");
    // Pausing twice is harmless.
    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/pause"), json!({}))
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("paused")));
    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/resume"), json!({}))
        .await;
    assert_eq!(
        (s, &v["status"]),
        (200, &json!("new")),
        "never beaten: new again"
    );

    let t = now_ms();
    app.beat(id, 1, t, BeatStatus::Up, None).await;
    let (_, v) = app
        .post(&format!("/api/v1/monitors/{id}/pause"), json!({}))
        .await;
    assert_eq!(v["status"], "paused");
    assert_eq!(v["deadline"], Value::Null);
    assert!(
        app.store
            .due_all(i64::MAX, 10)
            .await
            .unwrap()
            .iter()
            .all(|d| d != id),
        "a paused monitor has no deadline"
    );
    let before = now_ms();
    let (_, v) = app
        .post(&format!("/api/v1/monitors/{id}/resume"), json!({}))
        .await;
    assert_eq!(v["status"], "up");
    let deadline = v["deadline"].as_str().unwrap();
    assert!(deadline >= rfc3339(before + 60_000).as_str(), "{deadline}");
    let (_, got) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(got["status"], "up");
}

#[tokio::test]
async fn rotating_the_token_revokes_the_old_one() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();
    let old = m["token"].as_str().unwrap();

    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/token"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let new = v["token"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(v["id"], id);
    assert_eq!(v["push_url"], format!("{PUBLIC_URL}/api/push/{new}"));

    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(old))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(new))
            .await
            .unwrap()
            .as_deref(),
        Some(id)
    );
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(stored.cfg.token_hash, token::hash(new));
    let (_, got) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(got["token_hint"], token::hint(new));
    assert_eq!(got["name"], "a");
}

#[tokio::test]
async fn patching_the_timeout_moves_the_deadline() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 3600})).await;
    let id = m["id"].as_str().unwrap();
    let t = now_ms();
    app.beat(id, 1, t, BeatStatus::Up, None).await;
    let (_, v) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(v["status"], "up");
    assert_eq!(v["deadline"], rfc3339(t + 3_600_000));
    assert_eq!(v["last_beat_at"], rfc3339(t));

    let path = format!("/api/v1/monitors/{id}");
    let (s, v) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({"timeout": 60, "name": "renamed"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["timeout"], 60);
    assert_eq!(v["interval"], 3600, "interval is kept");
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["status"], "up");
    assert_eq!(v["deadline"], rfc3339(t + 60_000));
    // The deadline index moved in the same write.
    let score: Option<i64> = app
        .store
        .conn()
        .zscore(app.names.deadlines(shard_of(id)), id)
        .await
        .unwrap();
    assert_eq!(score, Some(t + 60_000));

    let ch = app.channel("ops").await;
    let (s, v) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({"channels": [ch, ch], "interval": 30})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((&v["channels"], &v["interval"]), (&json!([ch]), &json!(30)));
    assert_eq!(v["deadline"], rfc3339(t + 60_000));
    let (s, same) = app.call(Method::PATCH, &path, Some(json!({}))).await;
    assert_eq!((s, &same), (200, &v));

    for (body, name) in [
        (json!({"timeout": 0}), "timeout"),
        (json!({"timeout": null}), "timeout"),
        (json!({"name": ""}), "name"),
        (json!({"channels": ["nope"]}), "channels"),
        (json!({"token_hash": "x"}), "token_hash"),
    ] {
        let (s, v) = app.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
    }
    let (s, _) = app.send(app.req(Method::PATCH, &path).body("{oops")).await;
    assert_eq!(s, 400);
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(stored.cfg.timeout, 60);
    assert_eq!(
        stored.cfg.token_hash,
        token::hash(m["token"].as_str().unwrap())
    );
}

#[tokio::test]
async fn history_is_newest_first_with_deliveries() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let m = app
        .monitor(json!({"name": "a", "timeout": 60, "channels": [ch]}))
        .await;
    let id = m["id"].as_str().unwrap();
    let t = now_ms() - 10_000;
    app.beat(id, 10, t, BeatStatus::Up, Some("first")).await;
    app.beat(id, 11, t + 1000, BeatStatus::Up, None).await;
    app.beat(id, 12, t + 2000, BeatStatus::Down, Some("backup-failed"))
        .await;
    // A late beat: older than the newest, appended at the tail of the history.
    app.beat(id, 5, t + 500, BeatStatus::Up, Some("late")).await;

    let (s, v) = app.get(&format!("/api/v1/monitors/{id}/beats")).await;
    assert_eq!(s, 200);
    let beats = v["beats"].as_array().unwrap();
    let ats: Vec<&str> = beats.iter().map(|b| b["at"].as_str().unwrap()).collect();
    assert_eq!(
        ats,
        [
            rfc3339(t + 2000),
            rfc3339(t + 1000),
            rfc3339(t + 500),
            rfc3339(t)
        ]
    );
    assert_eq!(beats[0]["status"], "down");
    assert_eq!(beats[0]["msg"], "backup-failed");
    assert_eq!(beats[0]["value"], 12.0);
    assert_eq!(beats[0]["late"], false);
    assert_eq!(beats[0]["msg_truncated"], false);
    assert_eq!(beats[1]["msg"], Value::Null);
    assert_eq!(
        (&beats[2]["msg"], &beats[2]["late"]),
        (&json!("late"), &json!(true))
    );

    let (_, v) = app
        .get(&format!("/api/v1/monitors/{id}/beats?limit=2"))
        .await;
    assert_eq!(v["beats"].as_array().unwrap().len(), 2);
    assert_eq!(v["beats"][0]["at"], rfc3339(t + 2000));
    for bad in ["0", "1001", "abc", "-1"] {
        let (s, v) = app
            .get(&format!("/api/v1/monitors/{id}/beats?limit={bad}"))
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(field(&v), "limit");
    }

    let alert_id = format!("{id}.2");
    let rec = DeliveryRecord {
        outcome: "succeeded".into(),
        attempts: 2,
        at: t + 3000,
        http_status: Some(200),
        error: None,
        next_retry_at: None,
    };
    app.store.put_delivery(&alert_id, &ch, &rec).await.unwrap();

    let (s, v) = app.get(&format!("/api/v1/monitors/{id}/events")).await;
    assert_eq!(s, 200, "{v}");
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{v}");
    assert_eq!(events[0]["reason"], "reported");
    assert_eq!(
        (&events[0]["from"], &events[0]["to"]),
        (&json!("up"), &json!("down"))
    );
    assert_eq!(events[0]["msg"], "backup-failed");
    assert_eq!(events[0]["alert_id"], alert_id);
    assert_eq!(
        events[0]["deliveries"],
        json!([{
            "channel_id": ch, "outcome": "succeeded", "attempts": 2,
            "at": rfc3339(t + 3000), "http_status": 200, "error": null,
        }])
    );
    assert_eq!(events[1]["reason"], "first_beat");
    assert_eq!(events[1]["alert_id"], Value::Null);
    assert_eq!(events[1]["deliveries"], json!([]));
    let (_, one) = app
        .get(&format!("/api/v1/monitors/{id}/events?limit=1"))
        .await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);

    let (s, v) = app.get(&format!("/api/v1/alerts/{alert_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["alert_id"], alert_id);
    assert_eq!(v["deliveries"], events[0]["deliveries"]);
    let (s, _) = app.get(&format!("/api/v1/alerts/{id}.99")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn deleting_a_monitor_removes_it_and_its_token() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();
    let tok = m["token"].as_str().unwrap();
    app.beat(id, 1, now_ms(), BeatStatus::Up, None).await;

    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/monitors/{id}"), None)
        .await;
    assert_eq!((s, v), (204, Value::Null));
    let (s, _) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(tok))
            .await
            .unwrap(),
        None
    );
    assert!(app.store.monitor_ids().await.unwrap().is_empty());
    assert!(app.store.beats(id, 10).await.unwrap().is_empty());
    let score: Option<i64> = app
        .store
        .conn()
        .zscore(app.names.deadlines(shard_of(id)), id)
        .await
        .unwrap();
    assert_eq!(score, None);
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/monitors/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn unreachable_redis_answers_503() {
    let app = TestApp::spawn_with(|c| c.common.redis_url = "redis://127.0.0.1:1".into()).await;
    let (s, v) = app.get("/api/v1/monitors").await;
    assert_eq!((s, v), (503, json!({"error": "storage unavailable"})));
    let (s, v) = app
        .post("/api/v1/monitors", json!({"name": "a", "timeout": 60}))
        .await;
    assert_eq!((s, v), (503, json!({"error": "storage unavailable"})));
    let r = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The key is still checked first.
    let r = app
        .http
        .get(format!("{}/api/v1/monitors", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_racing_edits_leave_exactly_one_live_token() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();
    let path = format!("/api/v1/monitors/{id}");
    let token_path = format!("{path}/token");
    let mut last = String::new();
    for i in 0..15 {
        let rotate = app.post(&token_path, json!({}));
        let edit = app.call(
            Method::PATCH,
            &path,
            Some(json!({"name": format!("n{i}"), "timeout": 60 + i})),
        );
        let ((rs, rv), (es, ev)) = tokio::join!(rotate, edit);
        assert_eq!((rs, es), (200, 200), "{rv} {ev}");
        last = rv["token"].as_str().unwrap().to_owned();
    }
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(stored.cfg.token_hash, token::hash(&last));
    assert_eq!(stored.cfg.name, "n14");
    let live: Vec<String> = app.store.conn().keys(app.names.token("*")).await.unwrap();
    assert_eq!(live, [app.names.token(&token::hash(&last))]);
}
