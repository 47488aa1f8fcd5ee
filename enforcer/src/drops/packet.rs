//! The start of a logged packet: IPv4/IPv6 header and the ports of TCP, UDP and SCTP.
//!
//! NFLOG copies at most the configured range (128 bytes by default) of the packet from
//! its network header on, so everything here is bounds-checked: a short or malformed
//! payload is an error or a packet without ports, never a panic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

/// Transport protocol of a logged packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
    /// ICMP (1).
    Icmp,
    /// ICMPv6 (58).
    Icmpv6,
    /// Any other IP protocol number (also: an IPv6 extension header the packet was cut in).
    Other(u8),
}

impl L4Proto {
    /// From an IP protocol / next-header number.
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => L4Proto::Tcp,
            17 => L4Proto::Udp,
            132 => L4Proto::Sctp,
            1 => L4Proto::Icmp,
            58 => L4Proto::Icmpv6,
            n => L4Proto::Other(n),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
            L4Proto::Icmp => 1,
            L4Proto::Icmpv6 => 58,
            L4Proto::Other(n) => n,
        }
    }

    /// The NetworkPolicy protocol, for TCP, UDP and SCTP.
    pub fn policy_protocol(self) -> Option<policy_compiler::Protocol> {
        match self {
            L4Proto::Tcp => Some(policy_compiler::Protocol::Tcp),
            L4Proto::Udp => Some(policy_compiler::Protocol::Udp),
            L4Proto::Sctp => Some(policy_compiler::Protocol::Sctp),
            _ => None,
        }
    }

    /// Whether packets of this protocol carry 16-bit source and destination ports in the
    /// first four bytes of their header.
    fn has_ports(self) -> bool {
        matches!(self, L4Proto::Tcp | L4Proto::Udp | L4Proto::Sctp)
    }
}

impl fmt::Display for L4Proto {
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6`, or `IP-<n>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            L4Proto::Tcp => f.write_str("TCP"),
            L4Proto::Udp => f.write_str("UDP"),
            L4Proto::Sctp => f.write_str("SCTP"),
            L4Proto::Icmp => f.write_str("ICMP"),
            L4Proto::Icmpv6 => f.write_str("ICMPv6"),
            L4Proto::Other(n) => write!(f, "IP-{n}"),
        }
    }
}

impl Serialize for L4Proto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Addresses, protocol and ports of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: L4Proto,
    /// Source port (TCP, UDP, SCTP; `None` for other protocols, non-first fragments or a
    /// payload cut before the ports).
    pub src_port: Option<u16>,
    /// Destination port, like `src_port`.
    pub dst_port: Option<u16>,
}

/// Why a payload is not an IP packet we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
    /// The IP version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    /// The payload ends inside the fixed IP header.
    #[error("IPv{version} header truncated: {len} bytes")]
    Truncated {
        /// 4 or 6.
        version: u8,
        /// Bytes present.
        len: usize,
    },
    /// The IPv4 header length field is below 20 bytes.
    #[error("IPv4 header length {0} is below 20")]
    HeaderLength(usize),
}

/// Most IPv6 extension headers walked before giving up (the kernel's own limit is far
/// higher, but a logged prefix of 128 bytes cannot hold more than a few).
const MAX_EXT_HEADERS: usize = 8;

/// Reads the IP header (IPv4 or IPv6, from the version nibble) and the transport ports.
pub fn parse(payload: &[u8]) -> Result<PacketInfo, PacketError> {
    let first = *payload.first().ok_or(PacketError::Empty)?;
    match first >> 4 {
        4 => parse_v4(payload),
        6 => parse_v6(payload),
        v => Err(PacketError::Version(v)),
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn ports(l4: Option<&[u8]>, protocol: L4Proto) -> (Option<u16>, Option<u16>) {
    match l4 {
        // TCP, UDP and the SCTP common header all start with source and destination port.
        Some(h) if protocol.has_ports() => (be16(h, 0), be16(h, 2)),
        _ => (None, None),
    }
}

fn parse_v4(b: &[u8]) -> Result<PacketInfo, PacketError> {
    let truncated = PacketError::Truncated {
        version: 4,
        len: b.len(),
    };
    let hdr: &[u8; 20] = b
        .get(..20)
        .and_then(|s| s.try_into().ok())
        .ok_or(truncated)?;
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(PacketError::HeaderLength(ihl));
    }
    let protocol = L4Proto::from_number(hdr[9]);
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    let src_ip = IpAddr::V4(Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]));
    let dst_ip = IpAddr::V4(Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]));
    // Only the first fragment carries the transport header.
    let l4 = if frag_offset == 0 { b.get(ihl..) } else { None };
    let (src_port, dst_port) = ports(l4, protocol);
    Ok(PacketInfo {
        src_ip,
        dst_ip,
        protocol,
        src_port,
        dst_port,
    })
}

fn parse_v6(b: &[u8]) -> Result<PacketInfo, PacketError> {
    let truncated = PacketError::Truncated {
        version: 6,
        len: b.len(),
    };
    let hdr: &[u8; 40] = b
        .get(..40)
        .and_then(|s| s.try_into().ok())
        .ok_or(truncated)?;
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&hdr[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let (src_ip, dst_ip) = (addr(8), addr(24));
    let mut next = hdr[6];
    let mut at = 40usize;
    let mut l4 = None;
    for _ in 0..=MAX_EXT_HEADERS {
        let ext_len = match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => b.get(at + 1).map(|l| (usize::from(*l) + 1) * 8),
            // Fragment: 8 bytes; only the first fragment has the transport header.
            44 => match be16(b, at + 2) {
                Some(off) if off >> 3 != 0 => {
                    if let Some(nh) = b.get(at) {
                        next = *nh;
                    }
                    break;
                }
                Some(_) => Some(8),
                None => None,
            },
            // Authentication header: (len + 2) * 4 bytes.
            51 => b.get(at + 1).map(|l| (usize::from(*l) + 2) * 4),
            _ => {
                l4 = b.get(at..);
                break;
            }
        };
        let (Some(len), Some(nh)) = (ext_len, b.get(at).copied()) else {
            // Cut inside an extension header: report it as the protocol, without ports.
            break;
        };
        next = nh;
        at += len;
    }
    let protocol = L4Proto::from_number(next);
    let (src_port, dst_port) = ports(l4, protocol);
    Ok(PacketInfo {
        src_ip,
        dst_ip,
        protocol,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4 header (20 bytes, no options) followed by `l4`.
    pub(crate) fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let total = u16::try_from(20 + l4.len()).unwrap().to_be_bytes();
        let mut p = vec![
            0x45, 0, total[0], total[1], 0x12, 0x34, 0x40, 0, 64, proto, 0, 0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    /// An IPv6 header with next header `nh` followed by `rest`.
    pub(crate) fn v6(nh: u8, src: Ipv6Addr, dst: Ipv6Addr, rest: &[u8]) -> Vec<u8> {
        let plen = u16::try_from(rest.len()).unwrap().to_be_bytes();
        let mut p = vec![0x60, 0, 0, 0, plen[0], plen[1], nh, 64];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(rest);
        p
    }

    /// First bytes of a TCP SYN from `sp` to `dp`.
    pub(crate) fn tcp(sp: u16, dp: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&sp.to_be_bytes());
        h.extend_from_slice(&dp.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        h
    }

    fn udp(sp: u16, dp: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&sp.to_be_bytes());
        h.extend_from_slice(&dp.to_be_bytes());
        h.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
        h
    }

    fn sctp_init(sp: u16, dp: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&sp.to_be_bytes());
        h.extend_from_slice(&dp.to_be_bytes());
        h.extend_from_slice(&[0; 8]); // verification tag, checksum
        h.extend_from_slice(&[1, 0, 0, 20]); // INIT chunk header
        h
    }

    const A4: [u8; 4] = [10, 0, 0, 11];
    const B4: [u8; 4] = [10, 0, 0, 12];

    fn a6() -> Ipv6Addr {
        "fd00::11".parse().unwrap()
    }
    fn b6() -> Ipv6Addr {
        "fd00::12".parse().unwrap()
    }

    #[test]
    fn ipv4_tcp_udp_sctp_ports() {
        for (proto, l4, want) in [
            (6, tcp(40000, 81), L4Proto::Tcp),
            (17, udp(40001, 53), L4Proto::Udp),
            (132, sctp_init(40002, 80), L4Proto::Sctp),
        ] {
            let p = parse(&v4(proto, A4, B4, &l4)).unwrap();
            assert_eq!(p.protocol, want);
            assert_eq!(p.src_ip, IpAddr::from(A4));
            assert_eq!(p.dst_ip, IpAddr::from(B4));
            assert_eq!(p.src_port, Some(u16::from_be_bytes([l4[0], l4[1]])));
            assert_eq!(p.dst_port, Some(u16::from_be_bytes([l4[2], l4[3]])));
        }
    }

    #[test]
    fn ipv4_icmp_has_no_ports() {
        let p = parse(&v4(1, A4, B4, &[8, 0, 0xf7, 0xff, 0, 1, 0, 1])).unwrap();
        assert_eq!(p.protocol, L4Proto::Icmp);
        assert_eq!((p.src_port, p.dst_port), (None, None));
    }

    #[test]
    fn ipv4_options_and_fragments() {
        // IHL 6: one 4-byte option (NOP x4) before TCP.
        let mut p = v4(6, A4, B4, &[]);
        p[0] = 0x46;
        p.extend_from_slice(&[1, 1, 1, 1]);
        p.extend_from_slice(&tcp(1234, 81));
        let info = parse(&p).unwrap();
        assert_eq!((info.src_port, info.dst_port), (Some(1234), Some(81)));
        // A non-first fragment: what follows the header is not a TCP header.
        let mut frag = v4(6, A4, B4, &tcp(1234, 81));
        frag[6] = 0x00;
        frag[7] = 0x10;
        let info = parse(&frag).unwrap();
        assert_eq!((info.src_port, info.dst_port), (None, None));
    }

    #[test]
    fn ipv6_tcp_udp_sctp_icmpv6() {
        for (nh, l4, want, ports) in [
            (6, tcp(40000, 81), L4Proto::Tcp, Some((40000, 81))),
            (17, udp(40001, 80), L4Proto::Udp, Some((40001, 80))),
            (132, sctp_init(40002, 80), L4Proto::Sctp, Some((40002, 80))),
            (58, vec![128, 0, 0, 0, 0, 1, 0, 1], L4Proto::Icmpv6, None),
        ] {
            let p = parse(&v6(nh, a6(), b6(), &l4)).unwrap();
            assert_eq!(p.protocol, want);
            assert_eq!(p.src_ip, IpAddr::V6(a6()));
            assert_eq!(p.dst_ip, IpAddr::V6(b6()));
            assert_eq!(
                p.src_port.zip(p.dst_port),
                ports,
                "{want}: {:?}",
                (p.src_port, p.dst_port)
            );
        }
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        // Hop-by-hop (8 bytes) -> destination options (16 bytes) -> fragment (first) -> UDP.
        let mut rest = vec![60, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&[44, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]);
        rest.extend_from_slice(&udp(5353, 5354));
        let p = parse(&v6(0, a6(), b6(), &rest)).unwrap();
        assert_eq!(p.protocol, L4Proto::Udp);
        assert_eq!((p.src_port, p.dst_port), (Some(5353), Some(5354)));
        // A non-first fragment: protocol is the fragment's next header, no ports.
        let mut frag = vec![6, 0, 0, 0x10, 0, 0, 0, 7];
        frag.extend_from_slice(&tcp(1, 2));
        let p = parse(&v6(44, a6(), b6(), &frag)).unwrap();
        assert_eq!(p.protocol, L4Proto::Tcp);
        assert_eq!((p.src_port, p.dst_port), (None, None));
    }

    #[test]
    fn short_and_malformed_payloads_are_errors_or_portless() {
        assert_eq!(parse(&[]), Err(PacketError::Empty));
        assert_eq!(parse(&[0x55; 40]), Err(PacketError::Version(5)));
        assert!(matches!(
            parse(&[0x45; 19]),
            Err(PacketError::Truncated { version: 4, .. })
        ));
        assert!(matches!(
            parse(&[0x60; 39]),
            Err(PacketError::Truncated { version: 6, .. })
        ));
        let mut bad_ihl = v4(6, A4, B4, &tcp(1, 2));
        bad_ihl[0] = 0x44;
        assert_eq!(parse(&bad_ihl), Err(PacketError::HeaderLength(16)));
        // IHL beyond the payload, ports cut off: addresses still come through.
        let mut long_ihl = v4(6, A4, B4, &[]);
        long_ihl[0] = 0x4f;
        let p = parse(&long_ihl).unwrap();
        assert_eq!((p.src_port, p.dst_port), (None, None));
        let cut = v4(6, A4, B4, &[0, 80, 0]);
        assert_eq!(parse(&cut).unwrap().src_port, Some(80));
        assert_eq!(parse(&cut).unwrap().dst_port, None);
        // Extension header that claims more bytes than there are.
        let p = parse(&v6(0, a6(), b6(), &[6, 255])).unwrap();
        assert_eq!((p.src_port, p.dst_port), (None, None));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every prefix of many pseudo-random buffers,
        // with the version nibble forced to 4 and 6 so the deep paths are reached.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..4000 {
            let len = (round % 160) + 1;
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                })
                .collect();
            buf[0] = (buf[0] & 0x0f) | if round % 2 == 0 { 0x40 } else { 0x60 };
            if round % 3 == 0 && buf.len() > 6 {
                buf[6] = [0, 43, 44, 51, 60, 59][round % 6];
            }
            for end in 0..=buf.len() {
                let _ = parse(&buf[..end]);
            }
        }
    }
}
