//! Hand-built SCTP packets (RFC 9260) for probing without the kernel's SCTP stack.
//!
//! Only what the probe needs: an INIT chunk (client to server) and an INIT ACK chunk
//! with a dummy State Cookie (server to client), each in one packet with a correct
//! CRC32c checksum, and a parser that checks the checksum and reads the first chunk.

use crc::{CRC_32_ISCSI, Crc};

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// Chunk type of INIT.
pub(crate) const CHUNK_INIT: u8 = 1;
/// Chunk type of INIT ACK.
pub(crate) const CHUNK_INIT_ACK: u8 = 2;

const COMMON_HEADER_LEN: usize = 12;
const INIT_CHUNK_LEN: u16 = 20;
const STATE_COOKIE_PARAM: u16 = 7;
const COOKIE: &[u8; 8] = b"netpol\0\0";

/// The fields of a received packet that the probe looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) verification_tag: u32,
    /// Type of the first chunk.
    pub(crate) chunk_type: u8,
    /// Initiate Tag, for INIT and INIT ACK chunks.
    pub(crate) initiate_tag: Option<u32>,
}

/// CRC32c of `packet` with its checksum field taken as zero, as SCTP defines it.
fn checksum(packet: &[u8]) -> u32 {
    let mut digest = CRC32C.digest();
    digest.update(&packet[..8]);
    digest.update(&[0; 4]);
    digest.update(&packet[COMMON_HEADER_LEN..]);
    digest.finalize()
}

/// Writes the checksum into a packet whose common header is complete.
fn seal(mut packet: Vec<u8>) -> Vec<u8> {
    // SCTP carries the CRC32c value in little-endian byte order (RFC 9260 appendix A;
    // Linux: `cpu_to_le32` in sctp_compute_cksum).
    let sum = checksum(&packet);
    packet[8..12].copy_from_slice(&sum.to_le_bytes());
    packet
}

fn common_header(src_port: u16, dst_port: u16, verification_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(48);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&verification_tag.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p
}

fn init_body(p: &mut Vec<u8>, chunk_type: u8, len: u16, initiate_tag: u32) {
    p.push(chunk_type);
    p.push(0); // flags
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&initiate_tag.to_be_bytes()); // initial TSN
}

/// An INIT packet: verification tag 0 as RFC 9260 requires, `initiate_tag` non-zero.
pub(crate) fn init(src_port: u16, dst_port: u16, initiate_tag: u32) -> Vec<u8> {
    let mut p = common_header(src_port, dst_port, 0);
    init_body(&mut p, CHUNK_INIT, INIT_CHUNK_LEN, initiate_tag);
    seal(p)
}

/// An INIT ACK answering an INIT whose Initiate Tag was `peer_tag`.
pub(crate) fn init_ack(src_port: u16, dst_port: u16, peer_tag: u32, own_tag: u32) -> Vec<u8> {
    let cookie_len = 4 + COOKIE.len() as u16;
    let mut p = common_header(src_port, dst_port, peer_tag);
    init_body(&mut p, CHUNK_INIT_ACK, INIT_CHUNK_LEN + cookie_len, own_tag);
    p.extend_from_slice(&STATE_COOKIE_PARAM.to_be_bytes());
    p.extend_from_slice(&cookie_len.to_be_bytes());
    p.extend_from_slice(COOKIE);
    seal(p)
}

/// Parses an SCTP packet (no IP header). `None` if it is too short, its checksum is
/// wrong, or its first chunk is malformed.
pub(crate) fn parse(packet: &[u8]) -> Option<Packet> {
    if packet.len() < COMMON_HEADER_LEN + 4 {
        return None;
    }
    let be16 = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
    let be32 = |at: usize| {
        u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]])
    };
    let stored = u32::from_le_bytes([packet[8], packet[9], packet[10], packet[11]]);
    if stored != checksum(packet) {
        return None;
    }
    let chunk_type = packet[COMMON_HEADER_LEN];
    let chunk_len = usize::from(be16(COMMON_HEADER_LEN + 2));
    if chunk_len < 4 || COMMON_HEADER_LEN + chunk_len > packet.len() {
        return None;
    }
    let initiate_tag = match chunk_type {
        CHUNK_INIT | CHUNK_INIT_ACK if chunk_len >= usize::from(INIT_CHUNK_LEN) => {
            Some(be32(COMMON_HEADER_LEN + 4))
        }
        CHUNK_INIT | CHUNK_INIT_ACK => return None,
        _ => None,
    };
    Some(Packet {
        src_port: be16(0),
        dst_port: be16(2),
        verification_tag: be32(4),
        chunk_type,
        initiate_tag,
    })
}

/// Strips the IPv4 header that raw IPv4 sockets deliver in front of the payload.
pub(crate) fn strip_ipv4_header(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first >> 4 != 4 {
        return None;
    }
    datagram.get(usize::from(first & 0x0f) * 4..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answers() {
        // RFC 3720 appendix B.4 and the common "123456789" check value.
        assert_eq!(CRC32C.checksum(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(CRC32C.checksum(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_layout() {
        let p = init(40000, 80, 0x1122_3344);
        assert_eq!(p.len(), 32);
        assert_eq!(&p[0..4], &[0x9c, 0x40, 0x00, 0x50]);
        assert_eq!(&p[4..8], &[0, 0, 0, 0], "INIT carries verification tag 0");
        assert_eq!(&p[12..16], &[1, 0, 0, 20]);
        assert_eq!(&p[16..20], &[0x11, 0x22, 0x33, 0x44]);
        let sum = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
        let mut zeroed = p.clone();
        zeroed[8..12].fill(0);
        assert_eq!(sum, CRC32C.checksum(&zeroed));
    }

    #[test]
    fn round_trip() {
        let p = parse(&init(40000, 80, 7)).unwrap();
        assert_eq!(
            p,
            Packet {
                src_port: 40000,
                dst_port: 80,
                verification_tag: 0,
                chunk_type: CHUNK_INIT,
                initiate_tag: Some(7),
            }
        );
        let a = parse(&init_ack(80, 40000, 7, 9)).unwrap();
        assert_eq!(a.verification_tag, 7);
        assert_eq!(a.chunk_type, CHUNK_INIT_ACK);
        assert_eq!(a.initiate_tag, Some(9));
        assert_eq!((a.src_port, a.dst_port), (80, 40000));
    }

    #[test]
    fn corrupt_packets_are_rejected() {
        let mut p = init(1, 2, 3);
        p[17] ^= 1;
        assert_eq!(parse(&p), None);
        assert_eq!(parse(&p[..10]), None);
    }

    #[test]
    fn ipv4_header_is_stripped() {
        let mut d = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0];
        d.extend_from_slice(&[0; 8]);
        d.extend_from_slice(b"sctp");
        assert_eq!(strip_ipv4_header(&d), Some(&b"sctp"[..]));
        assert_eq!(strip_ipv4_header(&[0x60]), None);
    }
}
