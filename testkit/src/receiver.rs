//! A real HTTP server on port 0 standing in for the other end of a webhook
//! or Slack channel: it records every request, on any path, and answers as
//! the test scripted it per path — a status, a `Retry-After`, a delay, or
//! never. A request is recorded when it arrives (so a test sees one that
//! hangs) and again when it is answered (so a test sees what succeeded).
//! The server stops when the receiver is dropped.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::wait_for;

/// The path of [`Receiver::url`].
const HOOK: &str = "hook";

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    /// When it arrived.
    pub at: Instant,
    /// Its path, e.g. `/hook`.
    pub path: String,
    /// Every header.
    pub headers: HeaderMap,
    /// `webhook-id` header.
    pub id: Option<String>,
    /// `webhook-timestamp` header.
    pub timestamp: Option<String>,
    /// `webhook-signature` header.
    pub signature: Option<String>,
    /// The raw body.
    pub raw: Bytes,
    /// The body as JSON (`null` if it is not JSON).
    pub body: Value,
}

/// One scripted answer.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    /// Its status.
    pub status: u16,
    /// A `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
    /// How long to wait before answering ([`Duration::MAX`]: never).
    pub delay: Duration,
}

impl Reply {
    /// `status`, at once.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }

    /// No answer at all: the request hangs until the client gives up.
    pub fn hang() -> Self {
        Self {
            delay: Duration::MAX,
            ..Self::status(200)
        }
    }
}

#[derive(Default)]
struct Record {
    /// Every request, as it arrived.
    arrived: Vec<Hit>,
    /// Every request answered, with its status, in the order answered.
    answered: Vec<(Hit, u16)>,
    /// Per path: runs of (how many requests, the answer) to give in order.
    script: HashMap<String, VecDeque<(usize, Reply)>>,
    /// Per path: the answer once its script is used up (200 by default).
    fallback: HashMap<String, Reply>,
}

type Shared = Arc<Mutex<Record>>;

/// A local HTTP server recording every request, answering per path.
pub struct Receiver {
    /// The URL of its `/hook` path, where webhook channels usually point.
    pub url: String,
    addr: SocketAddr,
    record: Shared,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver that answers 200 to everything.
    pub async fn start() -> Self {
        let record = Shared::default();
        let app = Router::new().fallback(receive).with_state(record.clone());
        let (listener, addr) = crate::listener().await;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/{HOOK}"),
            addr,
            record,
            task,
        }
    }

    /// Starts a receiver whose first `n` requests to `/hook` never get an
    /// answer.
    pub async fn start_hanging(n: usize) -> Self {
        let r = Self::start().await;
        r.script_runs(HOOK, [(n, Reply::hang())], Reply::status(200));
        r
    }

    /// Starts a receiver that answers `status` to its first `n` requests to
    /// `/hook`, then 200.
    pub async fn start_failing(n: usize, status: u16) -> Self {
        let r = Self::start().await;
        r.script_runs(HOOK, [(n, Reply::status(status))], Reply::status(200));
        r
    }

    /// The URL of `path` (without its leading `/`).
    pub fn url_for(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Answers requests to `path` with `replies`, in order, then with
    /// `then` for ever.
    pub fn script(&self, path: &str, replies: &[Reply], then: Reply) {
        self.script_runs(path, replies.iter().map(|r| (1, *r)), then);
    }

    fn script_runs(&self, path: &str, runs: impl IntoIterator<Item = (usize, Reply)>, then: Reply) {
        let path = format!("/{path}");
        let mut record = self.record.lock().expect("receiver lock");
        record
            .script
            .insert(path.clone(), runs.into_iter().collect());
        record.fallback.insert(path, then);
    }

    /// Every request to `path` (without its leading `/`), as it arrived,
    /// however it was answered.
    pub fn requests(&self, path: &str) -> Vec<Hit> {
        let path = format!("/{path}");
        let record = self.record.lock().expect("receiver lock");
        record
            .arrived
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    /// Every request answered 200 so far, in the order answered.
    pub fn hits(&self) -> Vec<Hit> {
        let record = self.record.lock().expect("receiver lock");
        record
            .answered
            .iter()
            .filter(|(_, status)| *status == 200)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Every body answered 200 so far.
    pub fn received(&self) -> Vec<Value> {
        self.hits().into_iter().map(|h| h.body).collect()
    }

    /// The `webhook-id` of every request answered 200.
    pub fn webhook_ids(&self) -> Vec<Option<String>> {
        self.hits().into_iter().map(|h| h.id).collect()
    }

    /// The `webhook-id` of every request begun (answered, failed or
    /// hanging).
    pub fn started(&self) -> Vec<Option<String>> {
        let record = self.record.lock().expect("receiver lock");
        record.arrived.iter().map(|h| h.id.clone()).collect()
    }

    /// Alerts received with this `event` (e.g. `monitor.down`).
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits until `n` alerts with `event` were received; returns them.
    pub async fn wait_events(&self, event: &str, n: usize, limit: Duration) -> Vec<Value> {
        let what = format!("{n} {event} alert(s)");
        wait_for(limit, &what, || {
            let got = self.events(event);
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(record): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let hit = Hit {
        at: Instant::now(),
        path: uri.path().to_owned(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        headers,
        raw,
    };
    let reply = {
        let mut record = record.lock().expect("receiver lock");
        record.arrived.push(hit.clone());
        next_reply(&mut record, &hit.path)
    };
    if reply.delay == Duration::MAX {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(reply.delay).await;
    record
        .lock()
        .expect("receiver lock")
        .answered
        .push((hit, reply.status));
    let status = StatusCode::from_u16(reply.status).expect("a valid status");
    match reply.retry_after {
        Some(secs) => (status, [("retry-after", secs.to_string())]).into_response(),
        None => status.into_response(),
    }
}

/// The scripted answer for the next request to `path`.
fn next_reply(record: &mut Record, path: &str) -> Reply {
    if let Some(runs) = record.script.get_mut(path)
        && let Some((left, reply)) = runs.front_mut()
    {
        let reply = *reply;
        *left -= 1;
        if *left == 0 {
            runs.pop_front();
        }
        return reply;
    }
    record
        .fallback
        .get(path)
        .copied()
        .unwrap_or(Reply::status(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_as_scripted_and_records_arrivals_and_answers() {
        let rx = Receiver::start_failing(2, 500).await;
        rx.script(
            "slow",
            &[Reply::status(429), Reply::status(503)],
            Reply::status(204),
        );
        let http = reqwest::Client::new();
        let post = |url: String, body: &'static str| {
            let http = http.clone();
            async move {
                http.post(url)
                    .header("webhook-id", "msg_1")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(post(rx.url.clone(), r#"{"event":"monitor.down"}"#).await);
        }
        for _ in 0..3 {
            statuses.push(post(rx.url_for("slow"), "not json").await);
        }
        assert_eq!(statuses, [500, 500, 200, 429, 503, 204]);
        assert_eq!(rx.hits().len(), 1, "one 200");
        assert_eq!(rx.events("monitor.down").len(), 1);
        assert_eq!(rx.webhook_ids(), [Some("msg_1".to_owned())]);
        assert_eq!(rx.started().len(), 6);
        let slow = rx.requests("slow");
        assert_eq!(slow.len(), 3);
        assert_eq!(slow[0].body, Value::Null);
        assert_eq!(&slow[0].raw[..], b"not json");
    }

    #[tokio::test]
    async fn a_hanging_request_is_recorded_but_never_answered() {
        let rx = Receiver::start_hanging(1).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        assert!(http.post(&rx.url).send().await.is_err(), "no answer");
        let second = http.post(&rx.url).send().await.unwrap();
        assert_eq!(second.status(), 200);
        assert_eq!(rx.started().len(), 2);
        assert_eq!(rx.hits().len(), 1);
    }
}
