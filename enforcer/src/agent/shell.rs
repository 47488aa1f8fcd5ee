//! The tokio shell around the [`Reconciler`]: the state source, the `netpol-cni` socket,
//! the HTTP server, and the loop that runs one blocking reconcile pass per wake-up.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cni::{self, CniStatus};
use super::events::NftEvents;
use super::fast_add::{FastApplied, FastView};
use super::{AgentConfig, FastAdd, Reconciler, RulesetSource};
use crate::applier::Applier;
use crate::cni::records::RecordStore;
use crate::cni::server::{self as cni_server, CniCall};
use crate::cni::{Command, Response};
use crate::http::{self, Health};
use crate::manifests::{ManifestDir, Scan};
use crate::metrics::Metrics;
use crate::reporter::DropReporter;
use crate::source::{ManifestSource, PodLookup, StateSource};
use crate::state::PodKey;

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A reconcile pass panicked; the agent stopped (the kernel keeps its tables).
    #[error("reconcile pass panicked")]
    Panicked,
    /// The drop reporter thread could not be started.
    #[error("cannot start the drop reporter")]
    Reporter {
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The nftables event thread could not be started.
    #[error("cannot start the nftables event watcher")]
    Events {
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The `netpol-cni` socket could not be set up.
    #[error("cannot serve the cni socket")]
    Cni(#[source] cni_server::ServerError),
}

/// The running agent.
pub struct Agent {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    local_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
    http: Option<JoinHandle<()>>,
    /// The CNI socket's accept loop: awaited by [`Agent::stop`] so that the socket is
    /// closed (a STATUS call says "not ready") once `stop` returns.
    cni: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent on the current tokio runtime with the manifest directory as its
    /// source (watched with `config.watch`); see [`Agent::start_with_source`].
    pub async fn start(
        config: AgentConfig,
        manifests: ManifestDir,
        renderer: Arc<dyn RulesetSource>,
        applier: Arc<dyn Applier>,
    ) -> Result<Agent, AgentError> {
        let source = ManifestSource::new(manifests, config.watch);
        Self::start_with_source(config, Box::new(source), renderer, applier).await
    }

    /// Starts the agent on the current tokio runtime: the state source, the reconcile
    /// loop and (with `config.listen`) the HTTP server.
    pub async fn start_with_source(
        config: AgentConfig,
        source: Box<dyn StateSource>,
        renderer: Arc<dyn RulesetSource>,
        applier: Arc<dyn Applier>,
    ) -> Result<Agent, AgentError> {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (local_addr, http) = match config.listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| AgentError::Listen { addr, source })?;
                let local = listener
                    .local_addr()
                    .map_err(|source| AgentError::Listen { addr, source })?;
                tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz");
                let task = tokio::spawn(http::serve(
                    listener,
                    metrics.clone(),
                    health.clone(),
                    shutdown_rx.clone(),
                ));
                (Some(local), Some(task))
            }
            None => (None, None),
        };
        let mut reconciler = Reconciler::new(&config, renderer, applier, metrics.clone());
        if let Some(drops) = config.drops.clone() {
            let group = drops.nflog.group;
            let reporter = DropReporter::start(drops, metrics.clone())
                .map_err(|source| AgentError::Reporter { source })?;
            reconciler.attach_reporter(reporter);
            tracing::info!(
                group,
                "drop reports on (NFLOG listener per enforced Pod netns)"
            );
        }
        let mut cni_task = None;
        let cni_calls = match &config.cni {
            Some(cni) => {
                if let Some(dir) = &cni.records {
                    reconciler.attach_records(RecordStore::new(dir));
                }
                let listener = cni_server::bind(&cni.socket).map_err(AgentError::Cni)?;
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                cni_task = Some(tokio::spawn(cni_server::serve(
                    listener,
                    tx,
                    shutdown_rx.clone(),
                )));
                tracing::info!(socket = %cni.socket.display(), "serving netpol-cni requests");
                Some(rx)
            }
            None => None,
        };
        tracing::info!(source = %source.describe(), trust = ?source.netns_trust(), "state source");
        reconciler.set_netns_trust(source.netns_trust());
        let lookup = source.lookup();
        let scans = source.start_with_metrics(metrics.clone());
        let events = if config.nft_events {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let watcher = NftEvents::start(tx).map_err(|source| AgentError::Events { source })?;
            tracing::info!("nftables commit events on (one subscription per enforced netns)");
            Some((watcher, rx))
        } else {
            None
        };
        let task = tokio::spawn(run(
            reconciler,
            Inputs {
                scans,
                cni_calls,
                lookup,
                events,
            },
            config.verify_interval,
            health.clone(),
            metrics.clone(),
            shutdown_rx,
        ));
        health.running.store(true, Ordering::SeqCst);
        Ok(Agent {
            metrics,
            health,
            local_addr,
            shutdown,
            task,
            http,
            cni: cni_task,
        })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// True once the first full sync has been applied.
    pub fn ready(&self) -> bool {
        self.health.ready.load(Ordering::SeqCst)
    }

    /// Address the HTTP server listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Waits until the agent stops by itself (an error) — normally never.
    pub async fn wait(&mut self) -> Result<(), AgentError> {
        (&mut self.task).await.unwrap_or(Err(AgentError::Panicked))
    }

    /// Stops the agent; the kernel keeps the tables (Pods stay enforced).
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(true);
        let result = self.task.await.unwrap_or(Err(AgentError::Panicked));
        if let Some(http) = self.http {
            let _ = http.await;
        }
        if let Some(cni) = self.cni {
            let _ = cni.await;
        }
        self.health.running.store(false, Ordering::SeqCst);
        result
    }
}

/// What the loop listens to besides the clock.
struct Inputs {
    scans: tokio::sync::mpsc::Receiver<Scan>,
    cni_calls: Option<tokio::sync::mpsc::Receiver<CniCall>>,
    lookup: Option<Arc<dyn PodLookup>>,
    /// The nftables event watcher and the namespaces it reports commits in.
    events: Option<(NftEvents, tokio::sync::mpsc::UnboundedReceiver<String>)>,
}

async fn run(
    mut reconciler: Reconciler,
    inputs: Inputs,
    verify_interval: Duration,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let Inputs {
        mut scans,
        mut cni_calls,
        lookup,
        events,
    } = inputs;
    let (watcher, mut changed) = match events {
        Some((w, rx)) => (Some(w), Some(rx)),
        None => (None, None),
    };
    let mut watched: BTreeSet<String> = BTreeSet::new();
    let (lookup_tx, mut lookups) = tokio::sync::mpsc::channel::<Vec<crate::state::Object>>(16);
    let mut pending = cni::PendingAdds::default();
    let mut verify = tokio::time::interval(verify_interval);
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    verify.tick().await; // the first tick is immediate; nothing to verify yet
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut source_open = true;
    // Work left by the last iteration (requests taken while a pass ran): run again
    // without waiting for an input.
    let mut again = false;
    loop {
        let run_now = std::mem::take(&mut again);
        let mut do_verify = false;
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let wake = match (retry_at, pending.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(tokio::time::Instant::from_std(b))),
            (a, b) => a.or(b.map(tokio::time::Instant::from_std)),
        };
        tokio::select! {
            _ = shutdown.changed() => {
                // Flush the last drop reports and release the NFLOG groups, so a new
                // agent can bind them at once.
                if let Some(r) = reconciler.detach_reporter() {
                    let _ = tokio::task::spawn_blocking(move || r.stop()).await;
                }
                return Ok(());
            }
            scan = scans.recv(), if source_open => match scan {
                Some(scan) => reconciler.handle_scan(scan),
                None => {
                    tracing::error!("state source ended: keeping the last known state");
                    source_open = false;
                }
            },
            call = recv_opt(&mut cni_calls) => match call {
                Some(call) => {
                    on_cni_call(&mut reconciler, call, Instant::now(), &mut pending, lookup.as_ref(), &lookup_tx, &metrics);
                    // A burst of sandboxes (a Deployment scaled up) is one pass, not one
                    // pass per Pod.
                    while let Some(call) = cni_calls.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        on_cni_call(&mut reconciler, call, Instant::now(), &mut pending, lookup.as_ref(), &lookup_tx, &metrics);
                    }
                }
                None => cni_calls = None,
            },
            Some(objects) = lookups.recv() => reconciler.handle_lookup(objects),
            netns = recv_unbounded(&mut changed) => match netns {
                Some(n) => {
                    dirty.insert(n);
                    while let Some(n) = changed.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        dirty.insert(n);
                    }
                }
                None => changed = None,
            },
            _ = verify.tick() => do_verify = true,
            () = sleep_until(wake) => {}
            () = std::future::ready(()), if run_now => {}
        }
        // CNI ADD fast path: each new request's own table first, answered before the
        // pass that compiles everything and updates its peers (`agent/fast_add.rs`).
        let fresh = pending.untried();
        if !fresh.is_empty() {
            let fast = tokio::task::spawn_blocking(move || {
                // Persisted before the answer, as the pass does.
                reconciler.flush_records();
                let enforced: Vec<PodKey> = fresh
                    .into_iter()
                    .filter(|pod| match reconciler.fast_add(pod, Instant::now()) {
                        FastAdd::Enforced => true,
                        FastAdd::Fallback(why) => {
                            tracing::debug!(namespace = %pod.namespace, pod = %pod.name, why, "cni ADD: fast path not taken");
                            false
                        }
                    })
                    .collect();
                (reconciler, enforced)
            });
            let Ok((back, enforced)) = fast.await else {
                return Err(AgentError::Panicked);
            };
            reconciler = back;
            for (pod, ok, waited) in pending.answer_fast(&enforced, Instant::now()) {
                metrics.record_cni("ADD", ok);
                metrics.cni_add_seconds.observe(waited.as_secs_f64());
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, ok, waited_ms = waited.as_secs_f64() * 1e3, "cni ADD answered (fast path)");
            }
        }
        // CNI ADDs arriving while the pass runs take the fast path beside it when the
        // pass compiles the last good model plus ADDs only, with no discovery or
        // pruning in it (`agent/fast_add.rs`); every other request waits for it.
        let discover = do_verify || !reconciler.synced();
        let view = match &cni_calls {
            Some(_) if !discover => reconciler.fast_view(),
            _ => None,
        };
        let pass = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            reconciler.flush_records();
            if discover {
                reconciler.discover_netns();
            }
            reconciler.compile();
            if do_verify {
                reconciler.verify();
                reconciler.prune_cni();
                reconciler.ensure_chained();
            } else if !dirty.is_empty() {
                reconciler.verify_netns(&dirty);
            }
            let report = reconciler.sync(Instant::now());
            (reconciler, report, start.elapsed())
        });
        let mut taken = Vec::new();
        let (back, report, took) =
            serve_during(pass, view, &mut cni_calls, &mut taken, &metrics).await?;
        reconciler = back;
        if !report.applied.is_empty() || !report.removed.is_empty() || !report.failed.is_empty() {
            metrics.reconcile_seconds.observe(took.as_secs_f64());
            tracing::info!(
                applied = report.applied.len(),
                removed = report.removed.len(),
                failed = report.failed.len(),
                took_ms = took.as_secs_f64() * 1e3,
                "reconciled"
            );
        }
        retry_at = report.retry_at.map(tokio::time::Instant::from_std);
        for (pod, ok, waited) in pending.answer(&reconciler, Instant::now()) {
            metrics.record_cni("ADD", ok);
            metrics.cni_add_seconds.observe(waited.as_secs_f64());
            tracing::info!(namespace = %pod.namespace, pod = %pod.name, ok, waited_ms = waited.as_secs_f64() * 1e3, "cni ADD answered");
        }
        // The requests taken while the pass ran, after the answers its compile allows
        // (they change the state: the next iteration runs a pass at once).
        again |= !taken.is_empty();
        take_deferred(
            &mut reconciler,
            taken,
            &mut pending,
            lookup.as_ref(),
            &lookup_tx,
            &metrics,
        );
        if reconciler.synced() {
            health.ready.store(true, Ordering::SeqCst);
        }
        if let Some(w) = &watcher {
            let now = reconciler.enforced_netns();
            if now != watched {
                w.track(now.clone());
                watched = now;
            }
        }
        if reconciler.needs_baselines() && !pending.has_untried() {
            // After the answers: listing the new tables is off the CNI ADD path, and
            // ADDs arriving meanwhile take the fast path beside it.
            let view = cni_calls.as_ref().and_then(|_| reconciler.fast_view());
            let pass = tokio::task::spawn_blocking(move || {
                reconciler.take_baselines();
                reconciler
            });
            let mut taken = Vec::new();
            reconciler = serve_during(pass, view, &mut cni_calls, &mut taken, &metrics).await?;
            again |= !taken.is_empty();
            take_deferred(
                &mut reconciler,
                taken,
                &mut pending,
                lookup.as_ref(),
                &lookup_tx,
                &metrics,
            );
        } else if reconciler.needs_baselines() {
            again = true;
        }
    }
}

/// A CNI request taken while a pass owned the reconciler.
enum Deferred {
    /// An `ADD` answered by the fast path beside the pass.
    Fast(Box<FastApplied>),
    /// Any other request (or an `ADD` the fast path did not take), and when it came.
    Call(CniCall, Instant),
}

/// Waits for `work` (a pass on the blocking pool, owning the reconciler) while serving
/// CNI requests: an `ADD` that `view` takes is applied and answered at once (one at a
/// time, in arrival order); every request goes to `taken` for the reconciler to take
/// when it is back ([`take_deferred`]).
async fn serve_during<T: Send + 'static>(
    mut work: JoinHandle<T>,
    mut view: Option<FastView>,
    cni_calls: &mut Option<tokio::sync::mpsc::Receiver<CniCall>>,
    taken: &mut Vec<Deferred>,
    metrics: &Metrics,
) -> Result<T, AgentError> {
    loop {
        tokio::select! {
            biased;
            done = &mut work => return done.map_err(|_| AgentError::Panicked),
            call = recv_opt(cni_calls) => {
                let Some(call) = call else {
                    *cni_calls = None;
                    continue;
                };
                let since = Instant::now();
                let Some(mut v) = view.take() else {
                    taken.push(Deferred::Call(call, since));
                    continue;
                };
                if call.request.command != Command::Add {
                    if let Ok(pod) = cni::request_pod(&call.request) {
                        v.forget(&pod);
                    }
                    view = Some(v);
                    taken.push(Deferred::Call(call, since));
                    continue;
                }
                let request = call.request.clone();
                let fast = tokio::task::spawn_blocking(move || {
                    let result = v.add(&request);
                    (v, result)
                });
                let Ok((v, result)) = fast.await else {
                    return Err(AgentError::Panicked);
                };
                view = Some(v);
                match result {
                    Ok(applied) => {
                        let waited = since.elapsed();
                        let pod = applied.pod().clone();
                        metrics.record_cni("ADD", true);
                        metrics.cni_add_seconds.observe(waited.as_secs_f64());
                        tracing::info!(namespace = %pod.namespace, pod = %pod.name, waited_ms = waited.as_secs_f64() * 1e3, "cni ADD answered (fast path, beside a pass)");
                        // The plugin may have given up already; nothing to do then.
                        let _ = call.reply.send(Response::ok(format!(
                            "ruleset of {pod} applied ({} ms, before its peers' tables)",
                            waited.as_millis()
                        )));
                        taken.push(Deferred::Fast(Box::new(applied)));
                    }
                    Err(why) => {
                        tracing::debug!(namespace = call.request.pod.namespace, pod = call.request.pod.name, why, "cni ADD: fast path beside the pass not taken");
                        taken.push(Deferred::Call(call, since));
                    }
                }
            }
        }
    }
}

/// Takes the requests [`serve_during`] served, in arrival order.
fn take_deferred(
    reconciler: &mut Reconciler,
    taken: Vec<Deferred>,
    pending: &mut cni::PendingAdds,
    lookup: Option<&Arc<dyn PodLookup>>,
    lookup_tx: &tokio::sync::mpsc::Sender<Vec<crate::state::Object>>,
    metrics: &Metrics,
) {
    for t in taken {
        match t {
            Deferred::Fast(applied) => reconciler.take_fast(*applied, Instant::now()),
            Deferred::Call(call, since) => {
                on_cni_call(reconciler, call, since, pending, lookup, lookup_tx, metrics);
            }
        }
    }
}

/// How much sooner than the plugin's own deadline the agent answers (so the plugin
/// hears why, not just a timeout).
const CNI_ANSWER_MARGIN: Duration = Duration::from_millis(250);

fn on_cni_call(
    reconciler: &mut Reconciler,
    call: CniCall,
    since: Instant,
    pending: &mut cni::PendingAdds,
    lookup: Option<&Arc<dyn PodLookup>>,
    lookup_tx: &tokio::sync::mpsc::Sender<Vec<crate::state::Object>>,
    metrics: &Metrics,
) {
    let CniCall { request, reply } = call;
    let command = request.command;
    tracing::info!(
        command = %command, namespace = request.pod.namespace, pod = request.pod.name,
        container = request.container_id, netns = request.netns, ips = ?request.ips,
        "cni request"
    );
    let pod = match reconciler.cni_request(&request) {
        Ok(pod) => pod,
        Err(why) => {
            metrics.record_cni(&command.to_string(), false);
            tracing::warn!(command = %command, reason = why, "cni request refused");
            let _ = reply.send(Response::error(why));
            return;
        }
    };
    let answer = match command {
        Command::Add => {
            if let Some(lookup) = lookup
                && reconciler.needs_lookup(&pod, request.pod.uid.as_deref())
            {
                let (lookup, tx, p) = (lookup.clone(), lookup_tx.clone(), pod.clone());
                tokio::spawn(async move {
                    match lookup.lookup(p.clone()).await {
                        Ok(objects) => {
                            let _ = tx.send(objects).await;
                        }
                        Err(e) => {
                            tracing::warn!(namespace = %p.namespace, pod = %p.name, error = e, "cannot fetch the Pod for its cni ADD")
                        }
                    }
                });
            }
            let budget = Duration::from_millis(request.timeout_ms)
                .saturating_sub(CNI_ANSWER_MARGIN)
                .max(Duration::from_millis(100));
            pending.push(pod, since, since + budget, reply);
            return;
        }
        Command::Del => Response::ok(format!(
            "sandbox {} of {pod} recorded as gone",
            request.container_id
        )),
        Command::Check => match reconciler.cni_status(&pod) {
            CniStatus::Enforced => Response::ok(format!("ruleset of {pod} in place")),
            CniStatus::Waiting(why) | CniStatus::Failed(why) => Response::error(why),
        },
    };
    metrics.record_cni(&command.to_string(), answer.ok);
    let _ = reply.send(answer);
}

async fn recv_unbounded<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
