//! nf_tables over netlink, in-process: no `nft` process per update or per check.
//!
//! An [`NftSocket`] is a `NETLINK_NETFILTER` socket made on a thread that entered the
//! Pod's network namespace ([`crate::netns::run_in`]); a socket keeps the namespace it
//! was made in, so it is then used from any thread. It does three things:
//!
//! - [`NftSocket::generation`]: the namespace's nf_tables generation (`NFT_MSG_GETGEN`).
//!   Every committed transaction in a namespace increments it by one, and nothing else
//!   does, so an unchanged generation proves nothing was changed since.
//! - [`NftSocket::update_elements`]: deletes and adds peer-map elements of `table inet
//!   netpol` in ONE transaction (an `NFNL_MSG_BATCH_BEGIN` .. `NFNL_MSG_BATCH_END` batch),
//!   conditional on the generation (`NFNL_BATCH_GENID`): if anything committed in the
//!   namespace since the caller last knew it, the kernel refuses the whole batch
//!   (`ERESTART`) and the caller replaces the table instead.
//! - [`EventSocket`]: a second socket subscribed to the `NFNLGRP_NFTABLES` multicast
//!   group: every commit in the namespace is announced there.
//!
//! The message encodings are written here by hand (a few attributes of
//! `include/uapi/linux/netfilter/nf_tables.h` and `nfnetlink.h`); no GPL library
//! (libnftnl, libmnl, libnftables) is linked. Interval maps are encoded as `nft` does for
//! the kernel's rbtree backend: a start element carrying the verdict and an end element
//! (`NFT_SET_ELEM_INTERVAL_END`) keyed by the address after the range; a range reaching
//! the last address has no end element and is marked open in its user data.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};
use policy_compiler::ruleset::{MapVerdict, PeerEntry};

use crate::netns;

mod dump;
pub mod table;

pub use table::{Replace, TableError};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_BATCH_GENID: u16 = 1;
/// The nf_tables multicast group (`NFNLGRP_NFTABLES`).
pub const NFNLGRP_NFTABLES: u32 = 7;

const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
/// `NFTA_CHAIN_TABLE` and `NFTA_SET_TABLE`.
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_NAME: u16 = 2;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NF_ACCEPT: u32 = 1;
/// `NFT_JUMP` (-3) as the kernel's u32.
const NFT_JUMP: u32 = 0xffff_fffd;
/// nftables' element user data: `NFTNL_UDATA_SET_ELEM_FLAGS` (type 1, length 4) =
/// `NFTNL_SET_ELEM_F_INTERVAL_OPEN`, what `nft` writes on a range reaching the last
/// address (so it lists as `a-255.255.255.255`, not as an open start).
const UDATA_INTERVAL_OPEN: [u8; 6] = [1, 4, 1, 0, 0, 0];

/// Largest batch sent at once; larger updates are cut into several messages of one
/// batch (the kernel's socket buffer holds the whole batch).
const MAX_ELEMENTS_PER_MESSAGE: usize = 512;

const ERESTART: i32 = 85;

/// Errors of netlink nf_tables calls; each names the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    /// The namespace could not be entered to make the socket.
    #[error("netns {netns}: cannot enter")]
    Netns {
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: Box<netns::NetnsError>,
    },
    /// A socket call failed.
    #[error("netns {netns}: nf_tables netlink {op} failed")]
    Io {
        /// The namespace.
        netns: String,
        /// `socket`, `bind`, `send`, `recv`, `join group`.
        op: &'static str,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the batch (the whole transaction is undone).
    #[error("netns {netns}: the kernel refused the nf_tables batch")]
    Refused {
        /// The namespace.
        netns: String,
        /// The kernel's error (`ENOENT`: no such table or map, `EEXIST`: overlap, ...).
        #[source]
        source: io::Error,
    },
    /// Something else committed in the namespace since the generation the caller knew:
    /// the kernel refused the batch (nothing changed).
    #[error(
        "netns {netns}: nf_tables generation is {found}, expected {expected}: changed by someone else"
    )]
    Stale {
        /// The namespace.
        netns: String,
        /// The generation the batch was conditional on.
        expected: u32,
        /// The generation now.
        found: u32,
    },
    /// The ruleset cannot be encoded (nothing was sent).
    #[error("netns {netns}: the table cannot be loaded")]
    Invalid {
        /// The namespace.
        netns: String,
        /// What is wrong with it.
        #[source]
        source: TableError,
    },
    /// The kernel refused one message of a table batch: the whole transaction is
    /// undone, the table is as it was.
    #[error("netns {netns}: the kernel refused the table batch at {what}")]
    RefusedAt {
        /// The namespace.
        netns: String,
        /// The first refused message (`add set ingress_v4`, `rule 3 of chain ingress`).
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A reply could not be read.
    #[error("netns {netns}: malformed nf_tables reply: {what}")]
    Malformed {
        /// The namespace.
        netns: String,
        /// What was wrong.
        what: &'static str,
    },
}

/// One change of a peer map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementOp {
    /// Delete the entry's range (its start and end elements).
    Delete(PeerEntry),
    /// Add the entry's range with its verdict.
    Add(PeerEntry),
}

/// A netlink socket for nf_tables requests in one network namespace.
#[derive(Debug)]
pub struct NftSocket {
    netns: String,
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// Send and receive buffer sizes set so far (0: the defaults).
    sndbuf: usize,
    rcvbuf: usize,
}

/// How long a reply may take before the call fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn open_here(netns: &str, groups: &[u32]) -> Result<Socket, NfnlError> {
    let err = |op: &'static str| {
        move |source: io::Error| NfnlError::Io {
            netns: netns.to_owned(),
            op,
            source,
        }
    };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err("socket"))?;
    socket.bind_auto().map_err(err("bind"))?;
    for g in groups {
        socket.add_membership(*g).map_err(err("join group"))?;
    }
    let timeout = TimeVal::milliseconds(i64::try_from(REPLY_TIMEOUT.as_millis()).unwrap_or(5000));
    setsockopt(&socket.as_fd(), sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| err("SO_RCVTIMEO")(io::Error::from(e)))?;
    Ok(socket)
}

/// Makes a socket in `netns` (on a thread that enters it; the agent's own namespace,
/// [`crate::node::OWN_NETNS`], on the caller's thread).
fn open_in(netns: &str, groups: &[u32]) -> Result<Socket, NfnlError> {
    if netns == crate::node::OWN_NETNS {
        return open_here(netns, groups);
    }
    netns::run_in(netns, || open_here(netns, groups)).map_err(|source| NfnlError::Netns {
        netns: netns.to_owned(),
        source: Box::new(source),
    })?
}

impl NftSocket {
    /// A socket in `netns` (a name, a path, or [`crate::node::OWN_NETNS`]).
    pub fn open(netns: &str) -> Result<Self, NfnlError> {
        Ok(Self {
            netns: netns.to_owned(),
            socket: open_in(netns, &[])?,
            seq: 0,
            buf: vec![0; 1 << 16],
            sndbuf: 0,
            rcvbuf: 0,
        })
    }

    /// The namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> Result<(), NfnlError> {
        self.socket
            .send(msg, 0)
            .map(|_| ())
            .map_err(|source| NfnlError::Io {
                netns: self.netns.clone(),
                op: "send",
                source,
            })
    }

    /// Receives one datagram into `self.buf`; returns its length.
    fn recv(&mut self) -> Result<usize, NfnlError> {
        let netns = &self.netns;
        self.socket
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|source| NfnlError::Io {
                netns: netns.clone(),
                op: "recv",
                source,
            })
    }

    /// The namespace's nf_tables generation.
    pub fn generation(&mut self) -> Result<u32, NfnlError> {
        let seq = self.next_seq();
        let mut msg = Vec::with_capacity(32);
        begin_msg(
            &mut msg,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
            NLM_F_REQUEST,
            seq,
            NFPROTO_UNSPEC,
            0,
        );
        finish_msg(&mut msg, 0);
        self.send(&msg)?;
        loop {
            let n = self.recv()?;
            let data = self.buf.get(..n).unwrap_or_default();
            for m in messages(data) {
                let m = m.map_err(|what| self.malformed(what))?;
                if m.seq != seq {
                    continue;
                }
                if m.ty == NLMSG_ERROR {
                    let code =
                        error_code(m.payload).ok_or_else(|| self.malformed("short error"))?;
                    return Err(NfnlError::Refused {
                        netns: self.netns.clone(),
                        source: io::Error::from_raw_os_error(code.abs()),
                    });
                }
                if m.ty == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
                    return gen_id(m.payload).ok_or_else(|| self.malformed("no NFTA_GEN_ID"));
                }
            }
        }
    }

    /// The names of the chains and of the sets and maps of `table inet TABLE` (both
    /// empty when there is no such table), read with two netlink dumps: what a table
    /// replace that keeps the table must delete because the new ruleset lacks it.
    ///
    /// Anonymous sets (`__set<N>`, the `{ .. }` inside a rule) belong to their rule and
    /// go with it: they are left out.
    pub fn objects(&mut self, table: &str) -> Result<TableObjects, NfnlError> {
        let mut sets = self.dump_names(table, NFT_MSG_GETSET, NFT_MSG_NEWSET, NFTA_SET_NAME)?;
        sets.retain(|s| !s.starts_with("__set"));
        Ok(TableObjects {
            chains: self.dump_names(table, NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN, NFTA_CHAIN_NAME)?,
            sets,
        })
    }

    /// The names (attribute `name_attr`) of the objects of `table` a dump request
    /// `get` answers with `new` messages, sorted, once each.
    fn dump_names(
        &mut self,
        table: &str,
        get: u16,
        new: u16,
        name_attr: u16,
    ) -> Result<Vec<String>, NfnlError> {
        let mut names = Vec::new();
        for payload in self.dump(get, new, &[(NFTA_OBJ_TABLE, table)])? {
            let mut in_table = false;
            let mut name = None;
            for (ty, value) in attrs(payload.get(4..).unwrap_or_default()) {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                if ty == NFTA_OBJ_TABLE {
                    in_table = text == table.as_bytes();
                } else if ty == name_attr {
                    name = Some(String::from_utf8_lossy(text).into_owned());
                }
            }
            if let (true, Some(name)) = (in_table, name) {
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn malformed(&self, what: &'static str) -> NfnlError {
        NfnlError::Malformed {
            netns: self.netns.clone(),
            what,
        }
    }

    /// Applies `ops` (all deletions first, then additions, per map) to `table inet
    /// TABLE` in one transaction, only if the namespace's generation is still
    /// `generation`. Returns the generation of the new commit (`generation + 1`,
    /// skipping 0). An empty `ops` commits nothing and returns `generation`.
    pub fn update_elements(
        &mut self,
        table: &str,
        ops: &[ElementOp],
        generation: u32,
    ) -> Result<u32, NfnlError> {
        if ops.is_empty() {
            return Ok(generation);
        }
        let (batch, seqs) = self.encode_batch(table, ops, generation);
        self.send(&batch)?;
        // Every element message asked for an ACK; the batch-begin message is answered
        // only when the batch as a whole is refused (a stale generation).
        match self.batch_answer(seqs.0, seqs.1.iter().copied().collect())? {
            BatchAnswer::Done => Ok(next_generation(generation)),
            BatchAnswer::BeginRefused(ERESTART) => {
                let found = self.generation()?;
                Err(NfnlError::Stale {
                    netns: self.netns.clone(),
                    expected: generation,
                    found,
                })
            }
            BatchAnswer::BeginRefused(code) | BatchAnswer::Refused { code, .. } => {
                Err(NfnlError::Refused {
                    netns: self.netns.clone(),
                    source: io::Error::from_raw_os_error(code),
                })
            }
        }
    }

    /// Reads the kernel's answers to a batch sent with an ACK asked for every message
    /// in `pending` until each is acknowledged; the batch-begin message (`begin`) is
    /// answered only when the batch as a whole is refused, which ends the wait.
    fn batch_answer(
        &mut self,
        begin: u32,
        mut pending: std::collections::BTreeSet<u32>,
    ) -> Result<BatchAnswer, NfnlError> {
        let mut failure = None;
        while !pending.is_empty() {
            let n = self.recv()?;
            let data = self.buf.get(..n).unwrap_or_default().to_vec();
            for m in messages(&data) {
                let m = m.map_err(|what| self.malformed(what))?;
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(m.payload).ok_or_else(|| self.malformed("short error"))?;
                if m.seq == begin && code != 0 {
                    return Ok(BatchAnswer::BeginRefused(code.abs()));
                }
                if pending.remove(&m.seq) && code != 0 && failure.is_none() {
                    failure = Some((m.seq, code.abs()));
                }
            }
        }
        Ok(
            failure.map_or(BatchAnswer::Done, |(seq, code)| BatchAnswer::Refused {
                seq,
                code,
            }),
        )
    }

    /// Replaces `table inet TABLE` with `rs` in place, over netlink: the transactions
    /// of [`table::encode_replace`] for the chains and sets the kernel's table has now
    /// (read with [`NftSocket::objects`]), each one batch, all or nothing. Returns the
    /// number of commits (1, or 2 when new sets were declared first).
    pub fn replace_table(
        &mut self,
        table: &str,
        rs: &policy_compiler::ruleset::Ruleset,
    ) -> Result<u32, NfnlError> {
        let existing = self.objects(table)?;
        let mut seq = self.seq;
        let done = table::encode_replace(table, rs, &existing, &mut seq).map_err(|source| {
            NfnlError::Invalid {
                netns: self.netns.clone(),
                source,
            }
        })?;
        self.seq = seq;
        let mut commits = 0;
        for batch in done.declare.iter().chain([&done.replace]) {
            self.send_batch(batch)?;
            commits += 1;
        }
        Ok(commits)
    }

    /// Changes `table inet TABLE` to `rs` like [`NftSocket::replace_table`], but keeps
    /// the peer maps whose entries the kernel holds (`old`, the entries of the agent's
    /// last commit) and changes them by `ops` (from `old` to `new`, `rs`'s entries)
    /// instead of flushing and reloading them ([`table::encode_rewrite`]; `rs` needs no
    /// elements in the maps [`table::kept_maps`] names). Every batch is
    /// conditional on the generation: the first on `generation` (the one right after
    /// the agent's last commit, so the kernel holds exactly `old`), the next on the one
    /// after; if anything else committed in the namespace the kernel refuses the batch
    /// and this returns [`NfnlError::Stale`] (the caller replaces the table whole).
    /// Returns the generation after the last commit. See: #12
    pub fn rewrite_table(
        &mut self,
        table: &str,
        rs: &policy_compiler::ruleset::Ruleset,
        old: &std::collections::BTreeSet<PeerEntry>,
        new: &std::collections::BTreeSet<PeerEntry>,
        ops: &[ElementOp],
        generation: u32,
    ) -> Result<u32, NfnlError> {
        let existing = self.objects(table)?;
        let mut seq = self.seq;
        let kept = table::KeptEntries { old, new, ops };
        let done =
            table::encode_rewrite(table, rs, &existing, kept, &mut seq).map_err(|source| {
                NfnlError::Invalid {
                    netns: self.netns.clone(),
                    source,
                }
            })?;
        self.seq = seq;
        let mut at = generation;
        for batch in done.declare.iter().chain([&done.replace]) {
            match self.send_batch_at(batch, Some(at)) {
                Ok(()) => at = next_generation(at),
                Err(NfnlError::Refused { source, .. })
                    if source.raw_os_error() == Some(ERESTART) =>
                {
                    let found = self.generation()?;
                    return Err(NfnlError::Stale {
                        netns: self.netns.clone(),
                        expected: at,
                        found,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(at)
    }

    /// Sends one table batch and waits for the ACK of every message; the first refused
    /// message is the error (the kernel then undid the whole batch).
    fn send_batch(&mut self, batch: &table::Batch) -> Result<(), NfnlError> {
        self.send_batch_at(batch, None)
    }

    /// [`NftSocket::send_batch`], conditional on the namespace's generation when
    /// `generation` is given (`NFNL_BATCH_GENID`; a stale one is refused with
    /// `ERESTART`).
    fn send_batch_at(
        &mut self,
        batch: &table::Batch,
        generation: Option<u32>,
    ) -> Result<(), NfnlError> {
        let mut out = Vec::with_capacity(batch.body.len() + 64);
        let begin = self.next_seq();
        let start = batch_marker(&mut out, NFNL_MSG_BATCH_BEGIN, begin);
        if let Some(g) = generation {
            put_attr(&mut out, NFNL_BATCH_GENID, &g.to_be_bytes());
        }
        finish_msg(&mut out, start);
        out.extend_from_slice(&batch.body);
        let end = self.next_seq();
        let start = batch_marker(&mut out, NFNL_MSG_BATCH_END, end);
        finish_msg(&mut out, start);
        self.size_buffers(out.len(), batch.sent.len())?;
        self.send(&out)?;
        let what: std::collections::BTreeMap<u32, &str> = batch
            .sent
            .iter()
            .map(|s| (s.seq, s.what.as_str()))
            .collect();
        match self.batch_answer(begin, what.keys().copied().collect())? {
            BatchAnswer::Done => Ok(()),
            BatchAnswer::BeginRefused(code) => Err(NfnlError::Refused {
                netns: self.netns.clone(),
                source: io::Error::from_raw_os_error(code),
            }),
            BatchAnswer::Refused { seq, code } => Err(NfnlError::RefusedAt {
                netns: self.netns.clone(),
                what: what.get(&seq).copied().unwrap_or_default().to_owned(),
                source: io::Error::from_raw_os_error(code),
            }),
        }
    }

    /// Makes the socket's buffers hold a batch of `bytes` and the ACKs of `messages`
    /// (as root the limits of `net.core.*mem_max` do not apply, as for `nft`).
    fn size_buffers(&mut self, bytes: usize, messages: usize) -> Result<(), NfnlError> {
        let send = bytes.saturating_mul(2).max(1 << 16);
        // An ACK costs about one page of receive buffer (skb truesize).
        let recv = messages.saturating_mul(4096).max(1 << 18);
        if send <= self.sndbuf && recv <= self.rcvbuf {
            return Ok(());
        }
        let fd = self.socket.as_fd();
        let err = |op: &'static str| {
            let netns = self.netns.clone();
            move |e: nix::Error| NfnlError::Io {
                netns,
                op,
                source: io::Error::from(e),
            }
        };
        if send > self.sndbuf {
            setsockopt(&fd, sockopt::SndBufForce, &send)
                .or_else(|_| setsockopt(&fd, sockopt::SndBuf, &send))
                .map_err(err("SO_SNDBUF"))?;
            self.sndbuf = send;
        }
        if recv > self.rcvbuf {
            setsockopt(&fd, sockopt::RcvBufForce, &recv)
                .or_else(|_| setsockopt(&fd, sockopt::RcvBuf, &recv))
                .map_err(err("SO_RCVBUF"))?;
            self.rcvbuf = recv;
        }
        Ok(())
    }

    /// The batch and its sequence numbers (batch begin, element messages).
    fn encode_batch(
        &mut self,
        table: &str,
        ops: &[ElementOp],
        generation: u32,
    ) -> (Vec<u8>, (u32, Vec<u32>)) {
        let mut out = Vec::with_capacity(256 + ops.len() * 64);
        let begin = self.next_seq();
        let start = batch_marker(&mut out, NFNL_MSG_BATCH_BEGIN, begin);
        put_attr(&mut out, NFNL_BATCH_GENID, &generation.to_be_bytes());
        finish_msg(&mut out, start);
        let mut seqs = Vec::new();
        // Deletions first (all maps), then additions: a range replaced by an overlapping
        // one is gone before its successor is checked for overlap.
        for delete in [true, false] {
            let mut by_map: std::collections::BTreeMap<&str, Vec<&PeerEntry>> =
                std::collections::BTreeMap::new();
            for op in ops {
                match op {
                    ElementOp::Delete(e) if delete => by_map.entry(&e.map).or_default().push(e),
                    ElementOp::Add(e) if !delete => by_map.entry(&e.map).or_default().push(e),
                    ElementOp::Delete(_) | ElementOp::Add(_) => {}
                }
            }
            for (map, entries) in by_map {
                for chunk in entries.chunks(MAX_ELEMENTS_PER_MESSAGE) {
                    let seq = self.next_seq();
                    seqs.push(seq);
                    let (ty, flags) = if delete {
                        (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
                    } else {
                        (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
                    };
                    let start = begin_msg(
                        &mut out,
                        (NFNL_SUBSYS_NFTABLES << 8) | ty,
                        flags,
                        seq,
                        NFPROTO_INET,
                        0,
                    );
                    put_str(&mut out, NFTA_SET_ELEM_LIST_TABLE, table);
                    put_str(&mut out, NFTA_SET_ELEM_LIST_SET, map);
                    let list = begin_nest(&mut out, NFTA_SET_ELEM_LIST_ELEMENTS);
                    for e in chunk {
                        encode_entry(&mut out, e, !delete);
                    }
                    end_nest(&mut out, list);
                    finish_msg(&mut out, start);
                }
            }
        }
        let end = self.next_seq();
        let start = batch_marker(&mut out, NFNL_MSG_BATCH_END, end);
        finish_msg(&mut out, start);
        (out, (begin, seqs))
    }
}

/// How the kernel answered a batch ([`NftSocket::batch_answer`]); codes are positive
/// errnos.
enum BatchAnswer {
    /// Every message was acknowledged without error: committed.
    Done,
    /// The batch-begin message was refused (e.g. `ERESTART`: a stale generation).
    BeginRefused(i32),
    /// The first message refused, by sequence number (the kernel undid the batch).
    Refused { seq: u32, code: i32 },
}

/// Starts a batch's `NFNL_MSG_BATCH_BEGIN` or `NFNL_MSG_BATCH_END` message (nf_tables
/// subsystem); finish it with [`finish_msg`].
fn batch_marker(out: &mut Vec<u8>, ty: u16, seq: u32) -> usize {
    begin_msg(
        out,
        ty,
        NLM_F_REQUEST,
        seq,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
    )
}

/// The generation after one commit from `g` (the kernel skips 0).
pub fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// The elements of one entry: start (with the verdict when adding) and, unless the
/// range reaches the last address, end.
fn encode_entry(out: &mut Vec<u8>, e: &PeerEntry, with_data: bool) {
    let end = after(e.last);
    let start = begin_nest(out, NFTA_LIST_ELEM);
    let key = begin_nest(out, NFTA_SET_ELEM_KEY);
    put_attr(out, NFTA_DATA_VALUE, &addr_bytes(e.first));
    end_nest(out, key);
    put_attr(out, NFTA_SET_ELEM_FLAGS, &0u32.to_be_bytes());
    if with_data {
        let data = begin_nest(out, NFTA_SET_ELEM_DATA);
        let verdict = begin_nest(out, NFTA_DATA_VERDICT);
        match &e.verdict {
            MapVerdict::Accept => put_attr(out, NFTA_VERDICT_CODE, &NF_ACCEPT.to_be_bytes()),
            MapVerdict::Jump(chain) => {
                put_attr(out, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                put_str(out, NFTA_VERDICT_CHAIN, chain);
            }
        }
        end_nest(out, verdict);
        end_nest(out, data);
        if end.is_none() {
            put_attr(out, NFTA_SET_ELEM_USERDATA, &UDATA_INTERVAL_OPEN);
        }
    }
    end_nest(out, start);
    if let Some(end) = end {
        let el = begin_nest(out, NFTA_LIST_ELEM);
        let key = begin_nest(out, NFTA_SET_ELEM_KEY);
        put_attr(out, NFTA_DATA_VALUE, &addr_bytes(end));
        end_nest(out, key);
        put_attr(
            out,
            NFTA_SET_ELEM_FLAGS,
            &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
        );
        end_nest(out, el);
    }
}

/// The address after `ip`, `None` for the last one.
fn after(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Writes a netlink header (length patched by [`finish_msg`]) and the nfgenmsg; returns
/// the message's start offset.
fn begin_msg(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    start
}

fn finish_msg(out: &mut [u8], start: usize) {
    let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    if let Some(h) = out.get_mut(start..start + 4) {
        h.copy_from_slice(&len.to_ne_bytes());
    }
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn put_attr(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    pad(out);
}

fn put_str(out: &mut Vec<u8>, ty: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    put_attr(out, ty, &v);
}

fn begin_nest(out: &mut Vec<u8>, ty: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

fn end_nest(out: &mut [u8], start: usize) {
    let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
    if let Some(h) = out.get_mut(start..start + 2) {
        h.copy_from_slice(&len.to_ne_bytes());
    }
}

/// One netlink message of a datagram.
struct Msg<'a> {
    ty: u16,
    seq: u32,
    /// After the netlink header.
    payload: &'a [u8],
}

/// The messages of a datagram, bounds-checked.
fn messages(mut data: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, &'static str>> {
    std::iter::from_fn(move || {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            data = &[];
            return Some(Err("bad message length"));
        }
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        let payload = &data[NLMSG_HDRLEN..len];
        let aligned = len.div_ceil(4) * 4;
        data = data.get(aligned..).unwrap_or_default();
        Some(Ok(Msg { ty, seq, payload }))
    })
}

/// The error code of an `NLMSG_ERROR` payload (0: an ACK).
fn error_code(payload: &[u8]) -> Option<i32> {
    let b = payload.get(..4)?;
    Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

pub use crate::nft::TableObjects;

/// The attributes `(type, value)` of a payload, bounds-checked (a malformed one ends
/// the walk).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            data = &[];
            return None;
        }
        let value = &data[4..len];
        data = data.get(len.div_ceil(4) * 4..).unwrap_or_default();
        Some((ty, value))
    })
}

/// `NFTA_GEN_ID` of a `NFT_MSG_NEWGEN` payload (after the 4-byte nfgenmsg).
fn gen_id(payload: &[u8]) -> Option<u32> {
    let mut attrs = payload.get(4..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == NFTA_GEN_ID && len >= 8 {
            return Some(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = attrs.get(len.div_ceil(4) * 4..).unwrap_or_default();
    }
    None
}

/// A socket subscribed to a namespace's nf_tables events (`NFNLGRP_NFTABLES`): every
/// commit there is announced, whoever made it.
#[derive(Debug)]
pub struct EventSocket {
    netns: String,
    socket: Socket,
    buf: Vec<u8>,
}

impl EventSocket {
    /// Subscribes in `netns`.
    pub fn open(netns: &str) -> Result<Self, NfnlError> {
        let socket = open_in(netns, &[NFNLGRP_NFTABLES])?;
        socket
            .set_non_blocking(true)
            .map_err(|source| NfnlError::Io {
                netns: netns.to_owned(),
                op: "O_NONBLOCK",
                source,
            })?;
        Ok(Self {
            netns: netns.to_owned(),
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    /// The namespace.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Reads every pending event; returns whether any arrived (an overflowing receive
    /// queue, `ENOBUFS`, counts as an event: something was lost). Another error means
    /// the socket is unusable.
    pub fn drain(&mut self) -> Result<bool, NfnlError> {
        let mut any = false;
        loop {
            match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return Ok(any),
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => any = true,
                Err(source) => {
                    return Err(NfnlError::Io {
                        netns: self.netns.clone(),
                        op: "recv",
                        source,
                    });
                }
            }
        }
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The raw descriptor (for logs).
    pub fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(map: &str, first: &str, last: &str, verdict: MapVerdict) -> PeerEntry {
        let first: IpAddr = first.parse().unwrap();
        PeerEntry {
            map: map.into(),
            family: policy_compiler::ruleset::Family::of(&first),
            first,
            last: last.parse().unwrap(),
            verdict,
        }
    }

    #[test]
    fn ranges_become_start_and_end_elements_like_nft() {
        let mut out = Vec::new();
        encode_entry(
            &mut out,
            &entry(
                "ingress_v4",
                "10.0.1.3",
                "10.0.1.9",
                MapVerdict::Jump("c0".into()),
            ),
            true,
        );
        // start element: key 10.0.1.3, flags 0, verdict jump c0
        let start_key = [0x0c, 0, 1, 0x80, 8, 0, 1, 0, 10, 0, 1, 3];
        assert_eq!(&out[4..16], &start_key);
        // the end element is keyed 10.0.1.10 with NFT_SET_ELEM_INTERVAL_END
        let end = [10u8, 0, 1, 10];
        let pos = out.windows(4).rposition(|w| w == end).unwrap();
        assert_eq!(&out[pos + 4 + 4..pos + 4 + 8], &1u32.to_be_bytes());
        // The last address has no end element and is marked open.
        let mut open = Vec::new();
        encode_entry(
            &mut open,
            &entry(
                "egress_v4",
                "10.0.1.3",
                "255.255.255.255",
                MapVerdict::Accept,
            ),
            true,
        );
        assert!(open.windows(6).any(|w| w == UDATA_INTERVAL_OPEN));
        assert_eq!(
            open.windows(4).filter(|w| *w == [0x0c, 0, 1, 0x80]).count(),
            1
        );
    }

    #[test]
    fn generation_skips_zero() {
        assert_eq!(next_generation(7), 8);
        assert_eq!(next_generation(u32::MAX), 1);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut short = vec![40u8, 0, 0, 0];
        short.extend_from_slice(&[0; 12]);
        assert!(matches!(messages(&short).next(), Some(Err(_))));
        assert!(messages(&[1, 2, 3]).next().is_none());
        assert_eq!(gen_id(&[0, 0, 0, 0, 8, 0, 1, 0, 0, 0, 0, 9]), Some(9));
        assert_eq!(gen_id(&[0, 0, 0, 0, 200, 0, 1, 0]), None);
    }
}
