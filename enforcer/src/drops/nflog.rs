//! An NFLOG group subscription over a `NETLINK_NETFILTER` socket.
//!
//! Messages are built and parsed with `netlink-packet-netfilter` (nfnetlink_log config
//! commands, `NFULNL_MSG_PACKET` attributes); the socket is `netlink-sys`. Hand-written
//! here: walking a datagram that holds several netlink messages (bounds-checked), and
//! reading the two attribute values the crate parses but keeps private
//! (`NFULA_TIMESTAMP`), by emitting them back to bytes through its public `Nla` trait.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload, Nla};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};

use super::DropsError;
use crate::netns;

/// Default NFLOG group of the compiled rulesets (`log group 100`).
pub const DEFAULT_GROUP: u16 = 100;
/// Default number of packet bytes copied to user space: IPv6 header, a few extension
/// headers and the transport ports fit.
pub const DEFAULT_COPY_RANGE: u32 = 128;

/// How to subscribe to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NflogConfig {
    /// NFLOG group (`log group N`).
    pub group: u16,
    /// Bytes of each packet to copy, from the network header on.
    pub copy_range: u32,
    /// Socket receive buffer in bytes (`SO_RCVBUF`); a full buffer loses messages
    /// (counted in [`super::ListenerStats::lost`]).
    pub rcvbuf: usize,
    /// How long one `recv` waits before returning empty, so a reader can check for stop.
    pub poll: Duration,
}

impl Default for NflogConfig {
    fn default() -> Self {
        Self {
            group: DEFAULT_GROUP,
            copy_range: DEFAULT_COPY_RANGE,
            rcvbuf: 1 << 20,
            poll: Duration::from_millis(100),
        }
    }
}

/// One logged packet as the kernel sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// `nfgen_family`: 2 (IPv4) or 10 (IPv6) for `inet` tables.
    pub family: u8,
    /// The NFLOG group (`res_id`).
    pub group: u16,
    /// `NFULA_PREFIX` without its NUL, if any.
    pub prefix: Option<String>,
    /// `NFULA_PAYLOAD`: the packet from the network header, at most the copy range.
    pub payload: Vec<u8>,
    /// `NFULA_TIMESTAMP`, if the kernel sent one (it does on input and forward hooks,
    /// not on output).
    pub timestamp: Option<SystemTime>,
}

/// What one netlink message in a datagram was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A logged packet.
    Packet(LogRecord),
    /// An acknowledgement (`NLMSG_ERROR` with code 0).
    Ack,
    /// `NLMSG_ERROR` with a negative errno.
    Error(i32),
    /// Something that does not parse; the text says why.
    Malformed(String),
    /// Anything else (`NLMSG_DONE`, other subsystems, …).
    Other,
}

const NLMSG_HDRLEN: usize = 16;

/// Splits a datagram into netlink messages and decodes each. Never panics: a length
/// field that is too small or runs past the end ends the walk with [`Message::Malformed`].
pub fn decode_datagram(buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let rest = &buf[at..];
        let Some(len) = rest
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_ne_bytes(b) as usize)
        else {
            out.push(Message::Malformed(format!(
                "{} trailing bytes are no netlink header",
                rest.len()
            )));
            break;
        };
        if len < NLMSG_HDRLEN || len > rest.len() {
            out.push(Message::Malformed(format!(
                "netlink length {len} outside 16..={}",
                rest.len()
            )));
            break;
        }
        out.push(decode_message(&rest[..len]));
        // Messages are 4-byte aligned; the last one may lack its padding.
        at += len.next_multiple_of(4);
    }
    out
}

fn decode_message(bytes: &[u8]) -> Message {
    let msg = match NetlinkMessage::<NetfilterMessage>::deserialize(bytes) {
        Ok(msg) => msg,
        Err(e) => return Message::Malformed(e.to_string()),
    };
    match msg.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Message::Ack,
            Some(code) => Message::Error(code.get()),
        },
        NetlinkPayload::InnerMessage(NetfilterMessage {
            header,
            inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
            ..
        }) => Message::Packet(record(u8::from(header.family), header.res_id, nlas)),
        _ => Message::Other,
    }
}

fn record(family: u8, group: u16, nlas: Vec<PacketNla>) -> LogRecord {
    let mut rec = LogRecord {
        family,
        group,
        prefix: None,
        payload: Vec::new(),
        timestamp: None,
    };
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => rec.prefix = Some(p.to_string_lossy().into_owned()),
            PacketNla::Payload(p) => rec.payload = p,
            PacketNla::Timestamp(ts) => rec.timestamp = timestamp(&ts),
            _ => {}
        }
    }
    rec
}

/// `struct nfulnl_msg_packet_timestamp { __be64 sec; __be64 usec; }`. The crate keeps the
/// fields private, so the value is emitted back into its 16 wire bytes.
fn timestamp(ts: &impl Nla) -> Option<SystemTime> {
    let mut raw = [0u8; 16];
    if ts.value_len() != raw.len() {
        return None;
    }
    ts.emit_value(&mut raw);
    let (sec, usec) = raw.split_at(8);
    let sec = u64::from_be_bytes(sec.try_into().ok()?);
    let usec = u64::from_be_bytes(usec.try_into().ok()?);
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(sec))?
        .checked_add(Duration::from_micros(usec.min(999_999)))
}

/// A `NETLINK_NETFILTER` socket bound to one NFLOG group in one network namespace.
///
/// The socket is created on a thread inside the namespace ([`netns::run_in`]); it keeps
/// that namespace for its whole life, so it may then be read from any thread. Dropping
/// it closes the socket, which makes the kernel release the group.
#[derive(Debug)]
pub struct NflogSocket {
    netns: String,
    group: u16,
    socket: Socket,
    buf: Vec<u8>,
}

impl NflogSocket {
    /// Opens the socket in `netns` and binds it to `config.group` in packet-copy mode.
    ///
    /// Fails with [`DropsError::Bind`] when the kernel refuses (`EPERM`: another socket
    /// in this namespace has the group; `ENOENT`/`EOPNOTSUPP`: no nfnetlink_log).
    pub fn open(netns: &str, config: &NflogConfig) -> Result<Self, DropsError> {
        // The node's own namespace (the node table's drops): the caller's namespace.
        let socket = if netns == crate::node::OWN_NETNS {
            Self::open_here(netns, config)?
        } else {
            netns::run_in(netns, || Self::open_here(netns, config)).map_err(|source| {
                DropsError::Netns {
                    netns: netns.to_owned(),
                    source: Box::new(source),
                }
            })??
        };
        Ok(Self {
            netns: netns.to_owned(),
            group: config.group,
            socket,
            buf: vec![0; 1 << 16],
        })
    }

    fn open_here(netns: &str, config: &NflogConfig) -> Result<Socket, DropsError> {
        let sock_err = |op: &'static str| {
            move |source: io::Error| DropsError::Socket {
                netns: netns.to_owned(),
                op,
                source,
            }
        };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(sock_err("socket"))?;
        socket.bind_auto().map_err(sock_err("bind"))?;
        // Best effort: the kernel caps it at net.core.rmem_max.
        if let Err(e) = socket.set_rx_buf_sz(config.rcvbuf) {
            tracing::debug!(netns, error = %e, "SO_RCVBUF not set");
        }
        let poll = TimeVal::milliseconds(i64::try_from(config.poll.as_millis()).unwrap_or(100));
        setsockopt(&socket.as_fd(), sockopt::ReceiveTimeout, &poll)
            .map_err(|e| sock_err("SO_RCVTIMEO")(io::Error::from(e)))?;

        // No PF_BIND: `log group N` asks for the nfnetlink_log logger by type, so the
        // per-family default logger (what PF_BIND sets, needed by pre-3.x kernels and by
        // `LOG`-less callers such as conntrack's invalid-packet logging) stays untouched.
        // QTHRESH 1: deliver each packet at once instead of batching up to 100 or 1 s.
        let nlas = vec![
            ConfigNla::Cmd(ConfigCmd::Bind),
            ConfigNla::Mode(ConfigMode::new_packet(config.copy_range)),
            ConfigNla::QThresh(1),
        ];
        let mut msg = config_request(NetfilterProtoFamily::Unspec, config.group, nlas);
        msg.header.sequence_number = 1;
        msg.header.flags |= NLM_F_REQUEST;
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        socket.send(&out, 0).map_err(sock_err("send config"))?;

        let mut buf = vec![0u8; 8192];
        let bind_err = |source: io::Error| DropsError::Bind {
            netns: netns.to_owned(),
            group: config.group,
            source,
        };
        loop {
            let n = socket
                .recv(&mut &mut buf[..], 0)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        bind_err(io::Error::new(io::ErrorKind::TimedOut, "no ack"))
                    }
                    _ => bind_err(e),
                })?;
            for m in decode_datagram(buf.get(..n).unwrap_or(&buf)) {
                match m {
                    Message::Ack => return Ok(socket),
                    Message::Error(code) => {
                        return Err(bind_err(io::Error::from_raw_os_error(-code)));
                    }
                    Message::Malformed(why) => {
                        return Err(bind_err(io::Error::new(io::ErrorKind::InvalidData, why)));
                    }
                    Message::Packet(_) | Message::Other => {}
                }
            }
        }
    }

    /// Namespace the socket lives in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The bound group.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Waits up to the poll interval for one datagram and decodes it. An empty vector
    /// means the wait ran out. `ENOBUFS` (the kernel dropped messages because the
    /// receive buffer was full) is returned as [`RecvError::Overrun`].
    pub fn recv(&mut self) -> Result<Vec<Message>, RecvError> {
        match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) if n > self.buf.len() => Ok(vec![Message::Malformed(format!(
                "datagram of {n} bytes truncated to {}",
                self.buf.len()
            ))]),
            Ok(n) => Ok(decode_datagram(self.buf.get(..n).unwrap_or(&[]))),
            Err(e) => match (e.kind(), e.raw_os_error()) {
                (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, _) => Ok(Vec::new()),
                (io::ErrorKind::Interrupted, _) => Ok(Vec::new()),
                (_, Some(libc_enobufs)) if libc_enobufs == nix::libc::ENOBUFS => {
                    Err(RecvError::Overrun)
                }
                _ => Err(RecvError::Io(e)),
            },
        }
    }
}

/// A failed [`NflogSocket::recv`].
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The kernel dropped messages (receive buffer full); reading can go on.
    #[error("receive buffer overrun, messages lost")]
    Overrun,
    /// Any other socket error; the socket is unusable.
    #[error("recv failed")]
    Io(#[source] io::Error),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An `NFULNL_MSG_PACKET` for group 100 and `family`, laid out like the captures
    /// below.
    pub(crate) fn packet_message(
        family: u8,
        prefix: &str,
        payload: &[u8],
        ts: Option<(u64, u64)>,
    ) -> Vec<u8> {
        fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
            let len = u16::try_from(4 + value.len()).unwrap();
            out.extend_from_slice(&len.to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(value);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        }
        let mut body = vec![family, 0, 0, 100]; // nfgenmsg: family, version, res_id (BE)
        attr(&mut body, 1, &[0x08, 0x00, 1, 0]); // NFULA_PACKET_HDR: ETH_P_IP, hook 1
        let mut p = prefix.as_bytes().to_vec();
        p.push(0);
        attr(&mut body, 10, &p); // NFULA_PREFIX
        if let Some((s, us)) = ts {
            let mut v = s.to_be_bytes().to_vec();
            v.extend_from_slice(&us.to_be_bytes());
            attr(&mut body, 3, &v); // NFULA_TIMESTAMP
        }
        attr(&mut body, 4, &2u32.to_be_bytes()); // NFULA_IFINDEX_INDEV
        attr(&mut body, 9, payload); // NFULA_PAYLOAD
        let mut msg = Vec::new();
        let len = u32::try_from(16 + body.len()).unwrap();
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&0x0400u16.to_ne_bytes()); // NFNL_SUBSYS_ULOG << 8 | PACKET
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&[0; 8]);
        msg.extend_from_slice(&body);
        msg
    }

    fn ack(code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[16, 0, 0, 0, 0, 0x04, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        m
    }

    fn unhex(lines: &[&str]) -> Vec<u8> {
        let h: String = lines.concat();
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Captured on Linux 6.18 (x86_64, so lengths and types are little-endian) from the
    /// real-kernel test: a TCP SYN 10.0.0.11:45354 -> 10.0.0.12:81 dropped by
    /// `tcp dport 81 counter log group 100 prefix "netpol:x/b:ingress " drop` in the
    /// input hook. Attributes: PACKET_HDR, PREFIX, IFINDEX_INDEV, HWTYPE, HWLEN,
    /// HWHEADER, HWADDR, TIMESTAMP, PAYLOAD (60 bytes).
    const CAPTURED_V4_INGRESS: &[&str] = &[
        "c400000000040000000000000000000002000064080001000800010018000a00",
        "6e6574706f6c3a782f623a696e67726573732000080004000000000210000800",
        "00060000fe5d714bda28000006000f000001000006001100000e000012001000",
        "4add498c9af4fe5d714bda280800000014000300000000006b0869fa00000000",
        "000c7741400009004500003cd5504000400651550a00000b0a00000cb12a0051",
        "c9058d5600000000a002faf014450000020405b40402080a957ef50000000000",
        "0103030a",
    ];

    /// Captured like the one above: a TCP SYN fd00::11:51056 -> fd00::12:82 dropped by
    /// `... log group 100 prefix "netpol:x/a:egress " drop` in the output hook (no
    /// timestamp there; the copy is the whole 80-byte packet, below the 128-byte range).
    const CAPTURED_V6_EGRESS: &[&str] = &[
        "a00000000004000000000000000000000a0000640800010086dd030017000a00",
        "6e6574706f6c3a782f613a656772657373200000080005000000000208000b00",
        "0000000008000e000000000054000900600621b200280640fd00000000000000",
        "0000000000000011fd000000000000000000000000000012c7700052b37d1b34",
        "00000000a002fd20fa520000020405a00402080aac9204e5000000000103030a",
    ];

    #[test]
    fn captured_kernel_messages_decode() {
        let got = decode_datagram(&unhex(CAPTURED_V4_INGRESS));
        let [Message::Packet(rec)] = got.as_slice() else {
            panic!("{got:?}")
        };
        assert_eq!((rec.family, rec.group), (2, 100));
        assert_eq!(rec.prefix.as_deref(), Some("netpol:x/b:ingress "));
        assert_eq!(rec.payload.len(), 60);
        let ts = rec.timestamp.unwrap();
        let secs = ts.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 0x6b08_69fa);
        let p = crate::drops::packet::parse(&rec.payload).unwrap();
        assert_eq!(p.src_ip.to_string(), "10.0.0.11");
        assert_eq!(p.dst_ip.to_string(), "10.0.0.12");
        assert_eq!((p.src_port, p.dst_port), (Some(45354), Some(81)));

        let got = decode_datagram(&unhex(CAPTURED_V6_EGRESS));
        let [Message::Packet(rec)] = got.as_slice() else {
            panic!("{got:?}")
        };
        assert_eq!((rec.family, rec.group), (10, 100));
        assert_eq!(rec.prefix.as_deref(), Some("netpol:x/a:egress "));
        assert_eq!(rec.timestamp, None);
        let p = crate::drops::packet::parse(&rec.payload).unwrap();
        assert_eq!(p.src_ip.to_string(), "fd00::11");
        assert_eq!(p.dst_ip.to_string(), "fd00::12");
        assert_eq!(p.protocol, crate::drops::L4Proto::Tcp);
        assert_eq!((p.src_port, p.dst_port), (Some(51056), Some(82)));
    }

    #[test]
    fn captured_messages_survive_corruption() {
        for cap in [CAPTURED_V4_INGRESS, CAPTURED_V6_EGRESS] {
            let good = unhex(cap);
            for end in 0..good.len() {
                let _ = decode_datagram(&good[..end]);
            }
            for i in 0..good.len() {
                for v in [0u8, 0xff, good[i].wrapping_add(1)] {
                    let mut bad = good.clone();
                    bad[i] = v;
                    for m in decode_datagram(&bad) {
                        if let Message::Packet(r) = m {
                            let _ = crate::drops::packet::parse(&r.payload);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packet_message_decodes_prefix_payload_and_timestamp() {
        let payload = [0x45u8, 0, 0, 20];
        let msg = packet_message(
            2,
            "netpol:x/b:ingress ",
            &payload,
            Some((1_700_000_000, 250)),
        );
        let got = decode_datagram(&msg);
        let [Message::Packet(rec)] = got.as_slice() else {
            panic!("{got:?}")
        };
        assert_eq!(rec.family, 2);
        assert_eq!(rec.group, 100);
        assert_eq!(rec.prefix.as_deref(), Some("netpol:x/b:ingress "));
        assert_eq!(rec.payload, payload);
        assert_eq!(
            rec.timestamp,
            Some(SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_250))
        );
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let mut dgram = ack(0);
        dgram.extend(packet_message(10, "p ", &[0x60], None));
        dgram.extend(ack(-16));
        let got = decode_datagram(&dgram);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], Message::Ack);
        assert!(matches!(&got[1], Message::Packet(r) if r.family == 10 && r.timestamp.is_none()));
        assert_eq!(got[2], Message::Error(-16));
    }

    #[test]
    fn malformed_datagrams_never_panic() {
        let good = packet_message(2, "netpol:a/b:egress ", &[0x45; 40], Some((1, 2)));
        // Every truncation, and every single-byte corruption of a good message.
        for end in 0..good.len() {
            let _ = decode_datagram(&good[..end]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = decode_datagram(&bad);
            }
        }
        assert!(matches!(
            decode_datagram(&[1, 2, 3]).as_slice(),
            [Message::Malformed(_)]
        ));
        let mut zero_len = good.clone();
        zero_len[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(
            decode_datagram(&zero_len).as_slice(),
            [Message::Malformed(_)]
        ));
        // A prefix without its NUL makes the crate reject the message, not us panic.
        let mut no_nul = good;
        if let Some(pos) = no_nul.windows(2).position(|w| w == b" \0") {
            no_nul[pos + 1] = b'x';
        }
        let _ = decode_datagram(&no_nul);
    }
}
