//! The load generator: `C` keep-alive connections, each driven by its own
//! task with one request in flight ([`crate::http::Conn`]).
//!
//! * [`closed_loop`] — every connection sends its next request as soon as
//!   the previous one is answered, for a fixed time (what wrk does).
//!   Requests cycle through the prepared list (one per monitor), so every
//!   monitor is pushed equally often and evenly spaced. Latency is measured
//!   per request, from writing it to having read its whole answer.
//! * [`open_loop`] — a fixed set of requests, each with its own arrival time
//!   (a burst spread over a second); latency runs from the arrival time, not
//!   from when a connection got round to it, so queueing in the generator
//!   is counted, not hidden. A `503` or a broken connection is retried after
//!   a second, as a push client told `Retry-After: 1` would.
//!
//! Connections are opened before the clock starts.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    histogram::Latency,
    http::{Conn, Response},
};

/// Longest wait for one answer before the connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures that got no HTTP status, by kind.
fn io_kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind()).to_lowercase()
}

/// Counts of answers and failures.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts {
    /// HTTP status → answers.
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Failure without an answer (`timeout`, `connectionreset`, …) → count.
    pub(crate) failures: BTreeMap<String, u64>,
}

impl Counts {
    fn merge(&mut self, other: &Self) {
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (k, v) in &other.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
    }

    /// Answers with status 200.
    pub(crate) fn ok(&self) -> u64 {
        self.statuses.get(&200).copied().unwrap_or(0)
    }

    /// Everything but 200s: `429 × 12, 503 × 3, timeout × 1`, or `none`.
    pub(crate) fn describe_errors(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, n)| format!("{s} × {}", crate::report::fmt_int(*n)))
            .collect();
        parts.extend(
            self.failures
                .iter()
                .map(|(k, n)| format!("{k} × {}", crate::report::fmt_int(*n))),
        );
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// What a closed-loop run measured.
pub(crate) struct LoadResult {
    /// From the start until the last connection finished.
    pub(crate) elapsed: Duration,
    /// Latency of the 200 answers.
    pub(crate) latency: Latency,
    pub(crate) counts: Counts,
    /// 200 answers completed in each whole second of the run.
    pub(crate) per_second: Vec<u64>,
    /// 200 answers per request of the list (per monitor).
    pub(crate) ok_per_request: Vec<u32>,
}

impl LoadResult {
    /// 200 answers per second over the whole run.
    pub(crate) fn ok_rate(&self) -> f64 {
        self.counts.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// (lowest, highest) 200s in one full second of the run.
    pub(crate) fn per_second_range(&self) -> (u64, u64) {
        // The last second is partial.
        let full = &self.per_second[..self.per_second.len().saturating_sub(1)];
        (
            full.iter().copied().min().unwrap_or(0),
            full.iter().copied().max().unwrap_or(0),
        )
    }
}

pub(crate) async fn connect_all(addrs: &[SocketAddr], n: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let addr = addrs[i % addrs.len()];
        conns.push(
            Conn::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        );
    }
    Ok(conns)
}

/// Sends `requests` in turn over `connections` connections to `addrs` for
/// `duration`, each connection as fast as it is answered.
///
/// The connections run on one thread of their own (a single-threaded
/// runtime), as wrk's threads do: one `epoll` loop serves them all and no
/// answer wakes a task on another thread. On two cores shared with the
/// stack this cut the generator's CPU per request (see BENCHMARKS.md).
pub(crate) async fn closed_loop(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    requests: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<LoadResult> {
    closed_loop_counted(addrs, connections, duration, requests, Arc::default()).await
}

/// [`closed_loop`], counting the 200 answers in `accepted` as they come, for
/// whoever watches the run meanwhile.
pub(crate) async fn closed_loop_counted(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    requests: Arc<Vec<Vec<u8>>>,
    accepted: Arc<AtomicU64>,
) -> anyhow::Result<LoadResult> {
    let addrs = addrs.to_vec();
    on_own_thread(move || async move {
        closed_loop_here(&addrs, connections, duration, requests, accepted).await
    })
    .await
}

/// Runs the future `make` returns on a new thread with a single-threaded
/// runtime, and waits for its result.
async fn on_own_thread<F, Fut, T>(make: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("load".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(make()));
            let _ = tx.send(result);
        })
        .context("starting the load thread")?;
    rx.await.context("the load thread ended without a result")?
}

async fn closed_loop_here(
    addrs: &[SocketAddr],
    connections: usize,
    duration: Duration,
    requests: Arc<Vec<Vec<u8>>>,
    accepted: Arc<AtomicU64>,
) -> anyhow::Result<LoadResult> {
    let conns = connect_all(addrs, connections).await?;
    let next = Arc::new(AtomicU64::new(0));
    let ok_per_request: Arc<Vec<AtomicU32>> =
        Arc::new((0..requests.len()).map(|_| AtomicU32::new(0)).collect());
    let seconds = duration.as_secs() as usize + 2;
    let per_second: Arc<Vec<AtomicU64>> =
        Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for (i, conn) in conns.into_iter().enumerate() {
        let addr = addrs[i % addrs.len()];
        let (requests, next, ok_per_request, per_second, accepted) = (
            requests.clone(),
            next.clone(),
            ok_per_request.clone(),
            per_second.clone(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latency = Latency::default();
            let mut counts = Counts::default();
            let mut conn = Some(conn);
            while Instant::now() < end {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match Conn::connect(addr).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            *counts
                                .failures
                                .entry(format!("connect {}", io_kind(&e)))
                                .or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let k = (next.fetch_add(1, Ordering::Relaxed) % requests.len() as u64) as usize;
                let sent = Instant::now();
                match tokio::time::timeout(REQUEST_TIMEOUT, c.send(&requests[k])).await {
                    Ok(Ok(Response { status, close })) => {
                        let done = Instant::now();
                        *counts.statuses.entry(status).or_default() += 1;
                        if status == 200 {
                            latency.record(done - sent);
                            ok_per_request[k].fetch_add(1, Ordering::Relaxed);
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let s = (done - start).as_secs() as usize;
                            if let Some(slot) = per_second.get(s) {
                                slot.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if close {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        *counts.failures.entry(io_kind(&e)).or_default() += 1;
                        conn = None;
                    }
                    Err(_) => {
                        *counts.failures.entry("timeout".into()).or_default() += 1;
                        conn = None;
                    }
                }
            }
            (latency, counts)
        }));
    }
    let mut latency = Latency::default();
    let mut counts = Counts::default();
    for t in tasks {
        let (l, c) = t.await?;
        latency.merge(&l);
        counts.merge(&c);
    }
    let elapsed = start.elapsed();
    let used = (elapsed.as_secs() as usize + 1).min(seconds);
    Ok(LoadResult {
        elapsed,
        latency,
        counts,
        per_second: per_second[..used]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
        ok_per_request: ok_per_request
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
    })
}

/// What an open-loop burst measured.
pub(crate) struct BurstResult {
    /// Requests that got a 200 (a `503` or a failure is retried, up to
    /// [`MAX_ATTEMPTS`] attempts).
    pub(crate) accepted: u64,
    /// Requests never accepted: refused (4xx) or out of attempts.
    pub(crate) given_up: u64,
    /// Retries sent.
    pub(crate) retries: u64,
    /// Every answer and failure, retries included.
    pub(crate) counts: Counts,
    /// From each request's arrival time to its 200.
    pub(crate) latency: Latency,
    /// From the burst's start to the last 200.
    pub(crate) last_accepted: Duration,
}

/// A request waiting to be retried: (ready at, request, arrival, attempt).
type Retry = (Instant, usize, Instant, u32);

/// Attempts per request before it is given up.
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// Pause before retrying a request answered 503 or not answered.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Sends each of `requests` once, request `i` arriving at
/// `start + spread × i / n`, over the connections `conns` (opened with
/// [`connect_all`] on `addrs`, reopened there when they break).
pub(crate) async fn open_loop(
    conns: Vec<Conn>,
    addrs: &[SocketAddr],
    start: Instant,
    spread: Duration,
    requests: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<BurstResult> {
    let connections = conns.len();
    let n = requests.len();
    let next = Arc::new(AtomicUsize::new(0));
    let outstanding = Arc::new(AtomicUsize::new(n));
    // (ready at, request, arrival, attempt): all retries wait the same
    // time, so the queue stays in order of readiness.
    let retries: Arc<Mutex<VecDeque<Retry>>> = Arc::default();
    let arrival = move |i: usize| start + spread.mul_f64(i as f64 / n.max(1) as f64);
    let mut tasks = Vec::with_capacity(connections);
    for (c, conn) in conns.into_iter().enumerate() {
        let addr = addrs[c % addrs.len()];
        let (requests, next, outstanding, retries) = (
            requests.clone(),
            next.clone(),
            outstanding.clone(),
            retries.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latency = Latency::default();
            let mut counts = Counts::default();
            let (mut accepted, mut given_up, mut retried) = (0u64, 0u64, 0u64);
            let mut last = start;
            let mut conn = Some(conn);
            loop {
                let now = Instant::now();
                let retry = {
                    let mut q = retries.lock().expect("retry queue lock");
                    match q.front() {
                        Some(r) if r.0 <= now => q.pop_front(),
                        _ => None,
                    }
                };
                let (i, arrived, attempt) = match retry {
                    Some((_, i, arrived, attempt)) => {
                        retried += 1;
                        (i, arrived, attempt)
                    }
                    None => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i < n {
                            (i, arrival(i), 1)
                        } else if outstanding.load(Ordering::Acquire) == 0 {
                            break;
                        } else {
                            // Others' requests may still come back for a retry.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    }
                };
                tokio::time::sleep_until(arrived.max(now).into()).await;
                let c = match conn.as_mut() {
                    Some(c) => Ok(c),
                    None => Conn::connect(addr).await.map(|c| conn.insert(c)),
                };
                let answer = match c {
                    Ok(c) => {
                        match tokio::time::timeout(REQUEST_TIMEOUT, c.send(&requests[i])).await {
                            Ok(Ok(r)) => Ok(r),
                            Ok(Err(e)) => Err(io_kind(&e)),
                            Err(_) => Err("timeout".to_owned()),
                        }
                    }
                    Err(e) => Err(format!("connect {}", io_kind(&e))),
                };
                let mut ok = false;
                let retry_it = match answer {
                    Ok(Response { status, close }) => {
                        *counts.statuses.entry(status).or_default() += 1;
                        if close {
                            conn = None;
                        }
                        if status == 200 {
                            let done = Instant::now();
                            latency.record(done - arrived);
                            last = last.max(done);
                            accepted += 1;
                            ok = true;
                        }
                        status == 503
                    }
                    Err(kind) => {
                        *counts.failures.entry(kind).or_default() += 1;
                        conn = None;
                        true
                    }
                };
                if retry_it && attempt < MAX_ATTEMPTS {
                    retries.lock().expect("retry queue lock").push_back((
                        Instant::now() + RETRY_AFTER,
                        i,
                        arrived,
                        attempt + 1,
                    ));
                } else {
                    if !ok {
                        given_up += 1;
                    }
                    outstanding.fetch_sub(1, Ordering::AcqRel);
                }
            }
            (latency, counts, accepted, given_up, retried, last)
        }));
    }
    let mut out = BurstResult {
        accepted: 0,
        given_up: 0,
        retries: 0,
        counts: Counts::default(),
        latency: Latency::default(),
        last_accepted: Duration::ZERO,
    };
    for t in tasks {
        let (l, c, a, g, r, last) = t.await?;
        out.latency.merge(&l);
        out.counts.merge(&c);
        out.accepted += a;
        out.given_up += g;
        out.retries += r;
        out.last_accepted = out.last_accepted.max(last.saturating_duration_since(start));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use axum::{Router, extract::State, http::StatusCode, routing::post};

    use super::*;

    /// A server answering 200, or 404 for `/api/push/bad`, counting requests.
    async fn server() -> (SocketAddr, Arc<AtomicU64>) {
        let seen = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/api/push/{token}",
                post(
                    |State(seen): State<Arc<AtomicU64>>,
                     axum::extract::Path(token): axum::extract::Path<String>| async move {
                        seen.fetch_add(1, Ordering::Relaxed);
                        if token == "bad" {
                            StatusCode::NOT_FOUND
                        } else {
                            StatusCode::OK
                        }
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, seen)
    }

    fn requests(tokens: &[&str]) -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            tokens
                .iter()
                .map(|t| crate::http::post(&format!("/api/push/{t}"), "127.0.0.1"))
                .collect(),
        )
    }

    #[tokio::test]
    async fn closed_loop_counts_every_answer_once() {
        let (addr, seen) = server().await;
        let r = closed_loop(
            &[addr],
            4,
            Duration::from_millis(200),
            requests(&["a", "b", "bad"]),
        )
        .await
        .unwrap();
        let total: u64 = r.counts.statuses.values().sum();
        assert_eq!(total, seen.load(Ordering::Relaxed));
        assert!(r.counts.ok() > 0);
        assert!(r.counts.failures.is_empty(), "{:?}", r.counts.failures);
        assert_eq!(r.latency.count(), r.counts.ok());
        let per_request: u64 = r.ok_per_request.iter().map(|n| u64::from(*n)).sum();
        assert_eq!(per_request, r.counts.ok());
        assert_eq!(r.ok_per_request[2], 0);
        assert_eq!(r.per_second.iter().sum::<u64>(), r.counts.ok());
    }

    #[tokio::test]
    async fn open_loop_sends_each_request_once() {
        let (addr, seen) = server().await;
        let tokens: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
        let mut all: Vec<&str> = tokens.iter().map(String::as_str).collect();
        all.push("bad");
        let conns = connect_all(&[addr], 8).await.unwrap();
        let start = Instant::now();
        let r = open_loop(
            conns,
            &[addr],
            start,
            Duration::from_millis(100),
            requests(&all),
        )
        .await
        .unwrap();
        assert_eq!(r.accepted, 200);
        assert_eq!((r.given_up, r.retries), (1, 0));
        assert_eq!(seen.load(Ordering::Relaxed), 201);
        assert_eq!(r.counts.statuses.get(&404), Some(&1));
        // The last arrival is at 100 ms: nothing is accepted before it.
        assert!(r.last_accepted >= Duration::from_millis(99));
        assert_eq!(r.latency.count(), 200);
    }
}
