//! A fingerprint of a whole table read back over netlink (no `nft list` process): what
//! the agent compares a table with after something else committed in its namespace.
//!
//! [`NftSocket::fingerprint`] dumps the table, its chains, rules, sets and every set's
//! elements (anonymous sets included) and hashes them with what changes without the
//! table changing masked: object handles, a rule's position (the handle of the rule
//! before it), counter values (of rules and chains) and the generation in each reply's
//! header. Elements are hashed per set in sorted order (a hash set dumps in hash
//! order). Two fingerprints of the same table are equal; a rule added, removed or
//! changed, a chain flushed, a set element added or deleted, a chain's policy or hook
//! changed, or the table's flags changed (dormant) give another one. See: #12

use sha2::{Digest, Sha256};

use super::{
    NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_GETCHAIN, NFT_MSG_GETSET, NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFTA_LIST_ELEM, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, NfnlError, NftSocket, attrs, begin_msg, error_code, finish_msg, messages, put_str,
};

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSETELEM: u16 = 13;

/// `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`: all 1.
const NFTA_TABLE: u16 = 1;
const NFTA_TABLE_HANDLE: u16 = 4;
const NFTA_CHAIN_HANDLE: u16 = 2;
const NFTA_CHAIN_COUNTERS: u16 = 8;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_POSITION: u16 = 6;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_HANDLE: u16 = 16;
const NFTA_EXPR_NAME: u16 = 1;

/// The kinds of object dumped, and the attributes of each that are not content.
const KINDS: [(u16, u16, &[u16]); 4] = [
    (NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE, &[NFTA_TABLE_HANDLE]),
    (
        NFT_MSG_GETCHAIN,
        NFT_MSG_NEWCHAIN,
        &[NFTA_CHAIN_HANDLE, NFTA_CHAIN_COUNTERS],
    ),
    (
        NFT_MSG_GETRULE,
        NFT_MSG_NEWRULE,
        &[NFTA_RULE_HANDLE, NFTA_RULE_POSITION],
    ),
    (NFT_MSG_GETSET, NFT_MSG_NEWSET, &[NFTA_SET_HANDLE]),
];

impl NftSocket {
    /// The fingerprint of `table inet TABLE` (see the module), `None` when there is no
    /// such table. Several dumps: take it while the generation proves nothing
    /// committed in between (the caller compares the generation before and after).
    pub fn fingerprint(&mut self, table: &str) -> Result<Option<[u8; 32]>, NfnlError> {
        let mut h = Sha256::new();
        let mut sets = Vec::new();
        for (get, new, masked) in KINDS {
            let objects = self.dump(get, new, &[(NFTA_TABLE, table)])?;
            if get == NFT_MSG_GETTABLE && objects.is_empty() {
                return Ok(None);
            }
            h.update(get.to_le_bytes());
            for payload in &objects {
                let body = payload.get(4..).unwrap_or_default();
                // The table's own name is attribute 1 too: every object here is of it.
                if !attrs(body).any(|(ty, v)| ty == NFTA_TABLE && cstr(v) == table.as_bytes()) {
                    continue;
                }
                if get == NFT_MSG_GETSET
                    && let Some((_, name)) = attrs(body).find(|(ty, _)| *ty == NFTA_SET_NAME)
                {
                    sets.push(String::from_utf8_lossy(cstr(name)).into_owned());
                }
                // The family (not the generation that follows it in the header).
                h.update(payload.first().map_or([0], |f| [*f]));
                for (ty, value) in attrs(body).filter(|(ty, _)| !masked.contains(ty)) {
                    h.update(ty.to_le_bytes());
                    if get == NFT_MSG_GETRULE && ty == NFTA_RULE_EXPRESSIONS {
                        hash_expressions(&mut h, value);
                    } else {
                        h.update((value.len() as u32).to_le_bytes());
                        h.update(value);
                    }
                }
            }
        }
        for set in &sets {
            let replies = self.dump(
                NFT_MSG_GETSETELEM,
                NFT_MSG_NEWSETELEM,
                &[
                    (NFTA_SET_ELEM_LIST_TABLE, table),
                    (NFTA_SET_ELEM_LIST_SET, set),
                ],
            )?;
            let mut elements: Vec<&[u8]> = Vec::new();
            for payload in &replies {
                for (ty, list) in attrs(payload.get(4..).unwrap_or_default()) {
                    if ty == NFTA_SET_ELEM_LIST_ELEMENTS {
                        elements.extend(
                            attrs(list)
                                .filter(|(t, _)| *t == NFTA_LIST_ELEM)
                                .map(|(_, e)| e),
                        );
                    }
                }
            }
            elements.sort_unstable();
            h.update(b"set");
            h.update((set.len() as u32).to_le_bytes());
            h.update(set.as_bytes());
            h.update((elements.len() as u64).to_le_bytes());
            for e in elements {
                h.update((e.len() as u32).to_le_bytes());
                h.update(e);
            }
        }
        Ok(Some(h.finalize().into()))
    }

    /// The payloads (from the `nfgenmsg` header on) of the `new` messages a dump
    /// request `get` with `attrs` answers; empty when the kernel answers `ENOENT`.
    pub(super) fn dump(
        &mut self,
        get: u16,
        new: u16,
        attributes: &[(u16, &str)],
    ) -> Result<Vec<Vec<u8>>, NfnlError> {
        let seq = self.next_seq();
        let mut msg = Vec::with_capacity(128);
        let start = begin_msg(
            &mut msg,
            (NFNL_SUBSYS_NFTABLES << 8) | get,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            NFPROTO_INET,
            0,
        );
        for (ty, value) in attributes {
            put_str(&mut msg, *ty, value);
        }
        finish_msg(&mut msg, start);
        self.send(&msg)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            let data = self.buf.get(..n).unwrap_or_default().to_vec();
            for m in messages(&data) {
                let m = m.map_err(|what| self.malformed(what))?;
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code =
                            error_code(m.payload).ok_or_else(|| self.malformed("short error"))?;
                        if code == 0 || code.abs() == nix::libc::ENOENT {
                            return Ok(Vec::new());
                        }
                        return Err(NfnlError::Refused {
                            netns: self.netns.clone(),
                            source: std::io::Error::from_raw_os_error(code.abs()),
                        });
                    }
                    ty if ty == (NFNL_SUBSYS_NFTABLES << 8) | new => {
                        out.push(m.payload.to_vec());
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A rule's expressions with each counter's values left out.
fn hash_expressions(h: &mut Sha256, list: &[u8]) {
    for (ty, expr) in attrs(list) {
        h.update(ty.to_le_bytes());
        let counter = attrs(expr).any(|(t, v)| t == NFTA_EXPR_NAME && cstr(v) == b"counter");
        if counter {
            h.update(b"counter");
        } else {
            h.update((expr.len() as u32).to_le_bytes());
            h.update(expr);
        }
    }
}

/// A netlink string attribute without its NUL.
fn cstr(v: &[u8]) -> &[u8] {
    v.split(|b| *b == 0).next().unwrap_or_default()
}
