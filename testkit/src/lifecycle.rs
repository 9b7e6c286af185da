//! A service's own `run` driven as its `main` drives it, in-process: on a
//! listener of port 0 with a shutdown token, then cancelled, to show that
//! it starts without its brokers and stops cleanly with every task awaited.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

/// The status line `GET path` is answered with (HTTP/1.0 over a plain
/// socket: no client library between the test and the server).
pub async fn status_line(addr: SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    conn.write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read answer");
    answer.lines().next().unwrap_or_default().to_owned()
}

/// Starts a service with `run(listener, shutdown)`, checks that it answers
/// `/healthz` with 200, cancels it, and asserts that `run` returns `Ok`
/// within 10 s (every task drained and awaited).
pub async fn starts_then_drains<F, Fut>(run: F)
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run(listener, shutdown.clone()));
    let health = status_line(addr, "/healthz").await;
    assert!(health.contains(" 200 "), "GET /healthz: {health}");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stopped within 10 s")
        .expect("no panic")
        .expect("a clean stop");
}
