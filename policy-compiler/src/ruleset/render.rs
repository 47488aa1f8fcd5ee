//! `nft -f` text of a [`Ruleset`].
//!
//! The file starts with `add table` + `delete table`, so loading it replaces the table in
//! one transaction whether or not it existed (nft 1.0.6 has no `destroy`). Review notes
//! are `#` comments; provenance that must survive in the kernel is in `comment "…"`.

use std::fmt::Write as _;

use super::{
    AddrField, AddrSet, Chain, Family, MapVerdict, ND_TYPES, PeerMap, PortElement, PortsSet,
    RuleKind, Ruleset, ServiceSet, TABLE, TierSet, TierVerdict,
};

/// Longest list of sources written after a map element.
const MAX_SOURCES: usize = 3;

pub(super) fn nft(rs: &Ruleset) -> String {
    nft_with(rs, &[])
}

/// The text of `rs` with the elements block of map `i` taken from `elements[i]` (as
/// [`elements`] writes it) where given, else from the map itself.
pub(super) fn nft_with(rs: &Ruleset, elements: &[&str]) -> String {
    let mut s = String::with_capacity(elements.iter().map(|e| e.len()).sum::<usize>() + 4096);
    for n in &rs.notes {
        let _ = writeln!(s, "# {n}");
    }
    let _ = writeln!(
        s,
        "# load with `nft -f FILE`: replaces table inet {TABLE} atomically"
    );
    let _ = writeln!(s, "add table inet {TABLE}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    let mut first = true;
    let mut sep = |s: &mut String| {
        if !first {
            s.push('\n');
        }
        first = false;
    };
    for (i, m) in rs.maps.iter().enumerate() {
        sep(&mut s);
        map(&mut s, m, elements.get(i).copied());
    }
    for set in &rs.sets {
        sep(&mut s);
        ports_set(&mut s, set);
    }
    for set in &rs.addr_sets {
        sep(&mut s);
        addr_set(&mut s, set);
    }
    for set in &rs.service_sets {
        sep(&mut s);
        service_set(&mut s, set);
    }
    for set in &rs.tier_sets {
        sep(&mut s);
        tier_set(&mut s, set);
    }
    for c in &rs.chains {
        sep(&mut s);
        chain(&mut s, c);
    }
    s.push_str("}\n");
    s
}

fn map(s: &mut String, m: &PeerMap, given: Option<&str>) {
    let ty = match m.family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let _ = writeln!(s, "\tmap {} {{", m.name);
    let _ = writeln!(s, "\t\ttype {ty} : verdict");
    let _ = writeln!(s, "\t\tflags interval");
    match given {
        Some(e) => s.push_str(e),
        None => elements(s, m),
    }
    let _ = writeln!(s, "\t}}");
}

/// The `elements = { … }` block of a map (nothing when it has none).
pub(super) fn elements(s: &mut String, m: &PeerMap) {
    if !m.elements.is_empty() {
        let _ = writeln!(s, "\t\telements = {{");
        for e in &m.elements {
            let key = match e.prefix {
                Some(p) if p == family_bits(m.family) => e.first.to_string(),
                Some(p) => format!("{}/{p}", e.first),
                None => format!("{}-{}", e.first, e.last),
            };
            let verdict = match &e.verdict {
                MapVerdict::Accept => "accept".to_owned(),
                MapVerdict::Jump(c) => format!("jump {c}"),
            };
            let mut who: Vec<String> = e
                .sources
                .iter()
                .take(MAX_SOURCES)
                .map(ToString::to_string)
                .collect();
            if e.sources.len() > MAX_SOURCES {
                who.push(format!("+{} more", e.sources.len() - MAX_SOURCES));
            }
            if who.is_empty() {
                let _ = writeln!(s, "\t\t\t{key} : {verdict},");
            } else {
                let _ = writeln!(s, "\t\t\t{key} : {verdict}, # {}", who.join("; "));
            }
        }
        let _ = writeln!(s, "\t\t}}");
    }
}

fn addr_type(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

fn addr_set(s: &mut String, set: &AddrSet) {
    let _ = writeln!(s, "\tset {} {{", set.name);
    let _ = writeln!(s, "\t\ttype {}", addr_type(set.family));
    if !set.elements.is_empty() {
        let _ = writeln!(s, "\t\telements = {{");
        for e in &set.elements {
            let _ = writeln!(s, "\t\t\t{e},");
        }
        let _ = writeln!(s, "\t\t}}");
    }
    let _ = writeln!(s, "\t}}");
}

fn service_set(s: &mut String, set: &ServiceSet) {
    let _ = writeln!(s, "\tset {} {{", set.name);
    let _ = writeln!(
        s,
        "\t\ttype {} . inet_proto . inet_service",
        addr_type(set.family)
    );
    if !set.elements.is_empty() {
        let _ = writeln!(s, "\t\telements = {{");
        for e in &set.elements {
            let _ = writeln!(
                s,
                "\t\t\t{} . {} . {}, # {}",
                e.addr,
                e.protocol.as_str().to_ascii_lowercase(),
                e.port,
                e.service
            );
        }
        let _ = writeln!(s, "\t\t}}");
    }
    let _ = writeln!(s, "\t}}");
}

fn tier_set(s: &mut String, set: &TierSet) {
    let _ = writeln!(s, "\tset {} {{", set.name);
    if set.with_ports {
        let _ = writeln!(
            s,
            "\t\ttype {} . inet_proto . inet_service",
            addr_type(set.family)
        );
    } else {
        let _ = writeln!(s, "\t\ttype {}", addr_type(set.family));
    }
    let _ = writeln!(s, "\t\tflags interval");
    if !set.elements.is_empty() {
        let _ = writeln!(s, "\t\telements = {{");
        for e in &set.elements {
            let addr = match e.prefix {
                Some(p) if p == family_bits(set.family) => e.first.to_string(),
                Some(p) => format!("{}/{p}", e.first),
                None => format!("{}-{}", e.first, e.last),
            };
            match &e.ports {
                Some(p) => {
                    let _ = writeln!(s, "\t\t\t{addr} . {},", port_element(p));
                }
                None => {
                    let _ = writeln!(s, "\t\t\t{addr},");
                }
            }
        }
        let _ = writeln!(s, "\t\t}}");
    }
    let _ = writeln!(s, "\t}}");
}

/// `accept`, `return` or `counter log group N prefix "…" drop`.
pub(super) fn tier_verdict(v: &TierVerdict) -> String {
    match v {
        TierVerdict::Accept => "accept".to_owned(),
        TierVerdict::Pass => "return".to_owned(),
        TierVerdict::Drop { group, prefix } => {
            format!("counter log group {group} prefix \"{prefix}\" drop")
        }
        TierVerdict::LogAccept { group, prefix } => {
            format!("counter log group {group} prefix \"{prefix}\" accept")
        }
    }
}

fn family_proto(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn family_bits(f: Family) -> u8 {
    match f {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

pub(super) fn port_element(e: &PortElement) -> String {
    let proto = e.protocol.as_str().to_ascii_lowercase();
    if e.first == e.last {
        format!("{proto} . {}", e.first)
    } else {
        format!("{proto} . {}-{}", e.first, e.last)
    }
}

fn ports_set(s: &mut String, set: &PortsSet) {
    let _ = writeln!(s, "\tset {} {{", set.name);
    let _ = writeln!(s, "\t\ttype inet_proto . inet_service");
    let _ = writeln!(s, "\t\tflags interval");
    if !set.elements.is_empty() {
        let _ = writeln!(s, "\t\telements = {{");
        for e in &set.elements {
            let _ = writeln!(s, "\t\t\t{},", port_element(e));
        }
        let _ = writeln!(s, "\t\t}}");
    }
    let _ = writeln!(s, "\t}}");
}

fn chain(s: &mut String, c: &Chain) {
    let _ = writeln!(s, "\tchain {} {{", c.name);
    for n in &c.notes {
        let _ = writeln!(s, "\t\t# {n}");
    }
    if let Some(b) = c.base {
        let priority = match b.priority {
            0 => "filter".to_owned(),
            p if p > 0 => format!("filter + {p}"),
            p => format!("filter - {}", p.unsigned_abs()),
        };
        let _ = writeln!(
            s,
            "\t\ttype filter hook {} priority {priority}; policy {};",
            b.hook.as_str(),
            if b.accept { "accept" } else { "drop" }
        );
    }
    for r in &c.rules {
        let body = match &r.kind {
            RuleKind::Established => "ct state established,related accept".to_owned(),
            RuleKind::NeighbourDiscovery => {
                format!("icmpv6 type {{ {} }} accept", ND_TYPES.join(", "))
            }
            RuleKind::Invalid => "ct state invalid drop".to_owned(),
            RuleKind::Loopback(h) => match h {
                super::Hook::Input | super::Hook::Forward => "iif lo accept".to_owned(),
                super::Hook::Output => "oif lo accept".to_owned(),
            },
            RuleKind::AddrSetAccept { family, field, set } => {
                format!("{} {} @{set} accept", family_proto(*family), field.as_str())
            }
            RuleKind::ServiceAccept { family, set } => format!(
                "{} daddr . meta l4proto . th dport @{set} accept",
                family_proto(*family)
            ),
            RuleKind::PeerMap { family, field, map } => {
                let proto = match family {
                    Family::V4 => "ip",
                    Family::V6 => "ip6",
                };
                let f = match field {
                    AddrField::Saddr => "saddr",
                    AddrField::Daddr => "daddr",
                };
                format!("{proto} {f} vmap @{map}")
            }
            RuleKind::Ports { set } => format!("meta l4proto . th dport @{set} accept"),
            RuleKind::Jump { chain } => format!("jump {chain}"),
            RuleKind::Tier {
                family,
                field,
                set,
                ports,
                verdict,
            } => {
                let proto = family_proto(*family);
                let f = field.as_str();
                let v = tier_verdict(verdict);
                if *ports {
                    format!("{proto} {f} . meta l4proto . th dport @{set} {v}")
                } else {
                    format!("{proto} {f} @{set} {v}")
                }
            }
            RuleKind::LogDrop { group, prefix } => {
                format!("counter log group {group} prefix \"{prefix}\" drop")
            }
            RuleKind::LogAccept { group, prefix } => {
                format!("counter log group {group} prefix \"{prefix}\" accept")
            }
        };
        match &r.comment {
            Some(c) => {
                let _ = writeln!(s, "\t\t{body} comment \"{c}\"");
            }
            None => {
                let _ = writeln!(s, "\t\t{body}");
            }
        }
    }
    let _ = writeln!(s, "\t}}");
}
