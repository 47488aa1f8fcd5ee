//! The agent's drop reporter: one NFLOG [`DropListener`] per enforced Pod netns, one
//! [`Aggregator`], reports described against the agent's latest compiled model.
//!
//! ```text
//!  reconcile pass (blocking pool)           reporter thread "netpol-drops" (plain thread)
//!  compile ─▶ DropReporter::track(model, netns set) ──cmd──▶ start/stop listeners,
//!          ◀──────────── bound (or timeout) ──────────────── keep the model
//!  sync (apply tables)
//!                                 listener threads ──DropEvent──▶ drained every tick
//!                                        Aggregator ──flush at next_deadline──▶ describe
//!                                        ──▶ tracing `netpol::drops` + metrics + sink
//! ```
//!
//! - Listeners are keyed by network namespace (a netns reused by a new Pod keeps its
//!   listener: the log prefix names the Pod). [`DropReporter::track`] is called after
//!   every compile that changed the desired rulesets and waits (bounded) until the
//!   listeners of new namespaces are bound, so the first drops of a newly enforced Pod
//!   are reported. Namespaces no longer enforced have their listener drained and stopped
//!   (which releases the NFLOG group). A failed bind is logged and retried.
//! - Nothing here runs on a tokio worker: the reporter and the listeners are plain
//!   threads; the agent talks to the reporter over a std channel.
//! - [`Metrics::record_drops`] counts every event (suppressed ones too) per Pod and
//!   direction, once per tick; reports are rate-limited by the aggregator (one per flow
//!   and window).
//! - Each report is one tracing event, target `netpol::drops`, message `netpol drop`,
//!   with the fields of [`DropReport`] (`src`/`dst` flattened to `src_ip`, `src_pod`,
//!   `dst_ip`, `dst_pod`; `policies` comma-separated); suppressed counts are a warning
//!   `netpol drops suppressed` with `count`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use policy_compiler::{AllowGraph, Direction, Model};

use crate::drops::aggregate::{Aggregator, AggregatorConfig, Flushed};
use crate::drops::report::{DropReport, SUPPRESSED_MSG, describe};
use crate::drops::{DropEvent, DropListener, NflogConfig};
use crate::metrics::Metrics;

/// Target of the reporter's tracing events.
pub const TARGET: &str = "netpol::drops";

/// The model and graph the agent compiled last; reports are described against it.
#[derive(Debug)]
pub struct CompiledModel {
    /// The model.
    pub model: Model,
    /// Its allow graph.
    pub graph: AllowGraph,
}

/// Settings of drop reporting.
#[derive(Debug, Clone)]
pub struct DropsConfig {
    /// The NFLOG subscription; `group` must be the rulesets' `log group`.
    pub nflog: NflogConfig,
    /// Window and key bound of the rate limiting.
    pub aggregator: AggregatorConfig,
    /// How long [`DropReporter::track`] waits for new listeners to be bound.
    pub bind_timeout: Duration,
    /// Delay before a failed bind is tried again.
    pub retry: Duration,
    /// How often listeners' events are collected.
    pub tick: Duration,
    /// Also receives every report (tests, embedding).
    pub sink: Option<mpsc::Sender<DropReport>>,
}

impl Default for DropsConfig {
    fn default() -> Self {
        Self {
            nflog: NflogConfig {
                // A reader checks for stop this often: stop cost vs idle wakeups.
                poll: Duration::from_millis(250),
                ..NflogConfig::default()
            },
            aggregator: AggregatorConfig::default(),
            bind_timeout: Duration::from_secs(2),
            retry: Duration::from_secs(5),
            tick: Duration::from_millis(100),
            sink: None,
        }
    }
}

enum Command {
    Track {
        model: Arc<CompiledModel>,
        netns: BTreeSet<String>,
        done: mpsc::Sender<()>,
    },
    Stop,
}

/// Handle of the reporter thread. Dropping it stops the thread without waiting;
/// [`DropReporter::stop`] also flushes and waits.
#[derive(Debug)]
pub struct DropReporter {
    commands: mpsc::Sender<Command>,
    bind_timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl DropReporter {
    /// Starts the reporter thread (no listeners until [`track`](Self::track)).
    pub fn start(config: DropsConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (commands, rx) = mpsc::channel();
        let bind_timeout = config.bind_timeout;
        let thread = thread::Builder::new()
            .name("netpol-drops".to_owned())
            .spawn(move || Worker::new(config, metrics).run(&rx))?;
        Ok(Self {
            commands,
            bind_timeout,
            thread: Some(thread),
        })
    }

    /// Reports drops in exactly these namespaces from now on, described against
    /// `model`. Blocks (up to the bind timeout) until listeners of new namespaces are
    /// bound or have failed; call it from a blocking context, never a tokio worker.
    pub fn track(&self, model: Arc<CompiledModel>, netns: BTreeSet<String>) {
        let (done, bound) = mpsc::channel();
        if self
            .commands
            .send(Command::Track { model, netns, done })
            .is_err()
        {
            tracing::warn!(target: TARGET, "drop reporter is gone: no drop reports");
            return;
        }
        if bound.recv_timeout(self.bind_timeout).is_err() {
            tracing::warn!(
                target: TARGET,
                timeout_ms = self.bind_timeout.as_millis() as u64,
                "drop listeners not bound in time: applying anyway"
            );
        }
    }

    /// Flushes every open window, stops the listeners (releasing their groups) and
    /// joins the thread. Blocking.
    pub fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(target: TARGET, "drop reporter panicked");
        }
    }
}

impl Drop for DropReporter {
    fn drop(&mut self) {
        // The thread ends by itself once it reads Stop (or sees the channel closed).
        let _ = self.commands.send(Command::Stop);
    }
}

/// The reporter thread's state.
struct Worker {
    config: DropsConfig,
    core: Core,
    listeners: BTreeMap<String, DropListener>,
    /// Namespaces whose bind failed, and when to try again.
    failed: BTreeMap<String, Instant>,
}

impl Worker {
    fn new(config: DropsConfig, metrics: Arc<Metrics>) -> Self {
        let core = Core::new(config.aggregator, metrics, config.sink.clone());
        Self {
            config,
            core,
            listeners: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        loop {
            let now = Instant::now();
            let mut wake = self.core.next_deadline(now);
            if !self.listeners.is_empty() {
                wake = earliest(wake, now + self.config.tick);
            }
            if let Some(&retry) = self.failed.values().min() {
                wake = earliest(wake, retry);
            }
            let cmd = match wake {
                Some(at) => commands.recv_timeout(at.saturating_duration_since(now)),
                None => commands
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            match cmd {
                Ok(Command::Track { model, netns, done }) => {
                    self.core.model = Some(model);
                    self.track(&netns);
                    let _ = done.send(());
                }
                Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.shutdown();
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            self.collect();
            self.retry_failed();
            self.core.flush(Instant::now());
        }
    }

    fn collect(&mut self) {
        let now = Instant::now();
        for l in self.listeners.values() {
            self.core.record_all(l.try_iter(), now);
        }
        self.core.count_pending();
    }

    fn track(&mut self, want: &BTreeSet<String>) {
        let gone: Vec<String> = self
            .listeners
            .keys()
            .filter(|n| !want.contains(*n))
            .cloned()
            .collect();
        if !gone.is_empty() {
            self.collect();
            let stopped: Vec<DropListener> = gone
                .iter()
                .filter_map(|n| self.listeners.remove(n))
                .collect();
            stop_all(stopped);
            tracing::info!(target: TARGET, netns = ?gone, "drop listeners stopped (Pods gone)");
        }
        self.failed.retain(|n, _| want.contains(n));
        let new: Vec<String> = want
            .iter()
            .filter(|n| !self.listeners.contains_key(*n))
            .cloned()
            .collect();
        self.start(new);
        self.update_gauge();
    }

    fn retry_failed(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .failed
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        if !due.is_empty() {
            self.start(due);
        }
    }

    /// Binds listeners in `netns` (in parallel: each bind enters a namespace on its own
    /// thread and waits for the kernel's ack).
    fn start(&mut self, netns: Vec<String>) {
        if netns.is_empty() {
            return;
        }
        let config = &self.config.nflog;
        let results: Vec<_> = thread::scope(|s| {
            let handles: Vec<_> = netns
                .iter()
                .map(|n| s.spawn(move || DropListener::start(n, config)))
                .collect();
            netns
                .iter()
                .zip(handles)
                .map(|(n, h)| (n.clone(), h.join()))
                .collect()
        });
        let retry_at = Instant::now() + self.config.retry;
        for (n, r) in results {
            match r {
                Ok(Ok(l)) => {
                    tracing::debug!(target: TARGET, netns = %n, group = config.group, "drop listener bound");
                    self.failed.remove(&n);
                    self.listeners.insert(n, l);
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        target: TARGET, netns = %n, error = %netpol_common::ErrorChain(&e),
                        retry_in_ms = self.config.retry.as_millis() as u64,
                        "cannot listen for drops"
                    );
                    self.failed.insert(n, retry_at);
                }
                Err(_) => {
                    tracing::error!(target: TARGET, netns = %n, "drop listener start panicked");
                    self.failed.insert(n, retry_at);
                }
            }
        }
        self.update_gauge();
    }

    fn update_gauge(&self) {
        self.core
            .metrics
            .drop_listeners
            .set(i64::try_from(self.listeners.len()).unwrap_or(i64::MAX));
    }

    fn shutdown(&mut self) {
        self.collect();
        let rest = self.core.aggregator.drain();
        self.core.emit(rest);
        stop_all(std::mem::take(&mut self.listeners).into_values().collect());
        self.core.metrics.drop_listeners.set(0);
    }
}

/// Stops listeners in parallel (each waits up to one poll interval for its reader).
fn stop_all(listeners: Vec<DropListener>) {
    thread::scope(|s| {
        for l in listeners {
            s.spawn(move || {
                let netns = l.netns().to_owned();
                match l.stop() {
                    Ok(stats) if stats.lost > 0 => {
                        tracing::warn!(target: TARGET, netns, lost = stats.lost, events = stats.events, "drop listener stopped; some reports were lost");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(target: TARGET, netns, error = %netpol_common::ErrorChain(&e), "drop listener failed");
                    }
                }
            });
        }
    });
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Aggregation, description and emission: no threads, no sockets (unit-tested).
struct Core {
    aggregator: Aggregator,
    metrics: Arc<Metrics>,
    sink: Option<mpsc::Sender<DropReport>>,
    model: Option<Arc<CompiledModel>>,
    /// Events per (namespace, pod, direction, tier, audit) not yet added to the metrics.
    pending: BTreeMap<(String, String, Direction, &'static str, bool), u64>,
}

impl Core {
    fn new(
        config: AggregatorConfig,
        metrics: Arc<Metrics>,
        sink: Option<mpsc::Sender<DropReport>>,
    ) -> Self {
        Self {
            aggregator: Aggregator::new(config),
            metrics,
            sink,
            model: None,
            pending: BTreeMap::new(),
        }
    }

    fn record_all(&mut self, events: impl Iterator<Item = DropEvent>, now: Instant) {
        for ev in events {
            self.aggregator.record(&ev, now);
            let p = &ev.prefix;
            *self
                .pending
                .entry((
                    p.namespace.clone(),
                    p.pod.clone(),
                    p.direction,
                    p.tier(),
                    p.audit,
                ))
                .or_default() += 1;
        }
    }

    fn count_pending(&mut self) {
        for ((ns, pod, dir, tier, audit), n) in std::mem::take(&mut self.pending) {
            if audit {
                // See: #12 — accepted packets that audit policies would drop.
                self.metrics.record_audit_drops(&ns, &pod, dir, tier, n);
            } else {
                self.metrics.record_drops(&ns, &pod, dir, tier, n);
            }
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.aggregator.next_deadline(now)
    }

    fn flush(&mut self, now: Instant) {
        let flushed = self.aggregator.flush(now);
        self.emit(flushed);
    }

    fn emit(&mut self, flushed: Flushed) {
        self.count_pending();
        if flushed.suppressed > 0 {
            self.metrics.drops_suppressed.inc_by(flushed.suppressed);
            tracing::warn!(target: TARGET, count = flushed.suppressed, "{SUPPRESSED_MSG}");
        }
        let Some(model) = self.model.clone() else {
            return;
        };
        for s in &flushed.summaries {
            let r = describe(s, &model.model, &model.graph);
            log_report(&r);
            if let Some(sink) = &self.sink
                && sink.send(r).is_err()
            {
                self.sink = None;
            }
        }
    }
}

/// One report as one tracing event with its fields.
fn log_report(r: &DropReport) {
    tracing::info!(
        target: TARGET,
        ts = %r.ts,
        first_ts = %r.first_ts,
        netns = %r.netns,
        pod = %r.pod,
        direction = r.direction,
        protocol = %r.protocol,
        src_ip = %r.src.ip,
        src_pod = r.src.pod.as_deref(),
        dst_ip = %r.dst.ip,
        dst_pod = r.dst.pod.as_deref(),
        src_port = r.src_port,
        dst_port = r.dst_port,
        count = r.count,
        window_ms = r.window_ms,
        policies = %r.policies.join(","),
        nearest_miss = r.nearest_miss.as_deref(),
        tier = r.tier,
        cluster_policy = r.cluster_policy.as_deref(),
        cluster_rule = r.cluster_rule.as_deref(),
        note = r.note.as_deref(),
        services = (!r.services.is_empty()).then(|| r.services.join(",")),
        "{}",
        r.msg
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drops::{L4Proto, LogPrefix};
    use policy_compiler::{SourceText, load};
    use std::time::SystemTime;

    const MANIFESTS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.11}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.12}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{ports: [{port: 80}]}]\n";

    fn compiled() -> Arc<CompiledModel> {
        let (inputs, diags) = load(&[SourceText {
            name: "m.yaml",
            text: MANIFESTS,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        let (model, diags) = Model::build(&inputs);
        assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
        let graph = AllowGraph::build(&model);
        Arc::new(CompiledModel { model, graph })
    }

    fn ev(port: u16) -> DropEvent {
        DropEvent {
            netns: "ns-b".into(),
            prefix: LogPrefix {
                namespace: "x".into(),
                pod: "b".into(),
                direction: Direction::Ingress,
                cluster: None,
                audit: false,
            },
            src_ip: "10.0.0.11".parse().unwrap(),
            dst_ip: "10.0.0.12".parse().unwrap(),
            protocol: L4Proto::Tcp,
            src_port: Some(40000),
            dst_port: Some(port),
            ts: SystemTime::now(),
        }
    }

    #[test]
    fn events_are_counted_aggregated_and_described() {
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = mpsc::channel();
        let mut core = Core::new(
            AggregatorConfig {
                window: Duration::from_secs(1),
                max_keys: 1,
            },
            metrics.clone(),
            Some(tx),
        );
        core.model = Some(compiled());
        let t0 = Instant::now();
        core.record_all([ev(81), ev(81), ev(81), ev(82)].into_iter(), t0);
        core.count_pending();
        let text = metrics.encode();
        assert!(
            text.contains(r#"netpol_drops_total{namespace="x",pod="b",direction="ingress",tier="networkpolicy"} 4"#),
            "suppressed events are counted too:\n{text}"
        );
        core.flush(t0 + Duration::from_millis(500));
        assert!(rx.try_recv().is_err(), "window still open");
        assert_eq!(core.next_deadline(t0), Some(t0 + Duration::from_secs(1)));
        core.flush(t0 + Duration::from_secs(1));
        let r = rx.try_recv().unwrap();
        assert_eq!(r.count, 3);
        assert_eq!(r.src.pod.as_deref(), Some("x/a"));
        assert_eq!(r.dst.pod.as_deref(), Some("x/b"));
        assert_eq!(r.policies, ["x/b-web"]);
        assert!(r.nearest_miss.is_some(), "{r:?}");
        assert!(rx.try_recv().is_err(), "one report per key and window");
        assert!(metrics.encode().contains("netpol_drops_suppressed_total 1"));
    }
}
