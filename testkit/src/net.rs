//! Ports on 127.0.0.1: a free one for a child process, a listener on port
//! 0 for a server run in-process, and waiting until a port accepts.

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    time::Duration,
};

use tokio::net::TcpListener;

/// A free TCP port on 127.0.0.1, bound then released for a child process
/// to take (another process could take it first; none of ours does).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A listener on 127.0.0.1, port 0, and its address: for a service or
/// server run in-process.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = l.local_addr().expect("local addr");
    (l, addr)
}

/// Waits until 127.0.0.1:`port` accepts connections, for at most `limit`.
pub async fn wait_port(port: u16, limit: Duration) {
    crate::wait_for(
        limit,
        &format!("port {port} to accept connections"),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}
