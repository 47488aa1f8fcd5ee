//! The agent's Prometheus metrics (prometheus-client), served on `/metrics`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `netpol_applies_total` | counter | rulesets loaded into a Pod netns |
//! | `netpol_apply_errors_total` | counter | failed applies (kernel kept the last good ruleset) |
//! | `netpol_removes_total` | counter | tables removed for Pods that are gone |
//! | `netpol_drift_repairs_total` | counter | tables found changed behind the agent's back and re-applied |
//! | `netpol_pods_enforced` | gauge | Pods whose kernel table equals the desired ruleset |
//! | `netpol_apply_duration_seconds` | histogram | one apply (nft transaction) |
//! | `netpol_reconcile_duration_seconds` | histogram | one reconcile pass (compile, render, plan, apply) |
//! | `netpol_compile_errors_total` | counter | compilations or renders refused (last good kept) |
//! | `netpol_manifest_errors_total` | counter | invalid manifest files (last good objects kept) |
//! | `netpol_drops_total{namespace,pod,direction}` | counter | packets dropped by policy (NFLOG) |
//! | `netpol_drops_suppressed_total` | counter | drops not reported individually (aggregator key bound) |
//! | `netpol_drop_listeners` | gauge | Pod namespaces with a bound NFLOG listener |
//! | `netpol_cni_requests_total{command,result}` | counter | `netpol-cni` requests (ADD, DEL, CHECK) answered ok or error |
//! | `netpol_cni_add_duration_seconds` | histogram | ADD received to answered (the Pod's ruleset applied) |

use std::time::Duration;

use policy_compiler::Direction;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `netpol_drops_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub pod: String,
    /// `ingress` or `egress`.
    pub direction: String,
}

/// Labels of `netpol_cni_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CniLabels {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Every metric of the agent and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Rulesets applied.
    pub applies: Counter,
    /// Failed applies.
    pub apply_errors: Counter,
    /// Tables removed.
    pub removes: Counter,
    /// Drifted tables re-applied.
    pub drift_repairs: Counter,
    /// Pods whose table equals the desired ruleset.
    pub pods_enforced: Gauge,
    /// Seconds per apply.
    pub apply_seconds: Histogram,
    /// Seconds per reconcile pass.
    pub reconcile_seconds: Histogram,
    /// Refused compilations and renders.
    pub compile_errors: Counter,
    /// Invalid manifest files.
    pub manifest_errors: Counter,
    /// Dropped packets by Pod and direction.
    pub drops: Family<DropLabels, Counter>,
    /// Drops counted but not reported individually (the aggregator's key bound).
    pub drops_suppressed: Counter,
    /// Pod namespaces with a bound NFLOG listener.
    pub drop_listeners: Gauge,
    /// `netpol-cni` requests by command and result.
    pub cni_requests: Family<CniLabels, Counter>,
    /// Seconds from an ADD's arrival to its answer.
    pub cni_add_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric (prefix `netpol_`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netpol");
        let applies = Counter::default();
        let apply_errors = Counter::default();
        let removes = Counter::default();
        let drift_repairs = Counter::default();
        let pods_enforced = Gauge::default();
        // 1 ms .. ~16 s
        let apply_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let compile_errors = Counter::default();
        let manifest_errors = Counter::default();
        let drops = Family::<DropLabels, Counter>::default();
        let drops_suppressed = Counter::default();
        let drop_listeners = Gauge::default();
        let cni_requests = Family::<CniLabels, Counter>::default();
        let cni_add_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "cni_requests",
            "netpol-cni requests (ADD, DEL, CHECK) by result",
            cni_requests.clone(),
        );
        registry.register(
            "cni_add_duration_seconds",
            "Time from a netpol-cni ADD to its answer (the Pod's ruleset applied)",
            cni_add_seconds.clone(),
        );
        registry.register(
            "applies",
            "Rulesets loaded into a Pod network namespace",
            applies.clone(),
        );
        registry.register(
            "apply_errors",
            "Failed applies; the kernel kept the last good ruleset",
            apply_errors.clone(),
        );
        registry.register(
            "removes",
            "netpol tables removed for Pods that are gone",
            removes.clone(),
        );
        registry.register(
            "drift_repairs",
            "Tables changed behind the agent's back (tampering) and re-applied",
            drift_repairs.clone(),
        );
        registry.register(
            "pods_enforced",
            "Local Pods whose kernel table equals the desired ruleset",
            pods_enforced.clone(),
        );
        registry.register(
            "apply_duration_seconds",
            "Time of one apply (one nft transaction in a Pod netns)",
            apply_seconds.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass (compile, render, plan, apply)",
            reconcile_seconds.clone(),
        );
        registry.register(
            "compile_errors",
            "Compilations or renders refused; the last good rulesets stay",
            compile_errors.clone(),
        );
        registry.register(
            "manifest_errors",
            "Invalid manifest files; their last good objects stay",
            manifest_errors.clone(),
        );
        registry.register(
            "drops",
            "Packets dropped by policy, by Pod and direction",
            drops.clone(),
        );
        registry.register(
            "drops_suppressed",
            "Dropped packets not reported individually (the aggregator's key bound was hit)",
            drops_suppressed.clone(),
        );
        registry.register(
            "drop_listeners",
            "Pod network namespaces with a bound NFLOG drop listener",
            drop_listeners.clone(),
        );
        Self {
            registry,
            applies,
            apply_errors,
            removes,
            drift_repairs,
            pods_enforced,
            apply_seconds,
            reconcile_seconds,
            compile_errors,
            manifest_errors,
            drops,
            drops_suppressed,
            drop_listeners,
            cni_requests,
            cni_add_seconds,
        }
    }

    /// Counts one answered `netpol-cni` request.
    pub fn record_cni(&self, command: &str, ok: bool) {
        self.cni_requests
            .get_or_create(&CniLabels {
                command: command.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    /// Counts `packets` dropped packets of a Pod in a direction (for the drops module).
    pub fn record_drops(&self, namespace: &str, pod: &str, direction: Direction, packets: u64) {
        self.drops
            .get_or_create(&DropLabels {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                direction: direction.as_str().to_owned(),
            })
            .inc_by(packets);
    }

    /// Records the duration of one apply.
    pub fn observe_apply(&self, took: Duration) {
        self.apply_seconds.observe(took.as_secs_f64());
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_metric() {
        let m = Metrics::new();
        m.applies.inc();
        m.observe_apply(Duration::from_millis(3));
        m.record_drops("x", "a", Direction::Ingress, 2);
        m.record_drops("x", "a", Direction::Ingress, 1);
        m.record_cni("ADD", true);
        let text = m.encode();
        for name in [
            "netpol_applies_total 1",
            "netpol_apply_errors_total 0",
            "netpol_removes_total 0",
            "netpol_drift_repairs_total 0",
            "netpol_pods_enforced 0",
            "netpol_apply_duration_seconds_count 1",
            "netpol_reconcile_duration_seconds_count 0",
            "netpol_compile_errors_total 0",
            "netpol_manifest_errors_total 0",
            "netpol_drops_total{namespace=\"x\",pod=\"a\",direction=\"ingress\"} 3",
            "netpol_drops_suppressed_total 0",
            "netpol_drop_listeners 0",
            "netpol_cni_requests_total{command=\"ADD\",result=\"ok\"} 1",
            "netpol_cni_add_duration_seconds_count 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
