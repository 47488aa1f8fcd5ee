//! Protocols and sets of ports: what a rule, a direction or a whole answer allows.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// The protocols NetworkPolicy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP, the default.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP: its own protocol, never treated as TCP.
    Sctp,
}

impl Protocol {
    /// All protocols in a fixed order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// IANA protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    fn idx(self) -> usize {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::Sctp => 2,
        }
    }

    /// Parses the API spelling exactly (`TCP`, `UDP`, `SCTP`), as the API server does.
    pub fn parse_api(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    /// Case-insensitive, for command lines.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse_api(&s.to_ascii_uppercase())
            .ok_or_else(|| format!("unknown protocol {s:?}: expected TCP, UDP or SCTP"))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Sorted, disjoint, non-adjacent inclusive port ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    /// Every port, 0-65535.
    pub fn all() -> Self {
        Self(vec![(0, u16::MAX)])
    }

    /// One inclusive range.
    pub fn range(lo: u16, hi: u16) -> Self {
        if lo <= hi {
            Self(vec![(lo, hi)])
        } else {
            Self::default()
        }
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// True when no port is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every port is in the set.
    pub fn is_all(&self) -> bool {
        self.0 == [(0, u16::MAX)]
    }

    /// True when `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < port);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= port)
    }

    /// The union of any number of inclusive ranges (one sort, one merge).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u16, u16)>) -> Self {
        let mut all: Vec<(u16, u16)> = ranges.into_iter().filter(|(lo, hi)| lo <= hi).collect();
        all.sort_unstable();
        let mut out: Vec<(u16, u16)> = Vec::with_capacity(all.len());
        for (lo, hi) in all {
            match out.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(hi);
                }
                _ => out.push((lo, hi)),
            }
        }
        Self(out)
    }

    /// Union.
    pub fn union(&self, other: &Self) -> Self {
        Self::from_ranges(self.0.iter().chain(other.0.iter()).copied())
    }

    /// Intersection.
    pub fn intersect(&self, other: &Self) -> Self {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            let lo = a.0.max(b.0);
            let hi = a.1.min(b.1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Self(out)
    }

    /// The ports of `self` that are not in `other`.
    pub fn subtract(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        let mut j = 0;
        for &(lo, hi) in &self.0 {
            let mut cur = u32::from(lo);
            let end = u32::from(hi);
            while j < other.0.len() && u32::from(other.0[j].1) < cur {
                j += 1;
            }
            let mut k = j;
            while cur <= end {
                match other.0.get(k) {
                    Some(&(olo, ohi)) if u32::from(olo) <= end => {
                        if u32::from(olo) > cur {
                            out.push((cur, u32::from(olo) - 1));
                        }
                        cur = cur.max(u32::from(ohi) + 1);
                        k += 1;
                    }
                    _ => {
                        out.push((cur, end));
                        break;
                    }
                }
            }
        }
        // Every bound is within `lo..=hi` of a u16 range, so the conversions hold.
        Self(
            out.into_iter()
                .filter_map(|(a, b)| Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?)))
                .collect(),
        )
    }

    /// Number of ports in the set.
    pub fn count(&self) -> u32 {
        self.0
            .iter()
            .map(|&(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
            .sum()
    }
}

impl fmt::Display for PortRanges {
    /// `80, 443, 8000-8080`, or `all ports`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all ports");
        }
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Ports per protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet([PortRanges; 3]);

impl PortSet {
    /// Nothing allowed.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every port of every protocol.
    pub fn all() -> Self {
        Self([PortRanges::all(), PortRanges::all(), PortRanges::all()])
    }

    /// Ports per protocol from `(protocol, ranges)` pairs, merged once per protocol.
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = (Protocol, &'a PortRanges)>) -> Self {
        let mut by_proto: [Vec<(u16, u16)>; 3] = Default::default();
        for (p, r) in parts {
            by_proto[p.idx()].extend_from_slice(r.ranges());
        }
        Self(by_proto.map(PortRanges::from_ranges))
    }

    /// Ports of one protocol.
    pub fn of(proto: Protocol, ranges: PortRanges) -> Self {
        let mut s = Self::none();
        s.0[proto.idx()] = ranges;
        s
    }

    /// The ranges of one protocol.
    pub fn get(&self, proto: Protocol) -> &PortRanges {
        &self.0[proto.idx()]
    }

    /// True when `port` of `proto` is in the set.
    pub fn contains(&self, proto: Protocol, port: u16) -> bool {
        self.0[proto.idx()].contains(port)
    }

    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(PortRanges::is_empty)
    }

    /// True when everything is allowed.
    pub fn is_all(&self) -> bool {
        self.0.iter().all(PortRanges::is_all)
    }

    /// Union.
    pub fn union(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].union(&other.0[i])))
    }

    /// In-place union.
    pub fn add(&mut self, other: &Self) {
        for i in 0..3 {
            if !other.0[i].is_empty() {
                self.0[i] = self.0[i].union(&other.0[i]);
            }
        }
    }

    /// Intersection.
    pub fn intersect(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].intersect(&other.0[i])))
    }

    /// The ports of `self` that are not in `other`.
    pub fn subtract(&self, other: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].subtract(&other.0[i])))
    }
}

impl fmt::Display for PortSet {
    /// `all traffic`, `no traffic`, or `TCP 80, 443; UDP 53; SCTP all ports`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all traffic");
        }
        if self.is_empty() {
            return f.write_str("no traffic");
        }
        let mut first = true;
        for p in Protocol::ALL {
            let r = self.get(p);
            if r.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{p} {r}")?;
        }
        Ok(())
    }
}

impl Serialize for PortSet {
    /// `{"TCP": ["80", "8000-8080"], ...}` with only non-empty protocols.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let non_empty = Protocol::ALL.iter().filter(|p| !self.get(**p).is_empty());
        let mut m = s.serialize_map(Some(non_empty.clone().count()))?;
        for p in non_empty {
            let ranges: Vec<String> = self
                .get(*p)
                .ranges()
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            m.serialize_entry(p.as_str(), &ranges)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_removes_exactly_the_other_ports() {
        let a = PortRanges::from_ranges([(0, 10), (20, 30), (65530, 65535)]);
        let b = PortRanges::from_ranges([(0, 0), (5, 22), (25, 25), (65535, 65535)]);
        assert_eq!(
            a.subtract(&b).ranges(),
            [(1, 4), (23, 24), (26, 30), (65530, 65534)]
        );
        assert!(a.subtract(&PortRanges::all()).is_empty());
        assert_eq!(a.subtract(&PortRanges::default()), a);
        assert_eq!(
            PortRanges::all()
                .subtract(&PortRanges::range(80, 80))
                .ranges(),
            [(0, 79), (81, 65535)]
        );
        // Brute force against membership on a small universe.
        for (x, y) in [((3, 9), (1, 4)), ((3, 9), (9, 12)), ((3, 9), (5, 5))] {
            let (x, y) = (PortRanges::range(x.0, x.1), PortRanges::range(y.0, y.1));
            let d = x.subtract(&y);
            for p in 0..15 {
                assert_eq!(d.contains(p), x.contains(p) && !y.contains(p), "{p}");
            }
        }
    }

    #[test]
    fn range_algebra() {
        let a = PortRanges::range(80, 81).union(&PortRanges::range(82, 90));
        assert_eq!(a.ranges(), &[(80, 90)]);
        let b = a.union(&PortRanges::range(100, 100));
        assert!(b.contains(85) && b.contains(100) && !b.contains(95) && !b.contains(79));
        assert_eq!(
            b.intersect(&PortRanges::range(85, 100)).ranges(),
            &[(85, 90), (100, 100)]
        );
        assert_eq!(b.to_string(), "80-90, 100");
        assert!(PortRanges::all().union(&b).is_all());
        assert_eq!(PortRanges::range(5, 4), PortRanges::default());
        assert_eq!(b.count(), 12);
    }

    #[test]
    fn sets_by_protocol() {
        let s = PortSet::of(Protocol::Tcp, PortRanges::range(80, 80))
            .union(&PortSet::of(Protocol::Udp, PortRanges::all()));
        assert!(s.contains(Protocol::Tcp, 80));
        assert!(!s.contains(Protocol::Sctp, 80));
        assert_eq!(s.to_string(), "TCP 80; UDP all ports");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"TCP":["80"],"UDP":["0-65535"]}"#
        );
        assert!(
            s.intersect(&PortSet::of(Protocol::Sctp, PortRanges::all()))
                .is_empty()
        );
    }
}
