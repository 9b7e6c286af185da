//! The four services as real processes ([`ProcStack`]), for failure tests:
//! any number of replicas each, which a test may kill with SIGKILL and
//! start again, against the machine's brokers or private ones
//! ([`lifeline_testkit::PrivateServer`], [`lifeline_testkit::PrivateRabbit`]).
//! Every process is killed, and everything the prefix created removed, when
//! the stack is dropped; logs go to `target/test-logs/`.

use std::collections::HashMap;

use lifeline_testkit::{Brokers, Proc, Scope, Service, binary, free_port};

/// The four services as real processes, any number of replicas each.
pub struct ProcStack {
    /// Removes what the prefix created, after `Drop` killed the processes.
    _scope: Scope,
    client: crate::Client,
    env: HashMap<String, String>,
    /// Ingest replicas.
    pub ingest: Vec<Service>,
    /// The API.
    pub api: Service,
    /// Evaluator replicas (a killed one stays in the list, stopped).
    pub evaluators: Vec<Service>,
    /// Notifier replicas.
    pub notifiers: Vec<Service>,
}

impl std::ops::Deref for ProcStack {
    type Target = crate::Client;

    fn deref(&self) -> &crate::Client {
        &self.client
    }
}

impl ProcStack {
    /// Starts `n_ingest` ingest, one API, `n_eval` evaluator and `n_notif`
    /// notifier processes under a new prefix, with `extra` environment, and
    /// waits until every one is ready.
    pub async fn start(
        tag: &str,
        brokers: &Brokers,
        (n_ingest, n_eval, n_notif): (usize, usize, usize),
        extra: &[(&str, &str)],
    ) -> Self {
        let scope = Scope::on(tag, brokers);
        let prefix = scope.prefix().to_owned();
        let ingest_ports: Vec<u16> = (0..n_ingest).map(|_| free_port()).collect();
        let ingest_urls: Vec<String> = ingest_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let mut env = brokers.service_env(scope.names());
        for (k, v) in [
            ("LIFELINE_API_KEY", crate::API_KEY),
            ("LIFELINE_PUBLIC_URL", ingest_urls[0].as_str()),
            ("RUST_LOG", "info"),
        ]
        .iter()
        .chain(extra)
        {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let api_port = free_port();
        let api = Self::spawn_with(&env, "lifeline-api", "LIFELINE_API_ADDR", api_port);
        let mut stack = Self {
            _scope: scope,
            client: crate::Client::new(
                &prefix,
                ingest_urls,
                format!("http://127.0.0.1:{api_port}"),
            ),
            ingest: ingest_ports
                .into_iter()
                .map(|p| Self::spawn_with(&env, "lifeline-ingest", "LIFELINE_INGEST_ADDR", p))
                .collect(),
            api,
            evaluators: Vec::new(),
            notifiers: Vec::new(),
            env,
        };
        for _ in 0..n_eval {
            stack.spawn_evaluator();
        }
        for _ in 0..n_notif {
            stack.spawn_notifier();
        }
        let mut urls: Vec<String> = stack.ingest.iter().map(Service::url).collect();
        urls.push(stack.api.url());
        urls.extend(stack.evaluators.iter().map(Service::url));
        urls.extend(stack.notifiers.iter().map(Service::url));
        stack.client.wait_ready(&urls).await;
        stack
    }

    fn spawn_with(env: &HashMap<String, String>, bin: &str, addr_var: &str, port: u16) -> Service {
        let mut env = env.clone();
        env.insert(addr_var.to_owned(), format!("127.0.0.1:{port}"));
        Service {
            proc: Proc::spawn(bin, &binary(bin), &[], &env),
            port,
        }
    }

    /// Starts one more evaluator; returns its index.
    pub fn spawn_evaluator(&mut self) -> usize {
        let s = Self::spawn_with(
            &self.env,
            "lifeline-evaluator",
            "LIFELINE_EVALUATOR_ADDR",
            free_port(),
        );
        self.evaluators.push(s);
        self.evaluators.len() - 1
    }

    /// Starts one more notifier; returns its index.
    pub fn spawn_notifier(&mut self) -> usize {
        let s = Self::spawn_with(
            &self.env,
            "lifeline-notifier",
            "LIFELINE_NOTIFIER_ADDR",
            free_port(),
        );
        self.notifiers.push(s);
        self.notifiers.len() - 1
    }

    /// Restarts ingest replica `i` on its port (after a kill).
    pub fn respawn_ingest(&mut self, i: usize) {
        let port = self.ingest[i].port;
        self.ingest[i] =
            Self::spawn_with(&self.env, "lifeline-ingest", "LIFELINE_INGEST_ADDR", port);
    }

    /// Every log line of every process, for diagnostics and secret checks.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in self
            .ingest
            .iter()
            .chain([&self.api])
            .chain(&self.evaluators)
            .chain(&self.notifiers)
        {
            out.push_str(&format!("==== {} (pid {})\n", s.proc.label(), s.proc.pid()));
            out.push_str(&s.proc.log());
        }
        out
    }
}

impl Drop for ProcStack {
    fn drop(&mut self) {
        for s in self
            .ingest
            .iter_mut()
            .chain([&mut self.api])
            .chain(self.evaluators.iter_mut())
            .chain(self.notifiers.iter_mut())
        {
            s.proc.kill9();
        }
    }
}
