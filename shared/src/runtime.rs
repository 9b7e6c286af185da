//! How every service runs: its tasks under one [`Supervisor`], the
//! shutdown signal, and the listener it is given.
//!
//! A service is a handful of long-lived tasks (an HTTP server, consumers,
//! tickers, watchers). Each is registered with the supervisor under a name,
//! and the supervisor keeps one promise: **the service runs whole or not at
//! all.** If an essential task ends before shutdown, with an error, a panic
//! or even `Ok`, the supervisor logs which one, cancels the service's token
//! so every other task stops, awaits them, and returns an error, so the
//! process exits non-zero and its orchestrator restarts it instead of
//! leaving it running half-dead (a notifier that stopped consuming still
//! answering `/healthz`, an evaluator whose ticker is gone). On shutdown
//! (SIGTERM, SIGINT, or the token a test cancels) every task drains, in
//! whatever order their own channels impose, and every one is awaited
//! before [`Supervisor::run`] returns.
//!
//! Draining is bounded by [`DRAIN_TIMEOUT`]: a task still running then is
//! named, aborted, and the run ends in error.
//!
//! Tasks that may end by themselves (a check made once at start) are
//! registered with [`Supervisor::spawn_finite`]: their end is no failure,
//! but they are awaited all the same.

use std::{collections::HashMap, future::Future, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// How long the tasks of a stopping service may take to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a supervised service stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// An essential task returned while the service was running.
    #[error("{task} ended on its own")]
    Ended {
        /// The task's name.
        task: &'static str,
    },
    /// A task returned an error.
    #[error("{task} failed: {error:#}")]
    Failed {
        /// The task's name.
        task: &'static str,
        /// What it returned.
        error: anyhow::Error,
    },
    /// A task panicked.
    #[error("{task} panicked")]
    Panicked {
        /// The task's name.
        task: &'static str,
    },
    /// Tasks still running when the drain time was up (then aborted).
    #[error("{} still running {:?} after shutdown began; aborted", .tasks.join(", "), .after)]
    Stuck {
        /// Their names.
        tasks: Vec<&'static str>,
        /// The drain time.
        after: Duration,
    },
}

/// What a task returns: nothing, or a result whose error is a failure.
pub trait TaskOutput: Send + 'static {
    /// The task's outcome as a result.
    fn into_result(self) -> anyhow::Result<()>;
}

impl TaskOutput for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<E> TaskOutput for Result<(), E>
where
    E: Into<anyhow::Error> + Send + 'static,
{
    fn into_result(self) -> anyhow::Result<()> {
        self.map_err(Into::into)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Must run until shutdown.
    Essential,
    /// May end by itself.
    Finite,
}

/// The tasks of one service; see the module documentation.
pub struct Supervisor {
    service: &'static str,
    token: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, (&'static str, Role)>,
    drain_timeout: Duration,
}

impl Supervisor {
    /// A supervisor for `service` that stops when `shutdown` is cancelled.
    /// Tasks get [`Supervisor::token`], a child of `shutdown`: the
    /// supervisor cancels it when a task fails, without cancelling
    /// `shutdown` itself (which may be shared with other services in a
    /// test).
    pub fn new(service: &'static str, shutdown: &CancellationToken) -> Self {
        Self {
            service,
            token: shutdown.child_token(),
            tasks: JoinSet::new(),
            names: HashMap::new(),
            drain_timeout: DRAIN_TIMEOUT,
        }
    }

    /// Another drain time than [`DRAIN_TIMEOUT`].
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The token every task stops on: cancelled on shutdown or when any
    /// essential task ends.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Runs an essential task: its end before shutdown stops the service.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.start(name, Role::Essential, task);
    }

    /// Runs a task that may end by itself (a check made once); it is
    /// awaited at shutdown, and an error or panic is still a failure.
    pub fn spawn_finite<F>(&mut self, name: &'static str, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.start(name, Role::Finite, task);
    }

    fn start<F>(&mut self, name: &'static str, role: Role, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        let handle = self.tasks.spawn(async move { task.await.into_result() });
        self.names.insert(handle.id(), (name, role));
    }

    /// Runs until shutdown or the first failure, then drains: cancels the
    /// token and awaits every task (at most the drain time). `Ok` only when
    /// shutdown was asked for and every task finished cleanly; otherwise the
    /// first failure (every one is logged).
    pub async fn run(mut self) -> Result<(), Stopped> {
        let service = self.service;
        let mut first: Option<Stopped> = None;
        // Running: until shutdown, or an essential task ends or any fails.
        while first.is_none() {
            let joined = tokio::select! {
                biased;
                () = self.token.cancelled() => break,
                Some(joined) = self.tasks.join_next_with_id() => joined,
            };
            let (task, role, outcome) = self.outcome(joined);
            // A task may notice the cancellation before this loop does: then
            // it is draining, not ending on its own.
            let draining = self.token.is_cancelled();
            match outcome {
                Some(failure) if draining => {
                    tracing::error!(service, task, error = %failure, "task failed while stopping");
                    first = Some(failure);
                }
                None if draining => tracing::debug!(service, task, "task stopped"),
                Some(failure) => {
                    tracing::error!(service, task, error = %failure, "task failed; stopping the service");
                    first = Some(failure);
                }
                None if role == Role::Essential => {
                    tracing::error!(service, task, "task ended on its own; stopping the service");
                    first = Some(Stopped::Ended { task });
                }
                None => tracing::debug!(service, task, "task done"),
            }
        }
        if first.is_none() {
            tracing::info!(service, tasks = self.tasks.len(), "shutting down");
        }
        self.token.cancel();

        // Draining: every task, within the drain time.
        let deadline = tokio::time::sleep(self.drain_timeout);
        tokio::pin!(deadline);
        loop {
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(joined) => joined,
                    None => break,
                },
                () = &mut deadline => {
                    let mut tasks: Vec<_> = self.names.values().map(|(name, _)| *name).collect();
                    tasks.sort_unstable();
                    let stuck = Stopped::Stuck { tasks, after: self.drain_timeout };
                    tracing::error!(service, error = %stuck, "shutdown did not finish in time");
                    self.tasks.shutdown().await;
                    first.get_or_insert(stuck);
                    break;
                }
            };
            let (task, _, outcome) = self.outcome(joined);
            match outcome {
                Some(failure) => {
                    tracing::error!(service, task, error = %failure, "task failed while stopping");
                    first.get_or_insert(failure);
                }
                None => tracing::debug!(service, task, "task stopped"),
            }
        }
        match first {
            Some(failure) => Err(failure),
            None => {
                tracing::info!(service, "stopped");
                Ok(())
            }
        }
    }

    /// The name and role of a finished task, and its failure if any.
    fn outcome(
        &mut self,
        joined: Result<(tokio::task::Id, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> (&'static str, Role, Option<Stopped>) {
        let (id, result) = match joined {
            Ok((id, result)) => (id, Ok(result)),
            Err(e) => (e.id(), Err(e)),
        };
        let (task, role) = self
            .names
            .remove(&id)
            .unwrap_or(("unnamed task", Role::Essential));
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(Stopped::Failed { task, error }),
            Err(e) if e.is_panic() => Some(Stopped::Panicked { task }),
            // Aborted: only the drain deadline aborts, and reports it.
            Err(_) => None,
        };
        (task, role, failure)
    }
}

/// Binds the address of a service's `variable` (e.g. `LIFELINE_API_ADDR`),
/// with an error naming both.
pub async fn listen(addr: &str, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {variable}={addr}"))
}

/// A token cancelled on SIGINT or SIGTERM, and the task that waits for
/// them (to run beside the service: it ends when the token is cancelled).
pub fn signal() -> (CancellationToken, impl Future<Output = ()> + Send + 'static) {
    let token = CancellationToken::new();
    let t = token.clone();
    let waiting = async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
                () = t.cancelled() => return,
            }
        }
        #[cfg(not(unix))]
        tokio::select! {
            _ = ctrl_c => {}
            () = t.cancelled() => return,
        }
        tracing::info!("shutdown signal received");
        t.cancel();
    };
    (token, waiting)
}

/// Runs a service until SIGINT or SIGTERM: `service` gets the token the
/// signals cancel (what `main` wires).
pub async fn until_signal<F, Fut>(service: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (token, waiting) = signal();
    let stop_waiting = token.clone();
    let (result, ()) = tokio::join!(
        async move {
            let result = service(token.clone()).await;
            // The service ended by itself (a failure): stop waiting.
            stop_waiting.cancel();
            result
        },
        waiting
    );
    result
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    /// A task that runs until `token` is cancelled, then counts itself done.
    fn until_cancelled(
        token: CancellationToken,
        done: &Arc<AtomicUsize>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let done = done.clone();
        async move {
            token.cancelled().await;
            // Some work while draining.
            tokio::time::sleep(Duration::from_millis(20)).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn cancellation_drains_and_awaits_every_task() {
        let shutdown = CancellationToken::new();
        let mut sup = Supervisor::new("test", &shutdown);
        let done = Arc::new(AtomicUsize::new(0));
        for name in ["a", "b", "c"] {
            sup.spawn(name, until_cancelled(sup.token(), &done));
        }
        sup.spawn_finite("check", async { Ok::<_, std::io::Error>(()) });
        let run = tokio::spawn(sup.run());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!run.is_finished(), "a finite task's end is no failure");
        shutdown.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 3);
    }

    /// Tasks that return the instant the token fires may be seen ending
    /// before the cancellation is: still a clean stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_quicker_than_the_supervisor_are_not_failures() {
        for _ in 0..20 {
            let shutdown = CancellationToken::new();
            let mut sup = Supervisor::new("test", &shutdown);
            for _ in 0..20 {
                let token = sup.token();
                sup.spawn("quick", async move { token.cancelled().await });
            }
            let run = tokio::spawn(sup.run());
            tokio::task::yield_now().await;
            shutdown.cancel();
            run.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn an_essential_task_that_ends_stops_the_others() {
        let shutdown = CancellationToken::new();
        let mut sup = Supervisor::new("test", &shutdown);
        let done = Arc::new(AtomicUsize::new(0));
        sup.spawn("consumer", until_cancelled(sup.token(), &done));
        sup.spawn("ticker", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
        let error = sup.run().await.unwrap_err();
        assert!(
            matches!(error, Stopped::Ended { task: "ticker" }),
            "{error}"
        );
        assert_eq!(done.load(Ordering::SeqCst), 1, "the consumer was drained");
        assert!(!shutdown.is_cancelled(), "the caller's token is left alone");
    }

    #[tokio::test]
    async fn failures_and_panics_are_named() {
        let shutdown = CancellationToken::new();
        let mut sup = Supervisor::new("test", &shutdown);
        sup.spawn_finite("check", async { Err::<(), _>(anyhow::anyhow!("boom")) });
        let error = sup.run().await.unwrap_err();
        assert_eq!(error.to_string(), "check failed: boom");

        let mut sup = Supervisor::new("test", &shutdown);
        let token = sup.token();
        sup.spawn("watcher", async move { token.cancelled().await });
        sup.spawn("pulser", async {
            panic!("pulser bug");
            #[allow(unreachable_code)]
            ()
        });
        let error = sup.run().await.unwrap_err();
        assert!(
            matches!(error, Stopped::Panicked { task: "pulser" }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_error_while_draining_is_reported() {
        let shutdown = CancellationToken::new();
        let mut sup = Supervisor::new("test", &shutdown);
        let token = sup.token();
        sup.spawn("server", async move {
            token.cancelled().await;
            Err::<(), _>(std::io::Error::other("could not close"))
        });
        shutdown.cancel();
        let error = sup.run().await.unwrap_err();
        assert_eq!(error.to_string(), "server failed: could not close");
    }

    #[tokio::test]
    async fn a_task_that_does_not_drain_is_aborted_and_named() {
        let shutdown = CancellationToken::new();
        let mut sup =
            Supervisor::new("test", &shutdown).with_drain_timeout(Duration::from_millis(50));
        let done = Arc::new(AtomicUsize::new(0));
        sup.spawn("consumer", until_cancelled(sup.token(), &done));
        sup.spawn("stubborn", std::future::pending::<()>());
        shutdown.cancel();
        let error = sup.run().await.unwrap_err();
        assert!(
            matches!(&error, Stopped::Stuck { tasks, .. } if tasks == &["stubborn"]),
            "{error}"
        );
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    /// The shape of a service: an HTTP server and a worker; the worker
    /// ends, so the server stops and `run` fails.
    #[tokio::test]
    async fn a_server_stops_when_a_worker_ends() {
        let shutdown = CancellationToken::new();
        let mut sup = Supervisor::new("test", &shutdown);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        sup.spawn(
            "http server",
            crate::http::serve(listener, router, sup.token()),
        );
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        sup.spawn("worker", async move {
            let _ = ended.await;
        });
        let run = tokio::spawn(sup.run());
        tokio::net::TcpStream::connect(addr).await.unwrap();
        drop(end);
        let error = run.await.unwrap().unwrap_err();
        assert!(
            matches!(error, Stopped::Ended { task: "worker" }),
            "{error}"
        );
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn until_signal_returns_the_services_outcome() {
        let ok = until_signal(|token| async move {
            token.cancel();
            Ok(())
        });
        ok.await.unwrap();
        let failed = until_signal(|_| async { Err(anyhow::anyhow!("broken")) });
        assert_eq!(failed.await.unwrap_err().to_string(), "broken");
    }
}
