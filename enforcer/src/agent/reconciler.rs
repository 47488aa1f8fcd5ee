//! The reconciler core: one [`PodRecord`] per Pod (desired, applied, kernel listing,
//! drift, backoff, last error), compile -> plan -> apply -> verify, all synchronous.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_compiler::Severity;
use policy_compiler::ruleset::NodeContext;

use super::incremental::{Fingerprint, Inputs};
use super::model_step::{self, Dropper, ModelSource};
use super::node_table::NodeTable;
use super::shared::SharedRenders;
use super::{AgentConfig, ChainConfig, ErrorChain, RulesetSource, cni};
use crate::applier::{Applier, ApplyError};
use crate::cni::records::RecordStore;
use crate::manifests::Scan;
use crate::metrics::Metrics;
use crate::plan::{
    Actual, Backoff, BackoffPolicy, Checksum, Desired, EntryPool, Op, Parts, PodState, TableIr,
    plan_pods,
};
use crate::reporter::{CompiledModel, DropReporter};
use crate::state::{PodKey, State};

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

/// Everything the reconciler knows about one Pod's table, in one place. A record exists
/// while the Pod is desired or its table is known to be in the kernel.
#[derive(Debug, Clone, Default)]
pub(super) struct PodRecord {
    /// The last good desired ruleset (with the Pod's netns); `None`: no longer desired.
    pub(super) desired: Option<Desired>,
    /// What the agent applied (netns, checksum; checksum `None` after drift); `None`:
    /// nothing of this Pod's is known to be in the kernel.
    pub(super) applied: Option<Actual>,
    /// Checksum of the normalised kernel listing right after the apply (`None`: taken at
    /// the next verify).
    pub(super) kernel: Option<Checksum>,
    /// Found changed in the kernel; the next apply counts as a drift repair.
    pub(super) drifted: bool,
    /// Retry schedule of a failing operation.
    pub(super) backoff: Option<Backoff>,
    /// The last apply error, until the Pod applies.
    pub(super) last_error: Option<String>,
    /// The parts of what was applied, when the kernel holds exactly them (`None`
    /// after drift or when unknown: the next change replaces the table).
    pub(super) applied_parts: Option<Arc<Parts>>,
    /// The namespace's nf_tables generation right after the agent's last commit there
    /// (`None`: unknown). While it is unchanged nothing else committed there.
    pub(super) generation: Option<u32>,
    /// The table was replaced and its listing is left to
    /// [`Reconciler::take_baselines`] (after an element update there is no listing:
    /// the generation alone proves the table unchanged, and a foreign commit in the
    /// namespace replaces it).
    pub(super) baseline_due: bool,
}

impl PodRecord {
    /// The desired ruleset is what the kernel holds.
    pub(super) fn enforced(&self) -> bool {
        match (&self.desired, &self.applied) {
            (Some(d), Some(a)) => a.netns == d.netns && a.checksum == Some(d.checksum),
            _ => false,
        }
    }

    /// Nothing left to remember: neither desired nor in the kernel.
    fn is_empty(&self) -> bool {
        self.desired.is_none() && self.applied.is_none()
    }
}

/// The synchronous core of the agent: state, one [`PodRecord`] per Pod, the node
/// table. Its methods block on the applier.
pub struct Reconciler {
    pub(super) state: State,
    pub(super) renderer: Arc<dyn RulesetSource>,
    pub(super) applier: Arc<dyn Applier>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) node: Option<String>,
    pub(super) backoff_policy: BackoffPolicy,
    parallelism: usize,
    pub(super) complete: bool,
    pub(super) compiled_generation: Option<u64>,
    /// Per Pod: desired, applied, kernel, drift, backoff, last error.
    pub(super) pods: BTreeMap<PodKey, PodRecord>,
    synced: bool,
    /// The last good model and graph (what drop reports are described against).
    compiled: Option<Arc<CompiledModel>>,
    reporter: Option<DropReporter>,
    /// The generation whose compilation was refused, and why.
    pub(super) refused: Option<(u64, String)>,
    pub(super) records: Option<RecordStore>,
    pub(super) record_writes: Vec<cni::RecordWrite>,
    pub(super) discovery: Option<crate::discovery::DiscoveryOptions>,
    pub(super) chain: Option<ChainConfig>,
    /// The last chaining problem logged (logged again only when it changes).
    pub(super) chain_problem: Option<String>,
    /// The node table (when [`AgentConfig::node_table`]).
    pub(super) node_table: Option<NodeTable>,
    /// Namespaces claimed by several Pods (denied: [`crate::trust`]).
    pub(super) netns_conflicts: BTreeMap<String, Vec<PodKey>>,
    /// Incremental compile on ([`AgentConfig::incremental`] and a renderer that
    /// renders like `compile_pod`).
    incremental: bool,
    /// Per local Pod: the input fingerprint its `desired` was rendered from (only
    /// successful renders of the last compile).
    rendered: BTreeMap<PodKey, Fingerprint>,
    /// What the last compile did.
    last_compile: CompileStats,
    /// The distinct peer-map entry sets of the desired and applied tables (one copy
    /// each, shared by `Arc`).
    entry_pool: EntryPool,
    /// The state generation reached from the last good compile by CNI `ADD`s only
    /// (`agent/fast_add.rs`); `None` once anything else changed.
    pub(super) fast_base: Option<u64>,
    /// Frees what a compile replaces (the last model and graph, tables) off the
    /// event's path.
    dropper: Dropper,
}

/// What the last [`Reconciler::compile`] rendered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    /// Local tables rendered.
    pub rendered: usize,
    /// Local tables whose inputs were unchanged: the last render was kept.
    pub kept: usize,
    /// Distinct peer lookups swept for the rendered tables (incremental compile: one
    /// per distinct classifier, shared by the tables that need it).
    pub sweeps: usize,
    /// Peer lookups the rendered tables used (swept, or shared with another table).
    pub lookups: usize,
    /// Whether the model was built, patched from the event, or kept.
    pub model: ModelSource,
}

/// What [`execute`] did: each variant carries its operation's data, so no impossible
/// operation/outcome pair can be matched.
pub(super) enum Done {
    Applied {
        pod: PodKey,
        netns: String,
        checksum: Checksum,
        /// Checksum of the kernel's listing right after the apply (`None`: unknown, or
        /// taken by the next verify while the generation proves nothing else changed).
        listing: Option<Checksum>,
        /// The namespace's generation right after this commit, when it is known to be
        /// exactly this commit.
        generation: Option<u32>,
        /// Done as an element update (not a table replace).
        incremental: bool,
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
            applier,
            metrics,
            node: config.node.clone(),
            backoff_policy: config.backoff,
            parallelism: config.parallelism.max(1),
            complete: false,
            compiled_generation: None,
            pods: BTreeMap::new(),
            synced: false,
            compiled: None,
            reporter: None,
            refused: None,
            records: None,
            record_writes: Vec::new(),
            discovery: config.discovery.clone(),
            chain: config.cni.as_ref().and_then(|c| c.chain.clone()),
            chain_problem: None,
            node_table: config.node_table.then(NodeTable::default),
            netns_conflicts: BTreeMap::new(),
            incremental: config.incremental && renderer.renders_like_compile_pod(),
            rendered: BTreeMap::new(),
            last_compile: CompileStats::default(),
            entry_pool: EntryPool::default(),
            fast_base: None,
            dropper: Dropper::default(),
            renderer,
        }
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

    /// What the last compile rendered and kept.
    pub fn last_compile(&self) -> CompileStats {
        self.last_compile
    }

    /// The last good model and graph.
    pub fn compiled(&self) -> Option<&Arc<CompiledModel>> {
        self.compiled.as_ref()
    }

    /// Network namespaces of the Pods with a desired ruleset, and the node's
    /// ([`crate::node::OWN_NETNS`]) when the agent owns a node table.
    pub fn enforced_netns(&self) -> BTreeSet<String> {
        self.pods
            .values()
            .filter_map(|r| r.desired.as_ref().map(|d| d.netns.clone()))
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

    /// The last good desired rulesets (a view of the Pod records).
    pub fn desired(&self) -> BTreeMap<PodKey, Desired> {
        self.pods
            .iter()
            .filter_map(|(p, r)| Some((p.clone(), r.desired.clone()?)))
            .collect()
    }

    /// What the agent knows the kernel holds (a view of the Pod records).
    pub fn actual(&self) -> BTreeMap<PodKey, Actual> {
        self.pods
            .iter()
            .filter_map(|(p, r)| Some((p.clone(), r.applied.clone()?)))
            .collect()
    }

    /// True once a complete sync has been applied (sticky).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// A compile refused for `errors`: the last good rulesets stay, and the next
    /// compile builds the model again (what changed since the last good one is no
    /// longer known).
    fn refuse(&mut self, errors: &[policy_compiler::Diagnostic]) {
        self.metrics.compile_errors.inc();
        self.state.forget_model_changes();
        let first = errors.first().map(ToString::to_string).unwrap_or_default();
        self.refused = Some((
            self.state.generation(),
            format!("{} error(s); first: {first}", errors.len()),
        ));
        for d in errors {
            tracing::error!(file = d.file.as_deref(), line = d.line, column = d.column, diagnostic = %d, "compile error");
        }
        tracing::error!("compilation refused: keeping the last good rulesets");
    }

    /// Compiles the state into desired rulesets if it changed since the last compile.
    /// On any error the last good rulesets stay (whole compile, or per Pod render).
    /// Returns whether the desired rulesets were recomputed.
    pub fn compile(&mut self) -> bool {
        if !self.complete || self.compiled_generation == Some(self.state.generation()) {
            return false;
        }
        self.compiled_generation = Some(self.state.generation());
        // Patched from what changed since the last good compile, or built from the
        // state's objects by reference (no second copy of the cluster).
        // (Only with the incremental compile: the full one, its baseline, builds.)
        let delta = self.state.take_model_changes().filter(|_| self.incremental);
        let model_step =
            model_step::model_of(&self.state, &mut self.compiled, delta, &mut self.dropper);
        let (compiled, model_source) = match model_step {
            Ok(c) => c,
            Err(errors) => {
                self.refuse(&errors);
                return false;
            }
        };
        self.refused = None;
        let (model, graph) = (&compiled.model, &compiled.graph);
        let node_addresses = match &self.node_table {
            Some(_) => self.current_node_addresses(),
            None => Vec::new(),
        };
        let local = self.state.local_pods(self.node.as_deref());
        let (local, mut desired) = self.fail_closed_on_shared_netns(local);
        let mut local_ids = Vec::new();
        let mut inputs = self.incremental.then(|| Inputs::new(model, graph));
        let mut rendered = BTreeMap::new();
        let mut stats = CompileStats {
            model: model_source,
            ..CompileStats::default()
        };
        let mut to_render = Vec::new();
        // Without a node table, Pod tables must not defer Service addresses to it:
        // `render` keeps them ordinary destinations (fail closed). See: #10
        let on_node = self
            .node_table
            .is_some()
            .then_some(node_addresses.as_slice());
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
            let fingerprint = inputs.as_mut().map(|i| i.pod(id, on_node, &netns));
            if let Some(f) = fingerprint
                && self.rendered.get(&pod) == Some(&f)
                && let Some(last) = self.pods.get(&pod).and_then(|r| r.desired.clone())
            {
                // Nothing the render reads changed: the last render stands.
                stats.kept += 1;
                rendered.insert(pod.clone(), f);
                desired.insert(pod, last);
                continue;
            }
            stats.rendered += 1;
            to_render.push((pod, netns, id, fingerprint));
        }
        drop(inputs);
        // The tables to render, on up to `parallelism` threads when incremental (each
        // render reads the model and graph only); otherwise one after another, as
        // before #12 (the benchmark's baseline).
        let renderer = self.renderer.clone();
        let workers = if self.incremental {
            self.parallelism
        } else {
            1
        };
        // Incremental: tables share their peer lookups (one sweep per distinct lookup).
        let shared = self.incremental.then(|| SharedRenders::new(model, graph));
        let results = parallel(workers, to_render, |(pod, netns, id, f)| {
            let r = match &shared {
                Some(s) => renderer.render_desired_shared(s, id, on_node, &netns),
                None => renderer.render_desired(model, graph, id, on_node, &netns),
            };
            (pod, f, r)
        });
        stats.sweeps = shared.as_ref().map_or(0, SharedRenders::sweeps);
        stats.lookups = shared.as_ref().map_or(0, SharedRenders::asked);
        drop(shared);
        for (pod, fingerprint, result) in results {
            match result {
                Ok(d) => {
                    if let Some(f) = fingerprint {
                        rendered.insert(pod.clone(), f);
                    }
                    desired.insert(pod, d);
                }
                Err(e) => {
                    self.metrics.compile_errors.inc();
                    tracing::error!(namespace = %pod.namespace, pod = %pod.name, error = %e, "render failed: keeping the last good ruleset");
                    if let Some(last) = self.pods.get(&pod).and_then(|r| r.desired.clone()) {
                        desired.insert(pod, last);
                    }
                }
            }
        }
        // One copy of each distinct entry set across tables (and what was applied).
        let pool = &mut self.entry_pool;
        for record in self.pods.values_mut() {
            if let Some(p) = &record.applied_parts {
                record.applied_parts = Some(p.share_entries(pool));
            }
        }
        for d in desired.values_mut() {
            if let Some(p) = &d.parts {
                d.parts = Some(p.share_entries(pool));
            }
        }
        let last_rendered = std::mem::replace(&mut self.rendered, rendered);
        self.dropper.drop_later(last_rendered);
        self.last_compile = stats;
        let mut replaced = Vec::new();
        for (pod, record) in &mut self.pods {
            replaced.extend(std::mem::replace(&mut record.desired, desired.remove(pod)));
        }
        self.dropper.drop_later(replaced);
        for (pod, d) in desired {
            self.pods.insert(
                pod,
                PodRecord {
                    desired: Some(d),
                    ..PodRecord::default()
                },
            );
        }
        self.pods.retain(|_, r| !r.is_empty());
        self.entry_pool.prune();
        if self.node_table.is_some() {
            let mut ctx = NodeContext::new(
                model,
                self.node.as_deref().unwrap_or_default(),
                node_addresses.clone(),
            );
            ctx.pods.extend(local_ids);
            ctx.pods.sort_unstable();
            ctx.pods.dedup();
            let rendered = self.renderer.render_node_desired(model, graph, &ctx);
            if let Some(n) = &mut self.node_table {
                n.addresses = node_addresses;
                match rendered {
                    Ok(d) => n.desired = d,
                    Err(e) => {
                        self.metrics.compile_errors.inc();
                        tracing::error!(error = %e, "node table render failed: keeping the last good one");
                    }
                }
            }
        }
        if let Some(r) = &self.reporter {
            // Before the sync that applies: the first drops of a new Pod are reported.
            r.track(compiled.clone(), self.enforced_netns());
        }
        if let Some(last) = self.compiled.replace(compiled) {
            self.dropper.drop_later(last);
        }
        true
    }

    /// Compares every applied table with the kernel; a changed or missing table is
    /// drift (tampering): warned, and re-applied by the next [`sync`](Self::sync).
    /// Returns the drifted Pods.
    ///
    /// Where the applier tells generations ([`Applier::generation`]), a namespace
    /// whose generation is still the one right after the agent's last commit there is
    /// unchanged without listing anything (one netlink request, no process); only a
    /// namespace where something else committed is listed and compared.
    pub fn verify(&mut self) -> Vec<PodKey> {
        self.verify_node_table();
        self.verify_where(|_| true)
    }

    /// [`verify`](Self::verify) for the tables in `netns` only (where nftables
    /// announced a commit); the node's own namespace verifies the node table.
    pub fn verify_netns(&mut self, netns: &BTreeSet<String>) -> Vec<PodKey> {
        if netns.contains(crate::node::OWN_NETNS) {
            self.verify_node_table();
        }
        self.verify_where(|n| netns.contains(n))
    }

    fn verify_where(&mut self, netns: impl Fn(&str) -> bool) -> Vec<PodKey> {
        let targets: Vec<(PodKey, String, Option<Checksum>, Option<u32>)> = self
            .pods
            .iter()
            .filter_map(|(p, r)| {
                let a = r.applied.as_ref().filter(|a| a.checksum.is_some())?;
                netns(&a.netns).then(|| (p.clone(), a.netns.clone(), r.kernel, r.generation))
            })
            .collect();
        let applier = self.applier.clone();
        let results = parallel(self.parallelism, targets, |(pod, netns, want, tracked)| {
            let check = check_table(applier.as_ref(), &pod, &netns, want, tracked);
            (pod, netns, want, check)
        });
        let mut drifted = Vec::new();
        for (pod, netns, want, check) in results {
            let Some(record) = self.pods.get_mut(&pod) else {
                continue;
            };
            let (got, generation) = match check {
                Check::Unchanged => continue,
                Check::Baseline(c) => {
                    record.kernel = Some(c);
                    continue;
                }
                Check::Moved => {
                    // Something else committed in the namespace since the agent's last
                    // element update (or before the baseline listing): what the kernel
                    // holds cannot be proven equal; replace the table.
                    tracing::info!(namespace = %pod.namespace, pod = %pod.name, netns, "netns changed by someone else since the last element update: replacing the table");
                    if let Some(a) = &mut record.applied {
                        a.checksum = None;
                    }
                    record.applied_parts = None;
                    record.generation = None;
                    continue;
                }
                Check::Listed { got, generation } => (got, generation),
            };
            match (got, want) {
                (Ok(Some(c)), Some(want)) if c == want => {
                    // Something else committed in the namespace, not to this table (or
                    // the apply took more than one commit: see `nft::in_place`): the
                    // listing proves the table ours at this generation. See: #12
                    record.generation = generation;
                }
                (Ok(Some(c)), None) => {
                    // The listing after the apply failed; take the baseline now.
                    record.kernel = Some(c);
                }
                (Ok(got), _) => {
                    tracing::warn!(
                        namespace = %pod.namespace, pod = %pod.name, netns,
                        found = if got.is_some() { "changed table" } else { "no table" },
                        "ruleset drift (tampering?): re-applying"
                    );
                    if let Some(a) = &mut record.applied {
                        a.checksum = None;
                    }
                    record.kernel = None;
                    record.applied_parts = None;
                    record.generation = None;
                    record.backoff = None;
                    record.drifted = true;
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

    /// Pods whose table the agent committed but has not listed yet (the listing is
    /// left out of the apply path when the generation proves the commit was the only
    /// one).
    pub fn needs_baselines(&self) -> bool {
        self.pods.values().any(|r| r.baseline_due)
    }

    /// Lists the tables [`needs_baselines`](Self::needs_baselines) names while their
    /// generation still proves them the agent's, and keeps the listings as what
    /// [`verify`](Self::verify) compares with. Run right after a sync's answers, so a
    /// later change of the table is drift.
    pub fn take_baselines(&mut self) {
        let targets: Vec<(PodKey, String, u32)> = self
            .pods
            .iter()
            .filter(|(_, r)| r.baseline_due)
            .filter_map(|(p, r)| {
                let a = r.applied.as_ref().filter(|a| a.checksum.is_some())?;
                Some((p.clone(), a.netns.clone(), r.generation?))
            })
            .collect();
        let applier = self.applier.clone();
        let results = parallel(self.parallelism, targets, |(pod, netns, g)| {
            let check = take_baseline(applier.as_ref(), &pod, &netns, g);
            (pod, check)
        });
        for (pod, check) in results {
            let Some(r) = self.pods.get_mut(&pod) else {
                continue;
            };
            r.baseline_due = false;
            if let Check::Baseline(c) = check {
                r.kernel = Some(c);
            }
            // Otherwise the next verify judges it (the generation moved).
        }
    }

    /// Records what one executed operation did in its Pod's record and in `report`
    /// (what [`sync`](Self::sync) does per operation; the CNI `ADD` fast path too).
    pub(super) fn take_done(&mut self, done: Done, now: Instant, report: &mut SyncReport) {
        match done {
            Done::Applied {
                pod,
                netns,
                checksum,
                listing,
                generation,
                incremental,
                took,
            } => {
                self.metrics.applies.inc();
                if incremental {
                    self.metrics.element_updates.inc();
                }
                self.metrics.observe_apply(took);
                tracing::info!(
                    namespace = %pod.namespace, pod = %pod.name, netns,
                    checksum = %checksum.short(), took_ms = took.as_secs_f64() * 1e3,
                    how = if incremental { "element update" } else { "table replace" },
                    "ruleset applied"
                );
                let record = self.pods.entry(pod.clone()).or_default();
                if std::mem::take(&mut record.drifted) {
                    self.metrics.drift_repairs.inc();
                }
                record.applied = Some(Actual {
                    netns,
                    checksum: Some(checksum),
                });
                // The plan was made from this desired ruleset (sync does not
                // recompile in between).
                record.applied_parts = record
                    .desired
                    .as_ref()
                    .filter(|d| d.checksum == checksum)
                    .and_then(|d| d.parts.clone());
                record.baseline_due = !incremental && generation.is_some() && listing.is_none();
                record.generation = generation;
                record.kernel = listing;
                record.backoff = None;
                record.last_error = None;
                report.applied.push(pod);
            }
            Done::Removed { pod, netns } => {
                self.metrics.removes.inc();
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, netns, "ruleset removed (Pod gone)");
                if let Some(record) = self.pods.get_mut(&pod) {
                    if record.applied.as_ref().is_some_and(|a| a.netns == netns) {
                        record.applied = None;
                        record.kernel = None;
                        record.applied_parts = None;
                        record.generation = None;
                    }
                    record.drifted = false;
                    record.backoff = None;
                }
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
                let record = self.pods.entry(pod.clone()).or_default();
                let b = self.backoff_policy.fail(record.backoff, now);
                tracing::error!(
                    namespace = %pod.namespace, pod = %pod.name, op = what,
                    error = %ErrorChain(&e), failures = b.failures,
                    retry_in_ms = (b.next - now).as_millis() as u64,
                    "ruleset {what} failed: the kernel keeps the last good table"
                );
                record.backoff = Some(b);
                record.last_error = Some(ErrorChain(&e).to_string());
                report.retry_at = earliest(report.retry_at, b.next);
                report.failed.push(pod);
            }
        }
    }

    /// Plans and carries out what makes the kernel equal to the desired rulesets.
    /// Operations whose backoff has not expired at `now` wait.
    pub fn sync(&mut self, now: Instant) -> SyncReport {
        let mut report = SyncReport::default();
        self.sync_node_table(now, &mut report);
        let mut todo = Vec::new();
        let states: Vec<(&PodKey, PodState<'_>)> = self
            .pods
            .iter()
            .map(|(p, r)| {
                let state = PodState {
                    desired: r.desired.as_ref(),
                    actual: r.applied.as_ref(),
                    applied_parts: r.applied_parts.as_deref(),
                    generation: r.generation,
                };
                (p, state)
            })
            .collect();
        for (p, st) in &states {
            if let (Some(d), Some(a)) = (st.desired, st.actual)
                && a.checksum != Some(d.checksum)
            {
                tracing::debug!(
                    pod = %p,
                    same_netns = a.netns == d.netns,
                    known = a.checksum.is_some(),
                    generation = ?st.generation,
                    applied_parts = st.applied_parts.is_some(),
                    same_skeleton = ?st.applied_parts.zip(d.parts.as_deref()).map(|(o, n)| o.skeleton == n.skeleton),
                    "ruleset differs"
                );
            }
        }
        for op in plan_pods(&states) {
            match self.pods.get(op.pod()).and_then(|r| r.backoff) {
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
            self.take_done(done, now, &mut report);
        }
        // A Pod that is gone but whose namespace a desired Pod now uses was not removed
        // (that Pod's apply replaced the table): forget it. Errors are kept only for
        // desired Pods; a record neither desired nor applied is dropped.
        let in_use: BTreeSet<String> = self
            .pods
            .values()
            .filter_map(|r| r.desired.as_ref().map(|d| d.netns.clone()))
            .collect();
        self.pods.retain(|_, r| {
            if r.desired.is_none() {
                if r.applied
                    .as_ref()
                    .is_some_and(|a| in_use.contains(&a.netns))
                {
                    r.applied = None;
                }
                r.last_error = None;
            }
            if r.applied.is_none() {
                r.kernel = None;
                r.applied_parts = None;
                r.generation = None;
            }
            !r.is_empty()
        });
        self.update_gauge();
        if !self.synced
            && self.compiled_generation.is_some()
            && self.node_synced()
            && self
                .pods
                .values()
                .all(|r| r.desired.is_none() || r.enforced())
        {
            self.synced = true;
            let pods = self.pods.values().filter(|r| r.desired.is_some()).count();
            tracing::info!(pods, "first full sync applied");
        }
        report
    }

    fn update_gauge(&self) {
        let enforced = self
            .pods
            .iter()
            .filter(|(p, r)| {
                !self.netns_conflicts.values().flatten().any(|c| c == *p) && r.enforced()
            })
            .count();
        self.metrics
            .pods_enforced
            .set(i64::try_from(enforced).unwrap_or(i64::MAX));
    }
}

pub(super) fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

pub(super) fn execute(applier: &dyn Applier, op: Op) -> Done {
    match op {
        Op::Apply {
            pod,
            netns,
            checksum,
            text,
            ruleset,
        } => {
            // A split render is made whole here, only for a replace; its text too.
            let whole = ruleset.as_ref().map(TableIr::ruleset);
            replace_table(
                applier,
                pod,
                netns,
                checksum,
                (&text.get(), whole.as_deref()),
                Instant::now(),
            )
        }
        Op::Update {
            pod,
            netns,
            checksum,
            text,
            ruleset,
            ops,
            generation,
        } => {
            let start = Instant::now();
            // Spliced only for an applier that reads it (the netlink one does not).
            let for_update = if applier.update_reads_text() {
                text.get()
            } else {
                std::borrow::Cow::Borrowed("")
            };
            match applier.update(&pod, &netns, &ops, generation, &for_update) {
                Ok(generation) => Done::Applied {
                    pod,
                    netns,
                    checksum,
                    listing: None,
                    generation: Some(generation),
                    incremental: true,
                    took: start.elapsed(),
                },
                Err(e) => {
                    // Stale (someone else committed in the namespace) or refused: the
                    // kernel is unchanged; replace the whole table instead.
                    tracing::info!(namespace = %pod.namespace, pod = %pod.name, netns, error = %ErrorChain(&e), "element update not done: replacing the table");
                    replace_table(
                        applier,
                        pod,
                        netns,
                        checksum,
                        (
                            &text.get(),
                            ruleset.as_ref().map(TableIr::ruleset).as_deref(),
                        ),
                        start,
                    )
                }
            }
        }
        Op::Rewrite {
            pod,
            netns,
            checksum,
            text,
            ruleset,
            old,
            new,
            ops,
            generation,
        } => {
            let start = Instant::now();
            let keep = crate::nfnl::table::kept_maps(&old, &new);
            let slim = ruleset.ruleset_keeping(&keep);
            // Spliced only for an applier that reads it (the netlink one does not).
            let for_rewrite = if applier.update_reads_text() {
                text.get()
            } else {
                std::borrow::Cow::Borrowed("")
            };
            match applier.rewrite(
                &pod,
                &netns,
                &for_rewrite,
                &slim,
                &old,
                &new,
                &ops,
                generation,
            ) {
                Ok(generation) => Done::Applied {
                    pod,
                    netns,
                    checksum,
                    listing: None,
                    generation: Some(generation),
                    incremental: false,
                    took: start.elapsed(),
                },
                Err(e) => {
                    // Stale, refused or unsupported: the kernel is unchanged (each batch
                    // is all or nothing; a first declare-only commit adds empty sets no
                    // rule uses); replace the whole table instead. See: #12
                    if !matches!(e, ApplyError::Unsupported { .. }) {
                        tracing::info!(namespace = %pod.namespace, pod = %pod.name, netns, error = %ErrorChain(&e), "rewrite keeping the peer maps not done: replacing the table");
                    }
                    let whole = ruleset.ruleset();
                    replace_table(
                        applier,
                        pod,
                        netns,
                        checksum,
                        (&text.get(), Some(&whole)),
                        start,
                    )
                }
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

/// The generation right after a replace that moved the namespace from `before` to
/// `after` in exactly one commit: the agent's own, so verification may trust it.
pub(super) fn own_commit(before: Option<u32>, after: Option<u32>) -> Option<u32> {
    match (before, after) {
        (Some(b), Some(a)) if a == crate::nfnl::next_generation(b) => Some(a),
        _ => None,
    }
}

/// After more than one commit (an in-place replace that first declared new sets,
/// `nft::in_place`) or a foreign one, the listing taken is the baseline: `after`, the
/// generation it was taken at, is tracked when it is still the generation `now`.
/// See: #12
pub(super) fn settled(
    after: Option<u32>,
    listed: bool,
    now: impl FnOnce() -> Option<u32>,
) -> Option<u32> {
    after.filter(|a| listed && now() == Some(*a))
}

/// Replaces the table (one transaction: over netlink from the compiled ruleset when the
/// applier can, else `nft -f`). When the applier tells generations
/// and exactly one commit happened (ours), the listing is left to the next verify,
/// which takes it while the generation still proves nothing else changed; otherwise
/// the kernel's listing right after the apply is what verify expects.
fn replace_table(
    applier: &dyn Applier,
    pod: PodKey,
    netns: String,
    checksum: Checksum,
    (text, ruleset): (&str, Option<&policy_compiler::ruleset::Ruleset>),
    start: Instant,
) -> Done {
    let before = applier.generation(&pod, &netns).ok().flatten();
    if let Err(error) = applier.apply_ruleset(&pod, &netns, text, ruleset) {
        return Done::Failed {
            pod,
            op: "apply",
            error,
        };
    }
    let took = start.elapsed();
    let after = applier.generation(&pod, &netns).ok().flatten();
    let (listing, generation) = match own_commit(before, after) {
        Some(g) => (None, Some(g)),
        None => {
            let listing = match applier.fingerprint(&pod, &netns) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %e, "cannot list the applied table; it will be verified later");
                    None
                }
            };
            let settled = settled(after, listing.is_some(), || {
                applier.generation(&pod, &netns).ok().flatten()
            });
            (listing, settled)
        }
    };
    Done::Applied {
        pod,
        netns,
        checksum,
        listing,
        generation,
        incremental: false,
        took,
    }
}

/// What [`check_table`] found.
enum Check {
    /// The generation is the one after the agent's last commit: nothing changed.
    Unchanged,
    /// The generation moved since the agent's last commit and there is no listing to
    /// compare with.
    Moved,
    /// The generation is the one after the agent's last commit and stayed so while
    /// the table was listed: the listing is the baseline.
    Baseline(Checksum),
    /// The table was listed (the generation moved, or is unknown).
    Listed {
        got: Result<Option<Checksum>, ApplyError>,
        /// The generation before the listing.
        generation: Option<u32>,
    },
}

fn check_table(
    applier: &dyn Applier,
    pod: &PodKey,
    netns: &str,
    want: Option<Checksum>,
    tracked: Option<u32>,
) -> Check {
    let list = || applier.fingerprint(pod, netns);
    let generation = applier.generation(pod, netns).ok().flatten();
    if tracked.is_some() && tracked == generation {
        return Check::Unchanged;
    }
    if tracked.is_some() && want.is_none() {
        // Nothing to compare a listing with: the caller replaces the table.
        return Check::Moved;
    }
    Check::Listed {
        got: list(),
        generation,
    }
}

/// Lists a table whose generation is the one right after the agent's commit, as its
/// baseline: [`Check::Baseline`] if the generation stayed the same while listing.
fn take_baseline(applier: &dyn Applier, pod: &PodKey, netns: &str, tracked: u32) -> Check {
    if applier.generation(pod, netns).ok().flatten() != Some(tracked) {
        return Check::Moved;
    }
    let got = applier.fingerprint(pod, netns);
    match got {
        Ok(Some(c)) if applier.generation(pod, netns).ok().flatten() == Some(tracked) => {
            Check::Baseline(c)
        }
        _ => Check::Moved,
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

#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod tests;
