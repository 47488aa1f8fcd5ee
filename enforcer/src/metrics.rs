//! The agent's Prometheus metrics (prometheus-client), served on `/metrics`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `netpol_applies_total` | counter | rulesets loaded into a Pod netns |
//! | `netpol_element_updates_total` | counter | applies done as peer-map element updates (one netlink transaction, no table replace) |
//! | `netpol_apply_errors_total` | counter | failed applies (kernel kept the last good ruleset) |
//! | `netpol_removes_total` | counter | tables removed for Pods that are gone |
//! | `netpol_drift_repairs_total` | counter | tables found changed behind the agent's back and re-applied |
//! | `netpol_pods_enforced` | gauge | Pods whose kernel table equals the desired ruleset |
//! | `netpol_netns_conflicts` | gauge | netns claimed by several local Pods (deny-all there; `/readyz` 503) |
//! | `netpol_apply_duration_seconds` | histogram | one apply (nft transaction) |
//! | `netpol_reconcile_duration_seconds` | histogram | one reconcile pass (compile, render, plan, apply) |
//! | `netpol_compile_errors_total` | counter | compilations or renders refused (last good kept) |
//! | `netpol_manifest_errors_total` | counter | invalid manifest files (last good objects kept) |
//! | `netpol_drops_total{namespace,pod,direction,tier}` | counter | packets dropped by policy (NFLOG); `tier`: `networkpolicy`, `admin` or `baseline` |
//! | `netpol_audit_drops_total{namespace,pod,direction,tier}` | counter | packets accepted that audit policies (`netpol.io/mode: audit`) would drop (docs/audit.md); same labels |
//! | `netpol_drops_suppressed_total` | counter | drops not reported individually (aggregator key bound) |
//! | `netpol_drop_listeners` | gauge | Pod namespaces with a bound NFLOG listener |
//! | `netpol_cni_requests_total{command,result}` | counter | `netpol-cni` requests (ADD, DEL, CHECK) answered ok or error |
//! | `netpol_cni_add_duration_seconds` | histogram | ADD received to answered (the Pod's ruleset applied) |
//! | `netpol_cni_fast_adds_total` | counter | ADDs answered after the Pod's own table alone was applied (fast path, before the pass that updates its peers) |
//! | `netpol_cni_rechains_total` | counter | times the agent chained netpol-cni again after the primary CNI dropped it |
//! | `netpol_watch_errors_total{kind}` | counter | Kubernetes watcher errors (unreachable, HTTP errors, 410 before a relist, decode errors) |
//! | `netpol_watch_relists_total{kind}` | counter | complete lists of a kind (the first one and every relist) |
//! | `netpol_watch_events_total{kind,type}` | counter | state events delivered by the Kubernetes source (`apply`, `delete`) |
//! | `netpol_watch_synced{kind}` | gauge | 1: listed and watching; 0: never listed, relisting or failing |
//! | `netpol_watch_last_event_timestamp_seconds{kind}` | gauge | unix time of the last watcher event of the kind |
//!
//! `kind` is the watched resource: `namespaces`, `pods`, `networkpolicies`. The `watch_`
//! families stay empty when the agent reads a manifest directory.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

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
    /// The stage that dropped: `networkpolicy`, `admin` or `baseline` (the
    /// ClusterNetworkPolicy tiers); bounded, the rule is in the drop report.
    pub tier: String,
}

impl DropLabels {
    fn new(namespace: &str, pod: &str, direction: Direction, tier: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            direction: direction.as_str().to_owned(),
            tier: tier.to_owned(),
        }
    }
}

/// Labels of `netpol_cni_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CniLabels {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of the `netpol_watch_*` families.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WatchLabels {
    /// The watched resource (`namespaces`, `pods`, `networkpolicies`).
    pub kind: &'static str,
}

/// Labels of `netpol_watch_events_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WatchEventLabels {
    /// The watched resource.
    pub kind: &'static str,
    /// `apply` or `delete`.
    pub r#type: &'static str,
}

/// A state event type, as counted by `netpol_watch_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEventType {
    /// An object added or changed.
    Apply,
    /// An object removed.
    Delete,
}

impl WatchEventType {
    /// The label value (`apply`, `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventType::Apply => "apply",
            WatchEventType::Delete => "delete",
        }
    }
}

/// Every metric of the agent and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Rulesets applied.
    pub applies: Counter,
    /// Applies done as peer-map element updates (counted in `applies` too).
    pub element_updates: Counter,
    /// Failed applies.
    pub apply_errors: Counter,
    /// Tables removed.
    pub removes: Counter,
    /// Drifted tables re-applied.
    pub drift_repairs: Counter,
    /// Pods whose table equals the desired ruleset.
    pub pods_enforced: Gauge,
    /// Network namespaces claimed by more than one local Pod (denied, fail closed).
    pub netns_conflicts: Gauge,
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
    /// Accepted packets that audit policies would drop, by Pod and direction (#12).
    pub audit_drops: Family<DropLabels, Counter>,
    /// Drops counted but not reported individually (the aggregator's key bound).
    pub drops_suppressed: Counter,
    /// Pod namespaces with a bound NFLOG listener.
    pub drop_listeners: Gauge,
    /// `netpol-cni` requests by command and result.
    pub cni_requests: Family<CniLabels, Counter>,
    /// Seconds from an ADD's arrival to its answer.
    pub cni_add_seconds: Histogram,
    /// ADDs answered by the fast path (the Pod's own table alone applied first).
    pub cni_fast_adds: Counter,
    /// Times netpol-cni was chained again.
    pub cni_rechains: Counter,
    /// Kubernetes watcher errors by kind.
    pub watch_errors: Family<WatchLabels, Counter>,
    /// Complete lists by kind.
    pub watch_relists: Family<WatchLabels, Counter>,
    /// State events delivered by the Kubernetes source, by kind and type.
    pub watch_events: Family<WatchEventLabels, Counter>,
    /// 1 while a kind is listed and its watch healthy, else 0.
    pub watch_synced: Family<WatchLabels, Gauge>,
    /// Unix time of the last watcher event, by kind.
    pub watch_last_event: Family<WatchLabels, Gauge<f64, AtomicU64>>,
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
        let element_updates = Counter::default();
        let removes = Counter::default();
        let drift_repairs = Counter::default();
        let pods_enforced = Gauge::default();
        let netns_conflicts = Gauge::default();
        // 1 ms .. ~16 s
        let apply_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let reconcile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let compile_errors = Counter::default();
        let manifest_errors = Counter::default();
        let drops = Family::<DropLabels, Counter>::default();
        let audit_drops = Family::<DropLabels, Counter>::default();
        let drops_suppressed = Counter::default();
        let drop_listeners = Gauge::default();
        let cni_requests = Family::<CniLabels, Counter>::default();
        let cni_add_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let cni_rechains = Counter::default();
        let cni_fast_adds = Counter::default();
        registry.register(
            "cni_fast_adds",
            "netpol-cni ADDs answered after the Pod's own table alone was applied (fast path)",
            cni_fast_adds.clone(),
        );
        registry.register(
            "cni_rechains",
            "Times netpol-cni was chained again into the node's CNI configuration",
            cni_rechains.clone(),
        );
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
        let watch_errors = Family::<WatchLabels, Counter>::default();
        let watch_relists = Family::<WatchLabels, Counter>::default();
        let watch_events = Family::<WatchEventLabels, Counter>::default();
        let watch_synced = Family::<WatchLabels, Gauge>::default();
        let watch_last_event = Family::<WatchLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "applies",
            "Rulesets loaded into a Pod network namespace",
            applies.clone(),
        );
        registry.register(
            "element_updates",
            "Applies done as peer-map element updates in one netlink transaction",
            element_updates.clone(),
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
            "netns_conflicts",
            "Network namespaces claimed by more than one local Pod (deny-all applied there)",
            netns_conflicts.clone(),
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
            "audit_drops",
            "Packets accepted that audit policies would drop, by Pod and direction",
            audit_drops.clone(),
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
        registry.register(
            "watch_errors",
            "Kubernetes watcher errors (API unreachable, HTTP errors, 410 Gone before a relist, decode errors), by kind",
            watch_errors.clone(),
        );
        registry.register(
            "watch_relists",
            "Complete lists of a kind by the Kubernetes source (the first one and every relist)",
            watch_relists.clone(),
        );
        registry.register(
            "watch_events",
            "State events delivered by the Kubernetes source, by kind and type (apply, delete)",
            watch_events.clone(),
        );
        registry.register(
            "watch_synced",
            "1 while the kind is listed completely and its watch is healthy; 0 while never listed, relisting or failing",
            watch_synced.clone(),
        );
        registry.register(
            "watch_last_event_timestamp_seconds",
            "Unix time of the last watcher event of the kind (bookmarks are not seen)",
            watch_last_event.clone(),
        );
        Self {
            registry,
            applies,
            element_updates,
            apply_errors,
            removes,
            drift_repairs,
            pods_enforced,
            netns_conflicts,
            apply_seconds,
            reconcile_seconds,
            compile_errors,
            manifest_errors,
            drops,
            audit_drops,
            drops_suppressed,
            drop_listeners,
            cni_requests,
            cni_add_seconds,
            cni_rechains,
            cni_fast_adds,
            watch_errors,
            watch_relists,
            watch_events,
            watch_synced,
            watch_last_event,
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

    /// Creates the `netpol_watch_*` series of a kind at zero (not synced), so that they
    /// exist before the first list completes.
    pub fn init_watch(&self, kind: &'static str) {
        // `get_or_create` creates the series; the guards it returns are not needed.
        let l = WatchLabels { kind };
        drop(self.watch_errors.get_or_create(&l));
        drop(self.watch_relists.get_or_create(&l));
        self.watch_synced.get_or_create(&l).set(0);
        drop(self.watch_last_event.get_or_create(&l));
        for t in [WatchEventType::Apply, WatchEventType::Delete] {
            drop(self.watch_events.get_or_create(&WatchEventLabels {
                kind,
                r#type: t.as_str(),
            }));
        }
    }

    /// Counts a watcher error of `kind`; the kind is not synced until it recovers.
    pub fn record_watch_error(&self, kind: &'static str) {
        let l = WatchLabels { kind };
        self.watch_errors.get_or_create(&l).inc();
        self.watch_synced.get_or_create(&l).set(0);
    }

    /// Counts a complete list of `kind`.
    pub fn record_watch_relist(&self, kind: &'static str) {
        self.watch_relists
            .get_or_create(&WatchLabels { kind })
            .inc();
    }

    /// Counts `n` state events of `kind` and type `typ`.
    pub fn record_watch_events(&self, kind: &'static str, typ: WatchEventType, n: u64) {
        self.watch_events
            .get_or_create(&WatchEventLabels {
                kind,
                r#type: typ.as_str(),
            })
            .inc_by(n);
    }

    /// Sets whether `kind` is synced (listed and watching without error).
    pub fn set_watch_synced(&self, kind: &'static str, synced: bool) {
        self.watch_synced
            .get_or_create(&WatchLabels { kind })
            .set(i64::from(synced));
    }

    /// Records that a watcher event of `kind` arrived now.
    pub fn touch_watch(&self, kind: &'static str) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.watch_last_event
            .get_or_create(&WatchLabels { kind })
            .set(now);
    }

    /// Current value of `netpol_watch_errors_total{kind}`.
    pub fn watch_errors(&self, kind: &'static str) -> u64 {
        self.watch_errors.get_or_create(&WatchLabels { kind }).get()
    }

    /// Current value of `netpol_watch_relists_total{kind}`.
    pub fn watch_relists(&self, kind: &'static str) -> u64 {
        self.watch_relists
            .get_or_create(&WatchLabels { kind })
            .get()
    }

    /// Current value of `netpol_watch_events_total{kind,type}`.
    pub fn watch_events(&self, kind: &'static str, typ: WatchEventType) -> u64 {
        self.watch_events
            .get_or_create(&WatchEventLabels {
                kind,
                r#type: typ.as_str(),
            })
            .get()
    }

    /// Current value of `netpol_watch_synced{kind}`.
    pub fn watch_synced(&self, kind: &'static str) -> bool {
        self.watch_synced.get_or_create(&WatchLabels { kind }).get() == 1
    }

    /// Current value of `netpol_watch_last_event_timestamp_seconds{kind}` (0: none yet).
    pub fn watch_last_event(&self, kind: &'static str) -> f64 {
        self.watch_last_event
            .get_or_create(&WatchLabels { kind })
            .get()
    }

    /// Counts `packets` dropped packets of a Pod in a direction by a stage
    /// (`networkpolicy`, `admin`, `baseline`; for the drops module).
    pub fn record_drops(
        &self,
        namespace: &str,
        pod: &str,
        direction: Direction,
        tier: &str,
        packets: u64,
    ) {
        self.drops
            .get_or_create(&DropLabels::new(namespace, pod, direction, tier))
            .inc_by(packets);
    }

    /// Counts `packets` accepted packets of a Pod in a direction that audit policies
    /// would drop, by stage (the labels of [`Metrics::record_drops`]). See: #12
    pub fn record_audit_drops(
        &self,
        namespace: &str,
        pod: &str,
        direction: Direction,
        tier: &str,
        packets: u64,
    ) {
        self.audit_drops
            .get_or_create(&DropLabels::new(namespace, pod, direction, tier))
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
        m.record_drops("x", "a", Direction::Ingress, "networkpolicy", 2);
        m.record_drops("x", "a", Direction::Ingress, "networkpolicy", 1);
        m.record_drops("x", "a", Direction::Egress, "admin", 1);
        m.record_cni("ADD", true);
        m.init_watch("pods");
        m.init_watch("namespaces");
        m.record_watch_relist("pods");
        m.set_watch_synced("pods", true);
        m.record_watch_error("namespaces");
        m.record_watch_events("pods", WatchEventType::Apply, 2);
        m.touch_watch("pods");
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
            "netpol_drops_total{namespace=\"x\",pod=\"a\",direction=\"ingress\",tier=\"networkpolicy\"} 3",
            "netpol_drops_total{namespace=\"x\",pod=\"a\",direction=\"egress\",tier=\"admin\"} 1",
            "netpol_drops_suppressed_total 0",
            "netpol_drop_listeners 0",
            "netpol_cni_requests_total{command=\"ADD\",result=\"ok\"} 1",
            "netpol_cni_add_duration_seconds_count 0",
            "# TYPE netpol_watch_errors counter",
            "netpol_watch_errors_total{kind=\"namespaces\"} 1",
            "netpol_watch_errors_total{kind=\"pods\"} 0",
            "netpol_watch_relists_total{kind=\"pods\"} 1",
            "netpol_watch_relists_total{kind=\"namespaces\"} 0",
            "netpol_watch_events_total{kind=\"pods\",type=\"apply\"} 2",
            "netpol_watch_events_total{kind=\"pods\",type=\"delete\"} 0",
            "netpol_watch_synced{kind=\"pods\"} 1",
            "netpol_watch_synced{kind=\"namespaces\"} 0",
            "# TYPE netpol_watch_last_event_timestamp_seconds gauge",
            "netpol_watch_last_event_timestamp_seconds{kind=\"namespaces\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert!(m.watch_last_event("pods") > 1.6e9, "unix seconds");
        assert!(m.watch_synced("pods") && !m.watch_synced("namespaces"));
    }
}
