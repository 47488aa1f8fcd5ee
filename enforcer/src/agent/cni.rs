//! The agent's handling of `netpol-cni` requests.
//!
//! `ADD` records the sandbox (netns, IPs) in the state index (so the Pod is local and
//! the next pass puts its addresses in its peers' sets) and waits, as a [`PendingAdds`]
//! entry, until the Pod's own ruleset is applied, by the fast path
//! ([`super::fast_add`]) or by a pass; then the plugin is answered. If the Pod is
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
        let pod = request_pod(request)?;
        match request.command {
            Command::Add => {
                let record = add_record(request)?;
                let before = self.state.generation();
                if self.state.cni_add(pod.clone(), record.clone()) {
                    self.note_cni_add(before);
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
        let Some(record) = self.pods.get(pod).filter(|r| r.desired.is_some()) else {
            return CniStatus::Failed(format!(
                "Pod {pod} has no ruleset on this node (another node's, hostNetwork, or finished)"
            ));
        };
        if record.enforced() {
            return CniStatus::Enforced;
        }
        match &record.last_error {
            Some(e) => CniStatus::Failed(format!("applying the ruleset failed: {e}")),
            None => CniStatus::Waiting("applying".to_owned()),
        }
    }
}

/// The Pod a plugin request names, checked.
pub(super) fn request_pod(request: &Request) -> Result<PodKey, String> {
    let pod = PodKey::new(request.pod.namespace.clone(), request.pod.name.clone());
    if PodKey::parse(&pod.to_string()).as_ref() != Some(&pod) {
        return Err(format!("invalid Pod name {pod}"));
    }
    Ok(pod)
}

/// The CNI record an `ADD` request makes, checked (netns handle and path, addresses).
pub(super) fn add_record(request: &Request) -> Result<CniRecord, String> {
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
    Ok(CniRecord {
        container_id: request.container_id.clone(),
        netns: handle,
        ips: request.ips.clone(),
        uid: request.pod.uid.clone(),
    })
}

struct Pending {
    pod: PodKey,
    since: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Response>,
    /// The fast path ([`Reconciler::fast_add`]) was tried for this request.
    tried: bool,
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
            tried: false,
        });
    }

    /// The Pods of requests the fast path was not tried for yet (each once), marking
    /// them tried.
    pub(super) fn untried(&mut self) -> Vec<PodKey> {
        let mut out: Vec<PodKey> = Vec::new();
        for p in self.waiting.iter_mut().filter(|p| !p.tried) {
            p.tried = true;
            if !out.contains(&p.pod) {
                out.push(p.pod.clone());
            }
        }
        out
    }

    /// True when the fast path was not tried yet for some request.
    pub(super) fn has_untried(&self) -> bool {
        self.waiting.iter().any(|p| !p.tried)
    }

    /// Answers (ok) the requests of `enforced` Pods: the fast path applied their tables.
    pub(super) fn answer_fast(&mut self, enforced: &[PodKey], now: Instant) -> Answered {
        let mut done = Vec::new();
        let waiting = std::mem::take(&mut self.waiting);
        for p in waiting {
            if !enforced.contains(&p.pod) {
                self.waiting.push(p);
                continue;
            }
            let waited = now.duration_since(p.since);
            done.push((p.pod.clone(), true, waited));
            // The plugin may have given up already; nothing to do then.
            let _ = p.reply.send(Response::ok(format!(
                "ruleset of {} applied ({} ms, before its peers' tables)",
                p.pod,
                waited.as_millis()
            )));
        }
        done
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
