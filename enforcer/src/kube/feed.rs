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

use std::collections::{BTreeMap, BTreeSet};

use ::kube::runtime::watcher;

use crate::state::{Event, Kind, Object, ObjectKey};

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
}

impl Feed {
    /// A feed for these kinds; [`Feed::synced`] waits for every one of them.
    pub fn new(kinds: impl IntoIterator<Item = Kind>) -> Self {
        Self {
            kinds: kinds
                .into_iter()
                .map(|k| (k, KindFeed::default()))
                .collect(),
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
        match event {
            watcher::Event::Apply(obj) => {
                k.published.insert(obj.key());
                vec![Event::Apply(Box::new(obj))]
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
                out.extend(listed.into_iter().map(|o| Event::Apply(Box::new(o))));
                k.published = keys;
                k.synced = true;
                out
            }
        }
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
}
