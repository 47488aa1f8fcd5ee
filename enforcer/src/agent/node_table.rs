//! The node table in the reconciler: `table inet netpol` in the agent's own network
//! namespace (with [`AgentConfig::node_table`](super::AgentConfig::node_table)):
//! desired, applied, kernel listing, retries; applied before the Pod tables of a pass.

use std::net::IpAddr;
use std::time::Instant;

use super::reconciler::earliest;
use super::{ErrorChain, Reconciler, SyncReport};
use crate::plan::{Backoff, Checksum, Desired, normalise_listing};

/// The agent's node table: desired, applied, kernel listing, retries.
#[derive(Debug, Default)]
pub(super) struct NodeTable {
    /// The node's addresses used by the last compile (own namespace + Node object).
    pub(super) addresses: Vec<IpAddr>,
    pub(super) desired: Option<Desired>,
    /// Checksum of what was last applied.
    actual: Option<Checksum>,
    /// Checksum of the normalised kernel listing right after the apply.
    kernel: Option<Checksum>,
    drifted: bool,
    backoff: Option<Backoff>,
    last_error: Option<String>,
}

impl Reconciler {
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
    pub(super) fn current_node_addresses(&self) -> Vec<IpAddr> {
        let own = self.applier.node_addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %ErrorChain(&e), "cannot list the node's own addresses");
            Vec::new()
        });
        crate::node::node_addresses(&own, self.node.as_deref().and_then(|n| self.state.node(n)))
    }

    /// Applies the node table when it differs from what was applied (and its backoff
    /// has expired). Runs before the Pods' tables: Service flows a Pod table lets out
    /// are judged by the node table, so it must be there first.
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
    pub(super) fn node_synced(&self) -> bool {
        self.node_table.as_ref().is_none_or(|n| {
            n.desired
                .as_ref()
                .is_some_and(|d| n.actual == Some(d.checksum))
        })
    }
}
