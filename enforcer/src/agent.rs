//! The node agent: keeps each local Pod's `table inet netpol` equal to the compiled policy.
//!
//! ```text
//! StateSource (ManifestSource: manifest dir | KubeSource: watches)
//!     ──Scan { events }──▶ State::handle (one place) ◀──Event::CniAdd/CniDel── cni::server
//!                                                   │ compile (State::build_model,
//!                                                   │ AllowGraph::build, render per
//!                                                   ▼ local enforceable Pod)
//!     desired: Pod → (netns, checksum, text)      actual: Pod → (netns, checksum)
//!                         └────────── plan ──────────┘
//!                                       ▼
//!                  Op::{Apply, Remove} ──Applier──▶ nft in the Pod netns
//!                                       │
//!            verify: kernel listing vs applied checksum ──drift──▶ re-apply
//!            pending CNI ADDs answered once their Pod's ruleset is applied
//! ```
//!
//! [`Reconciler`] is the synchronous core (unit-tested with
//! [`RecordingApplier`](crate::applier::RecordingApplier)); [`Agent`] runs it on tokio:
//! every pass runs in `spawn_blocking`, applies run on plain threads (never on an async
//! worker), and `nft` itself enters the netns as a child process.
//!
//! **Fail closed.** Nothing is flushed first: an apply replaces the table in one nft
//! transaction, so an isolated Pod is never open in between. A failed compilation or
//! render keeps the last good rulesets; a failed apply keeps the last good table (nft is
//! atomic) and is retried with exponential backoff; an incomplete or unreachable source
//! keeps the last known state. Tables found changed in the kernel (tampering) are
//! re-applied and counted.
//!
//! **Drop reports.** With [`AgentConfig::drops`], each compile that changes the
//! rulesets hands the new model and the enforced namespaces to a
//! [`DropReporter`](crate::reporter::DropReporter) (a plain thread) before anything is
//! applied; see [`crate::reporter`].

mod cni;
mod netns_guard;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use policy_compiler::ruleset::{NodeContext, RulesetOptions, compile_node, compile_pod};
use policy_compiler::{AllowGraph, EndpointId, Model, Severity};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::cni::CniStatus;
use crate::applier::{Applier, ApplyError};
use crate::cni::records::RecordStore;
use crate::cni::server::{self as cni_server, CniCall};
use crate::cni::{Command, Response};
use crate::http::{self, Health};
use crate::manifests::{ManifestDir, Scan, WatchOptions};
use crate::metrics::Metrics;
use crate::plan::{Actual, Backoff, BackoffPolicy, Checksum, Desired, Op, normalise_listing, plan};
use crate::reporter::{CompiledModel, DropReporter, DropsConfig};
use crate::source::{ManifestSource, PodLookup, StateSource};
use crate::state::{PodKey, State};

/// Error of a [`RulesetSource`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    /// What went wrong.
    pub message: String,
}

/// Renders one Pod's ruleset: `nft -f` text replacing `table inet netpol` in one
/// transaction. [`CompiledRulesets`] is the real one; unit tests use fakes.
pub trait RulesetSource: Send + Sync {
    /// The ruleset of `pod` (an endpoint of `model`).
    fn render(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
    ) -> Result<String, RenderError>;

    /// The ruleset of `pod` on a node whose own namespace has `node_addresses` (traffic
    /// from them is the node's). Defaults to [`RulesetSource::render`].
    fn render_on_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        node_addresses: &[IpAddr],
    ) -> Result<String, RenderError> {
        let _ = node_addresses;
        self.render(model, graph, pod)
    }

    /// The node table (`nft -f` text replacing the node's `table inet netpol`), or
    /// `None` when this source has none. Defaults to `None`.
    fn render_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        ctx: &NodeContext,
    ) -> Result<Option<String>, RenderError> {
        let _ = (model, graph, ctx);
        Ok(None)
    }
}

/// The real renderer: [`policy_compiler::ruleset::compile_pod`] and its `nft -f` text
/// (which starts with `add table` + `delete table`: one transaction replacing the table).
#[derive(Debug, Clone, Default)]
pub struct CompiledRulesets {
    /// Options of the generated rulesets (NFLOG group of the drop rules).
    pub options: RulesetOptions,
}

impl RulesetSource for CompiledRulesets {
    fn render(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
    ) -> Result<String, RenderError> {
        // No node table on this path: Service addresses are judged before DNAT.
        let options = RulesetOptions {
            defer_services: false,
            ..self.options.clone()
        };
        Ok(compile_pod(model, graph, pod, &options).to_nft())
    }

    fn render_on_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        node_addresses: &[IpAddr],
    ) -> Result<String, RenderError> {
        let options = RulesetOptions {
            node_addresses: node_addresses.to_vec(),
            defer_services: true,
            ..self.options.clone()
        };
        Ok(compile_pod(model, graph, pod, &options).to_nft())
    }

    fn render_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        ctx: &NodeContext,
    ) -> Result<Option<String>, RenderError> {
        Ok(Some(
            compile_node(model, graph, ctx, &self.options).to_nft(),
        ))
    }
}

/// Settings of the reconcile loop.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Only Pods whose `spec.nodeName` is this node (or unset) are local.
    pub node: Option<String>,
    /// How often the kernel tables are compared with what was applied.
    pub verify_interval: Duration,
    /// Manifest watch timing.
    pub watch: WatchOptions,
    /// Retry delays of failed applies.
    pub backoff: BackoffPolicy,
    /// Applies running at the same time.
    pub parallelism: usize,
    /// Address of `/metrics`, `/healthz`, `/readyz` (`None`: no HTTP server).
    pub listen: Option<SocketAddr>,
    /// Drop reports (`None`: off). Its NFLOG group must be the rulesets' log group.
    pub drops: Option<DropsConfig>,
    /// The `netpol-cni` socket (`None`: no plugin talks to this agent).
    pub cni: Option<CniConfig>,
    /// Find the netns of this node's Pods that have none by their IPs (needs `node`;
    /// `None`: off). See [`crate::discovery`].
    pub discovery: Option<crate::discovery::DiscoveryOptions>,
    /// Own the node table: `table inet netpol` in the agent's own network namespace
    /// (the node's), judging the egress of this node's Pods after kube-proxy's DNAT
    /// (see [`crate::node`]). Off by default: in-process tests run in the host's
    /// namespace; `netpol agent` turns it on.
    pub node_table: bool,
}

/// Where the agent meets the `netpol-cni` plugin.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// The unix socket (`/run/netpol/cni.sock`).
    pub socket: PathBuf,
    /// Directory persisting the plugin's records across agent restarts (`None`: memory
    /// only).
    pub records: Option<PathBuf>,
    /// Keep the plugin chained in the node's CNI configuration (`None`: the installer's
    /// job only).
    pub chain: Option<ChainConfig>,
}

/// The node's CNI configuration the agent keeps `netpol-cni` chained into: a primary CNI
/// that rewrites its conflist (on upgrade, on restart) drops the entry, and new Pods
/// would start without waiting for their policy.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    /// The CNI configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The entry to chain.
    pub entry: crate::cni::install::PluginConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node: None,
            verify_interval: Duration::from_secs(5),
            watch: WatchOptions::default(),
            backoff: BackoffPolicy::default(),
            parallelism: 8,
            listen: None,
            drops: Some(DropsConfig::default()),
            cni: None,
            discovery: None,
            node_table: false,
        }
    }
}

/// What one [`Reconciler::sync`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Pods applied.
    pub applied: Vec<PodKey>,
    /// Pods whose table was removed.
    pub removed: Vec<PodKey>,
    /// Pods whose operation failed.
    pub failed: Vec<PodKey>,
    /// Pods waiting for their backoff.
    pub deferred: Vec<PodKey>,
    /// Earliest time a deferred or failed operation may be retried.
    pub retry_at: Option<Instant>,
}

/// The synchronous core of the agent: state, last good desired rulesets, what the
/// kernel holds, backoff. Its methods block on the applier.
pub struct Reconciler {
    state: State,
    renderer: Arc<dyn RulesetSource>,
    applier: Arc<dyn Applier>,
    metrics: Arc<Metrics>,
    node: Option<String>,
    backoff_policy: BackoffPolicy,
    parallelism: usize,
    complete: bool,
    compiled_generation: Option<u64>,
    desired: BTreeMap<PodKey, Desired>,
    actual: BTreeMap<PodKey, Actual>,
    /// Checksum of the normalised kernel listing right after each apply.
    kernel: BTreeMap<PodKey, Checksum>,
    drifted: BTreeSet<PodKey>,
    backoff: BTreeMap<PodKey, Backoff>,
    synced: bool,
    /// The last good model and graph (what drop reports are described against).
    compiled: Option<Arc<CompiledModel>>,
    reporter: Option<DropReporter>,
    /// The generation whose compilation was refused, and why.
    refused: Option<(u64, String)>,
    /// The last apply error of each Pod, until it applies.
    last_error: BTreeMap<PodKey, String>,
    records: Option<RecordStore>,
    record_writes: Vec<cni::RecordWrite>,
    discovery: Option<crate::discovery::DiscoveryOptions>,
    chain: Option<ChainConfig>,
    /// The last chaining problem logged (logged again only when it changes).
    chain_problem: Option<String>,
    /// The node table (when [`AgentConfig::node_table`]).
    node_table: Option<NodeTable>,
    /// Namespaces claimed by several Pods (denied: [`crate::trust`]).
    netns_conflicts: BTreeMap<String, Vec<PodKey>>,
}

/// The agent's node table: desired, applied, kernel listing, retries.
#[derive(Debug, Default)]
struct NodeTable {
    /// The node's addresses used by the last compile (own namespace + Node object).
    addresses: Vec<IpAddr>,
    desired: Option<Desired>,
    /// Checksum of what was last applied.
    actual: Option<Checksum>,
    /// Checksum of the normalised kernel listing right after the apply.
    kernel: Option<Checksum>,
    drifted: bool,
    backoff: Option<Backoff>,
    last_error: Option<String>,
}

/// What [`execute`] did: each variant carries its operation's data, so no impossible
/// operation/outcome pair can be matched.
enum Done {
    Applied {
        pod: PodKey,
        netns: String,
        checksum: Checksum,
        /// Checksum of the kernel's listing right after the apply (`None`: unknown).
        listing: Option<Checksum>,
        took: Duration,
    },
    Removed {
        pod: PodKey,
        netns: String,
    },
    Failed {
        pod: PodKey,
        /// `apply` or `remove`.
        op: &'static str,
        error: ApplyError,
    },
}

impl Reconciler {
    /// A reconciler with an empty state.
    pub fn new(
        config: &AgentConfig,
        renderer: Arc<dyn RulesetSource>,
        applier: Arc<dyn Applier>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            state: State::new(),
            renderer,
            applier,
            metrics,
            node: config.node.clone(),
            backoff_policy: config.backoff,
            parallelism: config.parallelism.max(1),
            complete: false,
            compiled_generation: None,
            desired: BTreeMap::new(),
            actual: BTreeMap::new(),
            kernel: BTreeMap::new(),
            drifted: BTreeSet::new(),
            backoff: BTreeMap::new(),
            synced: false,
            compiled: None,
            reporter: None,
            refused: None,
            last_error: BTreeMap::new(),
            records: None,
            record_writes: Vec::new(),
            discovery: config.discovery.clone(),
            chain: config.cni.as_ref().and_then(|c| c.chain.clone()),
            chain_problem: None,
            node_table: config.node_table.then(NodeTable::default),
            netns_conflicts: BTreeMap::new(),
        }
    }

    /// The node's addresses the last compile used (empty without the node table).
    pub fn node_addresses(&self) -> &[IpAddr] {
        self.node_table
            .as_ref()
            .map_or(&[], |n| n.addresses.as_slice())
    }

    /// The node table text the last compile produced, if the agent owns one.
    pub fn node_table(&self) -> Option<&str> {
        self.node_table.as_ref()?.desired.as_ref().map(|d| &*d.text)
    }

    /// The node's addresses now: the agent's own namespace (getifaddrs) and the Node
    /// object named by `--node`. A failure to list is logged and counts as none (the
    /// Node object's addresses still count).
    fn current_node_addresses(&self) -> Vec<IpAddr> {
        let own = self.applier.node_addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %ErrorChain(&e), "cannot list the node's own addresses");
            Vec::new()
        });
        crate::node::node_addresses(&own, self.node.as_deref().and_then(|n| self.state.node(n)))
    }

    /// Applies the node table when it differs from what was applied (and its backoff
    /// has expired). Runs before the Pods' tables: Service flows a Pod table lets out
    /// are judged by the node table, so it must be there first.
    fn sync_node_table(&mut self, now: Instant, report: &mut SyncReport) {
        let applier = self.applier.clone();
        let Some(n) = &mut self.node_table else {
            return;
        };
        let Some(d) = n.desired.clone() else {
            return;
        };
        if n.actual == Some(d.checksum) {
            return;
        }
        if let Some(b) = n.backoff
            && !b.ready(now)
        {
            report.retry_at = earliest(report.retry_at, b.next);
            return;
        }
        let start = Instant::now();
        match applier.apply_node(&d.text) {
            Ok(()) => {
                let took = start.elapsed();
                self.metrics.applies.inc();
                self.metrics.observe_apply(took);
                if std::mem::take(&mut n.drifted) {
                    self.metrics.drift_repairs.inc();
                }
                n.kernel = match applier.list_node() {
                    Ok(l) => l.map(|l| Checksum::of(&normalise_listing(&l))),
                    Err(e) => {
                        tracing::warn!(error = %ErrorChain(&e), "cannot list the applied node table; it will be verified later");
                        None
                    }
                };
                n.actual = Some(d.checksum);
                n.backoff = None;
                n.last_error = None;
                tracing::info!(
                    node = self.node.as_deref(),
                    addresses = ?n.addresses,
                    checksum = %d.checksum.short(),
                    took_ms = took.as_secs_f64() * 1e3,
                    "node table applied"
                );
            }
            Err(e) => {
                self.metrics.apply_errors.inc();
                let b = self.backoff_policy.fail(n.backoff, now);
                tracing::error!(
                    error = %ErrorChain(&e), failures = b.failures,
                    retry_in_ms = (b.next - now).as_millis() as u64,
                    "node table apply failed: the kernel keeps the last good table"
                );
                n.backoff = Some(b);
                n.last_error = Some(ErrorChain(&e).to_string());
                report.retry_at = earliest(report.retry_at, b.next);
            }
        }
    }

    /// Compares the node table with the kernel (drift is re-applied by the next sync)
    /// and the node's addresses with the last compile's (a change recompiles).
    fn verify_node_table(&mut self) {
        let addresses = if self.node_table.is_some() {
            self.current_node_addresses()
        } else {
            return;
        };
        let applier = self.applier.clone();
        let Some(n) = &mut self.node_table else {
            return;
        };
        if addresses != n.addresses {
            tracing::info!(old = ?n.addresses, new = ?addresses, "the node's addresses changed: recompiling");
            self.compiled_generation = None;
        }
        if n.actual.is_none() {
            return;
        }
        match applier.list_node() {
            Ok(Some(l)) => {
                let c = Checksum::of(&normalise_listing(&l));
                match n.kernel {
                    Some(want) if want == c => {}
                    None => n.kernel = Some(c),
                    Some(_) => {
                        tracing::warn!("node table drift (tampering?): re-applying");
                        n.actual = None;
                        n.kernel = None;
                        n.backoff = None;
                        n.drifted = true;
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(
                    found = "no table",
                    "node table drift (tampering?): re-applying"
                );
                n.actual = None;
                n.kernel = None;
                n.backoff = None;
                n.drifted = true;
            }
            Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot verify the node table"),
        }
    }

    /// The node table is applied as desired (or the agent owns none).
    fn node_synced(&self) -> bool {
        self.node_table.as_ref().is_none_or(|n| {
            n.desired
                .as_ref()
                .is_some_and(|d| n.actual == Some(d.checksum))
        })
    }

    /// Reports drops of the enforced Pods with `reporter` from the next compile on:
    /// each compile that changes the rulesets hands it the new model and namespaces
    /// (and waits until new namespaces are listened to) before anything is applied.
    pub fn attach_reporter(&mut self, reporter: DropReporter) {
        if let Some(c) = &self.compiled {
            reporter.track(c.clone(), self.enforced_netns());
        }
        self.reporter = Some(reporter);
    }

    /// Takes the drop reporter back (to stop it).
    pub fn detach_reporter(&mut self) -> Option<DropReporter> {
        self.reporter.take()
    }

    /// The last good model and graph.
    pub fn compiled(&self) -> Option<&Arc<CompiledModel>> {
        self.compiled.as_ref()
    }

    /// Network namespaces of the Pods with a desired ruleset, and the node's
    /// ([`crate::node::OWN_NETNS`]) when the agent owns a node table.
    pub fn enforced_netns(&self) -> BTreeSet<String> {
        self.desired
            .values()
            .map(|d| d.netns.clone())
            .chain(
                self.node_table
                    .as_ref()
                    .filter(|n| n.desired.is_some())
                    .map(|_| crate::node::OWN_NETNS.to_owned()),
            )
            .collect()
    }

    /// Takes a source scan: reports its problems and feeds its events to the state.
    /// This is the one place the state index is fed.
    pub fn handle_scan(&mut self, scan: Scan) {
        for d in &scan.diagnostics {
            let (file, line, column) = (d.file.as_deref(), d.line, d.column);
            match d.severity {
                Severity::Error => {
                    tracing::error!(file, line, column, diagnostic = %d, "invalid manifest")
                }
                Severity::Warning => {
                    tracing::warn!(file, line, column, diagnostic = %d, "manifest warning")
                }
            }
        }
        for f in &scan.invalid_files {
            self.metrics.manifest_errors.inc();
            tracing::error!(file = %f.display(), "manifest file invalid: keeping its last good objects");
        }
        for p in &scan.problems {
            tracing::warn!(error = %p, "manifest source problem: keeping the last known state");
        }
        for e in scan.events {
            self.state.handle(e);
        }
        if self.complete != scan.complete && !scan.complete {
            tracing::error!(
                "a manifest file has never been valid: not compiling until it is (fail closed)"
            );
        }
        self.complete = scan.complete;
    }

    /// The state index.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The last good desired rulesets.
    pub fn desired(&self) -> &BTreeMap<PodKey, Desired> {
        &self.desired
    }

    /// What the agent knows the kernel holds.
    pub fn actual(&self) -> &BTreeMap<PodKey, Actual> {
        &self.actual
    }

    /// True once a complete sync has been applied (sticky).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Compiles the state into desired rulesets if it changed since the last compile.
    /// On any error the last good rulesets stay (whole compile, or per Pod render).
    /// Returns whether the desired rulesets were recomputed.
    pub fn compile(&mut self) -> bool {
        if !self.complete || self.compiled_generation == Some(self.state.generation()) {
            return false;
        }
        self.compiled_generation = Some(self.state.generation());
        // From the state's objects by reference: no second copy of the cluster.
        let (model, diags) = self.state.build_model();
        let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
        if !errors.is_empty() {
            self.metrics.compile_errors.inc();
            self.refused = Some((
                self.state.generation(),
                format!("{} error(s); first: {}", errors.len(), errors[0]),
            ));
            for d in errors {
                tracing::error!(file = d.file.as_deref(), line = d.line, column = d.column, diagnostic = %d, "compile error");
            }
            tracing::error!("compilation refused: keeping the last good rulesets");
            return false;
        }
        self.refused = None;
        let graph = AllowGraph::build(&model);
        let node_addresses = match &self.node_table {
            Some(_) => self.current_node_addresses(),
            None => Vec::new(),
        };
        let local = self.state.local_pods(self.node.as_deref());
        let (local, mut desired) = self.fail_closed_on_shared_netns(local);
        let mut local_ids = Vec::new();
        for (pod, netns) in local {
            let Some(id) = model.endpoint_by_key(&pod.to_string()) else {
                // Finished Pods are not endpoints: nothing to enforce.
                continue;
            };
            // Which Pods get a ruleset is the compiler's one definition.
            if let Some(why) = model.endpoint(id).no_ruleset() {
                tracing::warn!(namespace = %pod.namespace, pod = %pod.name, netns, "Pod has a netns mapping but is {why}: not enforced");
                continue;
            }
            local_ids.push(id);
            // Without a node table, Pod tables must not defer Service addresses to it:
            // `render` keeps them ordinary destinations (fail closed). See: #10
            let rendered = if self.node_table.is_some() {
                self.renderer
                    .render_on_node(&model, &graph, id, &node_addresses)
            } else {
                self.renderer.render(&model, &graph, id)
            };
            match rendered {
                Ok(text) => {
                    desired.insert(pod, Desired::new(netns, text));
                }
                Err(e) => {
                    self.metrics.compile_errors.inc();
                    tracing::error!(namespace = %pod.namespace, pod = %pod.name, error = %e, "render failed: keeping the last good ruleset");
                    if let Some(last) = self.desired.get(&pod) {
                        desired.insert(pod, last.clone());
                    }
                }
            }
        }
        self.desired = desired;
        if self.node_table.is_some() {
            let mut ctx = NodeContext::new(
                &model,
                self.node.as_deref().unwrap_or_default(),
                node_addresses.clone(),
            );
            ctx.pods.extend(local_ids);
            ctx.pods.sort_unstable();
            ctx.pods.dedup();
            let rendered = self.renderer.render_node(&model, &graph, &ctx);
            if let Some(n) = &mut self.node_table {
                n.addresses = node_addresses;
                match rendered {
                    Ok(Some(text)) => {
                        n.desired = Some(Desired::new(crate::node::OWN_NETNS, text));
                    }
                    Ok(None) => n.desired = None,
                    Err(e) => {
                        self.metrics.compile_errors.inc();
                        tracing::error!(error = %e, "node table render failed: keeping the last good one");
                    }
                }
            }
        }
        let compiled = Arc::new(CompiledModel { model, graph });
        if let Some(r) = &self.reporter {
            // Before the sync that applies: the first drops of a new Pod are reported.
            r.track(compiled.clone(), self.enforced_netns());
        }
        self.compiled = Some(compiled);
        true
    }

    /// Compares every applied table with the kernel; a changed or missing table is
    /// drift (tampering): warned, and re-applied by the next [`sync`](Self::sync).
    /// Returns the drifted Pods.
    pub fn verify(&mut self) -> Vec<PodKey> {
        self.verify_node_table();
        let targets: Vec<(PodKey, String, Option<Checksum>)> = self
            .actual
            .iter()
            .filter(|(_, a)| a.checksum.is_some())
            .map(|(p, a)| (p.clone(), a.netns.clone(), self.kernel.get(p).copied()))
            .collect();
        let applier = self.applier.clone();
        let results = parallel(self.parallelism, targets, |(pod, netns, want)| {
            let got = applier
                .list(&pod, &netns)
                .map(|l| l.map(|l| Checksum::of(&normalise_listing(&l))));
            (pod, netns, want, got)
        });
        let mut drifted = Vec::new();
        for (pod, netns, want, got) in results {
            match (got, want) {
                (Ok(Some(c)), Some(want)) if c == want => {}
                (Ok(Some(c)), None) => {
                    // The listing after the apply failed; take the baseline now.
                    self.kernel.insert(pod, c);
                }
                (Ok(got), _) => {
                    tracing::warn!(
                        namespace = %pod.namespace, pod = %pod.name, netns,
                        found = if got.is_some() { "changed table" } else { "no table" },
                        "ruleset drift (tampering?): re-applying"
                    );
                    if let Some(a) = self.actual.get_mut(&pod) {
                        a.checksum = None;
                    }
                    self.kernel.remove(&pod);
                    self.backoff.remove(&pod);
                    self.drifted.insert(pod.clone());
                    drifted.push(pod);
                }
                (Err(e), _) => {
                    tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %e, "cannot verify ruleset");
                }
            }
        }
        self.update_gauge();
        drifted
    }

    /// Plans and carries out what makes the kernel equal to the desired rulesets.
    /// Operations whose backoff has not expired at `now` wait.
    pub fn sync(&mut self, now: Instant) -> SyncReport {
        let mut report = SyncReport::default();
        self.sync_node_table(now, &mut report);
        let mut todo = Vec::new();
        for op in plan(&self.desired, &self.actual) {
            match self.backoff.get(op.pod()) {
                Some(b) if !b.ready(now) => {
                    report.deferred.push(op.pod().clone());
                    report.retry_at = earliest(report.retry_at, b.next);
                }
                _ => todo.push(op),
            }
        }
        let applier = self.applier.clone();
        let results = parallel(self.parallelism, todo, |op| execute(applier.as_ref(), op));
        for done in results {
            match done {
                Done::Applied {
                    pod,
                    netns,
                    checksum,
                    listing,
                    took,
                } => {
                    self.metrics.applies.inc();
                    self.metrics.observe_apply(took);
                    if self.drifted.remove(&pod) {
                        self.metrics.drift_repairs.inc();
                    }
                    tracing::info!(
                        namespace = %pod.namespace, pod = %pod.name, netns,
                        checksum = %checksum.short(), took_ms = took.as_secs_f64() * 1e3,
                        "ruleset applied"
                    );
                    self.actual.insert(
                        pod.clone(),
                        Actual {
                            netns,
                            checksum: Some(checksum),
                        },
                    );
                    match listing {
                        Some(l) => {
                            self.kernel.insert(pod.clone(), l);
                        }
                        None => {
                            self.kernel.remove(&pod);
                        }
                    }
                    self.backoff.remove(&pod);
                    self.last_error.remove(&pod);
                    report.applied.push(pod);
                }
                Done::Removed { pod, netns } => {
                    self.metrics.removes.inc();
                    tracing::info!(namespace = %pod.namespace, pod = %pod.name, netns, "ruleset removed (Pod gone)");
                    if self.actual.get(&pod).is_some_and(|a| a.netns == netns) {
                        self.actual.remove(&pod);
                        self.kernel.remove(&pod);
                    }
                    self.drifted.remove(&pod);
                    self.backoff.remove(&pod);
                    report.removed.push(pod);
                }
                Done::Failed {
                    pod,
                    op: what,
                    error: e,
                } => {
                    if what == "apply" {
                        self.metrics.apply_errors.inc();
                    }
                    let b = self
                        .backoff_policy
                        .fail(self.backoff.get(&pod).copied(), now);
                    tracing::error!(
                        namespace = %pod.namespace, pod = %pod.name, op = what,
                        error = %ErrorChain(&e), failures = b.failures,
                        retry_in_ms = (b.next - now).as_millis() as u64,
                        "ruleset {what} failed: the kernel keeps the last good table"
                    );
                    self.backoff.insert(pod.clone(), b);
                    self.last_error
                        .insert(pod.clone(), ErrorChain(&e).to_string());
                    report.retry_at = earliest(report.retry_at, b.next);
                    report.failed.push(pod);
                }
            }
        }
        // A Pod that is gone but whose namespace a desired Pod now uses was not removed
        // (that Pod's apply replaced the table): forget it.
        let in_use: BTreeSet<&str> = self.desired.values().map(|d| d.netns.as_str()).collect();
        let desired = &self.desired;
        self.actual
            .retain(|p, a| desired.contains_key(p) || !in_use.contains(a.netns.as_str()));
        let actual = &self.actual;
        self.kernel.retain(|p, _| actual.contains_key(p));
        // Forget backoff of Pods that are neither desired nor known any more.
        self.backoff
            .retain(|p, _| self.desired.contains_key(p) || self.actual.contains_key(p));
        let desired = &self.desired;
        self.last_error.retain(|p, _| desired.contains_key(p));
        self.update_gauge();
        if !self.synced
            && self.compiled_generation.is_some()
            && self.node_synced()
            && self.desired.iter().all(|(p, d)| {
                self.actual
                    .get(p)
                    .is_some_and(|a| a.checksum == Some(d.checksum))
            })
        {
            self.synced = true;
            tracing::info!(pods = self.desired.len(), "first full sync applied");
        }
        report
    }

    fn update_gauge(&self) {
        let enforced = self
            .desired
            .iter()
            .filter(|(p, d)| {
                !self.netns_conflicts.values().flatten().any(|c| c == *p)
                    && self
                        .actual
                        .get(*p)
                        .is_some_and(|a| a.netns == d.netns && a.checksum == Some(d.checksum))
            })
            .count();
        self.metrics
            .pods_enforced
            .set(i64::try_from(enforced).unwrap_or(i64::MAX));
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Displays an error with its sources (`a: b: c`); defined in `netpol-common`, shared by
/// every crate.
pub use netpol_common::ErrorChain;

fn execute(applier: &dyn Applier, op: Op) -> Done {
    match op {
        Op::Apply {
            pod,
            netns,
            checksum,
            text,
        } => {
            let start = Instant::now();
            match applier.apply(&pod, &netns, &text) {
                Ok(()) => {
                    let took = start.elapsed();
                    // What the kernel holds right after the apply is what verify expects.
                    let listing = match applier.list(&pod, &netns) {
                        Ok(l) => l.map(|l| Checksum::of(&normalise_listing(&l))),
                        Err(e) => {
                            tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %e, "cannot list the applied table; it will be verified later");
                            None
                        }
                    };
                    Done::Applied {
                        pod,
                        netns,
                        checksum,
                        listing,
                        took,
                    }
                }
                Err(error) => Done::Failed {
                    pod,
                    op: "apply",
                    error,
                },
            }
        }
        Op::Remove { pod, netns } => match applier.remove(&pod, &netns) {
            Ok(()) => Done::Removed { pod, netns },
            Err(error) => Done::Failed {
                pod,
                op: "remove",
                error,
            },
        },
    }
}

/// Runs `f` over `items` on up to `workers` plain threads; results in input order.
fn parallel<I, O, F>(workers: usize, items: Vec<I>, f: F) -> Vec<O>
where
    I: Send,
    O: Send,
    F: Fn(I) -> O + Sync,
{
    if items.len() <= 1 || workers <= 1 {
        return items.into_iter().map(f).collect();
    }
    let n = items.len();
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let results = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..workers.min(n) {
            s.spawn(|| {
                loop {
                    // The lock is only held to take the next item; a panic in `f` happens
                    // outside it and propagates when the scope joins.
                    let next = queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .next();
                    let Some((i, item)) = next else { break };
                    let out = f(item);
                    results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((i, out));
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

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
        let cni_calls = match &config.cni {
            Some(cni) => {
                if let Some(dir) = &cni.records {
                    reconciler.attach_records(RecordStore::new(dir));
                }
                let listener = cni_server::bind(&cni.socket).map_err(AgentError::Cni)?;
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                tokio::spawn(cni_server::serve(listener, tx, shutdown_rx.clone()));
                tracing::info!(socket = %cni.socket.display(), "serving netpol-cni requests");
                Some(rx)
            }
            None => None,
        };
        tracing::info!(source = %source.describe(), trust = ?source.netns_trust(), "state source");
        reconciler.set_netns_trust(source.netns_trust());
        let lookup = source.lookup();
        let scans = source.start_with_metrics(metrics.clone());
        let task = tokio::spawn(run(
            reconciler,
            Inputs {
                scans,
                cni_calls,
                lookup,
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
        self.health.running.store(false, Ordering::SeqCst);
        result
    }
}

/// What the loop listens to besides the clock.
struct Inputs {
    scans: tokio::sync::mpsc::Receiver<Scan>,
    cni_calls: Option<tokio::sync::mpsc::Receiver<CniCall>>,
    lookup: Option<Arc<dyn PodLookup>>,
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
    } = inputs;
    let (lookup_tx, mut lookups) = tokio::sync::mpsc::channel::<Vec<crate::state::Object>>(16);
    let mut pending = cni::PendingAdds::default();
    let mut verify = tokio::time::interval(verify_interval);
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    verify.tick().await; // the first tick is immediate; nothing to verify yet
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut source_open = true;
    loop {
        let mut do_verify = false;
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
                    on_cni_call(&mut reconciler, call, &mut pending, lookup.as_ref(), &lookup_tx, &metrics);
                    // A burst of sandboxes (a Deployment scaled up) is one pass, not one
                    // pass per Pod.
                    while let Some(call) = cni_calls.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        on_cni_call(&mut reconciler, call, &mut pending, lookup.as_ref(), &lookup_tx, &metrics);
                    }
                }
                None => cni_calls = None,
            },
            Some(objects) = lookups.recv() => reconciler.handle_lookup(objects),
            _ = verify.tick() => do_verify = true,
            () = sleep_until(wake) => {}
        }
        let pass = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            reconciler.flush_records();
            if do_verify || !reconciler.synced() {
                reconciler.discover_netns();
            }
            reconciler.compile();
            if do_verify {
                reconciler.verify();
                reconciler.prune_cni();
                reconciler.ensure_chained();
            }
            let report = reconciler.sync(Instant::now());
            (reconciler, report, start.elapsed())
        });
        let Ok((back, report, took)) = pass.await else {
            return Err(AgentError::Panicked);
        };
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
        if reconciler.synced() {
            health.ready.store(true, Ordering::SeqCst);
        }
    }
}

/// How much sooner than the plugin's own deadline the agent answers (so the plugin
/// hears why, not just a timeout).
const CNI_ANSWER_MARGIN: Duration = Duration::from_millis(250);

fn on_cni_call(
    reconciler: &mut Reconciler,
    call: CniCall,
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
            let now = Instant::now();
            let budget = Duration::from_millis(request.timeout_ms)
                .saturating_sub(CNI_ANSWER_MARGIN)
                .max(Duration::from_millis(100));
            pending.push(pod, now, now + budget, reply);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::applier::{Recorded, RecordingApplier};
    use crate::manifests::ManifestDir;

    /// Renders the isolation and the labels of the Pod: enough to see changes.
    struct FakeRenderer {
        fail: std::sync::Mutex<BTreeSet<String>>,
    }

    impl RulesetSource for FakeRenderer {
        fn render(
            &self,
            model: &Model,
            graph: &AllowGraph,
            pod: EndpointId,
        ) -> Result<String, RenderError> {
            let ep = model.endpoint(pod);
            if self.fail.lock().unwrap().contains(&ep.key()) {
                return Err(RenderError {
                    message: "injected".into(),
                });
            }
            let iso = graph.isolation(pod);
            Ok(format!(
                "table inet netpol {{ # {} ingress {:?} egress {:?} rules {} }}",
                ep.key(),
                iso.ingress,
                iso.egress,
                graph.edges(pod, policy_compiler::Direction::Ingress).len()
            ))
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        src: ManifestDir,
        fake: Arc<RecordingApplier>,
        renderer: Arc<FakeRenderer>,
        rec: Reconciler,
        metrics: Arc<Metrics>,
    }

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}, annotations: {netpol.io/netns: ns-a}}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}, annotations: {netpol.io/netns: ns-b}}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: remote, namespace: x}\nspec: {containers: [{name: c}]}\n";
    const DENY_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}}\n";
    const ALLOW_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n";

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
            std::fs::write(dir.path().join("pol.yaml"), DENY_A).unwrap();
            let src = ManifestDir::new(dir.path(), None);
            let fake = Arc::new(RecordingApplier::new());
            let renderer = Arc::new(FakeRenderer {
                fail: Default::default(),
            });
            let metrics = Arc::new(Metrics::new());
            let config = AgentConfig {
                backoff: BackoffPolicy {
                    base: Duration::from_secs(1),
                    max: Duration::from_secs(8),
                },
                ..AgentConfig::default()
            };
            let rec = Reconciler::new(&config, renderer.clone(), fake.clone(), metrics.clone());
            Self {
                dir,
                src,
                fake,
                renderer,
                rec,
                metrics,
            }
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.dir.path().join(file), text).unwrap();
        }

        /// One pass as the agent does it.
        fn pass(&mut self, now: Instant) -> SyncReport {
            let scan = self.src.scan();
            // The watch sends only non-empty scans.
            if !scan.is_empty() {
                self.rec.handle_scan(scan);
            }
            self.rec.compile();
            self.rec.sync(now)
        }
    }

    fn key(n: &str) -> PodKey {
        PodKey::new("x", n)
    }

    /// Pod tables defer Service addresses to the node table only when the agent owns
    /// one: without it (`--no-node-table`) they would let every Service address out
    /// unjudged. See: #10
    #[test]
    fn service_addresses_are_deferred_only_with_a_node_table() {
        const EGRESS_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec: {clusterIP: 10.96.0.50, selector: {app: b}, ports: [{port: 80}]}\n";
        for node_table in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
            std::fs::write(dir.path().join("pol.yaml"), EGRESS_A).unwrap();
            let mut src = ManifestDir::new(dir.path(), None);
            let fake = Arc::new(RecordingApplier::new());
            let config = AgentConfig {
                node_table,
                ..AgentConfig::default()
            };
            let mut rec = Reconciler::new(
                &config,
                Arc::new(CompiledRulesets::default()),
                fake.clone(),
                Arc::new(Metrics::new()),
            );
            rec.handle_scan(src.scan());
            rec.compile();
            rec.sync(Instant::now());
            let table = fake.table("ns-a").expect("x/a is applied");
            assert_eq!(table.contains("@svc_v4"), node_table, "{table}");
            assert!(table.contains("10.96.0.50") == node_table, "{table}");
        }
    }

    #[test]
    fn first_pass_applies_local_pods_then_only_changes() {
        let mut f = Fixture::new();
        let t0 = Instant::now();
        let r = f.pass(t0);
        assert_eq!(r.applied, [key("a"), key("b")], "remote has no netns");
        assert!(f.rec.synced());
        assert_eq!(f.metrics.pods_enforced.get(), 2);
        let a_before = f.fake.table("ns-a").unwrap();
        assert!(a_before.contains("ingress [PolicyId(0)]"), "{a_before}");

        // Nothing changed: nothing applied.
        assert_eq!(f.pass(t0), SyncReport::default());
        // A policy change reaching only a: only a is re-applied.
        f.write("pol.yaml", ALLOW_A);
        f.fake.clear_calls();
        let r = f.pass(t0);
        assert_eq!(r.applied, [key("a")]);
        assert_eq!(f.fake.applies(&key("b")), 0);
        assert_ne!(f.fake.table("ns-a").unwrap(), a_before);
        assert_eq!(f.metrics.applies.get(), 3);
    }

    #[test]
    fn invalid_manifest_changes_nothing() {
        let mut f = Fixture::new();
        let t0 = Instant::now();
        f.pass(t0);
        let before = f.fake.table("ns-a");
        f.fake.clear_calls();
        f.write(
            "pol.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: '-bad-'}}}\n",
        );
        assert_eq!(f.pass(t0), SyncReport::default());
        assert!(f.fake.calls().is_empty());
        assert_eq!(f.fake.table("ns-a"), before);
        assert_eq!(f.metrics.manifest_errors.get(), 1);
        // Deleting the policy file is a valid change: a is opened on purpose.
        std::fs::remove_file(f.dir.path().join("pol.yaml")).unwrap();
        assert_eq!(f.pass(t0).applied, [key("a")]);
    }

    #[test]
    fn never_valid_manifests_touch_nothing_at_start() {
        let mut f = Fixture::new();
        f.write("pol.yaml", "kind: [\n");
        let r = f.pass(Instant::now());
        assert_eq!(r, SyncReport::default());
        assert!(f.fake.calls().is_empty());
        assert!(!f.rec.synced(), "not ready");
        f.write("pol.yaml", DENY_A);
        assert_eq!(f.pass(Instant::now()).applied.len(), 2);
        assert!(f.rec.synced());
    }

    #[test]
    fn deleting_a_never_valid_file_after_another_change_resumes_compiling() {
        // See: #11 (the agent logged "never been valid: not compiling" and never compiled
        // again until an unrelated object changed).
        let mut f = Fixture::new();
        let t0 = Instant::now();
        assert_eq!(f.pass(t0).applied.len(), 2);
        f.write("pol.yaml", ALLOW_A);
        f.write("broken.yaml", "kind: [\n");
        assert_eq!(
            f.pass(t0),
            SyncReport::default(),
            "incomplete: not compiled"
        );
        assert_eq!(f.pass(t0), SyncReport::default());
        std::fs::remove_file(f.dir.path().join("broken.yaml")).unwrap();
        assert_eq!(
            f.pass(t0).applied,
            [key("a")],
            "the policy change is compiled"
        );
    }

    #[test]
    fn deleted_pod_table_is_removed() {
        let mut f = Fixture::new();
        f.pass(Instant::now());
        f.write("pods.yaml", &PODS.replace("name: b,", "name: b2,"));
        let r = f.pass(Instant::now());
        assert!(r.removed.is_empty(), "b2 reuses ns-b: {r:?}");
        assert_eq!(r.applied, [key("b2")]);
        assert!(
            !f.fake
                .calls()
                .iter()
                .any(|c| matches!(c, Recorded::Remove { .. }))
        );
        assert!(f.rec.actual().get(&key("b")).is_none(), "b forgotten");
        // Without reuse: removed.
        f.write(
            "pods.yaml",
            &PODS
                .replace("name: b,", "name: b3,")
                .replace("ns-b", "ns-c"),
        );
        let r = f.pass(Instant::now());
        assert_eq!(r.removed, [key("b2")]);
        assert!(f.fake.table("ns-b").is_none());
        assert_eq!(f.metrics.removes.get(), 1);
    }

    #[test]
    fn failed_apply_keeps_last_good_and_backs_off() {
        let mut f = Fixture::new();
        let t0 = Instant::now();
        f.pass(t0);
        let good = f.fake.table("ns-a");
        f.fake.set_failing(&key("a"), true);
        f.write("pol.yaml", ALLOW_A);
        let r = f.pass(t0);
        assert_eq!(r.failed, [key("a")]);
        assert_eq!(r.retry_at, Some(t0 + Duration::from_secs(1)));
        assert_eq!(f.fake.table("ns-a"), good, "last good stays");
        assert_eq!(f.metrics.apply_errors.get(), 1);
        assert_eq!(f.metrics.pods_enforced.get(), 1);
        // Before the backoff expires: deferred, not attempted.
        f.fake.clear_calls();
        let r = f.rec.sync(t0 + Duration::from_millis(500));
        assert_eq!(r.deferred, [key("a")]);
        assert!(f.fake.calls().is_empty());
        // Second failure doubles the delay.
        let t1 = t0 + Duration::from_secs(1);
        let r = f.rec.sync(t1);
        assert_eq!(r.retry_at, Some(t1 + Duration::from_secs(2)));
        // Recovery.
        f.fake.set_failing(&key("a"), false);
        let r = f.rec.sync(t1 + Duration::from_secs(2));
        assert_eq!(r.applied, [key("a")]);
        assert_ne!(f.fake.table("ns-a"), good);
        assert_eq!(f.metrics.pods_enforced.get(), 2);
    }

    #[test]
    fn render_failure_keeps_last_good_ruleset_of_that_pod() {
        let mut f = Fixture::new();
        f.pass(Instant::now());
        f.renderer.fail.lock().unwrap().insert("x/a".into());
        f.write("pol.yaml", ALLOW_A);
        let r = f.pass(Instant::now());
        assert!(r.applied.is_empty(), "{r:?}");
        assert_eq!(f.metrics.compile_errors.get(), 1);
        assert!(f.rec.desired().contains_key(&key("a")));
    }

    #[test]
    fn drift_is_detected_repaired_and_counted() {
        let mut f = Fixture::new();
        f.pass(Instant::now());
        assert!(f.rec.verify().is_empty());
        f.fake.tamper("ns-a", Some("table inet netpol { }"));
        f.fake.tamper("ns-b", None);
        assert_eq!(f.rec.verify(), [key("a"), key("b")]);
        assert_eq!(f.metrics.pods_enforced.get(), 0);
        let r = f.rec.sync(Instant::now());
        assert_eq!(r.applied, [key("a"), key("b")]);
        assert_eq!(f.metrics.drift_repairs.get(), 2);
        assert!(f.rec.verify().is_empty());
    }

    #[test]
    fn node_filter_selects_local_pods() {
        let mut f = Fixture::new();
        let pods = PODS
            .replacen("spec: {containers", "spec: {nodeName: n1, containers", 1)
            .replacen("spec: {containers", "spec: {nodeName: n2, containers", 1);
        f.write("pods.yaml", &pods);
        let config = AgentConfig {
            node: Some("n1".into()),
            ..AgentConfig::default()
        };
        f.rec = Reconciler::new(
            &config,
            f.renderer.clone(),
            f.fake.clone(),
            f.metrics.clone(),
        );
        let r = f.pass(Instant::now());
        assert_eq!(r.applied, [key("a")]);
    }

    #[test]
    fn parallel_keeps_order() {
        let out = parallel(4, (0..100).collect(), |i: i32| i * 2);
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
    }
}
