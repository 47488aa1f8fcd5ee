//! The node table in the reconciler: `table inet netpol` in the agent's own network
//! namespace (with [`AgentConfig::node_table`](super::AgentConfig::node_table)):
//! desired, applied, kernel listing, generation, retries; applied before the Pod tables
//! of a pass.
//!
//! Like a Pod table it is a skeleton (chains, rules, port sets, empty peer maps) plus
//! peer-map entries: when only entries change (a Pod of the node appears, leaves or
//! changes address, a peer of an egress-isolated Pod comes or goes) they are deleted
//! and added in one netlink transaction conditional on the namespace's generation
//! ([`Applier::update_node`]); the table is replaced with `nft -f` only when its rules
//! change, the generation is unknown, or something else committed in the namespace
//! since the agent's last commit. Verification compares the generation first: while it
//! is the one right after the agent's last commit nothing can have changed, and no
//! `nft list` runs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reconciler::{earliest, own_commit, settled};
use super::{ErrorChain, Reconciler, SyncReport};
use crate::applier::{Applier, ApplyError};
use crate::plan::{Backoff, Checksum, Desired, Parts, element_ops};

/// The agent's node table: desired, applied, kernel listing, generation, retries.
#[derive(Debug, Default)]
pub(super) struct NodeTable {
    /// The node's addresses used by the last compile (own namespace + Node object).
    pub(super) addresses: Vec<IpAddr>,
    pub(super) desired: Option<Desired>,
    /// Checksum of what was last applied (`None`: unknown, or drifted).
    actual: Option<Checksum>,
    /// Checksum of the normalised kernel listing of what was last applied (`None`:
    /// taken by the next verify while the generation proves the table the agent's).
    kernel: Option<Checksum>,
    /// The parts of what the kernel holds, when known exactly (`None`: the next
    /// change replaces the table).
    applied_parts: Option<Arc<Parts>>,
    /// The namespace's nf_tables generation right after the agent's last commit
    /// there (`None`: unknown). While it is unchanged nothing else committed there.
    generation: Option<u32>,
    drifted: bool,
    backoff: Option<Backoff>,
    last_error: Option<String>,
}

/// What one apply of the node table did.
struct Applied {
    /// Done as an element update (not a table replace).
    incremental: bool,
    /// The generation right after this commit, when it is known to be exactly ours.
    generation: Option<u32>,
    /// Checksum of the kernel's listing right after a replace.
    listing: Option<Checksum>,
    took: Duration,
}

impl NodeTable {
    /// The element update from what the kernel holds to `d`, if only peer-map
    /// elements differ and the kernel's content is known exactly.
    fn update_to(&self, d: &Desired) -> Option<(Vec<crate::nfnl::ElementOp>, u32)> {
        self.actual?;
        let (old, new) = (self.applied_parts.as_deref()?, d.parts.as_deref()?);
        let generation = self.generation?;
        (old.skeleton == new.skeleton)
            .then(|| (element_ops(&old.entries, &new.entries), generation))
    }

    /// Forgets what the kernel holds: the next sync replaces the table.
    fn forget(&mut self) {
        self.actual = None;
        self.kernel = None;
        self.applied_parts = None;
        self.generation = None;
        self.backoff = None;
    }
}

/// Replaces the node table (one transaction: over netlink from the compiled ruleset
/// when the applier can, else `nft -f`); lists it once (rule changes are
/// rare) as what verification compares with.
fn replace(applier: &dyn Applier, d: &Desired, start: Instant) -> Result<Applied, ApplyError> {
    let before = applier.node_generation().ok().flatten();
    let whole = d.ruleset.as_ref().map(crate::plan::TableIr::ruleset);
    applier.apply_node_ruleset(&d.text.get(), whole.as_deref())?;
    let took = start.elapsed();
    let after = applier.node_generation().ok().flatten();
    let listing = match applier.node_fingerprint() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "cannot list the applied node table; it will be verified later");
            None
        }
    };
    let generation = own_commit(before, after).or_else(|| {
        settled(after, listing.is_some(), || {
            applier.node_generation().ok().flatten()
        })
    });
    Ok(Applied {
        incremental: false,
        generation,
        listing,
        took,
    })
}

impl Reconciler {
    /// The node's addresses the last compile used (empty without the node table).
    pub fn node_addresses(&self) -> &[IpAddr] {
        self.node_table
            .as_ref()
            .map_or(&[], |n| n.addresses.as_slice())
    }

    /// The node table text the last compile produced, if the agent owns one.
    pub fn node_table(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.node_table
            .as_ref()?
            .desired
            .as_ref()
            .map(|d| d.text.get())
    }

    /// The node's addresses now: the agent's own namespace (getifaddrs) and the Node
    /// object named by `--node`. A failure to list is logged and counts as none (the
    /// Node object's addresses still count).
    pub(super) fn current_node_addresses(&self) -> Vec<IpAddr> {
        let own = self.applier.node_addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %ErrorChain(&e), "cannot list the node's own addresses");
            Vec::new()
        });
        crate::node::node_addresses(&own, self.node.as_deref().and_then(|n| self.state.node(n)))
    }

    /// Applies the node table when it differs from what was applied (and its backoff
    /// has expired): an element update when only peer-map entries changed, a table
    /// replace otherwise. Runs before the Pods' tables: Service flows a Pod table lets
    /// out are judged by the node table, so it must be there first.
    pub(super) fn sync_node_table(&mut self, now: Instant, report: &mut SyncReport) {
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
        let result = match n.update_to(&d) {
            Some((ops, generation)) => {
                match applier.update_node(&ops, generation, &d.text.get()) {
                    Ok(generation) => Ok(Applied {
                        incremental: true,
                        generation: Some(generation),
                        listing: None,
                        took: start.elapsed(),
                    }),
                    Err(e) => {
                        // Stale (someone else committed in the namespace) or refused:
                        // the kernel is unchanged; replace the whole table instead.
                        tracing::info!(error = %ErrorChain(&e), "node table element update not done: replacing the table");
                        replace(applier.as_ref(), &d, start)
                    }
                }
            }
            None => replace(applier.as_ref(), &d, start),
        };
        match result {
            Ok(done) => {
                self.metrics.applies.inc();
                if done.incremental {
                    self.metrics.element_updates.inc();
                }
                self.metrics.observe_apply(done.took);
                if std::mem::take(&mut n.drifted) {
                    self.metrics.drift_repairs.inc();
                }
                n.actual = Some(d.checksum);
                n.applied_parts = d.parts.clone();
                n.generation = done.generation;
                n.kernel = done.listing;
                n.backoff = None;
                n.last_error = None;
                tracing::info!(
                    node = self.node.as_deref(),
                    addresses = ?n.addresses,
                    checksum = %d.checksum.short(),
                    took_ms = done.took.as_secs_f64() * 1e3,
                    how = if done.incremental { "element update" } else { "table replace" },
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
    ///
    /// Where the applier tells generations, a namespace whose generation is still the
    /// one right after the agent's last commit is unchanged: one netlink request, no
    /// process (the first such check after an element update lists the table once, as
    /// the baseline later foreign commits are compared with). Only when something else
    /// committed in the namespace is the table listed and compared; after an element
    /// update with no baseline yet it is replaced.
    pub(super) fn verify_node_table(&mut self) {
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
        let current = applier.node_generation().ok().flatten();
        if let (Some(tracked), Some(now)) = (n.generation, current) {
            if tracked == now {
                if n.kernel.is_none() {
                    // The baseline: listed while the generation proves the table ours.
                    if let Ok(Some(c)) = applier.node_fingerprint()
                        && applier.node_generation().ok().flatten() == Some(tracked)
                    {
                        n.kernel = Some(c);
                    }
                }
                return;
            }
            if n.kernel.is_none() {
                tracing::info!(
                    "node netns changed by someone else since the last element update: replacing the node table"
                );
                n.forget();
                return;
            }
        }
        match applier.node_fingerprint() {
            Ok(Some(c)) => {
                match n.kernel {
                    Some(want) if want == c => {
                        // Something else committed in the namespace, not to this table
                        // (or the replace took more than one commit): the listing proves
                        // the table ours at this generation.
                        n.generation = current;
                    }
                    None => n.kernel = Some(c),
                    Some(_) => {
                        tracing::warn!("node table drift (tampering?): re-applying");
                        n.forget();
                        n.drifted = true;
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(
                    found = "no table",
                    "node table drift (tampering?): re-applying"
                );
                n.forget();
                n.drifted = true;
            }
            Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot verify the node table"),
        }
    }

    /// The node table is applied as desired (or the agent owns none).
    pub fn node_synced(&self) -> bool {
        self.node_table.as_ref().is_none_or(|n| {
            n.desired
                .as_ref()
                .is_some_and(|d| n.actual == Some(d.checksum))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::agent::{AgentConfig, CompiledRulesets};
    use crate::applier::{Recorded, RecordingApplier, node_key};
    use crate::manifests::ManifestDir;
    use crate::metrics::Metrics;
    use crate::nfnl::ElementOp;
    use crate::node::OWN_NETNS;

    fn pod(name: &str, app: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}, annotations: {{netpol.io/netns: ns-{name}}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
        )
    }

    /// a may send TCP `port` to the Pods labelled `app: b` only.
    fn policy(port: u16) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: e, namespace: x}}\nspec: {{podSelector: {{matchLabels: {{app: a}}}}, policyTypes: [Egress], egress: [{{to: [{{podSelector: {{matchLabels: {{app: b}}}}}}], ports: [{{port: {port}}}]}}]}}\n"
        )
    }

    struct Node {
        dir: tempfile::TempDir,
        src: ManifestDir,
        fake: Arc<RecordingApplier>,
        rec: Reconciler,
        metrics: Arc<Metrics>,
    }

    impl Node {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("pods.yaml"),
                pod("a", "a", "10.0.0.1") + &pod("b1", "b", "10.0.0.2"),
            )
            .unwrap();
            std::fs::write(dir.path().join("pol.yaml"), policy(80)).unwrap();
            let src = ManifestDir::new(dir.path(), None);
            let fake = Arc::new(RecordingApplier::with_generations());
            let metrics = Arc::new(Metrics::new());
            let rec = Reconciler::new(
                &AgentConfig {
                    node_table: true,
                    ..AgentConfig::default()
                },
                Arc::new(CompiledRulesets::default()),
                fake.clone(),
                metrics.clone(),
            );
            let mut n = Self {
                dir,
                src,
                fake,
                rec,
                metrics,
            };
            n.pass();
            assert!(n.rec.node_synced());
            assert!(
                n.node_calls()
                    .iter()
                    .any(|c| matches!(c, Recorded::Apply { .. }))
            );
            n.fake.clear_calls();
            n
        }

        fn pass(&mut self) {
            let scan = self.src.scan();
            if !scan.is_empty() {
                self.rec.handle_scan(scan);
            }
            self.rec.compile();
            self.rec.sync(Instant::now());
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.dir.path().join(file), text).unwrap();
        }

        fn node_calls(&self) -> Vec<Recorded> {
            self.fake
                .calls()
                .into_iter()
                .filter(|c| match c {
                    Recorded::Apply { pod, .. }
                    | Recorded::Update { pod, .. }
                    | Recorded::Rewrite { pod, .. }
                    | Recorded::Remove { pod, .. } => *pod == node_key(),
                })
                .collect()
        }
    }

    /// A peer of an egress-isolated Pod appearing and leaving changes only node-table
    /// map elements: one element update each, no table replace; a rule change (another
    /// port) replaces the table. See: #12
    #[test]
    fn node_table_peer_changes_are_element_updates_and_rule_changes_replace() {
        let mut n = Node::new();
        let (a, b1) = (pod("a", "a", "10.0.0.1"), pod("b1", "b", "10.0.0.2"));
        n.write(
            "pods.yaml",
            &[a.clone(), b1.clone(), pod("b2", "b", "10.0.0.7")].concat(),
        );
        n.pass();
        let calls = n.node_calls();
        assert!(
            matches!(&calls[..], [Recorded::Update { ops, .. }] if ops.iter().any(|o| matches!(o, ElementOp::Add(e) if e.first.to_string() == "10.0.0.7"))),
            "{calls:#?}"
        );
        let node = n.fake.table(OWN_NETNS).unwrap();
        assert!(node.contains("10.0.0.7"), "{node}");
        assert!(n.rec.node_synced());

        n.fake.clear_calls();
        n.write("pods.yaml", &[a.clone(), b1.clone()].concat());
        n.pass();
        let calls = n.node_calls();
        assert!(
            matches!(&calls[..], [Recorded::Update { ops, .. }] if ops.iter().all(|o| matches!(o, ElementOp::Delete(_)))),
            "{calls:#?}"
        );

        n.fake.clear_calls();
        n.write("pol.yaml", &policy(81));
        n.pass();
        let calls = n.node_calls();
        assert!(
            matches!(&calls[..], [Recorded::Apply { ruleset, .. }] if ruleset.contains("tcp . 81")),
            "{calls:#?}"
        );
        assert!(n.rec.node_synced());
    }

    /// The safety net lists nothing while the node namespace's generation is the one
    /// after the agent's commit; a commit by someone else that leaves the table alone
    /// is listed once and adopted; tampering is found and repaired. See: #12
    #[test]
    fn node_table_verify_uses_the_generation_and_repairs_tampering() {
        let mut n = Node::new();
        n.write(
            "pods.yaml",
            &[
                pod("a", "a", "10.0.0.1"),
                pod("b1", "b", "10.0.0.2"),
                pod("b2", "b", "10.0.0.7"),
            ]
            .concat(),
        );
        n.pass();
        assert!(matches!(&n.node_calls()[..], [Recorded::Update { .. }]));
        // The first check after an element update takes the baseline listing once.
        n.rec.verify();
        let lists = n.fake.lists();
        for _ in 0..3 {
            n.rec.verify();
        }
        assert_eq!(n.fake.lists(), lists, "steady state: no listing");

        // Someone else commits in the namespace without touching the table.
        let same = n.fake.table(OWN_NETNS).unwrap();
        n.fake.tamper(OWN_NETNS, Some(&same));
        n.rec.verify();
        assert_eq!(n.fake.lists(), lists + 1);
        n.rec.verify();
        assert_eq!(n.fake.lists(), lists + 1, "the new generation is adopted");
        assert!(n.rec.node_synced());

        // Tampering: found, re-applied and counted.
        n.fake.tamper(OWN_NETNS, Some("table inet netpol { }"));
        n.rec.verify();
        assert!(!n.rec.node_synced());
        n.fake.clear_calls();
        n.pass();
        assert!(matches!(&n.node_calls()[..], [Recorded::Apply { .. }]));
        assert_eq!(
            n.fake.table(OWN_NETNS).as_deref(),
            n.rec.node_table().as_deref()
        );
        assert_eq!(n.metrics.drift_repairs.get(), 1);
        assert!(n.rec.node_synced());

        // Deleted: the same.
        n.fake.tamper(OWN_NETNS, None);
        n.rec.verify();
        n.pass();
        assert_eq!(n.metrics.drift_repairs.get(), 2);
        assert!(n.fake.table(OWN_NETNS).is_some());
    }
}
