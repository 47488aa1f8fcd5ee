//! A whole netpol table as nf_tables netlink messages, from the compiler's IR
//! ([`Ruleset`]): no `nft -f` process for a replace.
//!
//! [`encode_replace`] gives the same transactions as `nft::in_place` gives `nft -f` (see
//! there and docs/ruleset.md, "Replacing a table in place"): an optional first batch that
//! declares the sets and maps the kernel's table lacks (empty, no rule uses them yet),
//! then ONE batch that flushes every chain's rules, adds and flushes every set and map,
//! deletes the sets, maps and chains the new table lacks, (re)declares the base chains
//! with `policy accept` and loads the elements and the rules, a `policy drop` chain
//! getting a final `drop` rule. Each batch is one nf_tables transaction: all or nothing.
//!
//! The expressions are those `nft` 1.0.6 sends for the compiled text (learnt from `nft
//! --debug=netlink` and `--debug=mnl`, written by hand from the uapi numbers; no GPL
//! code): the kernel holds the same table whichever way it was loaded, which the kernel
//! test `nfnl_table::netlink_and_nft_loads_list_identically_for_every_case` checks
//! listing by listing (bytecode included).

use std::collections::BTreeSet;
use std::net::IpAddr;

use policy_compiler::ruleset::{
    AddrField, AddrSet, Chain, Family, Hook, MapVerdict, PeerEntry, PeerMap, PortElement, PortsSet,
    RuleKind, Ruleset, ServiceSet, TierSet, TierVerdict,
};

use super::{
    ElementOp, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_JUMP, NFT_MSG_NEWSETELEM,
    NFT_SET_ELEM_INTERVAL_END, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NFTA_VERDICT_CHAIN,
    NFTA_VERDICT_CODE, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, TableObjects, UDATA_INTERVAL_OPEN,
    begin_msg, begin_nest, end_nest, finish_msg, put_attr, put_str,
};

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_APPEND: u16 = 0x800;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY_END: u16 = 10;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_CONCAT: u32 = 0x80;

/// nft's data types (`enum datatypes`) and their concatenation (`a << 6 | b`).
const TYPE_IPV4_ADDR: u32 = 7;
const TYPE_IPV6_ADDR: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_ICMPV6_TYPE: u32 = 29;
const TYPE_VERDICT: u32 = 0xffff_ff00;

/// The set user data nft writes (`NFTNL_UDATA_SET_*` TLVs), byte for byte: `nft list`
/// reads key byte order and the concatenation's types from it.
/// An address set: key byte order big endian.
const UDATA_ADDR_SET: [u8; 6] = [0, 4, 2, 0, 0, 0];
/// An interval verdict map: key big endian, data host, data not an interval.
const UDATA_VERDICT_MAP: [u8; 18] = [0, 4, 2, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0];
/// A concatenation (`… . inet_proto . inet_service`).
const UDATA_CONCAT: [u8; 16] = [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0];
/// The anonymous `icmpv6 type { … }` set.
const UDATA_ICMPV6_TYPES: [u8; 28] = [
    0, 4, 2, 0, 0, 0, 3, 20, 0, 4, 7, 0, 0, 0, 1, 12, 0, 4, 14, 0, 0, 0, 1, 4, 1, 0, 0, 0,
];
/// The ICMPv6 neighbour discovery types (133-136), `ruleset::ND_TYPES`.
const ND_TYPES: [u8; 4] = [133, 134, 135, 136];

const NFT_META_IIF: u32 = 4;
const NFT_META_OIF: u32 = 5;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_BYTEORDER_HTON: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_RETURN: u32 = 0xffff_fffb;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFT_REG32_01: u32 = 9;
const NFT_REG32_02: u32 = 10;
const NFT_REG32_05: u32 = 13;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_ICMPV6: u8 = 58;
const CT_STATE_INVALID: u32 = 1;
const CT_STATE_ESTABLISHED_RELATED: u32 = 2 | 4;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;

/// Longest object name the kernel takes (`NFT_NAME_MAXLEN` 256, with its NUL).
pub const MAX_NAME: usize = 255;
/// Longest log prefix (`NF_LOG_PREFIXLEN` 128, with its NUL).
pub const MAX_LOG_PREFIX: usize = 127;
/// Longest rule comment nft accepts (`NFTNL_UDATA_COMMENT_MAXLEN`).
pub const MAX_COMMENT: usize = 128;
/// Set elements per `NEWSETELEM` message: a message's element list is one netlink
/// attribute, at most 64 KiB.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// A ruleset the encoder refuses before anything is sent (the kernel would refuse it
/// too, or it would not mean what the IR says).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// A table, chain, set or map name is empty, too long or has a NUL byte.
    #[error("{what} name {name:?} is not a valid nf_tables name (1-{MAX_NAME} bytes, no NUL)")]
    Name {
        /// `table`, `chain`, `set`, `map` or `jump target`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A log prefix is longer than the kernel keeps.
    #[error("log prefix {prefix:?} is longer than {MAX_LOG_PREFIX} bytes")]
    LogPrefix {
        /// The prefix.
        prefix: String,
    },
    /// A rule comment is longer than nft allows.
    #[error("comment {comment:?} is longer than {MAX_COMMENT} bytes")]
    Comment {
        /// The comment.
        comment: String,
    },
    /// A map a rewrite keeps is not in the kernel's table (so what it holds is not
    /// known): the table must be replaced whole.
    #[error("map {map} to keep is not in the kernel's table")]
    KeptMapMissing {
        /// The map.
        map: String,
    },
    /// A set element's address is of the other family than its set.
    #[error("set {set}: element {addr} is not of the set's address family")]
    Family {
        /// The set.
        set: String,
        /// The address.
        addr: IpAddr,
    },
}

/// One message of a batch, described for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Its sequence number.
    pub seq: u32,
    /// What it does (`add set ingress_v4`, `rule 3 of chain ingress`).
    pub what: String,
}

/// One nf_tables batch: the bytes (begin .. end) and what each message does.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The messages between `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`.
    pub body: Vec<u8>,
    /// Every message of `body`, in order (each asks for an ACK).
    pub sent: Vec<Sent>,
}

/// The transactions of a replace, in order ([`encode_replace`]).
#[derive(Debug, Clone, Default)]
pub struct Replace {
    /// Declares the sets and maps the kernel's table lacks (`None`: none).
    pub declare: Option<Batch>,
    /// Replaces the table's content.
    pub replace: Batch,
}

/// Encodes `rs` as the transactions that replace `table inet TABLE` in place, given
/// the chains and sets the kernel's table has now. `seq` numbers the messages.
pub fn encode_replace(
    table: &str,
    rs: &Ruleset,
    existing: &TableObjects,
    seq: &mut u32,
) -> Result<Replace, TableError> {
    encode(table, rs, existing, None, seq)
}

/// The peer maps a rewrite keeps: what the kernel's table holds in its peer maps (the
/// entries the agent applied, proven there by the generation), the new ruleset's
/// entries, and the element changes from the one to the other ([`encode_rewrite`]).
/// See: #12
#[derive(Debug, Clone, Copy)]
pub struct KeptEntries<'a> {
    /// Every peer-map entry of the table in the kernel now.
    pub old: &'a BTreeSet<PeerEntry>,
    /// Every peer-map entry of the new ruleset.
    pub new: &'a BTreeSet<PeerEntry>,
    /// From `old` to `new`: deletions and additions.
    pub ops: &'a [ElementOp],
}

/// [`encode_replace`] for a table whose peer maps' entries in the kernel are known
/// (`kept.old`): the same transactions, except that the maps [`kept_maps`] names are
/// neither flushed nor reloaded but changed by `kept.ops` (their deletions where the
/// flush was, their additions where the elements were), so a rule change costs the
/// changed elements instead of every element. `rs` needs no elements in those maps
/// (they are not read). Still one transaction for the content: atomicity is that of
/// [`encode_replace`]. A kept map the kernel's table lacks is refused
/// ([`TableError::KeptMapMissing`]: the caller replaces the table whole). See: #12
pub fn encode_rewrite(
    table: &str,
    rs: &Ruleset,
    existing: &TableObjects,
    kept: KeptEntries<'_>,
    seq: &mut u32,
) -> Result<Replace, TableError> {
    encode(table, rs, existing, Some(kept), seq)
}

/// The peer maps a rewrite from the entries `old` to `new` keeps: those with entries
/// before and after, of one address family, whose first range starts at address 0
/// both times or neither (nft's leading interval end at 0 is there exactly when the
/// first range starts above it, so a kept map holds what a fresh load gives). A map
/// that is new, or empty before or after, is reloaded whole. See: #12
pub fn kept_maps(old: &BTreeSet<PeerEntry>, new: &BTreeSet<PeerEntry>) -> BTreeSet<String> {
    // Per map: the first address (entries are ordered by map, family, first address)
    // and whether every entry has the family of the first.
    fn firsts(
        entries: &BTreeSet<PeerEntry>,
    ) -> std::collections::BTreeMap<&str, (IpAddr, Family, bool)> {
        let mut out: std::collections::BTreeMap<&str, (IpAddr, Family, bool)> =
            std::collections::BTreeMap::new();
        for e in entries {
            out.entry(e.map.as_str())
                .and_modify(|(_, f, same)| *same &= *f == e.family)
                .or_insert((e.first, e.family, true));
        }
        out
    }
    let (old, new) = (firsts(old), firsts(new));
    old.iter()
        .filter_map(|(map, (a, fa, sa))| {
            let (b, fb, sb) = new.get(map)?;
            (*sa && *sb && fa == fb && is_zero(*a) == is_zero(*b)).then(|| (*map).to_owned())
        })
        .collect()
}

fn is_zero(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => u32::from(a) == 0,
        IpAddr::V6(a) => u128::from(a) == 0,
    }
}

fn encode(
    table: &str,
    rs: &Ruleset,
    existing: &TableObjects,
    kept: Option<KeptEntries<'_>>,
    seq: &mut u32,
) -> Result<Replace, TableError> {
    validate(table, rs)?;
    let mut keep = kept.map_or_else(BTreeSet::new, |k| kept_maps(k.old, k.new));
    keep.retain(|m| rs.maps.iter().any(|rm| rm.name == *m));
    if let Some(missing) = keep.iter().find(|m| !existing.sets.contains(m)) {
        return Err(TableError::KeptMapMissing {
            map: missing.clone(),
        });
    }
    let delta = |delete: bool| -> Vec<&PeerEntry> {
        kept.map(|k| k.ops)
            .unwrap_or_default()
            .iter()
            .filter_map(|op| match op {
                ElementOp::Delete(e) if delete => Some(e),
                ElementOp::Add(e) if !delete => Some(e),
                _ => None,
            })
            .filter(|e| keep.contains(&e.map))
            .collect()
    };
    let sets = sets_of(rs);
    let missing: Vec<&SetSpec> = sets
        .iter()
        .filter(|s| !existing.sets.contains(&s.name))
        .collect();
    let declare = (!missing.is_empty()).then(|| {
        let mut b = Encoder::new(table, seq);
        b.table();
        for s in missing {
            let id = b.next_set_id();
            b.new_set(s, id);
        }
        b.finish()
    });
    let mut b = Encoder::new(table, seq);
    b.table();
    b.msg(NFT_MSG_DELRULE, 0, "flush table".into(), |b, out| {
        put_str(out, NFTA_RULE_TABLE, b.table);
    });
    // Chains without a hook first: map elements and rules jump to them.
    for c in rs.chains.iter().filter(|c| c.base.is_none()) {
        b.chain(c);
    }
    let mut ids = Vec::with_capacity(sets.len());
    for s in &sets {
        let id = b.next_set_id();
        b.new_set(s, id);
        if !keep.contains(&s.name) {
            b.msg(
                NFT_MSG_DELSETELEM,
                0,
                format!("flush {} {}", s.kind(), s.name),
                |b, out| {
                    put_str(out, NFTA_SET_ELEM_LIST_TABLE, b.table);
                    put_str(out, NFTA_SET_ELEM_LIST_SET, &s.name);
                },
            );
        }
        ids.push(id);
    }
    // A kept map's deletions where its flush would be: before the stale chains their
    // verdicts may jump to are deleted, before any addition.
    b.entries(&delta(true), true);
    for stale in existing
        .sets
        .iter()
        .filter(|e| !sets.iter().any(|s| s.name == **e))
    {
        b.msg(
            NFT_MSG_DELSET,
            0,
            format!("delete set {stale}"),
            |b, out| {
                put_str(out, NFTA_SET_TABLE, b.table);
                put_str(out, NFTA_SET_NAME, stale);
            },
        );
    }
    for stale in existing
        .chains
        .iter()
        .filter(|e| !rs.chains.iter().any(|c| c.name == **e))
    {
        b.msg(
            NFT_MSG_DELCHAIN,
            0,
            format!("delete chain {stale}"),
            |b, out| {
                put_str(out, NFTA_CHAIN_TABLE, b.table);
                put_str(out, NFTA_CHAIN_NAME, stale);
            },
        );
    }
    for c in rs.chains.iter().filter(|c| c.base.is_some()) {
        b.chain(c);
    }
    for (s, id) in sets.iter().zip(&ids) {
        if !keep.contains(&s.name) {
            b.elements(s, *id);
        }
    }
    b.entries(&delta(false), false);
    for c in &rs.chains {
        for (i, r) in c.rules.iter().enumerate() {
            b.rule(c, i, &r.kind, r.comment.as_deref());
        }
        // `policy drop` is loaded as `policy accept` and a final `drop`: a base
        // chain's policy never changes in place (see `nft::in_place`).
        if c.base.is_some_and(|base| !base.accept) {
            b.rule_exprs(c, "final drop".into(), None, |out| {
                immediate_verdict(out, NF_DROP, None);
            });
        }
    }
    Ok(Replace {
        declare,
        replace: b.finish(),
    })
}

fn valid_name(what: &'static str, name: &str) -> Result<(), TableError> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
        return Err(TableError::Name {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn validate(table: &str, rs: &Ruleset) -> Result<(), TableError> {
    valid_name("table", table)?;
    for c in &rs.chains {
        valid_name("chain", &c.name)?;
        for r in &c.rules {
            if let Some(comment) = &r.comment
                && (comment.len() > MAX_COMMENT || comment.contains('\0'))
            {
                return Err(TableError::Comment {
                    comment: comment.clone(),
                });
            }
            let prefix = match &r.kind {
                RuleKind::LogDrop { prefix, .. } | RuleKind::LogAccept { prefix, .. } => {
                    Some(prefix)
                }
                RuleKind::Tier {
                    verdict:
                        TierVerdict::Drop { prefix, .. } | TierVerdict::LogAccept { prefix, .. },
                    ..
                } => Some(prefix),
                RuleKind::Jump { chain } => {
                    valid_name("jump target", chain)?;
                    None
                }
                _ => None,
            };
            if let Some(prefix) = prefix
                && (prefix.len() > MAX_LOG_PREFIX || prefix.contains('\0'))
            {
                return Err(TableError::LogPrefix {
                    prefix: prefix.clone(),
                });
            }
        }
    }
    for m in &rs.maps {
        valid_name("map", &m.name)?;
        for e in &m.elements {
            for a in [e.first, e.last] {
                if Family::of(&a) != m.family {
                    return Err(TableError::Family {
                        set: m.name.clone(),
                        addr: a,
                    });
                }
            }
            if let MapVerdict::Jump(c) = &e.verdict {
                valid_name("jump target", c)?;
            }
        }
    }
    let names = rs
        .sets
        .iter()
        .map(|s| &s.name)
        .chain(rs.addr_sets.iter().map(|s| &s.name))
        .chain(rs.service_sets.iter().map(|s| &s.name))
        .chain(rs.tier_sets.iter().map(|s| &s.name));
    for n in names {
        valid_name("set", n)?;
    }
    let addrs = rs
        .addr_sets
        .iter()
        .flat_map(|s| s.elements.iter().map(move |a| (&s.name, s.family, *a)))
        .chain(
            rs.service_sets
                .iter()
                .flat_map(|s| s.elements.iter().map(move |e| (&s.name, s.family, e.addr))),
        )
        .chain(rs.tier_sets.iter().flat_map(|s| {
            s.elements
                .iter()
                .flat_map(move |e| [(&s.name, s.family, e.first), (&s.name, s.family, e.last)])
        }));
    for (set, family, addr) in addrs {
        if Family::of(&addr) != family {
            return Err(TableError::Family {
                set: set.clone(),
                addr,
            });
        }
    }
    Ok(())
}

/// The shapes of set the IR has.
#[derive(Debug)]
enum SetBody<'a> {
    Map(&'a PeerMap),
    Ports(&'a PortsSet),
    Addr(&'a AddrSet),
    Service(&'a ServiceSet),
    Tier(&'a TierSet),
}

#[derive(Debug)]
struct SetSpec<'a> {
    name: String,
    body: SetBody<'a>,
}

impl SetSpec<'_> {
    fn kind(&self) -> &'static str {
        match self.body {
            SetBody::Map(_) => "map",
            _ => "set",
        }
    }
}

/// Every named set and map, in the order the compiled text declares them.
fn sets_of(rs: &Ruleset) -> Vec<SetSpec<'_>> {
    let mut v: Vec<SetSpec<'_>> = Vec::new();
    v.extend(rs.maps.iter().map(|m| SetSpec {
        name: m.name.clone(),
        body: SetBody::Map(m),
    }));
    v.extend(rs.sets.iter().map(|s| SetSpec {
        name: s.name.clone(),
        body: SetBody::Ports(s),
    }));
    v.extend(rs.addr_sets.iter().map(|s| SetSpec {
        name: s.name.clone(),
        body: SetBody::Addr(s),
    }));
    v.extend(rs.service_sets.iter().map(|s| SetSpec {
        name: s.name.clone(),
        body: SetBody::Service(s),
    }));
    v.extend(rs.tier_sets.iter().map(|s| SetSpec {
        name: s.name.clone(),
        body: SetBody::Tier(s),
    }));
    v
}

fn addr_type(f: Family) -> (u32, u32) {
    match f {
        Family::V4 => (TYPE_IPV4_ADDR, 4),
        Family::V6 => (TYPE_IPV6_ADDR, 16),
    }
}

/// `addr . inet_proto . inet_service`: its type and key length (each field in 4-byte
/// registers).
fn concat_type(f: Family) -> (u32, u32) {
    let (t, len) = addr_type(f);
    (
        (((t << 6) | TYPE_INET_PROTO) << 6) | TYPE_INET_SERVICE,
        len + 8,
    )
}

struct Encoder<'a> {
    table: &'a str,
    seq: &'a mut u32,
    body: Vec<u8>,
    sent: Vec<Sent>,
    set_id: u32,
}

impl<'a> Encoder<'a> {
    fn new(table: &'a str, seq: &'a mut u32) -> Self {
        Self {
            table,
            seq,
            body: Vec::with_capacity(4096),
            sent: Vec::new(),
            set_id: 0,
        }
    }

    fn finish(self) -> Batch {
        Batch {
            body: self.body,
            sent: self.sent,
        }
    }

    fn next_set_id(&mut self) -> u32 {
        self.set_id += 1;
        self.set_id
    }

    /// One message of type `ty` (nf_tables subsystem, family inet), ACK requested.
    fn msg(&mut self, ty: u16, flags: u16, what: String, attrs: impl FnOnce(&Self, &mut Vec<u8>)) {
        *self.seq = self.seq.wrapping_add(1);
        let seq = *self.seq;
        let mut out = std::mem::take(&mut self.body);
        let start = begin_msg(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
        );
        attrs(self, &mut out);
        finish_msg(&mut out, start);
        self.body = out;
        self.sent.push(Sent { seq, what });
    }

    fn table(&mut self) {
        self.msg(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            format!("add table inet {}", self.table),
            |b, out| {
                put_str(out, NFTA_TABLE_NAME, b.table);
                put_attr(out, NFTA_TABLE_FLAGS, &0u32.to_be_bytes());
            },
        );
    }

    fn chain(&mut self, c: &Chain) {
        self.msg(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            format!("add chain {}", c.name),
            |b, out| {
                put_str(out, NFTA_CHAIN_TABLE, b.table);
                put_str(out, NFTA_CHAIN_NAME, &c.name);
                if let Some(base) = c.base {
                    put_str(out, NFTA_CHAIN_TYPE, "filter");
                    // Always accept: see `encode_replace`.
                    put_attr(out, NFTA_CHAIN_POLICY, &NF_ACCEPT.to_be_bytes());
                    let hook = begin_nest(out, NFTA_CHAIN_HOOK);
                    let num = match base.hook {
                        Hook::Input => NF_INET_LOCAL_IN,
                        Hook::Output => NF_INET_LOCAL_OUT,
                        Hook::Forward => NF_INET_FORWARD,
                    };
                    put_attr(out, NFTA_HOOK_HOOKNUM, &num.to_be_bytes());
                    put_attr(out, NFTA_HOOK_PRIORITY, &base.priority.to_be_bytes());
                    end_nest(out, hook);
                }
            },
        );
    }

    /// `NEWSET` for `s`, known in this batch by `id` (the kernel requires one).
    fn new_set(&mut self, s: &SetSpec<'_>, id: u32) {
        self.msg(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            format!("add {} {}", s.kind(), s.name),
            |b, out| {
                put_str(out, NFTA_SET_TABLE, b.table);
                put_str(out, NFTA_SET_NAME, &s.name);
                let (flags, key, key_len, udata, fields): (u32, u32, u32, &[u8], Option<u32>) =
                    match &s.body {
                        SetBody::Map(m) => {
                            let (t, l) = addr_type(m.family);
                            (
                                NFT_SET_INTERVAL | NFT_SET_MAP,
                                t,
                                l,
                                &UDATA_VERDICT_MAP,
                                None,
                            )
                        }
                        SetBody::Ports(_) => (
                            NFT_SET_INTERVAL | NFT_SET_CONCAT,
                            (TYPE_INET_PROTO << 6) | TYPE_INET_SERVICE,
                            8,
                            &UDATA_CONCAT,
                            Some(0),
                        ),
                        SetBody::Addr(a) => {
                            let (t, l) = addr_type(a.family);
                            (0, t, l, &UDATA_ADDR_SET, None)
                        }
                        SetBody::Service(sv) => {
                            let (t, l) = concat_type(sv.family);
                            (0, t, l, &UDATA_CONCAT, None)
                        }
                        SetBody::Tier(t) if t.with_ports => {
                            let (ty, l) = concat_type(t.family);
                            (
                                NFT_SET_INTERVAL | NFT_SET_CONCAT,
                                ty,
                                l,
                                &UDATA_CONCAT,
                                Some(addr_type(t.family).1),
                            )
                        }
                        SetBody::Tier(t) => {
                            let (ty, l) = addr_type(t.family);
                            (NFT_SET_INTERVAL, ty, l, &UDATA_ADDR_SET, None)
                        }
                    };
                put_attr(out, NFTA_SET_FLAGS, &flags.to_be_bytes());
                put_attr(out, NFTA_SET_KEY_TYPE, &key.to_be_bytes());
                put_attr(out, NFTA_SET_KEY_LEN, &key_len.to_be_bytes());
                if matches!(s.body, SetBody::Map(_)) {
                    put_attr(out, NFTA_SET_DATA_TYPE, &TYPE_VERDICT.to_be_bytes());
                    put_attr(out, NFTA_SET_DATA_LEN, &0u32.to_be_bytes());
                }
                put_attr(out, NFTA_SET_ID, &id.to_be_bytes());
                if let Some(addr_len) = fields {
                    // The concatenation's field lengths (an interval concatenation).
                    let desc = begin_nest(out, NFTA_SET_DESC);
                    let concat = begin_nest(out, NFTA_SET_DESC_CONCAT);
                    let lens: &[u32] = if addr_len == 0 {
                        &[1, 2]
                    } else {
                        &[addr_len, 1, 2]
                    };
                    for len in lens {
                        let f = begin_nest(out, NFTA_LIST_ELEM);
                        put_attr(out, NFTA_SET_FIELD_LEN, &len.to_be_bytes());
                        end_nest(out, f);
                    }
                    end_nest(out, concat);
                    end_nest(out, desc);
                }
                put_attr(out, NFTA_SET_USERDATA, udata);
            },
        );
    }

    /// Deletions (`delete`) or additions of peer-map entries, per map, in messages of at
    /// most [`ELEMENTS_PER_MESSAGE`] entries (as [`super::NftSocket::update_elements`]
    /// encodes them).
    fn entries(&mut self, entries: &[&PeerEntry], delete: bool) {
        let mut by_map: std::collections::BTreeMap<&str, Vec<&PeerEntry>> =
            std::collections::BTreeMap::new();
        for e in entries {
            by_map.entry(&e.map).or_default().push(e);
        }
        for (map, entries) in by_map {
            for chunk in entries.chunks(ELEMENTS_PER_MESSAGE / 2) {
                let (ty, flags, verb) = if delete {
                    (NFT_MSG_DELSETELEM, 0, "delete")
                } else {
                    (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add")
                };
                self.msg(
                    ty,
                    flags,
                    format!("{verb} {} peer entries of map {map}", chunk.len()),
                    |b, out| {
                        put_str(out, NFTA_SET_ELEM_LIST_TABLE, b.table);
                        put_str(out, NFTA_SET_ELEM_LIST_SET, map);
                        let list = begin_nest(out, NFTA_SET_ELEM_LIST_ELEMENTS);
                        for e in chunk {
                            super::encode_entry(out, e, !delete);
                        }
                        end_nest(out, list);
                    },
                );
            }
        }
    }

    /// The elements of `s`, in messages of at most [`ELEMENTS_PER_MESSAGE`].
    fn elements(&mut self, s: &SetSpec<'_>, id: u32) {
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        match &s.body {
            SetBody::Map(m) => {
                let first = m.elements.first().map(|e| e.first);
                if let Some(first) = first {
                    leading_end(&mut encoded, first);
                }
                for e in &m.elements {
                    interval(&mut encoded, e.first, e.last, Some(&e.verdict));
                }
            }
            SetBody::Ports(p) => {
                for e in &p.elements {
                    let mut el = Vec::new();
                    let n = begin_nest(&mut el, NFTA_LIST_ELEM);
                    ports_key(&mut el, NFTA_SET_ELEM_KEY, None, e, false);
                    ports_key(&mut el, NFTA_SET_ELEM_KEY_END, None, e, true);
                    end_nest(&mut el, n);
                    encoded.push(el);
                }
            }
            SetBody::Addr(a) => {
                for addr in &a.elements {
                    let mut el = Vec::new();
                    let n = begin_nest(&mut el, NFTA_LIST_ELEM);
                    key(&mut el, NFTA_SET_ELEM_KEY, &addr_bytes(*addr));
                    end_nest(&mut el, n);
                    encoded.push(el);
                }
            }
            SetBody::Service(sv) => {
                for e in &sv.elements {
                    let mut el = Vec::new();
                    let n = begin_nest(&mut el, NFTA_LIST_ELEM);
                    let pe = PortElement {
                        protocol: e.protocol,
                        first: e.port,
                        last: e.port,
                    };
                    ports_key(&mut el, NFTA_SET_ELEM_KEY, Some(e.addr), &pe, false);
                    end_nest(&mut el, n);
                    encoded.push(el);
                }
            }
            SetBody::Tier(t) if t.with_ports => {
                for e in &t.elements {
                    let Some(p) = &e.ports else { continue };
                    let mut el = Vec::new();
                    let n = begin_nest(&mut el, NFTA_LIST_ELEM);
                    ports_key(&mut el, NFTA_SET_ELEM_KEY, Some(e.first), p, false);
                    ports_key(&mut el, NFTA_SET_ELEM_KEY_END, Some(e.last), p, true);
                    end_nest(&mut el, n);
                    encoded.push(el);
                }
            }
            SetBody::Tier(t) => {
                if let Some(first) = t.elements.first().map(|e| e.first) {
                    leading_end(&mut encoded, first);
                }
                for e in &t.elements {
                    interval(&mut encoded, e.first, e.last, None);
                }
            }
        }
        for (i, chunk) in encoded.chunks(ELEMENTS_PER_MESSAGE).enumerate() {
            self.msg(
                NFT_MSG_NEWSETELEM,
                NLM_F_CREATE,
                format!("elements of {} {} (part {})", s.kind(), s.name, i + 1),
                |b, out| {
                    put_str(out, NFTA_SET_ELEM_LIST_TABLE, b.table);
                    put_str(out, NFTA_SET_ELEM_LIST_SET, &s.name);
                    put_attr(out, NFTA_SET_ELEM_LIST_SET_ID, &id.to_be_bytes());
                    let list = begin_nest(out, NFTA_SET_ELEM_LIST_ELEMENTS);
                    for el in chunk {
                        out.extend_from_slice(el);
                    }
                    end_nest(out, list);
                },
            );
        }
    }

    /// The anonymous `{ nd-router-solicit, … }` set of the neighbour discovery rule;
    /// returns its id.
    fn nd_set(&mut self) -> u32 {
        let id = self.next_set_id();
        self.msg(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            "add the anonymous icmpv6 type set".into(),
            |b, out| {
                put_str(out, NFTA_SET_TABLE, b.table);
                put_str(out, NFTA_SET_NAME, "__set%d");
                put_attr(
                    out,
                    NFTA_SET_FLAGS,
                    &(NFT_SET_ANONYMOUS | NFT_SET_CONSTANT).to_be_bytes(),
                );
                put_attr(out, NFTA_SET_KEY_TYPE, &TYPE_ICMPV6_TYPE.to_be_bytes());
                put_attr(out, NFTA_SET_KEY_LEN, &1u32.to_be_bytes());
                put_attr(out, NFTA_SET_ID, &id.to_be_bytes());
                let desc = begin_nest(out, NFTA_SET_DESC);
                put_attr(out, NFTA_SET_DESC_SIZE, &4u32.to_be_bytes());
                end_nest(out, desc);
                put_attr(out, NFTA_SET_USERDATA, &UDATA_ICMPV6_TYPES);
            },
        );
        self.msg(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            "elements of the anonymous icmpv6 type set".into(),
            |b, out| {
                put_str(out, NFTA_SET_ELEM_LIST_TABLE, b.table);
                put_str(out, NFTA_SET_ELEM_LIST_SET, "__set%d");
                put_attr(out, NFTA_SET_ELEM_LIST_SET_ID, &id.to_be_bytes());
                let list = begin_nest(out, NFTA_SET_ELEM_LIST_ELEMENTS);
                for t in ND_TYPES {
                    let n = begin_nest(out, NFTA_LIST_ELEM);
                    key(out, NFTA_SET_ELEM_KEY, &[t]);
                    end_nest(out, n);
                }
                end_nest(out, list);
            },
        );
        id
    }

    fn rule(&mut self, c: &Chain, index: usize, kind: &RuleKind, comment: Option<&str>) {
        let what = format!("rule {index} of chain {}", c.name);
        match kind {
            RuleKind::Established => self.rule_exprs(c, what, comment, |out| {
                ct_state(out, CT_STATE_ESTABLISHED_RELATED);
                immediate_verdict(out, NF_ACCEPT, None);
            }),
            RuleKind::Invalid => self.rule_exprs(c, what, comment, |out| {
                ct_state(out, CT_STATE_INVALID);
                immediate_verdict(out, NF_DROP, None);
            }),
            RuleKind::NeighbourDiscovery => {
                let id = self.nd_set();
                self.rule_exprs(c, what, comment, |out| {
                    nfproto(out, NFPROTO_IPV6);
                    meta(out, NFT_META_L4PROTO, NFT_REG_1);
                    cmp(out, NFT_CMP_EQ, &[IPPROTO_ICMPV6]);
                    payload(out, NFT_REG_1, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
                    lookup(out, "__set%d", Some(id), None);
                    immediate_verdict(out, NF_ACCEPT, None);
                });
            }
            RuleKind::Loopback(hook) => {
                let key = match hook {
                    Hook::Input | Hook::Forward => NFT_META_IIF,
                    Hook::Output => NFT_META_OIF,
                };
                self.rule_exprs(c, what, comment, |out| {
                    meta(out, key, NFT_REG_1);
                    // `lo` is interface 1 in every namespace.
                    cmp(out, NFT_CMP_EQ, &1u32.to_ne_bytes());
                    immediate_verdict(out, NF_ACCEPT, None);
                });
            }
            RuleKind::PeerMap { family, field, map } => {
                self.rule_exprs(c, what, comment, |out| {
                    addr_load(out, *family, *field);
                    lookup(out, map, None, Some(NFT_REG_VERDICT));
                });
            }
            RuleKind::Ports { set } => self.rule_exprs(c, what, comment, |out| {
                meta(out, NFT_META_L4PROTO, NFT_REG_1);
                byteorder_hton(out, NFT_REG_1);
                payload(out, NFT_REG32_01, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
                lookup(out, set, None, None);
                immediate_verdict(out, NF_ACCEPT, None);
            }),
            RuleKind::AddrSetAccept { family, field, set } => {
                self.rule_exprs(c, what, comment, |out| {
                    addr_load(out, *family, *field);
                    lookup(out, set, None, None);
                    immediate_verdict(out, NF_ACCEPT, None);
                });
            }
            RuleKind::ServiceAccept { family, set } => self.rule_exprs(c, what, comment, |out| {
                addr_load(out, *family, AddrField::Daddr);
                proto_port_load(out, *family, false);
                lookup(out, set, None, None);
                immediate_verdict(out, NF_ACCEPT, None);
            }),
            RuleKind::Jump { chain } => self.rule_exprs(c, what, comment, |out| {
                immediate_verdict(out, super::NFT_JUMP, Some(chain));
            }),
            RuleKind::Tier {
                family,
                field,
                set,
                ports,
                verdict,
            } => self.rule_exprs(c, what, comment, |out| {
                addr_load(out, *family, *field);
                if *ports {
                    proto_port_load(out, *family, true);
                }
                lookup(out, set, None, None);
                match verdict {
                    TierVerdict::Accept => immediate_verdict(out, NF_ACCEPT, None),
                    TierVerdict::Pass => immediate_verdict(out, NFT_RETURN, None),
                    TierVerdict::Drop { group, prefix } => {
                        counter_log(out, *group, prefix);
                        immediate_verdict(out, NF_DROP, None);
                    }
                    TierVerdict::LogAccept { group, prefix } => {
                        counter_log(out, *group, prefix);
                        immediate_verdict(out, NF_ACCEPT, None);
                    }
                }
            }),
            RuleKind::LogDrop { group, prefix } => self.rule_exprs(c, what, comment, |out| {
                counter_log(out, *group, prefix);
                immediate_verdict(out, NF_DROP, None);
            }),
            RuleKind::LogAccept { group, prefix } => self.rule_exprs(c, what, comment, |out| {
                counter_log(out, *group, prefix);
                immediate_verdict(out, NF_ACCEPT, None);
            }),
        }
    }

    /// A `NEWRULE` appended to `c` with the expressions `exprs` writes.
    fn rule_exprs(
        &mut self,
        c: &Chain,
        what: String,
        comment: Option<&str>,
        exprs: impl FnOnce(&mut Vec<u8>),
    ) {
        self.msg(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            what,
            |b, out| {
                put_str(out, NFTA_RULE_TABLE, b.table);
                put_str(out, NFTA_RULE_CHAIN, &c.name);
                let list = begin_nest(out, NFTA_RULE_EXPRESSIONS);
                exprs(out);
                end_nest(out, list);
                if let Some(comment) = comment {
                    // NFTNL_UDATA_RULE_COMMENT: type 0, the text with its NUL.
                    let mut udata = Vec::with_capacity(comment.len() + 3);
                    udata.push(0);
                    udata.push(u8::try_from(comment.len() + 1).unwrap_or(u8::MAX));
                    udata.extend_from_slice(comment.as_bytes());
                    udata.push(0);
                    put_attr(out, NFTA_RULE_USERDATA, &udata);
                }
            },
        );
    }
}

/// nft's leading interval end at address 0 when the first range starts above it
/// (the rbtree backend's "nothing below" marker).
fn leading_end(encoded: &mut Vec<Vec<u8>>, first: IpAddr) {
    let zero = match first {
        IpAddr::V4(_) => IpAddr::V4(0u32.into()),
        IpAddr::V6(_) => IpAddr::V6(0u128.into()),
    };
    if first != zero {
        let mut el = Vec::new();
        interval_end(&mut el, zero);
        encoded.push(el);
    }
}

/// An interval `first..=last` as start element (with the verdict of a map) and end
/// element keyed by the address after `last`; a range reaching the last address has no
/// end and is marked open, as nft does.
fn interval(encoded: &mut Vec<Vec<u8>>, first: IpAddr, last: IpAddr, verdict: Option<&MapVerdict>) {
    let end = super::after(last);
    let mut el = Vec::new();
    let n = begin_nest(&mut el, NFTA_LIST_ELEM);
    key(&mut el, NFTA_SET_ELEM_KEY, &addr_bytes(first));
    if let Some(v) = verdict {
        let data = begin_nest(&mut el, NFTA_SET_ELEM_DATA);
        let verdict = begin_nest(&mut el, NFTA_DATA_VERDICT);
        match v {
            MapVerdict::Accept => put_attr(&mut el, NFTA_VERDICT_CODE, &NF_ACCEPT.to_be_bytes()),
            MapVerdict::Jump(chain) => {
                put_attr(&mut el, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                put_str(&mut el, NFTA_VERDICT_CHAIN, chain);
            }
        }
        end_nest(&mut el, verdict);
        end_nest(&mut el, data);
    }
    if end.is_none() {
        put_attr(&mut el, NFTA_SET_ELEM_USERDATA, &UDATA_INTERVAL_OPEN);
    }
    end_nest(&mut el, n);
    encoded.push(el);
    if let Some(end) = end {
        let mut el = Vec::new();
        interval_end(&mut el, end);
        encoded.push(el);
    }
}

fn interval_end(out: &mut Vec<u8>, at: IpAddr) {
    let n = begin_nest(out, NFTA_LIST_ELEM);
    put_attr(
        out,
        NFTA_SET_ELEM_FLAGS,
        &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
    );
    key(out, NFTA_SET_ELEM_KEY, &addr_bytes(at));
    end_nest(out, n);
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn key(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let k = begin_nest(out, ty);
    put_attr(out, NFTA_DATA_VALUE, value);
    end_nest(out, k);
}

/// A `[addr .] inet_proto . inet_service` key (each field padded to 4 bytes), the
/// range's first or last port.
fn ports_key(out: &mut Vec<u8>, ty: u16, addr: Option<IpAddr>, p: &PortElement, last: bool) {
    let mut v = Vec::with_capacity(24);
    if let Some(a) = addr {
        v.extend_from_slice(&addr_bytes(a));
    }
    v.extend_from_slice(&[protocol_number(p.protocol), 0, 0, 0]);
    let port = if last { p.last } else { p.first };
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    key(out, ty, &v);
}

fn protocol_number(p: policy_compiler::ports::Protocol) -> u8 {
    use policy_compiler::ports::Protocol;
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn expr(out: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    let e = begin_nest(out, NFTA_LIST_ELEM);
    put_str(out, NFTA_EXPR_NAME, name);
    let d = begin_nest(out, NFTA_EXPR_DATA);
    data(out);
    end_nest(out, d);
    end_nest(out, e);
}

fn meta(out: &mut Vec<u8>, key: u32, dreg: u32) {
    expr(out, "meta", |out| {
        put_attr(out, 2, &key.to_be_bytes()); // NFTA_META_KEY
        put_attr(out, 1, &dreg.to_be_bytes()); // NFTA_META_DREG
    });
}

fn cmp(out: &mut Vec<u8>, op: u32, value: &[u8]) {
    expr(out, "cmp", |out| {
        put_attr(out, 1, &NFT_REG_1.to_be_bytes()); // NFTA_CMP_SREG
        put_attr(out, 2, &op.to_be_bytes()); // NFTA_CMP_OP
        key(out, 3, value); // NFTA_CMP_DATA
    });
}

fn payload(out: &mut Vec<u8>, dreg: u32, base: u32, offset: u32, len: u32) {
    expr(out, "payload", |out| {
        put_attr(out, 1, &dreg.to_be_bytes()); // NFTA_PAYLOAD_DREG
        put_attr(out, 2, &base.to_be_bytes()); // NFTA_PAYLOAD_BASE
        put_attr(out, 3, &offset.to_be_bytes()); // NFTA_PAYLOAD_OFFSET
        put_attr(out, 4, &len.to_be_bytes()); // NFTA_PAYLOAD_LEN
    });
}

fn byteorder_hton(out: &mut Vec<u8>, reg: u32) {
    expr(out, "byteorder", |out| {
        put_attr(out, 1, &reg.to_be_bytes()); // NFTA_BYTEORDER_SREG
        put_attr(out, 2, &reg.to_be_bytes()); // NFTA_BYTEORDER_DREG
        put_attr(out, 3, &NFT_BYTEORDER_HTON.to_be_bytes()); // NFTA_BYTEORDER_OP
        put_attr(out, 4, &1u32.to_be_bytes()); // NFTA_BYTEORDER_LEN
        put_attr(out, 5, &2u32.to_be_bytes()); // NFTA_BYTEORDER_SIZE
    });
}

fn lookup(out: &mut Vec<u8>, set: &str, id: Option<u32>, dreg: Option<u32>) {
    expr(out, "lookup", |out| {
        put_attr(out, 2, &NFT_REG_1.to_be_bytes()); // NFTA_LOOKUP_SREG
        put_str(out, 1, set); // NFTA_LOOKUP_SET
        if let Some(id) = id {
            put_attr(out, 4, &id.to_be_bytes()); // NFTA_LOOKUP_SET_ID
        }
        if let Some(dreg) = dreg {
            put_attr(out, 3, &dreg.to_be_bytes()); // NFTA_LOOKUP_DREG
        }
    });
}

fn ct_state(out: &mut Vec<u8>, mask: u32) {
    expr(out, "ct", |out| {
        put_attr(out, 2, &NFT_CT_STATE.to_be_bytes()); // NFTA_CT_KEY
        put_attr(out, 1, &NFT_REG_1.to_be_bytes()); // NFTA_CT_DREG
    });
    expr(out, "bitwise", |out| {
        put_attr(out, 1, &NFT_REG_1.to_be_bytes()); // NFTA_BITWISE_SREG
        put_attr(out, 2, &NFT_REG_1.to_be_bytes()); // NFTA_BITWISE_DREG
        put_attr(out, 3, &4u32.to_be_bytes()); // NFTA_BITWISE_LEN
        key(out, 4, &mask.to_ne_bytes()); // NFTA_BITWISE_MASK
        key(out, 5, &0u32.to_ne_bytes()); // NFTA_BITWISE_XOR
    });
    cmp(out, NFT_CMP_NEQ, &0u32.to_ne_bytes());
}

/// `meta nfproto == family` then the address into register 1.
fn addr_load(out: &mut Vec<u8>, family: Family, field: AddrField) {
    let (proto, offset, len) = match (family, field) {
        (Family::V4, AddrField::Saddr) => (NFPROTO_IPV4, 12, 4),
        (Family::V4, AddrField::Daddr) => (NFPROTO_IPV4, 16, 4),
        (Family::V6, AddrField::Saddr) => (NFPROTO_IPV6, 8, 16),
        (Family::V6, AddrField::Daddr) => (NFPROTO_IPV6, 24, 16),
    };
    nfproto(out, proto);
    payload(out, NFT_REG_1, NFT_PAYLOAD_NETWORK_HEADER, offset, len);
}

fn nfproto(out: &mut Vec<u8>, proto: u8) {
    meta(out, NFT_META_NFPROTO, NFT_REG_1);
    cmp(out, NFT_CMP_EQ, &[proto]);
}

/// `. meta l4proto . th dport` after an address in register 1: protocol and port in
/// the registers that follow it; an interval set takes the protocol in network order.
fn proto_port_load(out: &mut Vec<u8>, family: Family, interval: bool) {
    let (proto_reg, port_reg) = match family {
        Family::V4 => (NFT_REG32_01, NFT_REG32_02),
        Family::V6 => (NFT_REG_2, NFT_REG32_05),
    };
    meta(out, NFT_META_L4PROTO, proto_reg);
    if interval {
        byteorder_hton(out, proto_reg);
    }
    payload(out, port_reg, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
}

fn counter_log(out: &mut Vec<u8>, group: u16, prefix: &str) {
    expr(out, "counter", |_| {});
    expr(out, "log", |out| {
        put_str(out, 2, prefix); // NFTA_LOG_PREFIX
        put_attr(out, 1, &group.to_be_bytes()); // NFTA_LOG_GROUP
    });
}

fn immediate_verdict(out: &mut Vec<u8>, code: u32, chain: Option<&str>) {
    expr(out, "immediate", |out| {
        put_attr(out, 1, &NFT_REG_VERDICT.to_be_bytes()); // NFTA_IMMEDIATE_DREG
        let data = begin_nest(out, 2); // NFTA_IMMEDIATE_DATA
        let v = begin_nest(out, NFTA_DATA_VERDICT);
        put_attr(out, NFTA_VERDICT_CODE, &code.to_be_bytes());
        if let Some(chain) = chain {
            put_str(out, NFTA_VERDICT_CHAIN, chain);
        }
        end_nest(out, v);
        end_nest(out, data);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::ruleset::{BaseChain, NftRule};

    fn ruleset(chain_name: &str) -> Ruleset {
        Ruleset {
            pod: "x/a".into(),
            notes: Vec::new(),
            maps: Vec::new(),
            sets: Vec::new(),
            addr_sets: Vec::new(),
            service_sets: Vec::new(),
            tier_sets: Vec::new(),
            chains: vec![Chain {
                name: chain_name.into(),
                base: Some(BaseChain {
                    hook: Hook::Input,
                    accept: false,
                    priority: 0,
                }),
                notes: Vec::new(),
                rules: vec![NftRule {
                    kind: RuleKind::Established,
                    comment: None,
                }],
            }],
        }
    }

    #[test]
    fn bad_names_and_prefixes_are_refused_before_anything_is_sent() {
        // See: #12
        let mut seq = 0;
        let long = "c".repeat(MAX_NAME + 1);
        let err = encode_replace(
            "netpol",
            &ruleset(&long),
            &TableObjects::default(),
            &mut seq,
        )
        .unwrap_err();
        assert!(
            matches!(err, TableError::Name { what: "chain", .. }),
            "{err}"
        );
        let mut rs = ruleset("ingress");
        rs.chains[0].rules.push(NftRule {
            kind: RuleKind::LogDrop {
                group: 100,
                prefix: "p".repeat(MAX_LOG_PREFIX + 1),
            },
            comment: None,
        });
        assert!(matches!(
            encode_replace("netpol", &rs, &TableObjects::default(), &mut seq),
            Err(TableError::LogPrefix { .. })
        ));
        assert_eq!(seq, 0, "nothing was encoded");
    }

    #[test]
    fn a_drop_policy_chain_is_loaded_accepting_with_a_final_drop() {
        let mut seq = 0;
        let r = encode_replace(
            "netpol",
            &ruleset("ingress"),
            &TableObjects::default(),
            &mut seq,
        )
        .unwrap();
        assert!(r.declare.is_none(), "no sets to declare");
        let whats: Vec<&str> = r.replace.sent.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "add table inet netpol",
                "flush table",
                "add chain ingress",
                "rule 0 of chain ingress",
                "final drop"
            ]
        );
        // The chain's policy attribute is accept (NF_ACCEPT, big endian).
        let policy = [8u8, 0, NFTA_CHAIN_POLICY as u8, 0, 0, 0, 0, 1];
        assert!(r.replace.body.windows(8).any(|w| w == policy));
        // Sequence numbers are consecutive and unique.
        let seqs: Vec<u32> = r.replace.sent.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, (1..=5).collect::<Vec<_>>());
    }

    fn with_map(mut rs: Ruleset, addrs: &[[u8; 4]]) -> Ruleset {
        rs.maps.push(PeerMap {
            name: "ingress_v4".into(),
            family: Family::V4,
            elements: addrs
                .iter()
                .map(|a| policy_compiler::ruleset::MapElement {
                    first: IpAddr::from(*a),
                    last: IpAddr::from(*a),
                    prefix: Some(32),
                    verdict: MapVerdict::Accept,
                    sources: Vec::new(),
                })
                .collect(),
        });
        rs
    }

    #[test]
    fn a_rewrite_sends_only_the_element_changes_of_a_kept_map() {
        // See: #12
        let a = with_map(ruleset("ingress"), &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        let mut b = with_map(ruleset("ingress"), &[[10, 0, 0, 2], [10, 0, 0, 3]]);
        b.chains[0].rules.push(policy_compiler::ruleset::NftRule {
            kind: RuleKind::Established,
            comment: Some("changed".into()),
        });
        let existing = TableObjects {
            chains: vec!["ingress".into()],
            sets: vec!["ingress_v4".into()],
        };
        let old: BTreeSet<PeerEntry> = a.peer_entries().into_iter().collect();
        let new: BTreeSet<PeerEntry> = b.peer_entries().into_iter().collect();
        let ops: Vec<ElementOp> = old
            .difference(&new)
            .cloned()
            .map(ElementOp::Delete)
            .chain(new.difference(&old).cloned().map(ElementOp::Add))
            .collect();
        let whats = |r: &Replace| -> Vec<String> {
            r.replace.sent.iter().map(|s| s.what.clone()).collect()
        };
        let mut seq = 0;
        let kept = encode_rewrite(
            "netpol",
            &b,
            &existing,
            KeptEntries {
                old: &old,
                new: &new,
                ops: &ops,
            },
            &mut seq,
        )
        .unwrap();
        let w = whats(&kept);
        assert!(!w.iter().any(|w| w == "flush map ingress_v4"), "{w:?}");
        assert!(
            w.contains(&"delete 1 peer entries of map ingress_v4".to_owned()),
            "{w:?}"
        );
        assert!(
            w.contains(&"add 1 peer entries of map ingress_v4".to_owned()),
            "{w:?}"
        );
        // Rules are still flushed and re-added, the chain's final drop included.
        assert!(w.contains(&"flush table".to_owned()), "{w:?}");
        assert!(kept.declare.is_none());
        // The same map emptied, or not in the kernel: flushed and reloaded whole.
        let mut seq = 0;
        let empty = with_map(ruleset("ingress"), &[]);
        let none = BTreeSet::new();
        let gone = encode_rewrite(
            "netpol",
            &empty,
            &existing,
            KeptEntries {
                old: &old,
                new: &none,
                ops: &[],
            },
            &mut seq,
        )
        .unwrap();
        assert!(whats(&gone).contains(&"flush map ingress_v4".to_owned()));
        // A map to keep that the kernel's table lacks: refused, nothing to send.
        let missing = encode_rewrite(
            "netpol",
            &b,
            &TableObjects::default(),
            KeptEntries {
                old: &old,
                new: &new,
                ops: &ops,
            },
            &mut seq,
        );
        assert!(
            matches!(missing, Err(TableError::KeptMapMissing { ref map }) if map == "ingress_v4"),
            "{missing:?}"
        );
        // The first range moving to address 0: reloaded whole.
        let zero = with_map(ruleset("ingress"), &[[0, 0, 0, 0], [10, 0, 0, 3]]);
        let to_zero: BTreeSet<PeerEntry> = zero.peer_entries().into_iter().collect();
        assert!(kept_maps(&old, &to_zero).is_empty());
        assert_eq!(
            kept_maps(&old, &new).into_iter().collect::<Vec<_>>(),
            ["ingress_v4"]
        );
    }
}
