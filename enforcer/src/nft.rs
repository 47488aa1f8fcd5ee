//! Loading and listing nftables rulesets inside a network namespace with the `nft` tool.
//!
//! [`apply`] feeds the ruleset text to `nft -f -` running in the namespace
//! (`ip netns exec NAME nft -f -`). `nft -f` loads a file as one netlink batch, so the
//! ruleset is applied atomically: either all of it or nothing. Put `flush table …` or
//! `destroy table …` at the top of the text to replace a table in the same transaction.
//!
//! This is the one place that runs `nft` (the agent's [`crate::applier::NftApplier`]
//! goes through it too).

use crate::netns::{self, NetnsError};

/// Errors of nft operations; each names the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` rejected the ruleset; `stderr` has nft's own error with line and column.
    #[error("netns {netns}: nft rejected the ruleset: {stderr}")]
    Rejected {
        /// Namespace the ruleset was for.
        netns: String,
        /// nft's standard error.
        stderr: String,
    },
    /// Running `nft` failed (no such namespace, nft missing, …).
    #[error("netns {netns}: cannot run nft")]
    Run {
        /// Namespace name.
        netns: String,
        /// The underlying namespace error (includes stderr).
        #[source]
        source: NetnsError,
    },
    /// `nft -j list ruleset` printed something that is not JSON.
    #[error("netns {netns}: nft printed invalid JSON")]
    Json {
        /// Namespace name.
        netns: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

fn nft(netns: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, NftError> {
    let out = netns::exec(netns, "nft", args, stdin).map_err(|source| NftError::Run {
        netns: netns.to_owned(),
        source,
    })?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(NftError::Rejected {
            netns: netns.to_owned(),
            stderr: out.stderr,
        })
    }
}

/// Applies `ruleset` (nft syntax) inside `netns` in one transaction (`nft -f -`).
pub fn apply(netns: &str, ruleset: &str) -> Result<(), NftError> {
    nft(netns, &["-f", "-"], Some(ruleset.as_bytes())).map(drop)
}

/// Applies an nftables JSON document inside `netns` in one transaction (`nft -j -f -`),
/// reporting nft's own error text on rejection (the `nftables` crate's helper drops it).
pub fn apply_json(netns: &str, document: &serde_json::Value) -> Result<(), NftError> {
    let text = document.to_string();
    nft(netns, &["-j", "-f", "-"], Some(text.as_bytes())).map(drop)
}

/// One table as nft's JSON (`nft -j list table FAMILY NAME`).
pub fn list_table_json(
    netns: &str,
    family: &str,
    name: &str,
) -> Result<serde_json::Value, NftError> {
    let stdout = nft(netns, &["-j", "list", "table", family, name], None)?;
    serde_json::from_slice(&stdout).map_err(|source| NftError::Json {
        netns: netns.to_owned(),
        source,
    })
}

/// Checks `ruleset` without applying it (`nft -c -f -`); still needs a namespace.
pub fn check(netns: &str, ruleset: &str) -> Result<(), NftError> {
    nft(netns, &["-c", "-f", "-"], Some(ruleset.as_bytes())).map(drop)
}

/// One table as nft text (`nft list table FAMILY NAME`).
pub fn list_table(netns: &str, family: &str, name: &str) -> Result<String, NftError> {
    let stdout = nft(netns, &["list", "table", family, name], None)?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Deletes one table (`nft delete table FAMILY NAME`).
pub fn delete_table(netns: &str, family: &str, name: &str) -> Result<(), NftError> {
    nft(netns, &["delete", "table", family, name], None).map(drop)
}

/// Whether `err` is nft saying the table (or chain, set) does not exist.
pub fn is_no_such_table(err: &NftError) -> bool {
    matches!(err, NftError::Rejected { stderr, .. } if stderr.contains("No such file or directory"))
}

/// Removes every table in `netns` (`nft flush ruleset`).
pub fn flush(netns: &str) -> Result<(), NftError> {
    nft(netns, &["flush", "ruleset"], None).map(drop)
}

/// The ruleset of `netns` as nft's JSON (`nft -j list ruleset`).
pub fn list_json(netns: &str) -> Result<serde_json::Value, NftError> {
    let stdout = nft(netns, &["-j", "list", "ruleset"], None)?;
    serde_json::from_slice(&stdout).map_err(|source| NftError::Json {
        netns: netns.to_owned(),
        source,
    })
}

/// The ruleset of `netns` as nft text (`nft list ruleset`).
pub fn list_text(netns: &str) -> Result<String, NftError> {
    let stdout = nft(netns, &["list", "ruleset"], None)?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// The compiled header that replaces the table by deleting and re-creating it.
const DELETE_HEADER: &str = "add table inet netpol\ndelete table inet netpol\n";

/// `ruleset` (compiled `nft -f` text replacing `table inet netpol`) as a transaction
/// that replaces the table **in place**, given the objects the kernel's table has now
/// (read over netlink by `nfnl::NftSocket::objects`); `None` when `ruleset` does not start as
/// compiled rulesets do (it is then loaded as it is).
///
/// Why (issue #12, measured in docs/ruleset.md): deleting and re-creating the table in
/// one transaction is atomic for the rules but not for the hooks. The old table's base
/// chains stay hooked for a moment after the commit switches generations, and their
/// rules then look up sets whose elements the commit has just deactivated: the lookup
/// misses and the packet falls through to the final drop rule. A chain's policy is
/// also changed in the commit after the generation switch. Both dropped SYNs of
/// connections every state allows. In place, the base chains stay the same objects
/// (one hook each), their rules and the sets' elements switch with the generation, and
/// no policy ever changes:
///
/// - `flush table` (every chain's rules), then for each set and map of the new ruleset
///   `add` (a no-op when it exists) and `flush` (its elements: `flush table` keeps them);
/// - `delete` the sets, maps and chains the new ruleset lacks (after the flushes,
///   nothing refers to them);
/// - the table block itself, with every `policy drop` base chain turned into `policy
///   accept` plus a final `drop` rule: the same verdicts (compiled isolated chains end
///   with their logging drop rule anyway), and a chain's policy never has to change.
///
/// A set or map the kernel's table lacks is created first, empty, in a transaction of
/// its own ([`InPlace::declare`]): a lookup in a set created by the same transaction as
/// the rule using it missed as well (measured with the agent: c -> b dropped when b went
/// from open to isolated). An empty set no rule uses changes no verdict.
pub fn in_place(ruleset: &str, existing: &TableObjects) -> Option<InPlace> {
    let at = ruleset.find(DELETE_HEADER)?;
    let (prefix, block) = (&ruleset[..at], &ruleset[at + DELETE_HEADER.len()..]);
    if !block.starts_with("table inet netpol {") {
        return None;
    }
    // (kind, name, declaration) of every set and map; chain names.
    let mut sets: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    let mut chains: Vec<&str> = Vec::new();
    // Chains without a hook: map elements jump to them, so they exist first.
    let mut regular: Vec<&str> = Vec::new();
    let mut out = String::with_capacity(block.len() + 256);
    let mut declaring = false;
    let mut chain_needs_drop: Option<bool> = None;
    for raw in block.lines() {
        let line = raw;
        let mut emit = std::borrow::Cow::Borrowed(raw);
        if let Some(name) = line
            .strip_prefix("\tchain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            chains.push(name);
            regular.push(name);
            chain_needs_drop = Some(false);
            declaring = false;
        } else if let Some((kind, name)) = line
            .strip_prefix("\tmap ")
            .map(|n| ("map", n))
            .or_else(|| line.strip_prefix("\tset ").map(|n| ("set", n)))
            .and_then(|(k, n)| Some((k, n.strip_suffix(" {")?)))
        {
            sets.push((kind, name, Vec::new()));
            declaring = true;
        } else if declaring
            && let Some(decl) = line
                .strip_prefix("\t\ttype ")
                .map(|_| line.trim())
                .or_else(|| line.strip_prefix("\t\tflags ").map(|_| line.trim()))
        {
            if let Some((_, _, d)) = sets.last_mut() {
                d.push(decl);
            }
        } else {
            declaring = false;
        }
        if let Some(needs) = &mut chain_needs_drop {
            if line.starts_with("\t\ttype filter hook ") {
                regular.retain(|c| Some(c) != chains.last());
            }
            if line.starts_with("\t\ttype filter hook ") && line.ends_with(" policy drop;") {
                emit = std::borrow::Cow::Owned(line.replace(" policy drop;", " policy accept;"));
                *needs = true;
            } else if line == "\t}" {
                if *needs {
                    out.push_str("\t\tdrop\n");
                }
                chain_needs_drop = None;
            }
        }
        out.push_str(&emit);
        out.push('\n');
    }
    if chain_needs_drop.is_some() {
        // A chain that never closed: its final drop could not be placed, and a chain
        // loaded as `policy accept` without it would fail open. The caller replaces the
        // table whole instead.
        return None;
    }
    let missing: Vec<_> = sets
        .iter()
        .filter(|(_, n, _)| !existing.sets.iter().any(|e| e == n))
        .collect();
    let declare = (!missing.is_empty()).then(|| {
        let mut d = String::from("add table inet netpol\n");
        for (kind, name, decl) in missing {
            d.push_str(&format!(
                "add {kind} inet netpol {name} {{ {}; }}\n",
                decl.join("; ")
            ));
        }
        d
    });
    let mut text = String::with_capacity(out.len() + 1024);
    text.push_str(prefix);
    text.push_str("add table inet netpol\nflush table inet netpol\n");
    for chain in &regular {
        text.push_str(&format!("add chain inet netpol {chain}\n"));
    }
    for (kind, name, decl) in &sets {
        text.push_str(&format!(
            "add {kind} inet netpol {name} {{ {}; }}\nflush {kind} inet netpol {name}\n",
            decl.join("; ")
        ));
    }
    for stale in existing
        .sets
        .iter()
        .filter(|s| !sets.iter().any(|(_, n, _)| n == s))
    {
        text.push_str(&format!("delete set inet netpol {stale}\n"));
    }
    for stale in existing
        .chains
        .iter()
        .filter(|c| !chains.contains(&c.as_str()))
    {
        text.push_str(&format!("delete chain inet netpol {stale}\n"));
    }
    text.push_str(&out);
    Some(InPlace {
        declare,
        replace: text,
    })
}

/// The transactions of an in-place replace ([`in_place`]), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InPlace {
    /// Creates the sets and maps the kernel's table lacks, empty (`None`: none).
    pub declare: Option<String>,
    /// Replaces the table's content in one transaction.
    pub replace: String,
}

/// The chains and the sets and maps of one table, by name (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableObjects {
    /// Chain names.
    pub chains: Vec<String>,
    /// Set and map names.
    pub sets: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPILED: &str = "# netpol ruleset for x/b\nadd table inet netpol\ndelete table inet netpol\ntable inet netpol {\n\tmap ingress_v4 {\n\t\ttype ipv4_addr : verdict\n\t\tflags interval\n\t\telements = {\n\t\t\t10.0.0.13 : jump ingress_class_0, # x/db rule 0 peer 0\n\t\t}\n\t}\n\n\tset ingress_class_0_ports {\n\t\ttype inet_proto . inet_service\n\t\tflags interval\n\t\telements = {\n\t\t\ttcp . 80,\n\t\t}\n\t}\n\n\tchain ingress {\n\t\t# isolated by x/db\n\t\ttype filter hook input priority filter; policy drop;\n\t\tip saddr vmap @ingress_v4\n\t\tcounter log group 100 prefix \"netpol:x/b:ingress \" drop\n\t}\n\n\tchain egress {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n\n\tchain ingress_class_0 {\n\t\tmeta l4proto . th dport @ingress_class_0_ports accept\n\t}\n}\n";

    #[test]
    fn a_chain_without_its_closing_line_is_not_rewritten() {
        // See: #12. `policy drop` becomes `policy accept` plus a final drop placed at the
        // chain's closing line; without that line the rewrite would fail open.
        let cut = COMPILED
            .rfind("\tchain ingress_class_0 {")
            .expect("the last chain");
        let unterminated = format!(
            "{}\tchain tail {{\n\t\ttype filter hook input priority filter; policy drop;\n",
            &COMPILED[..cut]
        );
        assert_eq!(in_place(&unterminated, &TableObjects::default()), None);
        assert!(in_place(COMPILED, &TableObjects::default()).is_some());
    }

    #[test]
    fn in_place_flushes_keeps_hooks_deletes_stale_and_never_changes_a_policy() {
        let existing = TableObjects {
            chains: vec!["egress".into(), "ingress".into(), "ingress_class_3".into()],
            sets: vec!["ingress_v4".into(), "ingress_v6".into()],
        };
        let done = in_place(COMPILED, &existing).unwrap();
        // The class set is new: created empty first, in its own transaction.
        assert_eq!(
            done.declare.as_deref(),
            Some(
                "add table inet netpol\nadd set inet netpol ingress_class_0_ports { type inet_proto . inet_service; flags interval; }\n"
            )
        );
        let t = done.replace;
        assert!(
            t.starts_with(
                "# netpol ruleset for x/b\nadd table inet netpol\nflush table inet netpol\n"
            ),
            "{t}"
        );
        assert!(!t.contains("delete table"), "{t}");
        assert!(t.contains("add map inet netpol ingress_v4 { type ipv4_addr : verdict; flags interval; }\nflush map inet netpol ingress_v4\n"), "{t}");
        assert!(t.contains("add set inet netpol ingress_class_0_ports { type inet_proto . inet_service; flags interval; }\nflush set inet netpol ingress_class_0_ports\n"), "{t}");
        assert!(t.contains("delete set inet netpol ingress_v6\n"), "{t}");
        assert!(
            t.contains("delete chain inet netpol ingress_class_3\n"),
            "{t}"
        );
        assert!(!t.contains("delete chain inet netpol ingress\n"), "{t}");
        // Jump targets exist before the maps that jump to them; base chains are not
        // declared twice.
        assert!(
            t.contains("flush table inet netpol\nadd chain inet netpol ingress_class_0\nadd map"),
            "{t}"
        );
        assert!(!t.contains("add chain inet netpol ingress\n"), "{t}");
        assert!(!t.contains("policy drop"), "{t}");
        assert!(t.contains("policy accept;\n\t\tip saddr vmap @ingress_v4\n\t\tcounter log group 100 prefix \"netpol:x/b:ingress \" drop\n\t\tdrop\n\t}\n"), "{t}");
        assert_eq!(
            t.matches("\t\tdrop\n").count(),
            1,
            "only the isolated chain: {t}"
        );
        // Deletions come after every flush and before the block.
        let (flush, delete, block) = (
            t.rfind("flush ").unwrap(),
            t.find("delete ").unwrap(),
            t.find("table inet netpol {").unwrap(),
        );
        assert!(flush < delete && delete < block, "{t}");
        // Not a compiled ruleset: loaded as it is.
        assert_eq!(in_place("table inet netpol {\n}\n", &existing), None);
    }
}
