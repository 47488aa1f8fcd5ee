//! The feed: watcher events of every watched kind turned into state [`Event`]s, in one
//! place ([`Feed::handle`]).
//!
//! A watcher (re)starts with `Init`, lists with `InitApply`s and ends the list with
//! `InitDone`; after that come `Apply` / `Delete`. A relist replaces what is known *of
//! that kind only*: the feed buffers the listed objects and at `InitDone` emits an
//! `Apply` for each (the state index ignores unchanged content) and a `Delete` for every
//! object of that kind it had published and the list no longer holds. The state never
//! sees a partial relist: a relist that fails half way (an error, a new `Init`) is
//! dropped and the last known objects stay (fail closed).
//!
//! With [`Feed::with_metrics`] the feed also keeps the `netpol_watch_*` metrics, since it
//! sees everything a watcher reports: events ([`Feed::handle`]), errors ([`Feed::error`])
//! and watches the API server accepted ([`Feed::watching`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ::kube::runtime::watcher;
use k8s_openapi::Resource;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::metrics::{Metrics, WatchEventType};
use crate::state::{Event, Kind, Object, ObjectKey};

/// The `kind` label of a state kind: the resource it is watched as (`pods`).
pub fn resource(kind: Kind) -> &'static str {
    match kind {
        Kind::Namespace => Namespace::URL_PATH_SEGMENT,
        Kind::Pod => Pod::URL_PATH_SEGMENT,
        Kind::NetworkPolicy => NetworkPolicy::URL_PATH_SEGMENT,
        Kind::Service => Service::URL_PATH_SEGMENT,
        Kind::EndpointSlice => EndpointSlice::URL_PATH_SEGMENT,
        Kind::Node => Node::URL_PATH_SEGMENT,
        Kind::ClusterNetworkPolicy => super::ClusterPolicyResource::URL_PATH_SEGMENT,
        // Not watched; named for completeness.
        Kind::Workload(w) => w.lower(),
    }
}

#[derive(Debug, Default)]
struct KindFeed {
    /// Keys of the objects of this kind the state holds (as published by this feed).
    published: BTreeSet<ObjectKey>,
    /// Objects of a relist in progress.
    relist: Option<Vec<Object>>,
    /// A relist has completed at least once.
    synced: bool,
}

/// Per-kind bookkeeping between watchers and the state index.
#[derive(Debug)]
pub struct Feed {
    kinds: BTreeMap<Kind, KindFeed>,
    metrics: Option<Arc<Metrics>>,
}

impl Feed {
    /// A feed for these kinds; [`Feed::synced`] waits for every one of them.
    pub fn new(kinds: impl IntoIterator<Item = Kind>) -> Self {
        Self {
            kinds: kinds
                .into_iter()
                .map(|k| (k, KindFeed::default()))
                .collect(),
            metrics: None,
        }
    }

    /// Keeps the `netpol_watch_*` metrics of this feed's kinds in `metrics` (their series
    /// exist from now on, not synced).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        for kind in self.kinds.keys() {
            metrics.init_watch(resource(*kind));
        }
        self.metrics = Some(metrics);
        self
    }

    /// A watcher of `kind` failed (the watcher retries by itself): counted, and the kind
    /// is not synced until its watch works again. The state is not touched.
    pub fn error(&mut self, kind: Kind) {
        if let Some(m) = &self.metrics {
            m.record_watch_error(resource(kind));
        }
    }

    /// The API server accepted a watch of `kind`: after errors, the watch works again
    /// (no watcher event says so). Synced again if the kind was listed and no relist is
    /// in progress.
    pub fn watching(&mut self, kind: Kind) {
        let k = self.kinds.entry(kind).or_default();
        if let Some(m) = &self.metrics
            && k.synced
            && k.relist.is_none()
        {
            m.set_watch_synced(resource(kind), true);
        }
    }

    /// True once every kind has been listed completely: before that the view is
    /// incomplete and must not be compiled (a missing policy could open a Pod).
    pub fn synced(&self) -> bool {
        self.kinds.values().all(|k| k.synced)
    }

    /// Turns one watcher event of `kind` into state events. The only place watch events
    /// become state events.
    pub fn handle(&mut self, kind: Kind, event: watcher::Event<Object>) -> Vec<Event> {
        let k = self.kinds.entry(kind).or_default();
        // `Init` is the watcher's own marker, sent before it asks the API server.
        let from_server = !matches!(event, watcher::Event::Init);
        let (out, relisted) = Self::step(k, event);
        if let Some(m) = &self.metrics {
            let r = resource(kind);
            if from_server {
                m.touch_watch(r);
            }
            if relisted {
                m.record_watch_relist(r);
            }
            // Relisting (`Init`, `InitApply`) is not synced; an event after the list is.
            m.set_watch_synced(r, k.synced && k.relist.is_none());
            let applies = out.iter().filter(|e| matches!(e, Event::Apply(_))).count();
            let deletes = out.len() - applies;
            for (typ, n) in [
                (WatchEventType::Apply, applies),
                (WatchEventType::Delete, deletes),
            ] {
                if n > 0 {
                    m.record_watch_events(r, typ, n as u64);
                }
            }
        }
        out
    }

    /// The state events of one watcher event, and whether it completed a relist.
    fn step(k: &mut KindFeed, event: watcher::Event<Object>) -> (Vec<Event>, bool) {
        let out = match event {
            watcher::Event::Apply(obj) => {
                k.published.insert(obj.key());
                vec![Event::Apply(Arc::new(obj))]
            }
            watcher::Event::Delete(obj) => {
                let key = obj.key();
                k.published.remove(&key);
                vec![Event::Delete(key)]
            }
            watcher::Event::Init => {
                k.relist = Some(Vec::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                k.relist.get_or_insert_with(Vec::new).push(obj);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = k.relist.take().unwrap_or_default();
                let keys: BTreeSet<ObjectKey> = listed.iter().map(Object::key).collect();
                let mut out: Vec<Event> = k
                    .published
                    .difference(&keys)
                    .cloned()
                    .map(Event::Delete)
                    .collect();
                out.extend(listed.into_iter().map(|o| Event::Apply(Arc::new(o))));
                k.published = keys;
                k.synced = true;
                return (out, true);
            }
        };
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use policy_compiler::Located;

    fn pod(name: &str, app: &str) -> Object {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "x", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c"}]}
        }))
        .unwrap();
        Object::Pod(Located::unlocated(p))
    }

    fn policy(name: &str) -> Object {
        let p: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "x"}, "spec": {"podSelector": {}}
        }))
        .unwrap();
        Object::NetworkPolicy(Located::unlocated(p))
    }

    fn feed_all(feed: &mut Feed, state: &mut State, kind: Kind, evs: Vec<watcher::Event<Object>>) {
        for ev in evs {
            for e in feed.handle(kind, ev) {
                state.handle(e);
            }
        }
    }

    fn names(state: &State) -> Vec<String> {
        state.objects().map(|o| o.key().to_string()).collect()
    }

    #[test]
    fn relist_replaces_only_its_kind_and_only_when_done() {
        use watcher::Event::*;
        let mut feed = Feed::new([Kind::Pod, Kind::NetworkPolicy]);
        let mut state = State::new();
        feed_all(
            &mut feed,
            &mut state,
            Kind::Pod,
            vec![
                Init,
                InitApply(pod("a", "a")),
                InitApply(pod("b", "b")),
                InitDone,
            ],
        );
        assert!(!feed.synced(), "policies not listed yet");
        feed_all(
            &mut feed,
            &mut state,
            Kind::NetworkPolicy,
            vec![Init, InitApply(policy("p")), InitDone],
        );
        assert!(feed.synced());
        assert_eq!(names(&state), ["Pod x/a", "Pod x/b", "NetworkPolicy x/p"]);

        // A relist in progress changes nothing; one that restarts drops its buffer.
        let g = state.generation();
        feed_all(
            &mut feed,
            &mut state,
            Kind::Pod,
            vec![
                Init,
                InitApply(pod("z", "z")),
                Init,
                InitApply(pod("b", "b2")),
            ],
        );
        assert_eq!(state.generation(), g);
        // Done: a is gone, b changed, z was never complete; policies untouched.
        feed_all(&mut feed, &mut state, Kind::Pod, vec![InitDone]);
        assert_eq!(names(&state), ["Pod x/b", "NetworkPolicy x/p"]);

        // Same relist again: no change at all.
        let g = state.generation();
        feed_all(
            &mut feed,
            &mut state,
            Kind::Pod,
            vec![Init, InitApply(pod("b", "b2")), InitDone],
        );
        assert_eq!(state.generation(), g);
    }

    #[test]
    fn apply_and_delete_pass_through() {
        use watcher::Event::*;
        let mut feed = Feed::new([Kind::Pod]);
        let mut state = State::new();
        feed_all(
            &mut feed,
            &mut state,
            Kind::Pod,
            vec![
                Init,
                InitDone,
                Apply(pod("a", "a")),
                Apply(pod("c", "c")),
                Delete(pod("a", "a")),
            ],
        );
        assert_eq!(names(&state), ["Pod x/c"]);
        // An empty relist deletes what was added by watch events.
        feed_all(&mut feed, &mut state, Kind::Pod, vec![Init, InitDone]);
        assert!(state.is_empty());
    }

    #[test]
    fn metrics_follow_lists_errors_and_resumed_watches() {
        use crate::metrics::{Metrics, WatchEventType as T};
        use watcher::Event::*;
        let m = Arc::new(Metrics::new());
        let mut feed = Feed::new([Kind::Pod, Kind::NetworkPolicy]).with_metrics(m.clone());
        let mut state = State::new();
        assert!(!m.watch_synced("pods") && !m.watch_synced("networkpolicies"));
        assert!(
            m.encode()
                .contains("netpol_watch_synced{kind=\"networkpolicies\"} 0"),
            "series exist before the first list"
        );
        feed_all(&mut feed, &mut state, Kind::Pod, vec![Init]);
        assert_eq!(
            m.watch_last_event("pods"),
            0.0,
            "Init is not from the server"
        );
        feed_all(
            &mut feed,
            &mut state,
            Kind::Pod,
            vec![InitApply(pod("a", "a")), InitApply(pod("b", "b"))],
        );
        assert!(!m.watch_synced("pods"), "listing");
        feed_all(&mut feed, &mut state, Kind::Pod, vec![InitDone]);
        assert_eq!(m.watch_relists("pods"), 1);
        assert!(m.watch_synced("pods") && !m.watch_synced("networkpolicies"));
        assert_eq!(m.watch_events("pods", T::Apply), 2);
        assert!(m.watch_last_event("pods") > 0.0);

        // An error: not synced until the watch is accepted again.
        feed.error(Kind::Pod);
        assert_eq!(m.watch_errors("pods"), 1);
        assert!(!m.watch_synced("pods"));
        feed.watching(Kind::Pod);
        assert!(m.watch_synced("pods"));
        // Or until the next event.
        feed.error(Kind::Pod);
        feed_all(
            &mut feed,
            &mut state,
            Kind::Pod,
            vec![Delete(pod("a", "a"))],
        );
        assert!(m.watch_synced("pods"));
        assert_eq!(m.watch_events("pods", T::Delete), 1);

        // A relist (after 410): not synced while listing, even if a watch is accepted.
        feed.error(Kind::Pod);
        feed_all(&mut feed, &mut state, Kind::Pod, vec![Init]);
        feed.watching(Kind::Pod);
        assert!(!m.watch_synced("pods"));
        feed_all(
            &mut feed,
            &mut state,
            Kind::Pod,
            vec![InitApply(pod("c", "c")), InitDone],
        );
        assert_eq!(m.watch_relists("pods"), 2);
        assert!(m.watch_synced("pods"));
        // b deleted by the relist, c applied.
        assert_eq!(m.watch_events("pods", T::Apply), 3);
        assert_eq!(m.watch_events("pods", T::Delete), 2);
        assert_eq!(m.watch_errors("pods"), 3);

        // A kind never listed stays unsynced when a watch is accepted.
        feed.watching(Kind::NetworkPolicy);
        assert!(!m.watch_synced("networkpolicies"));
    }
}
