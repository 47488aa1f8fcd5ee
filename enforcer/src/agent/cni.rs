//! The agent's handling of `netpol-cni` requests.
//!
//! `ADD` records the sandbox (netns, IPs) in the state index (so the Pod is local and
//! its addresses are in its peers' sets at once) and waits, as a [`PendingAdds`] entry,
//! until a pass has applied the Pod's ruleset; then the plugin is answered. If the Pod is
//! not in the index yet (the watch lags the kubelet), the source's
//! [`PodLookup`](crate::source::PodLookup) fetches it. `DEL` records the teardown and is
//! answered at once. `CHECK` answers from what the kernel holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Reconciler;
use crate::cni::records::RecordStore;
use crate::cni::{Command, Request, Response};
use crate::netns;
use crate::state::{CniRecord, Object, PodKey};

/// Where a Pod stands for the CNI plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniStatus {
    /// Its ruleset is applied and equal to the desired one.
    Enforced,
    /// Not yet; why.
    Waiting(String),
    /// It cannot be enforced; why.
    Failed(String),
}

pub(super) enum RecordWrite {
    Save(PodKey, CniRecord),
    Remove(PodKey),
}

impl Reconciler {
    /// Persists CNI records in `store` from now on, and loads the ones saved by an
    /// earlier agent into the state (their Pods are local again at once).
    pub fn attach_records(&mut self, store: RecordStore) {
        let (records, errors) = store.load();
        for e in &errors {
            tracing::warn!(error = %netpol_common::ErrorChain(e), "cni record skipped (the Pod falls back to netns discovery)");
        }
        tracing::info!(dir = %store.dir().display(), records = records.len(), "cni records loaded");
        for (pod, record) in records {
            self.state.cni_add(pod, record);
        }
        self.records = Some(store);
    }

    /// Takes a plugin request into the state. `Ok(pod)`: recorded (an `ADD` then waits
    /// for a pass); `Err`: refused at once, with the reason.
    pub fn cni_request(&mut self, request: &Request) -> Result<PodKey, String> {
        let pod = PodKey::new(request.pod.namespace.clone(), request.pod.name.clone());
        if PodKey::parse(&pod.to_string()).as_ref() != Some(&pod) {
            return Err(format!("invalid Pod name {pod}"));
        }
        match request.command {
            Command::Add => {
                let handle = netns::from_path(&request.netns);
                netns::validate_name(&handle).map_err(|e| e.to_string())?;
                if !netns::is_path(&request.netns) {
                    return Err(format!(
                        "CNI_NETNS {:?} is not an absolute path",
                        request.netns
                    ));
                }
                if request.ips.is_empty() {
                    return Err("no IP addresses in the request".to_owned());
                }
                let record = CniRecord {
                    container_id: request.container_id.clone(),
                    netns: handle,
                    ips: request.ips.clone(),
                    uid: request.pod.uid.clone(),
                };
                if self.state.cni_add(pod.clone(), record.clone()) {
                    self.record_writes
                        .push(RecordWrite::Save(pod.clone(), record));
                }
            }
            Command::Del => {
                if self.state.cni_del(&pod, &request.container_id) {
                    self.record_writes.push(RecordWrite::Remove(pod.clone()));
                }
            }
            Command::Check => {}
        }
        Ok(pod)
    }

    /// Writes the record changes made since the last call (blocking IO: call it from the
    /// pass, not from an async task). A failed write is logged: the record still holds
    /// in memory; only a restart before the next write would lose it.
    pub fn flush_records(&mut self) {
        let writes = std::mem::take(&mut self.record_writes);
        let Some(store) = &self.records else { return };
        for w in writes {
            let result = match &w {
                RecordWrite::Save(pod, rec) => store.save(pod, rec),
                RecordWrite::Remove(pod) => store.remove(pod),
            };
            if let Err(e) = result {
                tracing::error!(error = %netpol_common::ErrorChain(&e), "cannot persist cni record");
            }
        }
    }

    /// Forgets live records whose namespace is gone (the sandbox died without a `DEL`
    /// reaching the agent) and tombstones of Pods gone from the index.
    pub fn prune_cni(&mut self) {
        let dead: Vec<PodKey> = self
            .state
            .cni()
            .iter()
            .filter_map(|(pod, e)| match e {
                crate::state::CniEntry::Live(r) if !netns::path(&r.netns).exists() => {
                    Some(pod.clone())
                }
                _ => None,
            })
            .collect();
        for pod in dead {
            tracing::info!(namespace = %pod.namespace, pod = %pod.name, "cni record dropped: its netns is gone");
            self.state.cni_forget(&pod);
            self.record_writes.push(RecordWrite::Remove(pod));
        }
        self.state.prune_cni();
    }

    /// Applies objects fetched for a CNI request (not a source scan: completeness is
    /// unchanged). Objects the index already has are left alone: the watch is at least
    /// as new.
    pub fn handle_lookup(&mut self, objects: Vec<Object>) {
        for obj in objects {
            let newer_incarnation = match (self.state.get(&obj.key()), &obj) {
                (None, _) => true,
                (Some(Object::Pod(have)), Object::Pod(got)) => {
                    have.object.metadata.uid != got.object.metadata.uid
                }
                _ => false,
            };
            if newer_incarnation {
                self.state.apply(obj);
            }
        }
    }

    /// Whether the index lacks `pod` (or holds another incarnation of it than the
    /// plugin's `uid`).
    pub fn needs_lookup(&self, pod: &PodKey, uid: Option<&str>) -> bool {
        match self.state.pod(pod) {
            None => true,
            Some(Object::Pod(p)) => match (uid, p.object.metadata.uid.as_deref()) {
                (Some(want), Some(have)) => want != have,
                _ => false,
            },
            Some(_) => false,
        }
    }

    /// Where `pod` stands after the last pass.
    pub fn cni_status(&self, pod: &PodKey) -> CniStatus {
        if self.state.pod(pod).is_none() {
            return CniStatus::Waiting(format!(
                "Pod {pod} is not known to the agent (not in its source yet)"
            ));
        }
        if self.state.cni_record(pod).is_none() {
            return CniStatus::Waiting(format!(
                "the CNI record of {pod} is for another incarnation of the Pod (UID differs)"
            ));
        }
        if !self.complete {
            return CniStatus::Waiting("the agent's source is not complete yet".to_owned());
        }
        if let Some((generation, reason)) = &self.refused
            && *generation == self.state.generation()
        {
            return CniStatus::Failed(format!("compilation refused: {reason}"));
        }
        if self.compiled_generation != Some(self.state.generation()) {
            return CniStatus::Waiting("compiling".to_owned());
        }
        let Some(desired) = self.desired.get(pod) else {
            return CniStatus::Failed(format!(
                "Pod {pod} has no ruleset on this node (another node's, hostNetwork, or finished)"
            ));
        };
        match self.actual.get(pod) {
            Some(a) if a.netns == desired.netns && a.checksum == Some(desired.checksum) => {
                CniStatus::Enforced
            }
            _ => match self.last_error.get(pod) {
                Some(e) => CniStatus::Failed(format!("applying the ruleset failed: {e}")),
                None => CniStatus::Waiting("applying".to_owned()),
            },
        }
    }
}

struct Pending {
    pod: PodKey,
    since: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Response>,
}

/// `ADD` requests waiting for their Pod's ruleset.
#[derive(Default)]
pub(super) struct PendingAdds {
    waiting: Vec<Pending>,
}

/// What [`PendingAdds::answer`] answered: `(pod, ok, waited)`.
pub(super) type Answered = Vec<(PodKey, bool, Duration)>;

impl PendingAdds {
    /// Waits for `pod`; the agent answers by `deadline` at the latest.
    pub(super) fn push(
        &mut self,
        pod: PodKey,
        now: Instant,
        deadline: Instant,
        reply: oneshot::Sender<Response>,
    ) {
        self.waiting.push(Pending {
            pod,
            since: now,
            deadline,
            reply,
        });
    }

    /// The earliest deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|p| p.deadline).min()
    }

    /// Answers every request whose Pod is enforced or failed, or whose deadline passed.
    pub(super) fn answer(&mut self, rec: &Reconciler, now: Instant) -> Answered {
        let mut done = Vec::new();
        let mut statuses: BTreeMap<PodKey, CniStatus> = BTreeMap::new();
        let waiting = std::mem::take(&mut self.waiting);
        for p in waiting {
            let status = statuses
                .entry(p.pod.clone())
                .or_insert_with(|| rec.cni_status(&p.pod))
                .clone();
            let response = match status {
                CniStatus::Enforced => Response::ok(format!(
                    "ruleset of {} applied ({} ms)",
                    p.pod,
                    now.duration_since(p.since).as_millis()
                )),
                CniStatus::Failed(why) => Response::error(why),
                CniStatus::Waiting(why) if now >= p.deadline => {
                    Response::error(format!("not enforced in time: {why}"))
                }
                CniStatus::Waiting(_) => {
                    self.waiting.push(p);
                    continue;
                }
            };
            let ok = response.ok;
            if !ok {
                tracing::warn!(namespace = %p.pod.namespace, pod = %p.pod.name, reason = response.message, "cni ADD refused");
            }
            done.push((p.pod.clone(), ok, now.duration_since(p.since)));
            // The plugin may have given up already; nothing to do then.
            let _ = p.reply.send(response);
        }
        done
    }
}

impl Reconciler {
    /// Finds, by IP, the netns of this node's Pods that have none from the annotation, a
    /// CNI record or the map (Pods started before the plugin), when discovery is on and
    /// a node is set; also when a netns found earlier has disappeared. Conflicts map
    /// nothing and are logged. Blocking (enters namespaces on its own thread).
    pub fn discover_netns(&mut self) {
        let (Some(options), Some(node)) = (&self.discovery, self.node.as_deref()) else {
            return;
        };
        let local = self.state.local_pods(Some(node));
        let mut wanted: BTreeMap<std::net::IpAddr, PodKey> = BTreeMap::new();
        let mut missing = 0usize;
        for obj in self.state.objects() {
            let Object::Pod(p) = obj else { continue };
            let (spec, status) = (p.object.spec.as_ref(), p.object.status.as_ref());
            if spec.and_then(|s| s.node_name.as_deref()) != Some(node)
                || !policy_compiler::model::pod_gets_ruleset(&p.object)
            {
                continue;
            }
            let ips: Vec<std::net::IpAddr> = status
                .into_iter()
                .flat_map(|s| {
                    s.pod_ips
                        .iter()
                        .flatten()
                        .map(|i| i.ip.clone())
                        .chain(s.pod_ip.clone())
                })
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if ips.is_empty() {
                continue;
            }
            let key = obj.key();
            let pod = PodKey::new(key.namespace, key.name);
            let stale = self
                .state
                .discovered()
                .get(&pod)
                .is_some_and(|h| local.get(&pod) == Some(h) && !netns::path(h).exists());
            if !local.contains_key(&pod) || stale {
                missing += 1;
            }
            for ip in ips {
                wanted.insert(ip, pod.clone());
            }
        }
        if missing == 0 {
            return;
        }
        match crate::discovery::discover(options, &wanted) {
            Ok(found) => {
                for c in &found.conflicts {
                    tracing::warn!(conflict = %c, "netns discovery: ambiguous, nothing mapped");
                }
                for e in &found.errors {
                    tracing::debug!(error = %netpol_common::ErrorChain(e), "netns discovery: candidate skipped");
                }
                // Only what no better source gives.
                let mut map = BTreeMap::new();
                for (pod, handle) in found.found {
                    let better = local
                        .get(&pod)
                        .is_some_and(|h| self.state.discovered().get(&pod) != Some(h));
                    if !better {
                        map.insert(pod, handle);
                    }
                }
                if map != *self.state.discovered() {
                    tracing::info!(
                        pods = map.len(),
                        scanned = found.scanned,
                        "netns discovered by Pod IP"
                    );
                }
                self.state.set_discovered(map);
            }
            Err(e) => {
                tracing::warn!(error = %netpol_common::ErrorChain(&e), "netns discovery failed");
            }
        }
    }
}

impl Reconciler {
    /// Chains `netpol-cni` into the node's CNI configuration again if the primary CNI
    /// rewrote it without the entry (with [`super::CniConfig::chain`]). Counted in
    /// `netpol_cni_rechains_total`; a problem is logged when it first appears.
    pub fn ensure_chained(&mut self) {
        let Some(chain) = &self.chain else { return };
        let dir = &chain.conf_dir;
        let result = crate::cni::install::is_chained(dir).and_then(|chained| {
            if chained {
                Ok(None)
            } else {
                crate::cni::install::chain(dir, &chain.entry).map(Some)
            }
        });
        match result {
            Ok(None) => self.chain_problem = None,
            Ok(Some(outcome)) => {
                self.chain_problem = None;
                self.metrics.cni_rechains.inc();
                tracing::warn!(%outcome, "netpol-cni was not chained in the node's CNI configuration (rewritten by the primary CNI?): chained again");
            }
            Err(e) => {
                let problem = netpol_common::ErrorChain(&e).to_string();
                if self.chain_problem.as_deref() != Some(&problem) {
                    tracing::error!(
                        error = problem,
                        "cannot keep netpol-cni chained: new Pods may start without waiting for their policy"
                    );
                    self.chain_problem = Some(problem);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{AgentConfig, ChainConfig, CniConfig, CompiledRulesets, Reconciler};
    use crate::applier::RecordingApplier;
    use crate::cni::install::{PluginConfig, is_chained};
    use crate::metrics::Metrics;

    // See: #5
    #[test]
    fn ensure_chained_chains_again_after_the_primary_cni_rewrites_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let flannel = r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel","delegate":{"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let file = dir.path().join("10-flannel.conflist");
        std::fs::write(&file, flannel).unwrap();
        let metrics = Arc::new(Metrics::new());
        let config = AgentConfig {
            cni: Some(CniConfig {
                socket: "/run/netpol/cni.sock".into(),
                records: None,
                chain: Some(ChainConfig {
                    conf_dir: dir.path().to_owned(),
                    entry: PluginConfig::default(),
                }),
            }),
            ..AgentConfig::default()
        };
        let mut rec = Reconciler::new(
            &config,
            Arc::new(CompiledRulesets::default()),
            Arc::new(RecordingApplier::new()),
            metrics.clone(),
        );
        rec.ensure_chained();
        assert!(is_chained(dir.path()).unwrap());
        assert_eq!(metrics.cni_rechains.get(), 1);
        rec.ensure_chained();
        assert_eq!(
            metrics.cni_rechains.get(),
            1,
            "already chained: nothing written"
        );
        // The primary CNI writes its configuration again, without our entry.
        std::fs::write(&file, flannel).unwrap();
        rec.ensure_chained();
        assert!(is_chained(dir.path()).unwrap());
        assert_eq!(metrics.cni_rechains.get(), 2);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let types: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["flannel", "portmap", "netpol-cni"]);
        // No configuration at all: a problem, remembered, not a panic.
        std::fs::remove_file(&file).unwrap();
        rec.ensure_chained();
        assert!(rec.chain_problem.is_some());
        assert_eq!(metrics.cni_rechains.get(), 2);
    }
}
