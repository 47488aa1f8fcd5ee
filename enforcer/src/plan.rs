//! Pure planning: what to do to make the kernel hold the desired rulesets.
//!
//! [`plan`] compares the desired ruleset of every local Pod with what the agent knows is
//! in the kernel and returns one [`Op`] per Pod (plus removals of tables left in
//! namespaces no Pod uses any more). [`Backoff`] spaces out retries of failed operations.
//! Nothing here does IO or reads the clock: callers pass `now`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_compiler::ruleset::{PeerEntry, PodSplit, Ruleset};
use sha2::{Digest, Sha256};

use crate::nfnl::ElementOp;

use crate::state::PodKey;

/// SHA-256 of a ruleset text (or of a normalised kernel listing).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    /// The checksum of `text`.
    pub fn of(text: &str) -> Self {
        Self(Sha256::digest(text.as_bytes()).into())
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({})", self.short())
    }
}

/// The ruleset a Pod should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The Pod's network namespace.
    pub netns: String,
    /// What the kernel should hold: checksum of `text`, or with [`Desired::parts`], of
    /// the skeleton and the entries (review comments of map elements do not count).
    pub checksum: Checksum,
    /// `nft -f` text replacing `table inet netpol` in one transaction (held, or made
    /// when asked for from a split render: [`TableText`]).
    pub text: TableText,
    /// The ruleset split into skeleton and peer-map entries (`None`: the renderer
    /// gives only text; every change replaces the table).
    pub parts: Option<Arc<Parts>>,
    /// The compiled ruleset `text` was rendered from, when the renderer keeps it: an
    /// applier that speaks netlink loads the table from it with no `nft` process
    /// ([`crate::nfnl::NftSocket::replace_table`]); `None`: `text` is loaded with
    /// `nft -f`. Never part of the identity (`checksum`).
    pub ruleset: Option<TableIr>,
}

/// The `nft -f` text of a table. A table rendered from shared peer lookups (docs/agent.md
/// "Shared peer lookups") does not hold its text: it is made when an apply or a caller
/// needs it, from the table's skeleton and the element text its lookups share with
/// alike tables (one copy for all of them), byte-identical to the text a whole render
/// gives. Held, 110 alike tables kept 110 copies of the same peer-map elements (at a
/// 10,000-Pod view a seventh of the agent's live memory). See: #12
#[derive(Debug, Clone)]
pub enum TableText {
    /// The text itself.
    Held(Arc<str>),
    /// Made on demand from a split render.
    Spliced(Arc<SplicedText>),
}

/// What [`TableText::Spliced`] makes the text from.
#[derive(Debug)]
pub struct SplicedText {
    /// The table's skeleton and its lookups.
    pub split: Arc<PodSplit>,
    /// Per lookup (in the split's order), the `elements = { … }` block of each of its
    /// maps, shared by every table with that lookup.
    pub elements: Vec<Arc<[String]>>,
}

impl TableText {
    /// The text (borrowed when held, made when spliced).
    pub fn get(&self) -> Cow<'_, str> {
        match self {
            TableText::Held(t) => Cow::Borrowed(t),
            TableText::Spliced(s) => {
                let elements: Vec<&str> = s
                    .elements
                    .iter()
                    .flat_map(|e| e.iter().map(String::as_str))
                    .collect();
                Cow::Owned(s.split.skeleton.to_nft_with(&elements))
            }
        }
    }
}

impl From<Arc<str>> for TableText {
    fn from(text: Arc<str>) -> Self {
        TableText::Held(text)
    }
}

impl From<String> for TableText {
    fn from(text: String) -> Self {
        TableText::Held(text.into())
    }
}

impl From<&str> for TableText {
    fn from(text: &str) -> Self {
        TableText::Held(text.into())
    }
}

/// Equal when the texts are (a held and a spliced text can be equal).
impl PartialEq for TableText {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TableText::Held(a), TableText::Held(b)) if Arc::ptr_eq(a, b) => true,
            (TableText::Spliced(a), TableText::Spliced(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.get() == other.get(),
        }
    }
}

impl Eq for TableText {}

impl fmt::Display for TableText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.get())
    }
}

/// The compiled table behind a [`Desired`], for loading it over netlink: whole, or (from
/// a shared render, docs/agent.md "Shared peer lookups") the Pod's skeleton and the
/// peer lookups it shares with alike tables, made whole only when a replace needs it,
/// so a table keeps no copy of the shared peer-map elements. See: #12
#[derive(Debug, Clone)]
pub enum TableIr {
    /// The whole ruleset.
    Whole(Arc<Ruleset>),
    /// A skeleton and its shared lookups ([`PodSplit`]).
    Split(Arc<PodSplit>),
}

impl TableIr {
    /// The whole ruleset.
    pub fn ruleset(&self) -> std::borrow::Cow<'_, Ruleset> {
        match self {
            TableIr::Whole(rs) => std::borrow::Cow::Borrowed(rs),
            TableIr::Split(split) => std::borrow::Cow::Owned(split.to_ruleset()),
        }
    }
}

impl TableIr {
    /// The ruleset with the elements of the maps named in `keep` left out (a rewrite
    /// does not read them, [`crate::nfnl::table::encode_rewrite`]): a split render
    /// copies only the other maps' elements. See: #12
    pub fn ruleset_keeping(&self, keep: &BTreeSet<String>) -> std::borrow::Cow<'_, Ruleset> {
        match self {
            TableIr::Whole(rs) => std::borrow::Cow::Borrowed(rs),
            TableIr::Split(split) => {
                let mut rs = split.skeleton.clone();
                rs.maps = split
                    .lookups
                    .iter()
                    .flat_map(|l| l.maps())
                    .map(|m| {
                        if keep.contains(&m.name) {
                            policy_compiler::ruleset::PeerMap {
                                name: m.name.clone(),
                                family: m.family,
                                elements: Vec::new(),
                            }
                        } else {
                            m.clone()
                        }
                    })
                    .collect();
                std::borrow::Cow::Owned(rs)
            }
        }
    }
}

/// Equal when they make the same ruleset (a whole and a split one can be equal).
impl PartialEq for TableIr {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TableIr::Whole(a), TableIr::Whole(b)) if Arc::ptr_eq(a, b) => true,
            (TableIr::Split(a), TableIr::Split(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.ruleset() == other.ruleset(),
        }
    }
}

impl Eq for TableIr {}

/// A ruleset split as [`policy_compiler::ruleset::Ruleset::skeleton`] and
/// [`policy_compiler::ruleset::Ruleset::peer_entries`] split it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// Checksum of the skeleton's text: when it changes the table is replaced.
    pub skeleton: Checksum,
    /// The peer-map elements: when only they change, elements are added and deleted.
    /// Shared by every table with the same elements ([`Parts::share_entries`]).
    pub entries: Arc<BTreeSet<PeerEntry>>,
}

impl Parts {
    /// These parts with their entry set taken from `pool` when an equal one is there
    /// (else added to it): tables whose peers are alike keep one copy. See: #12
    pub fn share_entries(self: &Arc<Self>, pool: &mut EntryPool) -> Arc<Self> {
        let shared = pool.intern(&self.entries);
        if Arc::ptr_eq(&shared, &self.entries) {
            return self.clone();
        }
        Arc::new(Parts {
            skeleton: self.skeleton,
            entries: shared,
        })
    }
}

/// Distinct entry sets, for [`Parts::share_entries`]; kept across compiles, so a set
/// already shared is found by its address without hashing its elements.
#[derive(Debug, Default)]
pub struct EntryPool {
    /// The shared sets by content hash.
    sets: HashMap<u64, Vec<Arc<BTreeSet<PeerEntry>>>>,
    /// The shared sets by address (the pool keeps them alive: an address is never
    /// reused while it is here).
    by_address: HashMap<usize, Arc<BTreeSet<PeerEntry>>>,
}

impl EntryPool {
    /// The pool's set equal to `entries`, or `entries` itself (then added).
    pub fn intern(&mut self, entries: &Arc<BTreeSet<PeerEntry>>) -> Arc<BTreeSet<PeerEntry>> {
        let address = Arc::as_ptr(entries) as usize;
        if let Some(same) = self.by_address.get(&address) {
            return same.clone();
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        entries.len().hash(&mut h);
        for e in entries.iter() {
            e.hash(&mut h);
        }
        let bucket = self.sets.entry(h.finish()).or_default();
        if let Some(same) = bucket.iter().find(|s| **s == *entries) {
            return same.clone();
        }
        bucket.push(entries.clone());
        self.by_address.insert(address, entries.clone());
        entries.clone()
    }

    /// Forgets the sets no table uses any more.
    pub fn prune(&mut self) {
        // The pool itself holds two references to each set.
        self.by_address.retain(|_, s| Arc::strong_count(s) > 2);
        // Order does not matter: each set is kept or dropped on its own.
        self.sets.retain(|_, bucket| {
            bucket.retain(|s| Arc::strong_count(s) > 2);
            !bucket.is_empty()
        });
    }

    /// Distinct entry sets held.
    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    /// True when no set is held.
    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }
}

impl Desired {
    /// A desired ruleset, checksummed.
    pub fn new(netns: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        let text = text.into();
        Self {
            netns: netns.into(),
            checksum: Checksum::of(&text),
            text: TableText::Held(text),
            parts: None,
            ruleset: None,
        }
    }

    /// This desired ruleset with the compiled ruleset its text was rendered from.
    pub fn with_ruleset(mut self, ruleset: Arc<Ruleset>) -> Self {
        self.ruleset = Some(TableIr::Whole(ruleset));
        self
    }

    /// This desired ruleset with the split render its text was made from (skeleton and
    /// shared lookups; [`TableIr::Split`]).
    pub fn with_split(mut self, split: Arc<PodSplit>) -> Self {
        self.ruleset = Some(TableIr::Split(split));
        self
    }

    /// A desired ruleset with its parts: `text` (the whole table), the skeleton's text
    /// and the peer-map entries.
    pub fn with_parts(
        netns: impl Into<String>,
        text: impl Into<Arc<str>>,
        skeleton: &str,
        entries: impl IntoIterator<Item = PeerEntry>,
    ) -> Self {
        let entries: BTreeSet<PeerEntry> = entries.into_iter().collect();
        let digest = entries_digest(&entries);
        Self::with_shared_parts(
            netns,
            TableText::Held(text.into()),
            skeleton,
            Arc::new(entries),
            digest,
        )
    }

    /// [`Desired::with_parts`] with an entry set shared with other tables and its
    /// [`entries_digest`] computed once for all of them (the same checksum); the text
    /// may be spliced ([`TableText`]): the checksum does not read it. See: #12
    pub fn with_shared_parts(
        netns: impl Into<String>,
        text: impl Into<TableText>,
        skeleton: &str,
        entries: Arc<BTreeSet<PeerEntry>>,
        digest: EntriesDigest,
    ) -> Self {
        let mut identity = Sha256::new();
        identity.update((skeleton.len() as u64).to_le_bytes());
        identity.update(skeleton.as_bytes());
        identity.update(digest.0);
        Self {
            netns: netns.into(),
            checksum: Checksum(identity.finalize().into()),
            text: text.into(),
            parts: Some(Arc::new(Parts {
                skeleton: Checksum::of(skeleton),
                entries,
            })),
            ruleset: None,
        }
    }
}

/// SHA-256 over a peer-entry set (each entry's text, in order): the entries' part of a
/// [`Desired::checksum`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntriesDigest(pub [u8; 32]);

/// The [`EntriesDigest`] of `entries`.
pub fn entries_digest(entries: &BTreeSet<PeerEntry>) -> EntriesDigest {
    use std::fmt::Write as _;
    let mut h = Sha256::new();
    let mut line = String::new();
    for e in entries {
        line.clear();
        // Writing into a String cannot fail.
        let _ = writeln!(line, "{e}");
        h.update(line.as_bytes());
    }
    EntriesDigest(h.finalize().into())
}

/// The element changes from `old` to `new`: deletions of entries only in `old`,
/// additions of entries only in `new` (a changed verdict or range is both), in entry
/// order.
pub fn element_ops(old: &BTreeSet<PeerEntry>, new: &BTreeSet<PeerEntry>) -> Vec<ElementOp> {
    old.difference(new)
        .cloned()
        .map(ElementOp::Delete)
        .chain(new.difference(old).cloned().map(ElementOp::Add))
        .collect()
}

/// What the agent knows a Pod's namespace holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    /// The namespace the table is in.
    pub netns: String,
    /// Checksum of the ruleset text last applied there; `None` when the kernel no longer
    /// holds it (drift) or holds something unknown.
    pub checksum: Option<Checksum>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Load the ruleset into the namespace (one transaction replacing the table).
    Apply {
        /// The Pod.
        pod: PodKey,
        /// Its namespace.
        netns: String,
        /// Checksum of `text`.
        checksum: Checksum,
        /// The ruleset.
        text: TableText,
        /// The compiled ruleset of `text`, when known ([`Desired::ruleset`]).
        ruleset: Option<TableIr>,
    },
    /// Only peer-map elements differ from what was applied: delete and add them in one
    /// transaction, conditional on the namespace's generation (nothing else committed
    /// there since the agent's last commit); a stale generation replaces the table.
    Update {
        /// The Pod.
        pod: PodKey,
        /// Its namespace.
        netns: String,
        /// The desired checksum the update reaches.
        checksum: Checksum,
        /// The whole ruleset (the fallback when the generation is stale).
        text: TableText,
        /// The compiled ruleset of `text`, when known ([`Desired::ruleset`]).
        ruleset: Option<TableIr>,
        /// The element changes.
        ops: Vec<ElementOp>,
        /// The generation the kernel must still be at.
        generation: u32,
    },
    /// The rules differ from what was applied but the peer maps' entries in the kernel
    /// are known (the generation is the one after the agent's last commit): change the
    /// table in one transaction keeping those maps, with their element changes
    /// ([`crate::applier::Applier::rewrite`]); a stale generation or an applier that
    /// cannot replaces the table whole. See: #12
    Rewrite {
        /// The Pod.
        pod: PodKey,
        /// Its namespace.
        netns: String,
        /// The desired checksum the rewrite reaches.
        checksum: Checksum,
        /// The whole ruleset (the fallback; made on demand from a split render).
        text: TableText,
        /// The compiled ruleset of `text`.
        ruleset: TableIr,
        /// The peer-map entries the kernel holds now (what was applied).
        old: Arc<BTreeSet<PeerEntry>>,
        /// The desired peer-map entries.
        new: Arc<BTreeSet<PeerEntry>>,
        /// The element changes from `old` to the desired entries.
        ops: Vec<ElementOp>,
        /// The generation the kernel must still be at.
        generation: u32,
    },
    /// Delete `table inet netpol` from the namespace (the Pod is gone or moved).
    Remove {
        /// The Pod the table belonged to.
        pod: PodKey,
        /// The namespace.
        netns: String,
    },
}

impl Op {
    /// The Pod the operation is about.
    pub fn pod(&self) -> &PodKey {
        match self {
            Op::Apply { pod, .. }
            | Op::Update { pod, .. }
            | Op::Rewrite { pod, .. }
            | Op::Remove { pod, .. } => pod,
        }
    }
}

/// Plans the operations that make `actual` equal to `desired`, in Pod order: only work
/// to do.
///
/// - desired and actual agree (same namespace, same checksum): nothing;
/// - only peer-map elements differ from what is known to be in the kernel (same
///   skeleton, same namespace, generation known): [`Op::Update`];
/// - the rules differ but the kernel's peer-map entries are known (same namespace,
///   generation known, compiled ruleset at hand): [`Op::Rewrite`], which keeps those
///   maps and sends their element changes;
/// - otherwise [`Op::Apply`], which replaces the table atomically (never a flush first);
/// - a Pod that moved namespace also gets [`Op::Remove`] of its old table, and a Pod that
///   is no longer desired gets [`Op::Remove`], unless a desired Pod now uses that
///   namespace (its apply replaces the table anyway).
pub fn plan(desired: &BTreeMap<PodKey, Desired>, actual: &BTreeMap<PodKey, Actual>) -> Vec<Op> {
    let pods: BTreeSet<&PodKey> = desired.keys().chain(actual.keys()).collect();
    let states: Vec<(&PodKey, PodState<'_>)> = pods
        .into_iter()
        .map(|p| {
            let state = PodState {
                desired: desired.get(p),
                actual: actual.get(p),
                applied_parts: None,
                generation: None,
            };
            (p, state)
        })
        .collect();
    plan_pods(&states)
}

/// One Pod's side of a plan: what it should have, what the agent knows is there.
#[derive(Debug, Clone, Copy)]
pub struct PodState<'a> {
    /// The desired ruleset (`None`: the Pod is no longer desired).
    pub desired: Option<&'a Desired>,
    /// What was applied (`None`: nothing known in the kernel).
    pub actual: Option<&'a Actual>,
    /// The parts of what was applied, when known exactly.
    pub applied_parts: Option<&'a Parts>,
    /// The namespace's generation right after the agent's last commit there (`None`:
    /// unknown, so no element update: the kernel may hold something else).
    pub generation: Option<u32>,
}

impl PodState<'_> {
    /// The element update from what was applied to `d`, if only elements differ and the
    /// kernel's content is known exactly. `diffs` keeps the element changes already
    /// computed between two shared entry sets (alike tables share both: one diff).
    fn update_to(&self, d: &Desired, diffs: &mut Diffs) -> Option<(Vec<ElementOp>, u32)> {
        let a = self.actual?;
        let (old, new) = (self.applied_parts?, d.parts.as_deref()?);
        let generation = self.generation?;
        (a.netns == d.netns && a.checksum.is_some() && old.skeleton == new.skeleton).then(|| {
            // Both sets are borrowed for the whole plan: their addresses stay theirs.
            let key = (
                Arc::as_ptr(&old.entries) as usize,
                Arc::as_ptr(&new.entries) as usize,
            );
            let ops = diffs
                .entry(key)
                .or_insert_with(|| element_ops(&old.entries, &new.entries));
            (ops.clone(), generation)
        })
    }

    /// The rewrite from what was applied to `d` when the rules differ, the kernel's
    /// peer-map entries are known exactly and `d` has its compiled ruleset.
    fn rewrite_to(&self, pod: &PodKey, d: &Desired, diffs: &mut Diffs) -> Option<Op> {
        let a = self.actual?;
        let (old, new) = (self.applied_parts?, d.parts.as_deref()?);
        let generation = self.generation?;
        let ruleset = d.ruleset.clone()?;
        if a.netns != d.netns || a.checksum.is_none() {
            return None;
        }
        let key = (
            Arc::as_ptr(&old.entries) as usize,
            Arc::as_ptr(&new.entries) as usize,
        );
        let ops = diffs
            .entry(key)
            .or_insert_with(|| element_ops(&old.entries, &new.entries))
            .clone();
        Some(Op::Rewrite {
            pod: pod.clone(),
            netns: d.netns.clone(),
            checksum: d.checksum,
            text: d.text.clone(),
            ruleset,
            old: old.entries.clone(),
            new: new.entries.clone(),
            ops,
            generation,
        })
    }
}

/// Element changes by (old entry set, new entry set) address, within one plan.
type Diffs = HashMap<(usize, usize), Vec<ElementOp>>;

/// [`plan`] over per-Pod records (`pods` sorted by Pod, each Pod once), as the
/// reconciler keeps them.
pub fn plan_pods(pods: &[(&PodKey, PodState<'_>)]) -> Vec<Op> {
    let mut diffs = Diffs::new();
    let in_use: BTreeSet<&str> = pods
        .iter()
        .filter_map(|(_, s)| s.desired.map(|d| d.netns.as_str()))
        .collect();
    let mut ops = Vec::new();
    for (pod, state) in pods {
        let pod = *pod;
        match (state.desired, state.actual) {
            (Some(d), a) => {
                let same = a.is_some_and(|a| a.netns == d.netns && a.checksum == Some(d.checksum));
                if !same {
                    match state.update_to(d, &mut diffs) {
                        Some((elements, generation)) => ops.push(Op::Update {
                            pod: pod.clone(),
                            netns: d.netns.clone(),
                            checksum: d.checksum,
                            text: d.text.clone(),
                            ruleset: d.ruleset.clone(),
                            ops: elements,
                            generation,
                        }),
                        None => match state.rewrite_to(pod, d, &mut diffs) {
                            Some(op) => ops.push(op),
                            None => ops.push(Op::Apply {
                                pod: pod.clone(),
                                netns: d.netns.clone(),
                                checksum: d.checksum,
                                text: d.text.clone(),
                                ruleset: d.ruleset.clone(),
                            }),
                        },
                    }
                }
                if let Some(a) = a
                    && a.netns != d.netns
                    && !in_use.contains(a.netns.as_str())
                {
                    ops.push(Op::Remove {
                        pod: pod.clone(),
                        netns: a.netns.clone(),
                    });
                }
            }
            (None, Some(a)) => {
                // A desired Pod now using the namespace replaces the table anyway.
                if !in_use.contains(a.netns.as_str()) {
                    ops.push(Op::Remove {
                        pod: pod.clone(),
                        netns: a.netns.clone(),
                    });
                }
            }
            // Neither desired nor applied: nothing to do (the reconciler keeps no such
            // record; a caller's map may).
            (None, None) => {}
        }
    }
    ops
}

/// Exponential backoff of one failing operation: `base`, `2 base`, `4 base`, ... up to
/// `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Consecutive failures.
    pub failures: u32,
    /// Earliest time of the next attempt.
    pub next: Instant,
}

/// Delays of [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl BackoffPolicy {
    /// The delay after `failures` consecutive failures (`failures >= 1`).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }

    /// Records one more failure at `now`.
    pub fn fail(&self, previous: Option<Backoff>, now: Instant) -> Backoff {
        let failures = previous.map_or(0, |b| b.failures).saturating_add(1);
        Backoff {
            failures,
            next: now + self.delay(failures),
        }
    }
}

impl Backoff {
    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        now >= self.next
    }
}

/// A kernel listing (`nft list table inet netpol`) reduced to what the agent controls:
/// whitespace collapsed, counter values (`packets N bytes N`) and rule handles dropped.
/// Two listings of the same ruleset normalise to the same text whatever traffic passed.
pub fn normalise_listing(listing: &str) -> String {
    let mut out = Vec::new();
    let mut tokens = listing.split_whitespace().peekable();
    while let Some(t) = tokens.next() {
        let numeric = tokens
            .peek()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if matches!(t, "packets" | "bytes" | "handle") && numeric {
            tokens.next();
            continue;
        }
        if t == "#" && tokens.peek() == Some(&"handle") {
            tokens.next();
            tokens.next();
            continue;
        }
        out.push(t);
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> PodKey {
        PodKey::new("x", n)
    }

    fn actual(netns: &str, d: Option<&Desired>) -> Actual {
        Actual {
            netns: netns.into(),
            checksum: d.map(|d| d.checksum),
        }
    }

    #[test]
    fn plans_apply_and_remove_and_nothing_for_what_is_in_place() {
        let a = Desired::new("ns-a", "table a");
        let b = Desired::new("ns-b", "table b");
        let b2 = Desired::new("ns-b", "table b v2");
        let desired = BTreeMap::from([(key("a"), a.clone()), (key("b"), b2.clone())]);
        let act = BTreeMap::from([
            (key("a"), actual("ns-a", Some(&a))),
            (key("b"), actual("ns-b", Some(&b))),
            (key("gone"), actual("ns-gone", Some(&b))),
        ]);
        let ops = plan(&desired, &act);
        assert_eq!(
            ops,
            // `a` is in place: no operation.
            [
                Op::Apply {
                    pod: key("b"),
                    netns: "ns-b".into(),
                    checksum: b2.checksum,
                    text: b2.text.clone(),
                    ruleset: None,
                },
                Op::Remove {
                    pod: key("gone"),
                    netns: "ns-gone".into()
                },
            ]
        );
    }

    #[test]
    fn unknown_or_drifted_tables_are_applied_never_removed_first() {
        let a = Desired::new("ns-a", "table a");
        let desired = BTreeMap::from([(key("a"), a.clone())]);
        // Nothing known (agent start): apply, which replaces the old table atomically.
        let ops = plan(&desired, &BTreeMap::new());
        assert!(matches!(&ops[..], [Op::Apply { .. }]), "{ops:?}");
        // Drift: checksum unknown.
        let ops = plan(
            &desired,
            &BTreeMap::from([(key("a"), actual("ns-a", None))]),
        );
        assert!(matches!(&ops[..], [Op::Apply { .. }]), "{ops:?}");
        assert!(plan(&BTreeMap::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn moved_pod_applies_new_and_removes_old_unless_reused() {
        let a = Desired::new("ns-new", "table a");
        let desired = BTreeMap::from([(key("a"), a.clone())]);
        let act = BTreeMap::from([(key("a"), actual("ns-old", Some(&a)))]);
        let ops = plan(&desired, &act);
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(&ops[0], Op::Apply { netns, .. } if netns == "ns-new"));
        assert!(matches!(&ops[1], Op::Remove { netns, .. } if netns == "ns-old"));

        // Pod b was deleted and Pod c now lives in its namespace: no remove there.
        let c = Desired::new("ns-b", "table c");
        let desired = BTreeMap::from([(key("c"), c)]);
        let act = BTreeMap::from([(key("b"), actual("ns-b", Some(&a)))]);
        let ops = plan(&desired, &act);
        assert!(matches!(&ops[..], [Op::Apply { .. }]), "{ops:?}");
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let p = BackoffPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(1000), Duration::from_secs(1), "no overflow");
        let t0 = Instant::now();
        let b1 = p.fail(None, t0);
        assert_eq!(b1.failures, 1);
        assert!(!b1.ready(t0) && b1.ready(t0 + Duration::from_millis(100)));
        let b2 = p.fail(Some(b1), t0);
        assert_eq!((b2.failures, b2.next), (2, t0 + Duration::from_millis(200)));
    }

    #[test]
    fn listings_normalise_counters_and_whitespace() {
        let a = "table inet netpol {\n\tchain ingress {\n\t\tcounter packets 12 bytes 3400 drop\n\t}\n}\n";
        let b = "table inet netpol { chain ingress { counter packets 0 bytes 0 drop } }";
        assert_eq!(normalise_listing(a), normalise_listing(b));
        assert_eq!(
            normalise_listing(b),
            "table inet netpol { chain ingress { counter drop } }"
        );
        assert_ne!(
            normalise_listing(b),
            normalise_listing("table inet netpol { chain ingress { counter accept } }")
        );
        assert_eq!(
            normalise_listing("tcp dport 80 accept # handle 4"),
            "tcp dport 80 accept"
        );
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(
            Checksum::of("").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Checksum::of("").short(), "e3b0c44298fc");
    }
}
