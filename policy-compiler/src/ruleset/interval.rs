//! Disjoint address intervals: overlapping `(range, ports)` contributions in, sorted
//! non-overlapping ranges with the union of their ports out.
//!
//! nft rejects overlapping elements in an interval set or map, while NetworkPolicy peers
//! overlap freely (an ipBlock containing Pod IPs, `0.0.0.0/0` next to a `/32`). So every
//! contribution's bounds cut the address space into *elementary* intervals; each one gets
//! the union of the PortSets of the contributions covering it; then neighbours with the
//! same PortSet are merged again. A sweep over the sorted bounds keeps this
//! `O(n log n + segments x overlap)`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::ports::PortSet;

/// An address family of the kernel's `inet` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`ip`).
    V4,
    /// IPv6 (`ip6`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Largest address as an integer.
    pub(crate) fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    /// Bits in an address.
    pub(crate) fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The address for an integer (truncated to the family's width).
    pub(crate) fn addr(self, v: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
        }
    }
}

/// An address as an integer.
pub(crate) fn to_int(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// First and last address of a network.
pub(crate) fn net_bounds(net: &IpNet) -> (u128, u128) {
    (to_int(&net.network()), to_int(&net.broadcast()))
}

/// `cidr` minus `except`, as sorted disjoint inclusive ranges.
pub(crate) fn subtract(cidr: &IpNet, except: &[IpNet]) -> Vec<(u128, u128)> {
    let mut out = vec![net_bounds(cidr)];
    let mut holes: Vec<(u128, u128)> = except
        .iter()
        .filter(|e| Family::of(&e.addr()) == Family::of(&cidr.addr()))
        .map(net_bounds)
        .collect();
    holes.sort_unstable();
    for (hlo, hhi) in holes {
        let mut next = Vec::with_capacity(out.len() + 1);
        for (lo, hi) in out {
            if hhi < lo || hlo > hi {
                next.push((lo, hi));
                continue;
            }
            if hlo > lo {
                next.push((lo, hlo - 1));
            }
            if hhi < hi {
                next.push((hhi + 1, hi));
            }
        }
        out = next;
    }
    out
}

/// One overlapping input: an inclusive address range, what it allows, and who said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contribution<S> {
    pub(crate) lo: u128,
    pub(crate) hi: u128,
    pub(crate) ports: PortSet,
    pub(crate) source: S,
}

/// One output range: disjoint from all others, non-empty ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment<S> {
    pub(crate) lo: u128,
    pub(crate) hi: u128,
    pub(crate) ports: PortSet,
    pub(crate) sources: BTreeSet<S>,
}

/// Splits contributions (all of one family, bounds `<= max`) into sorted disjoint
/// segments, unions the ports per segment, drops segments that allow nothing and merges
/// adjacent segments with equal ports.
pub(crate) fn disjoint<S: Ord + Clone>(contribs: &[Contribution<S>], max: u128) -> Vec<Segment<S>> {
    // Intern PortSets and sources so the active sets are small integer multisets.
    let mut port_ids: BTreeMap<&PortSet, usize> = BTreeMap::new();
    let mut port_sets: Vec<&PortSet> = Vec::new();
    let mut src_ids: BTreeMap<&S, usize> = BTreeMap::new();
    let mut srcs: Vec<&S> = Vec::new();
    // (position, +1 start / -1 end, port id, source id)
    let mut events: Vec<(u128, bool, usize, usize)> = Vec::with_capacity(contribs.len() * 2);
    for c in contribs {
        if c.lo > c.hi || c.hi > max || c.ports.is_empty() {
            continue;
        }
        let pid = *port_ids.entry(&c.ports).or_insert_with(|| {
            port_sets.push(&c.ports);
            port_sets.len() - 1
        });
        let sid = *src_ids.entry(&c.source).or_insert_with(|| {
            srcs.push(&c.source);
            srcs.len() - 1
        });
        events.push((c.lo, true, pid, sid));
        if c.hi < max {
            events.push((c.hi + 1, false, pid, sid));
        }
    }
    events.sort_unstable();

    let mut active_ports: BTreeMap<usize, u32> = BTreeMap::new();
    let mut active_srcs: BTreeMap<usize, u32> = BTreeMap::new();
    let mut unions: BTreeMap<Vec<usize>, PortSet> = BTreeMap::new();
    let mut out: Vec<Segment<S>> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let pos = events[i].0;
        while i < events.len() && events[i].0 == pos {
            let (_, start, pid, sid) = events[i];
            bump(&mut active_ports, pid, start);
            bump(&mut active_srcs, sid, start);
            i += 1;
        }
        if active_ports.is_empty() {
            continue;
        }
        let hi = events.get(i).map_or(max, |e| e.0 - 1);
        let key: Vec<usize> = active_ports.keys().copied().collect();
        let ports = unions
            .entry(key)
            .or_insert_with_key(|k| {
                let mut u = PortSet::none();
                for id in k {
                    u.add(port_sets[*id]);
                }
                u
            })
            .clone();
        let sources: BTreeSet<S> = active_srcs.keys().map(|id| srcs[*id].clone()).collect();
        match out.last_mut() {
            Some(last) if last.hi.checked_add(1) == Some(pos) && last.ports == ports => {
                last.hi = hi;
                last.sources.extend(sources);
            }
            _ => out.push(Segment {
                lo: pos,
                hi,
                ports,
                sources,
            }),
        }
    }
    out
}

fn bump(m: &mut BTreeMap<usize, u32>, k: usize, up: bool) {
    if up {
        *m.entry(k).or_insert(0) += 1;
    } else if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

/// The prefix length when `[lo, hi]` is exactly one CIDR block.
pub(crate) fn as_prefix(lo: u128, hi: u128, family: Family) -> Option<u8> {
    let size = hi.wrapping_sub(lo).wrapping_add(1);
    let bits = family.bits();
    if size == 0 {
        // The whole 128-bit space.
        return (lo == 0 && hi == u128::MAX).then_some(0);
    }
    if !size.is_power_of_two() || lo & (size - 1) != 0 {
        return None;
    }
    let host_bits = size.trailing_zeros();
    u8::try_from(bits.checked_sub(host_bits)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{PortRanges, Protocol};

    fn tcp(p: u16) -> PortSet {
        PortSet::of(Protocol::Tcp, PortRanges::range(p, p))
    }

    fn c(lo: u128, hi: u128, ports: PortSet, s: u32) -> Contribution<u32> {
        Contribution {
            lo,
            hi,
            ports,
            source: s,
        }
    }

    #[test]
    fn overlaps_are_split_and_unioned() {
        let max = Family::V4.max();
        let segs = disjoint(
            &[
                c(0, max, tcp(80), 0),
                c(10, 20, tcp(81), 1),
                c(15, 30, tcp(80), 2),
            ],
            max,
        );
        let got: Vec<(u128, u128, String, Vec<u32>)> = segs
            .iter()
            .map(|s| {
                (
                    s.lo,
                    s.hi,
                    s.ports.to_string(),
                    s.sources.iter().copied().collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 9, "TCP 80".into(), vec![0]),
                (10, 20, "TCP 80-81".into(), vec![0, 1, 2]),
                // 21..=30 (0 and 2) and 31..=max (0) have equal ports: merged.
                (21, max, "TCP 80".into(), vec![0, 2]),
            ]
        );
        for w in segs.windows(2) {
            assert!(w[0].hi < w[1].lo);
        }
    }

    #[test]
    fn empty_ports_and_gaps_stay_out() {
        let segs = disjoint(
            &[
                c(5, 5, PortSet::none(), 0),
                c(1, 2, tcp(1), 1),
                c(4, 4, tcp(1), 2),
            ],
            100,
        );
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert_eq!((segs[0].lo, segs[0].hi, segs[1].lo), (1, 2, 4));
    }

    #[test]
    fn whole_v6_space_does_not_overflow() {
        let segs = disjoint(&[c(0, u128::MAX, tcp(1), 0), c(7, 7, tcp(2), 1)], u128::MAX);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[2].hi, u128::MAX);
        assert_eq!(as_prefix(0, u128::MAX, Family::V6), Some(0));
        assert_eq!(as_prefix(8, 15, Family::V6), Some(125));
        assert_eq!(as_prefix(8, 16, Family::V6), None);
        assert_eq!(as_prefix(0, Family::V4.max(), Family::V4), Some(0));
        assert_eq!(as_prefix(9, 9, Family::V4), Some(32));
    }

    #[test]
    fn excepts_are_carved_out() {
        let cidr: IpNet = "10.0.0.0/24".parse().unwrap();
        let ex: Vec<IpNet> = vec![
            "10.0.0.128/25".parse().unwrap(),
            "10.0.0.0/32".parse().unwrap(),
            "10.0.0.4/30".parse().unwrap(),
            "10.0.0.6/31".parse().unwrap(),
        ];
        let base = to_int(&"10.0.0.0".parse().unwrap());
        let got: Vec<(u128, u128)> = subtract(&cidr, &ex)
            .into_iter()
            .map(|(a, b)| (a - base, b - base))
            .collect();
        assert_eq!(got, vec![(1, 3), (8, 127)]);
    }
}
