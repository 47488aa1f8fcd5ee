//! One peer sweep per distinct lookup per compile, shared by every table that needs it
//! (issue #12: a peer change must not re-render every table).
//!
//! A table's NetworkPolicy peer lookups (maps, class chains, port sets) are a function
//! of a [`PeerClassifier`] and of the members of the peer sets it names
//! (`policy_compiler::ruleset::split`). Within one compile the model and graph are
//! fixed, so equal classifiers give equal lookups: [`SharedRenders`] sweeps each
//! distinct classifier once, and renders what every table with that lookup needs once
//! too: the `elements = { … }` text of its maps, its peer entries, and per distinct
//! combination of lookups the table's entry set and its digest. What is left per table
//! is its skeleton (chains and rules, no map elements: small) and the skeleton's text;
//! the table's whole text is spliced from the skeleton and the shared element text only
//! when an apply needs it (`plan::TableText`), so the element text is held once.
//!
//! 110 local Pods selected alike (the node-scale benchmark) cost one sweep of ~3,300
//! peer addresses per event instead of 110. The renders are byte-identical to
//! `compile_pod`'s (`reconciler/equivalence.rs` compares them after every event).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use policy_compiler::ruleset::{PeerClassifier, PeerEntry, PeerLookup};
use policy_compiler::{AllowGraph, Model};

use crate::plan::{EntriesDigest, entries_digest};

/// A lookup swept once, with what every table using it needs.
pub struct Swept {
    /// The lookup.
    pub lookup: Arc<PeerLookup>,
    /// The `elements = { … }` block of each of its maps, in map order (kept by the
    /// tables' spliced texts, [`crate::plan::TableText`], after the compile).
    pub elements: Arc<[String]>,
}

/// The entry set of a table (all its lookups' map elements) and its digest.
#[derive(Clone)]
pub struct SharedEntries {
    /// The entries.
    pub entries: Arc<BTreeSet<PeerEntry>>,
    /// Their digest ([`entries_digest`]).
    pub digest: EntriesDigest,
}

type Cell<T> = Arc<OnceLock<T>>;

/// The per-compile memo of peer lookups: one per distinct classifier, read by the
/// render threads concurrently (a thread needing a lookup another thread is sweeping
/// waits for it instead of sweeping again).
pub struct SharedRenders<'m> {
    model: &'m Model,
    graph: &'m AllowGraph,
    by_classifier: Mutex<HashMap<PeerClassifier, Cell<Arc<Swept>>>>,
    /// The same lookups by address (the memo holds them: an address is not reused while
    /// it is here).
    by_address: Mutex<HashMap<usize, Arc<Swept>>>,
    /// Entry sets by the addresses of the lookups they are made of.
    tables: Mutex<HashMap<Vec<usize>, Cell<SharedEntries>>>,
    /// Lookups asked for (swept or shared).
    asked: AtomicUsize,
}

/// The memo's maps only ever gain whole entries under their lock, so a lock poisoned
/// by a panicking render thread still guards consistent data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'m> SharedRenders<'m> {
    /// An empty memo for one compiled model and graph.
    pub fn new(model: &'m Model, graph: &'m AllowGraph) -> Self {
        Self {
            model,
            graph,
            by_classifier: Mutex::new(HashMap::new()),
            by_address: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
            asked: AtomicUsize::new(0),
        }
    }

    /// The model the memo sweeps against.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The graph the memo sweeps against.
    pub fn graph(&self) -> &'m AllowGraph {
        self.graph
    }

    /// The lookup of `c`, swept on first use.
    pub fn lookup(&self, c: &PeerClassifier) -> Arc<PeerLookup> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let cell = lock(&self.by_classifier)
            .entry(c.clone())
            .or_default()
            .clone();
        let swept = cell.get_or_init(|| {
            let lookup = Arc::new(c.sweep(self.model, self.graph));
            let elements = lookup.maps().iter().map(|m| m.elements_nft()).collect();
            let swept = Arc::new(Swept { lookup, elements });
            lock(&self.by_address).insert(Arc::as_ptr(&swept.lookup) as usize, swept.clone());
            swept
        });
        swept.lookup.clone()
    }

    /// What was swept for `lookup` (one this memo returned), else `None`.
    pub fn swept(&self, lookup: &Arc<PeerLookup>) -> Option<Arc<Swept>> {
        lock(&self.by_address)
            .get(&(Arc::as_ptr(lookup) as usize))
            .cloned()
    }

    /// The entry set of a table whose maps are those of `lookups` (all from this memo),
    /// built once per distinct combination.
    pub fn entries(&self, lookups: &[Arc<PeerLookup>]) -> SharedEntries {
        let key: Vec<usize> = lookups.iter().map(|l| Arc::as_ptr(l) as usize).collect();
        let cell = lock(&self.tables).entry(key).or_default().clone();
        cell.get_or_init(|| {
            let entries: BTreeSet<PeerEntry> = lookups
                .iter()
                .flat_map(|l| l.maps().iter().flat_map(|m| m.peer_entries()))
                .collect();
            SharedEntries {
                digest: entries_digest(&entries),
                entries: Arc::new(entries),
            }
        })
        .clone()
    }

    /// Lookups asked for so far (each swept or shared).
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }

    /// Distinct lookups swept so far.
    pub fn sweeps(&self) -> usize {
        lock(&self.by_address).len()
    }
}
