//! Audit (staged) policies in a Pod table (#12). See docs/audit.md, docs/ruleset.md.
//!
//! The enforced table is compiled from the model without audit policies, as always. When
//! the audited model ([`AuditView`]) compiles to a different table for the Pod, its
//! chains, maps and sets are added under `audit_` names, with base chains
//! `audit_ingress` / `audit_egress` on the same hooks at priority `filter + 10`: after the
//! enforced chain. nftables runs every base chain of a hook in priority order and a drop
//! is final, so the audit chain sees exactly the new connections the enforced chain
//! accepted. In it, every drop of the audited ruleset is a
//! `counter log group N prefix "netpol-audit:…" accept` (and `ct state invalid drop` is
//! left out), its policy is accept: it logs what the audit policies would drop and
//! never drops anything itself.

use super::{
    BaseChain, Chain, MapVerdict, NftRule, NodeContext, RuleKind, Ruleset, RulesetOptions,
    TierVerdict, compile_enforced, sweep_every_time,
};
use crate::audit::AuditView;
use crate::graph::AllowGraph;
use crate::model::{EndpointId, Model};

/// Prefix of every chain, map and set name of the audit chains.
pub const AUDIT_PREFIX: &str = "audit_";

/// Priority of the audit base chains, relative to `filter` (the enforced chains' 0).
pub const AUDIT_PRIORITY: i32 = 10;

/// The log prefix tag of the audit chains (the enforced chains' is `netpol:`).
pub const AUDIT_LOG_TAG: &str = "netpol-audit:";

/// The enforced table plus, when `audit` is given and its audited table for the Pod
/// differs from the enforced one, the audit chains. Without audit policies (or when they
/// change nothing for this Pod) the result is exactly the enforced table.
/// [`super::compile_pod`] calls it with the graph's own [`AllowGraph::audit`].
pub fn compile_pod_with_audit(
    model: &Model,
    graph: &AllowGraph,
    audit: Option<&AuditView>,
    pod: EndpointId,
    opts: &RulesetOptions,
) -> Ruleset {
    let enforced =
        compile_enforced(model, graph, pod, opts, &sweep_every_time(model, graph)).ruleset();
    let Some(a) = audit else {
        return enforced;
    };
    let audited = compile_enforced(
        &a.model,
        &a.graph,
        pod,
        opts,
        &sweep_every_time(&a.model, &a.graph),
    )
    .ruleset();
    if kernel_state(&audited) == kernel_state(&enforced) {
        return enforced;
    }
    add_audit(enforced, audited)
}

/// [`super::compile_node`] with the audit chains of the audited view `audit` (the
/// [`AuditView`] of `model`) added when they differ from the enforced node table, as
/// [`compile_pod_with_audit`] does for a Pod's table: the node table's base chains
/// (`forward`, `input`, `hairpin`) get `audit_` twins at priority `filter + 10` that see
/// only what the enforced chains accepted and log what the audited ones would drop.
pub fn compile_node_with_audit(
    model: &Model,
    graph: &AllowGraph,
    audit: Option<&AuditView>,
    ctx: &NodeContext,
    opts: &RulesetOptions,
) -> Ruleset {
    let enforced = super::compile_node_enforced(model, graph, ctx, opts);
    let Some(a) = audit else {
        return enforced;
    };
    // The audited model has the same endpoints: the context's Pods mean the same there.
    let audited = super::compile_node_enforced(&a.model, &a.graph, ctx, opts);
    if kernel_state(&audited) == kernel_state(&enforced) {
        return enforced;
    }
    add_audit(enforced, audited)
}

/// The ruleset without review text (notes and comments): what the kernel would do.
fn kernel_state(rs: &Ruleset) -> Ruleset {
    let mut rs = rs.clone();
    rs.notes.clear();
    for m in &mut rs.maps {
        for e in &mut m.elements {
            e.sources.clear();
        }
    }
    for c in &mut rs.chains {
        c.notes.clear();
        for r in &mut c.rules {
            r.comment = None;
        }
    }
    rs
}

fn renamed(name: &str) -> String {
    format!("{AUDIT_PREFIX}{name}")
}

/// `netpol:<rest>` as `netpol-audit:<rest>`, cut to the kernel's limit. The Pod's name
/// gives way (the reporter reads the namespace, direction and rule reference).
fn audit_prefix(prefix: &str) -> String {
    let rest = prefix.strip_prefix("netpol:").unwrap_or(prefix);
    let room = super::MAX_LOG_PREFIX.saturating_sub(AUDIT_LOG_TAG.len());
    if rest.len() <= room {
        return format!("{AUDIT_LOG_TAG}{rest}");
    }
    // Shorten the Pod name (between `/` and the first `:` after it); ASCII only (the
    // prefix was sanitized).
    let cut = rest.len() - room;
    match (rest.find('/'), rest.find(':')) {
        (Some(slash), Some(colon)) if colon > slash && colon - slash - 1 > cut => {
            format!("{AUDIT_LOG_TAG}{}{}", &rest[..colon - cut], &rest[colon..])
        }
        _ => format!("{AUDIT_LOG_TAG}{}", &rest[..room.min(rest.len())]),
    }
}

/// The audited rule as an audit-chain rule: drops become logging accepts, names get
/// [`AUDIT_PREFIX`]; `None` for `ct state invalid drop` (the enforced chain's business).
fn audit_rule(r: NftRule) -> Option<NftRule> {
    let kind = match r.kind {
        RuleKind::Invalid => return None,
        RuleKind::LogDrop { group, prefix } => RuleKind::LogAccept {
            group,
            prefix: audit_prefix(&prefix),
        },
        RuleKind::PeerMap { family, field, map } => RuleKind::PeerMap {
            family,
            field,
            map: renamed(&map),
        },
        RuleKind::Ports { set } => RuleKind::Ports { set: renamed(&set) },
        RuleKind::AddrSetAccept { family, field, set } => RuleKind::AddrSetAccept {
            family,
            field,
            set: renamed(&set),
        },
        RuleKind::ServiceAccept { family, set } => RuleKind::ServiceAccept {
            family,
            set: renamed(&set),
        },
        RuleKind::Jump { chain } => RuleKind::Jump {
            chain: renamed(&chain),
        },
        RuleKind::Tier {
            family,
            field,
            set,
            ports,
            verdict,
        } => RuleKind::Tier {
            family,
            field,
            set: renamed(&set),
            ports,
            verdict: match verdict {
                TierVerdict::Drop { group, prefix } => TierVerdict::LogAccept {
                    group,
                    prefix: audit_prefix(&prefix),
                },
                v => v,
            },
        },
        k @ (RuleKind::Established
        | RuleKind::NeighbourDiscovery
        | RuleKind::Loopback(_)
        | RuleKind::LogAccept { .. }) => k,
    };
    Some(NftRule {
        kind,
        comment: r
            .comment
            .map(|c| super::truncate(&format!("audit: {c}"), super::MAX_COMMENT)),
    })
}

/// `enforced` with the chains, maps and sets of `audited` added as audit chains.
fn add_audit(mut rs: Ruleset, audited: Ruleset) -> Ruleset {
    let bases: Vec<String> = audited
        .chains
        .iter()
        .filter(|c| c.base.is_some())
        .map(|c| renamed(&c.name))
        .collect();
    rs.notes.push(format!(
        "audit: {} (priority filter + 10) log what the audit policies would drop; they drop nothing",
        bases.join(" / ")
    ));
    for mut m in audited.maps {
        m.name = renamed(&m.name);
        for e in &mut m.elements {
            if let MapVerdict::Jump(c) = &e.verdict {
                e.verdict = MapVerdict::Jump(renamed(c));
            }
        }
        rs.maps.push(m);
    }
    for mut s in audited.sets {
        s.name = renamed(&s.name);
        rs.sets.push(s);
    }
    for mut s in audited.addr_sets {
        s.name = renamed(&s.name);
        rs.addr_sets.push(s);
    }
    for mut s in audited.service_sets {
        s.name = renamed(&s.name);
        rs.service_sets.push(s);
    }
    for mut s in audited.tier_sets {
        s.name = renamed(&s.name);
        rs.tier_sets.push(s);
    }
    for c in audited.chains {
        let mut notes = c.notes;
        if c.base.is_some() {
            notes.insert(
                0,
                "audit: sees only what the enforced chain accepted; logs, never drops".to_owned(),
            );
        }
        rs.chains.push(Chain {
            name: renamed(&c.name),
            base: c.base.map(|b| BaseChain {
                hook: b.hook,
                accept: true,
                priority: AUDIT_PRIORITY,
            }),
            notes,
            rules: c.rules.into_iter().filter_map(audit_rule).collect(),
        });
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_prefixes_fit_and_keep_the_rule_reference() {
        assert_eq!(
            audit_prefix("netpol:x/b:ingress "),
            "netpol-audit:x/b:ingress "
        );
        let long = super::super::cluster_log_prefix(
            "ns",
            &"p".repeat(200),
            crate::model::Direction::Egress,
            crate::model::Tier::Admin,
            3,
            1,
        );
        assert_eq!(long.len(), super::super::MAX_LOG_PREFIX);
        let p = audit_prefix(&long);
        assert!(p.len() <= super::super::MAX_LOG_PREFIX, "{}", p.len());
        assert!(p.starts_with("netpol-audit:ns/p"));
        assert!(p.ends_with(":egress:a3.1 "), "{p}");
    }
}
