//! Appliers: what carries out a plan's operations.
//!
//! [`Applier`] is the boundary between planning and the kernel. [`NftApplier`] runs `nft`
//! inside the Pod's namespace (a child process started with `ip netns exec`, so no thread
//! of the agent ever changes namespace); [`RecordingApplier`] is the fake for unit tests:
//! it records every call, keeps a table per namespace in memory, and fails on demand.
//!
//! Methods block (they wait for `nft`): call them from a blocking context
//! (`tokio::task::spawn_blocking`, a plain thread), never on an async worker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::netns;
use crate::nfnl::{ElementOp, NfnlError, NftSocket};
use crate::nft::{self, NftError};
use crate::plan::{Checksum, normalise_listing};
use crate::state::PodKey;
use policy_compiler::ruleset::{PeerEntry, Ruleset};

/// The table every Pod ruleset lives in.
pub const TABLE: &str = "netpol";

/// Errors of an [`Applier`]; each names the Pod or namespace.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// nft refused the ruleset or could not run; the kernel is unchanged (nft
    /// transactions are atomic).
    #[error("pod {pod}: {op} failed")]
    Nft {
        /// The Pod.
        pod: PodKey,
        /// `apply`, `remove` or `list`.
        op: &'static str,
        /// The nft error (includes the namespace and nft's stderr).
        #[source]
        source: Box<NftError>,
    },
    /// The namespace does not exist (yet).
    #[error("pod {pod}: netns {netns} does not exist")]
    NoNetns {
        /// The Pod.
        pod: PodKey,
        /// The namespace.
        netns: String,
    },
    /// The node table (in the agent's own namespace) could not be applied or listed.
    #[error("node table: {op} failed")]
    Node {
        /// `apply` or `list`.
        op: &'static str,
        /// The nft error (with nft's stderr).
        #[source]
        source: Box<NftError>,
    },
    /// The node's addresses could not be listed.
    #[error("netns {netns}: cannot list the node's addresses: {message}")]
    NodeAddresses {
        /// The node's namespace.
        netns: String,
        /// What failed.
        message: String,
    },
    /// A netlink nf_tables call failed (the transaction, if any, changed nothing).
    #[error("pod {pod}: {op} failed")]
    Netlink {
        /// The Pod.
        pod: PodKey,
        /// `update` or `generation`.
        op: &'static str,
        /// The netlink error (names the namespace).
        #[source]
        source: Box<NfnlError>,
    },
    /// Something else committed in the Pod's namespace since the generation the update
    /// was conditional on: nothing changed; the table is replaced instead.
    #[error("pod {pod}: netns {netns} changed since generation {expected}")]
    Stale {
        /// The Pod.
        pod: PodKey,
        /// The namespace.
        netns: String,
        /// The generation the update expected.
        expected: u32,
    },
    /// This applier cannot update elements (the reconciler never asks it to: it plans
    /// element updates only where [`Applier::generation`] is known).
    #[error("pod {pod}: this applier cannot update map elements")]
    Unsupported {
        /// The Pod.
        pod: PodKey,
    },
    /// A failure injected by [`RecordingApplier`].
    #[error("pod {pod}: injected failure of {op}")]
    Injected {
        /// The Pod.
        pod: PodKey,
        /// The operation.
        op: &'static str,
    },
}

/// Carries out operations on Pod namespaces. Implementations must be atomic per call:
/// a failed `apply` leaves the previous table in place.
pub trait Applier: Send + Sync {
    /// Loads `ruleset` (which replaces `table inet netpol`) into `netns` in one
    /// transaction.
    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError>;

    /// [`Applier::apply`] with the compiled ruleset `text` was rendered from, when the
    /// caller has it: an applier that speaks netlink loads the table from `ruleset` with
    /// no `nft` process (same transactions as the text, see
    /// [`crate::nfnl::NftSocket::replace_table`]). Defaults to [`Applier::apply`].
    fn apply_ruleset(
        &self,
        pod: &PodKey,
        netns: &str,
        text: &str,
        ruleset: Option<&Ruleset>,
    ) -> Result<(), ApplyError> {
        let _ = ruleset;
        self.apply(pod, netns, text)
    }

    /// [`Applier::apply_node`] with the node table's compiled ruleset, when the caller
    /// has it. Defaults to [`Applier::apply_node`].
    fn apply_node_ruleset(&self, text: &str, ruleset: Option<&Ruleset>) -> Result<(), ApplyError> {
        let _ = ruleset;
        self.apply_node(text)
    }

    /// Deletes `table inet netpol` from `netns`; succeeds if the table or the namespace
    /// is already gone.
    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError>;

    /// The kernel's listing of `table inet netpol` in `netns`, `None` when there is no
    /// such table.
    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError>;

    /// What the agent compares `table inet netpol` in `netns` with after something
    /// else committed there: a checksum of the table's content, equal for equal
    /// tables (counter values and handles aside), `None` when there is no such table.
    /// Defaults to the checksum of the normalised listing ([`Applier::list`]).
    fn fingerprint(&self, pod: &PodKey, netns: &str) -> Result<Option<Checksum>, ApplyError> {
        self.list(pod, netns)
            .map(|l| l.map(|l| Checksum::of(&normalise_listing(&l))))
    }

    /// [`Applier::fingerprint`] of the node table. Defaults to the checksum of the
    /// normalised listing ([`Applier::list_node`]).
    fn node_fingerprint(&self) -> Result<Option<Checksum>, ApplyError> {
        self.list_node()
            .map(|l| l.map(|l| Checksum::of(&normalise_listing(&l))))
    }

    /// Loads the node table (text replacing `table inet netpol`) into the agent's own
    /// namespace in one transaction.
    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError>;

    /// The kernel's listing of the node table, `None` when there is none.
    fn list_node(&self) -> Result<Option<String>, ApplyError>;

    /// The addresses of the node's network namespace (where the node table lives), as
    /// [`crate::node::own_addresses`] lists them.
    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError>;

    /// The nf_tables generation of `netns` (incremented by every commit there, by
    /// anyone), or `None` when this applier cannot tell (then the reconciler replaces
    /// whole tables and lists them to verify, as before). Defaults to `None`.
    fn generation(&self, pod: &PodKey, netns: &str) -> Result<Option<u32>, ApplyError> {
        let _ = (pod, netns);
        Ok(None)
    }

    /// Deletes and adds peer-map elements of `table inet netpol` in `netns` in one
    /// transaction, only if the namespace's generation is still `generation`
    /// ([`ApplyError::Stale`] otherwise, nothing changed). `ruleset` is the whole table
    /// the result equals (for fakes). Returns the generation after the commit.
    /// Defaults to [`ApplyError::Unsupported`].
    fn update(
        &self,
        pod: &PodKey,
        netns: &str,
        ops: &[ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        let _ = (netns, ops, generation, ruleset);
        Err(ApplyError::Unsupported { pod: pod.clone() })
    }

    /// Changes the table in `netns` to `ruleset` (rendered as `text`, for fakes) in one
    /// transaction (plus, first, one
    /// that declares new sets empty) like [`Applier::apply_ruleset`], keeping the peer
    /// maps whose entries the kernel holds (`old`: the entries of the agent's last
    /// commit, proven there by `generation`) and changing them by `ops` (to `new`, the
    /// entries of `ruleset`) instead of reloading them (`ruleset` needs no elements in
    /// the maps [`crate::nfnl::table::kept_maps`] names); only if the namespace's generation is still `generation`
    /// ([`ApplyError::Stale`] otherwise, nothing changed). Returns the generation after
    /// the commit. Defaults to [`ApplyError::Unsupported`] (the caller replaces the
    /// table whole). See: #12
    #[allow(clippy::too_many_arguments)]
    fn rewrite(
        &self,
        pod: &PodKey,
        netns: &str,
        text: &str,
        ruleset: &Ruleset,
        old: &BTreeSet<PeerEntry>,
        new: &BTreeSet<PeerEntry>,
        ops: &[ElementOp],
        generation: u32,
    ) -> Result<u32, ApplyError> {
        let _ = (netns, text, ruleset, old, new, ops, generation);
        Err(ApplyError::Unsupported { pod: pod.clone() })
    }

    /// Whether [`Applier::update`] and [`Applier::rewrite`] read their `text` (fakes do). When they do
    /// not, the reconciler passes an empty text instead of splicing the table's text
    /// from its shared lookups for every element update (`plan::TableText`). Defaults
    /// to `true`. See: #12
    fn update_reads_text(&self) -> bool {
        true
    }

    /// The nf_tables generation of the node table's namespace, or `None` when this
    /// applier cannot tell (then the node table is replaced whole and listed to verify).
    /// Defaults to `None`.
    fn node_generation(&self) -> Result<Option<u32>, ApplyError> {
        Ok(None)
    }

    /// [`Applier::update`] for the node table: deletes and adds its peer-map elements
    /// in one transaction, only if the node namespace's generation is still
    /// `generation`. Defaults to [`ApplyError::Unsupported`].
    fn update_node(
        &self,
        ops: &[ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        let _ = (ops, generation, ruleset);
        Err(ApplyError::Unsupported { pod: node_key() })
    }
}

/// [`nft::in_place`] for the table in `netns` now (its objects read over netlink, no
/// process): the transactions to load, in order; `ruleset` alone when the objects cannot
/// be read (a delete-and-re-create replace is still one atomic transaction, with the hook
/// window described there).
fn in_place_for(netns: &str, ruleset: &str) -> Vec<String> {
    let objects = NftSocket::open(netns).and_then(|mut s| s.objects(TABLE));
    match objects {
        Ok(objects) => match nft::in_place(ruleset, &objects) {
            Some(p) => p.declare.into_iter().chain([p.replace]).collect(),
            None => vec![ruleset.to_owned()],
        },
        Err(e) => {
            tracing::warn!(netns, error = %netpol_common::ErrorChain(&e), "cannot read the table's objects: replacing it by delete and re-create");
            vec![ruleset.to_owned()]
        }
    }
}

/// The key errors and records of the node table carry (no Pod has an empty namespace).
pub fn node_key() -> PodKey {
    PodKey::new("", crate::node::OWN_NETNS)
}

/// [`NftApplier`] for an agent that does not run in the node's namespace (the lab): Pod
/// tables as usual, the node table and the node's addresses in the named namespace
/// `node` (through `ip netns exec` and a namespace thread).
#[derive(Debug, Clone)]
pub struct NodeNetnsApplier {
    /// The node's namespace.
    pub node: String,
}

impl Applier for NodeNetnsApplier {
    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
        NftApplier.apply(pod, netns, ruleset)
    }

    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
        NftApplier.remove(pod, netns)
    }

    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
        NftApplier.list(pod, netns)
    }

    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
        for text in in_place_for(&self.node, ruleset) {
            nft::apply(&self.node, &text).map_err(|source| ApplyError::Node {
                op: "apply",
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    fn list_node(&self) -> Result<Option<String>, ApplyError> {
        match nft::list_table(&self.node, "inet", TABLE) {
            Ok(text) => Ok(Some(text)),
            Err(e) if nft::is_no_such_table(&e) => Ok(None),
            Err(source) => Err(ApplyError::Node {
                op: "list",
                source: Box::new(source),
            }),
        }
    }

    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
        let err = |message: String| ApplyError::NodeAddresses {
            netns: self.node.clone(),
            message,
        };
        netns::run_in(&self.node, crate::node::own_addresses)
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(e.to_string()))
    }
}

/// The real applier: `nft` in the Pod's namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct NftApplier;

impl Applier for NftApplier {
    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
        for text in in_place_for(crate::node::OWN_NETNS, ruleset) {
            crate::node::apply_table(&text).map_err(|source| ApplyError::Node {
                op: "apply",
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    fn list_node(&self) -> Result<Option<String>, ApplyError> {
        crate::node::list_table("inet", TABLE).map_err(|source| ApplyError::Node {
            op: "list",
            source: Box::new(source),
        })
    }

    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
        crate::node::own_addresses().map_err(|source| ApplyError::NodeAddresses {
            netns: crate::node::OWN_NETNS.to_owned(),
            message: source.to_string(),
        })
    }

    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
        if !netns::exists(netns) {
            return Err(ApplyError::NoNetns {
                pod: pod.clone(),
                netns: netns.to_owned(),
            });
        }
        // In place, so no packet meets a half-replaced table (see `nft::in_place`).
        for text in in_place_for(netns, ruleset) {
            nft::apply(netns, &text).map_err(|source| ApplyError::Nft {
                pod: pod.clone(),
                op: "apply",
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
        if !netns::exists(netns) {
            return Ok(());
        }
        match nft::delete_table(netns, "inet", TABLE) {
            Ok(_) => Ok(()),
            Err(e) if nft::is_no_such_table(&e) => Ok(()),
            Err(source) => Err(ApplyError::Nft {
                pod: pod.clone(),
                op: "remove",
                source: Box::new(source),
            }),
        }
    }

    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
        if !netns::exists(netns) {
            return Err(ApplyError::NoNetns {
                pod: pod.clone(),
                netns: netns.to_owned(),
            });
        }
        match nft::list_table(netns, "inet", TABLE) {
            Ok(text) => Ok(Some(text)),
            Err(e) if nft::is_no_such_table(&e) => Ok(None),
            Err(source) => Err(ApplyError::Nft {
                pod: pod.clone(),
                op: "list",
                source: Box::new(source),
            }),
        }
    }
}

/// The real applier with nf_tables over netlink ([`crate::nfnl`]): whole tables are
/// still replaced with `nft -f` (through [`NftApplier`]: rule changes, rare), but the
/// namespace's generation and peer-map element updates go through one netlink socket
/// per namespace, made once on a thread that entered it and kept: no process per
/// update or per check. A socket is dropped with its table ([`Applier::remove`]) and
/// remade when the namespace's file is another namespace (same name, new inode).
///
/// The node table goes the same way: replaced with `nft -f` when its rules change,
/// peer-map elements updated over netlink otherwise, its generation read over netlink.
/// It lives in the agent's own namespace, or with [`NetlinkApplier::with_node_netns`]
/// in a named one (the lab, tests).
#[derive(Debug, Default)]
pub struct NetlinkApplier {
    sockets: Mutex<BTreeMap<String, std::sync::Arc<Mutex<CachedSocket>>>>,
    /// The node table's namespace when it is not the agent's own.
    node: Option<String>,
}

#[derive(Debug)]
struct CachedSocket {
    /// (device, inode) of the namespace file the socket was made in.
    id: (u64, u64),
    socket: NftSocket,
}

fn netns_id(netns: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let path = if netns == crate::node::OWN_NETNS {
        // The process's namespace (the agent never moves its main thread).
        std::path::PathBuf::from("/proc/self/ns/net")
    } else {
        netns::path(netns)
    };
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

impl NetlinkApplier {
    /// An applier with no sockets yet; the node table is in the agent's own namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// An applier whose node table lives in the named namespace `node` (the lab, or a
    /// test), not in the agent's own.
    pub fn with_node_netns(node: impl Into<String>) -> Self {
        Self {
            node: Some(node.into()),
            ..Self::default()
        }
    }

    /// The node table's namespace (a name, or [`crate::node::OWN_NETNS`]).
    fn node_netns(&self) -> &str {
        self.node.as_deref().unwrap_or(crate::node::OWN_NETNS)
    }

    fn update_in(
        &self,
        pod: &PodKey,
        netns: &str,
        ops: &[ElementOp],
        generation: u32,
    ) -> Result<u32, ApplyError> {
        let result = self.with_socket(pod, netns, "update", |s| {
            s.update_elements(TABLE, ops, generation)
        });
        stale_as_apply_error(result, pod, netns, generation)
    }

    /// Runs `f` with the socket of `netns` (made on first use).
    fn with_socket<T>(
        &self,
        pod: &PodKey,
        netns: &str,
        op: &'static str,
        f: impl FnOnce(&mut NftSocket) -> Result<T, NfnlError>,
    ) -> Result<T, ApplyError> {
        let Some(id) = netns_id(netns) else {
            self.forget(netns);
            return Err(ApplyError::NoNetns {
                pod: pod.clone(),
                netns: netns.to_owned(),
            });
        };
        let err = |source| ApplyError::Netlink {
            pod: pod.clone(),
            op,
            source: Box::new(source),
        };
        let cached = self
            .sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(netns)
            .cloned();
        let cached = match cached {
            Some(c)
                if c.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .id
                    == id =>
            {
                c
            }
            _ => {
                let socket = NftSocket::open(netns).map_err(err)?;
                let c = std::sync::Arc::new(Mutex::new(CachedSocket { id, socket }));
                self.sockets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(netns.to_owned(), c.clone());
                c
            }
        };
        let mut c = cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut c.socket).map_err(err)
    }

    fn forget(&self, netns: &str) {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(netns);
    }

    /// Namespaces with an open socket.
    pub fn open_sockets(&self) -> usize {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

impl NetlinkApplier {
    /// Loads `ruleset` into `netns` over netlink ([`NftSocket::replace_table`]); on any
    /// failure (nothing was changed: each batch is all or nothing, and a declare-only
    /// first commit adds empty sets no rule uses) `text` is loaded with `nft -f`
    /// instead, which also reports nft's own error.
    fn replace_over_netlink(
        &self,
        pod: &PodKey,
        netns: &str,
        ruleset: &Ruleset,
        fallback: impl FnOnce() -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        match self.with_socket(pod, netns, "replace", |s| s.replace_table(TABLE, ruleset)) {
            Ok(_) => Ok(()),
            Err(e @ ApplyError::NoNetns { .. }) => Err(e),
            Err(e) => {
                tracing::warn!(namespace = %pod.namespace, pod = %pod.name, netns, error = %netpol_common::ErrorChain(&e), "netlink table load failed: loading the text with nft -f");
                fallback()
            }
        }
    }
}

impl Applier for NetlinkApplier {
    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
        NftApplier.apply(pod, netns, ruleset)
    }

    fn apply_ruleset(
        &self,
        pod: &PodKey,
        netns: &str,
        text: &str,
        ruleset: Option<&Ruleset>,
    ) -> Result<(), ApplyError> {
        match ruleset {
            Some(rs) => {
                self.replace_over_netlink(pod, netns, rs, || NftApplier.apply(pod, netns, text))
            }
            None => NftApplier.apply(pod, netns, text),
        }
    }

    fn apply_node_ruleset(&self, text: &str, ruleset: Option<&Ruleset>) -> Result<(), ApplyError> {
        match ruleset {
            Some(rs) => {
                let netns = self.node_netns().to_owned();
                self.replace_over_netlink(&node_key(), &netns, rs, || self.apply_node(text))
            }
            None => self.apply_node(text),
        }
    }

    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
        self.forget(netns);
        NftApplier.remove(pod, netns)
    }

    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
        NftApplier.list(pod, netns)
    }

    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
        match &self.node {
            Some(node) => NodeNetnsApplier { node: node.clone() }.apply_node(ruleset),
            None => NftApplier.apply_node(ruleset),
        }
    }

    fn list_node(&self) -> Result<Option<String>, ApplyError> {
        match &self.node {
            Some(node) => NodeNetnsApplier { node: node.clone() }.list_node(),
            None => NftApplier.list_node(),
        }
    }

    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
        match &self.node {
            Some(node) => NodeNetnsApplier { node: node.clone() }.node_addresses(),
            None => NftApplier.node_addresses(),
        }
    }

    fn generation(&self, pod: &PodKey, netns: &str) -> Result<Option<u32>, ApplyError> {
        self.with_socket(pod, netns, "generation", NftSocket::generation)
            .map(Some)
    }

    /// Over netlink ([`NftSocket::fingerprint`]): no `nft list` process. See: #12
    fn fingerprint(&self, pod: &PodKey, netns: &str) -> Result<Option<Checksum>, ApplyError> {
        self.with_socket(pod, netns, "fingerprint", |s| s.fingerprint(TABLE))
            .map(|f| f.map(Checksum))
    }

    fn node_fingerprint(&self) -> Result<Option<Checksum>, ApplyError> {
        let netns = self.node_netns().to_owned();
        self.with_socket(&node_key(), &netns, "fingerprint", |s| s.fingerprint(TABLE))
            .map(|f| f.map(Checksum))
    }

    fn update(
        &self,
        pod: &PodKey,
        netns: &str,
        ops: &[ElementOp],
        generation: u32,
        _ruleset: &str,
    ) -> Result<u32, ApplyError> {
        self.update_in(pod, netns, ops, generation)
    }

    fn rewrite(
        &self,
        pod: &PodKey,
        netns: &str,
        _text: &str,
        ruleset: &Ruleset,
        old: &BTreeSet<PeerEntry>,
        new: &BTreeSet<PeerEntry>,
        ops: &[ElementOp],
        generation: u32,
    ) -> Result<u32, ApplyError> {
        let result = self.with_socket(pod, netns, "rewrite", |s| {
            s.rewrite_table(TABLE, ruleset, old, new, ops, generation)
        });
        stale_as_apply_error(result, pod, netns, generation)
    }

    fn update_reads_text(&self) -> bool {
        false
    }

    fn node_generation(&self) -> Result<Option<u32>, ApplyError> {
        let netns = self.node_netns().to_owned();
        self.with_socket(&node_key(), &netns, "generation", NftSocket::generation)
            .map(Some)
    }

    fn update_node(
        &self,
        ops: &[ElementOp],
        generation: u32,
        _ruleset: &str,
    ) -> Result<u32, ApplyError> {
        let netns = self.node_netns().to_owned();
        self.update_in(&node_key(), &netns, ops, generation)
    }
}

/// One call seen by [`RecordingApplier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// `apply(pod, netns, ruleset)`.
    Apply {
        /// The Pod.
        pod: PodKey,
        /// The namespace.
        netns: String,
        /// The ruleset text.
        ruleset: String,
    },
    /// `update(pod, netns, ops, ..)`.
    Update {
        /// The Pod.
        pod: PodKey,
        /// The namespace.
        netns: String,
        /// The element changes.
        ops: Vec<ElementOp>,
    },
    /// `rewrite(pod, netns, text, .., ops, ..)`: rules changed, peer maps kept.
    Rewrite {
        /// The Pod.
        pod: PodKey,
        /// The namespace.
        netns: String,
        /// The new table's text.
        ruleset: String,
        /// The element changes of the kept maps.
        ops: Vec<ElementOp>,
    },
    /// `remove(pod, netns)`.
    Remove {
        /// The Pod.
        pod: PodKey,
        /// The namespace.
        netns: String,
    },
}

#[derive(Debug, Default)]
struct Recording {
    calls: Vec<Recorded>,
    tables: BTreeMap<String, String>,
    failing: BTreeSet<PodKey>,
    fail_all: bool,
    node_addresses: Vec<std::net::IpAddr>,
    /// Per-namespace commit counters, when the fake tells generations.
    generations: Option<BTreeMap<String, u32>>,
    /// `list` calls (listing is what the agent avoids when the generation proves a
    /// table unchanged).
    lists: usize,
}

impl Recording {
    /// One commit in `netns`.
    fn commit(&mut self, netns: &str) {
        if let Some(g) = &mut self.generations {
            let n = g.entry(netns.to_owned()).or_insert(0);
            *n = n.wrapping_add(1).max(1);
        }
    }
}

/// A fake applier: records calls, keeps one table text per namespace (the listing is
/// the applied text itself), and fails for chosen Pods.
#[derive(Debug, Default)]
pub struct RecordingApplier {
    inner: Mutex<Recording>,
}

impl RecordingApplier {
    /// A fake with no tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that tells namespace generations (every apply, remove, update and tamper
    /// is one commit) and so receives element updates, like [`NetlinkApplier`].
    pub fn with_generations() -> Self {
        let f = Self::default();
        f.lock().generations = Some(BTreeMap::new());
        f
    }

    /// Number of `list` calls so far.
    pub fn lists(&self) -> usize {
        self.lock().lists
    }

    /// Number of `rewrite` calls for `pod` (failed ones included).
    pub fn rewrites(&self, pod: &PodKey) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| matches!(c, Recorded::Rewrite { pod: p, .. } if p == pod))
            .count()
    }

    /// Number of `update` calls for `pod` (failed ones included).
    pub fn updates(&self, pod: &PodKey) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| matches!(c, Recorded::Update { pod: p, .. } if p == pod))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        // A panic while holding the lock can only come from a test assertion; the data
        // is still consistent (every update is a single insert or push).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Recorded> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls (tables stay).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Number of `apply` calls for `pod` (failed ones included).
    pub fn applies(&self, pod: &PodKey) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| matches!(c, Recorded::Apply { pod: p, .. } if p == pod))
            .count()
    }

    /// Makes every operation on `pod` fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, pod: &PodKey, failing: bool) {
        let mut r = self.lock();
        if failing {
            r.failing.insert(pod.clone());
        } else {
            r.failing.remove(pod);
        }
    }

    /// The addresses [`Applier::node_addresses`] answers from now on.
    pub fn set_node_addresses(&self, addresses: Vec<std::net::IpAddr>) {
        self.lock().node_addresses = addresses;
    }

    /// Makes every operation fail (`true`) or not (`false`).
    pub fn set_fail_all(&self, fail: bool) {
        self.lock().fail_all = fail;
    }

    /// The table text the fake "kernel" holds in `netns`.
    pub fn table(&self, netns: &str) -> Option<String> {
        self.lock().tables.get(netns).cloned()
    }

    /// Replaces (or with `None` deletes) the table of `netns` behind the agent's back.
    pub fn tamper(&self, netns: &str, table: Option<&str>) {
        let mut r = self.lock();
        match table {
            Some(t) => r.tables.insert(netns.to_owned(), t.to_owned()),
            None => r.tables.remove(netns),
        };
        r.commit(netns);
    }

    fn check(r: &Recording, pod: &PodKey, op: &'static str) -> Result<(), ApplyError> {
        if r.fail_all || r.failing.contains(pod) {
            Err(ApplyError::Injected {
                pod: pod.clone(),
                op,
            })
        } else {
            Ok(())
        }
    }
}

impl Applier for RecordingApplier {
    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
        self.apply(&node_key(), crate::node::OWN_NETNS, ruleset)
    }

    fn list_node(&self) -> Result<Option<String>, ApplyError> {
        self.list(&node_key(), crate::node::OWN_NETNS)
    }

    fn node_generation(&self) -> Result<Option<u32>, ApplyError> {
        self.generation(&node_key(), crate::node::OWN_NETNS)
    }

    fn update_node(
        &self,
        ops: &[ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        self.update(
            &node_key(),
            crate::node::OWN_NETNS,
            ops,
            generation,
            ruleset,
        )
    }

    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
        Ok(self.lock().node_addresses.clone())
    }

    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
        let mut r = self.lock();
        r.calls.push(Recorded::Apply {
            pod: pod.clone(),
            netns: netns.to_owned(),
            ruleset: ruleset.to_owned(),
        });
        Self::check(&r, pod, "apply")?;
        r.tables.insert(netns.to_owned(), ruleset.to_owned());
        r.commit(netns);
        Ok(())
    }

    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
        let mut r = self.lock();
        r.calls.push(Recorded::Remove {
            pod: pod.clone(),
            netns: netns.to_owned(),
        });
        Self::check(&r, pod, "remove")?;
        if r.tables.remove(netns).is_some() {
            r.commit(netns);
        }
        Ok(())
    }

    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
        let mut r = self.lock();
        r.lists += 1;
        Self::check(&r, pod, "list")?;
        Ok(r.tables.get(netns).cloned())
    }

    fn generation(&self, pod: &PodKey, netns: &str) -> Result<Option<u32>, ApplyError> {
        let r = self.lock();
        Self::check(&r, pod, "generation")?;
        Ok(r.generations
            .as_ref()
            .map(|g| g.get(netns).copied().unwrap_or(0)))
    }

    fn rewrite(
        &self,
        pod: &PodKey,
        netns: &str,
        text: &str,
        _ruleset: &Ruleset,
        _old: &BTreeSet<PeerEntry>,
        _new: &BTreeSet<PeerEntry>,
        ops: &[ElementOp],
        generation: u32,
    ) -> Result<u32, ApplyError> {
        {
            let mut r = self.lock();
            r.calls.push(Recorded::Rewrite {
                pod: pod.clone(),
                netns: netns.to_owned(),
                ruleset: text.to_owned(),
                ops: ops.to_vec(),
            });
            Self::check(&r, pod, "rewrite")?;
        }
        self.commit_if_at(pod, netns, generation, text)
    }

    fn update(
        &self,
        pod: &PodKey,
        netns: &str,
        ops: &[ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        {
            let mut r = self.lock();
            r.calls.push(Recorded::Update {
                pod: pod.clone(),
                netns: netns.to_owned(),
                ops: ops.to_vec(),
            });
            Self::check(&r, pod, "update")?;
        }
        self.commit_if_at(pod, netns, generation, ruleset)
    }
}

impl RecordingApplier {
    /// One commit of `ruleset` in `netns` if its generation is still `generation`.
    fn commit_if_at(
        &self,
        pod: &PodKey,
        netns: &str,
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        let mut r = self.lock();
        let Some(now) = r
            .generations
            .as_ref()
            .map(|g| g.get(netns).copied().unwrap_or(0))
        else {
            return Err(ApplyError::Unsupported { pod: pod.clone() });
        };
        if now != generation || !r.tables.contains_key(netns) {
            return Err(ApplyError::Stale {
                pod: pod.clone(),
                netns: netns.to_owned(),
                expected: generation,
            });
        }
        r.tables.insert(netns.to_owned(), ruleset.to_owned());
        r.commit(netns);
        Ok(r.generations
            .as_ref()
            .and_then(|g| g.get(netns).copied())
            .unwrap_or(0))
    }
}

/// A generation-checked commit's result with the kernel's "stale generation" refusal
/// ([`NfnlError::Stale`]) as [`ApplyError::Stale`], which the reconciler answers with a
/// whole replace. See: #12
fn stale_as_apply_error(
    result: Result<u32, ApplyError>,
    pod: &PodKey,
    netns: &str,
    generation: u32,
) -> Result<u32, ApplyError> {
    match result {
        Err(ApplyError::Netlink { source, .. }) if matches!(*source, NfnlError::Stale { .. }) => {
            Err(ApplyError::Stale {
                pod: pod.clone(),
                netns: netns.to_owned(),
                expected: generation,
            })
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_records_keeps_tables_and_fails_on_demand() {
        let f = RecordingApplier::new();
        let a = PodKey::new("x", "a");
        f.apply(&a, "ns-a", "t1").unwrap();
        assert_eq!(f.list(&a, "ns-a").unwrap().as_deref(), Some("t1"));
        f.set_failing(&a, true);
        assert!(matches!(
            f.apply(&a, "ns-a", "t2"),
            Err(ApplyError::Injected { .. })
        ));
        assert_eq!(
            f.table("ns-a").as_deref(),
            Some("t1"),
            "failed apply is atomic"
        );
        f.set_failing(&a, false);
        f.remove(&a, "ns-a").unwrap();
        assert_eq!(f.list(&a, "ns-a").unwrap(), None);
        assert_eq!(f.applies(&a), 2);
        assert_eq!(f.calls().len(), 3);
        f.tamper("ns-b", Some("x"));
        assert_eq!(f.table("ns-b").as_deref(), Some("x"));
        f.set_fail_all(true);
        assert!(f.remove(&a, "ns-a").is_err());
    }

    #[test]
    fn nft_applier_reports_missing_netns() {
        let pod = PodKey::new("x", "a");
        let err = NftApplier
            .apply(&pod, "netpol-no-such-netns", "table inet netpol {}")
            .unwrap_err();
        assert!(matches!(err, ApplyError::NoNetns { .. }), "{err}");
        assert!(NftApplier.remove(&pod, "netpol-no-such-netns").is_ok());
    }
}
