//! The lab's cluster DNS: a tiny authoritative DNS server (UDP and TCP, A and AAAA) for
//! Service names, run in the network namespace of the lab's `kube-dns` Pod, and a
//! resolver that asks it from inside a client Pod's namespace.
//!
//! Hand-written on purpose: the lab answers one question per query for a fixed zone, so
//! the wire format needed is a header, one question and address records (RFC 1035
//! §4.1); a DNS crate would add more code than this file has.
//!
//! Names answered, for a Service `svc` in namespace `ns` with ClusterIPs:
//! `svc.ns.svc.cluster.local`, `svc.ns.svc` and `svc.ns` (case-insensitive, with or
//! without the trailing dot), as the search path of a Pod's `resolv.conf` would expand
//! them. A name of the zone without an address of the asked family gets an empty
//! answer (NOERROR), any other name NXDOMAIN; anything but a standard query for one
//! question of class IN gets NOTIMP or FORMERR.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::netns::{self, NetnsError};

/// The cluster domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// TTL of every answer, seconds.
pub const TTL: u32 = 5;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

/// Errors of the DNS server and resolver.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Entering the namespace failed.
    #[error("dns in netns {netns}")]
    Netns {
        /// The namespace.
        netns: String,
        /// Why.
        #[source]
        source: NetnsError,
    },
    /// A socket operation failed.
    #[error("dns {op} {addr}")]
    Io {
        /// `bind udp`, `bind tcp`, `query`, …
        op: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The answer is not a DNS response to the query.
    #[error("dns answer from {server} for {name}: {reason}")]
    BadAnswer {
        /// The server asked.
        server: SocketAddr,
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The names the server answers: fully qualified (lowercase, no trailing dot) to
/// addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    names: BTreeMap<String, Vec<IpAddr>>,
}

impl Zone {
    /// An empty zone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the names of Service `namespace/name` with addresses `ips` (its
    /// ClusterIPs): `name.namespace.svc.cluster.local`, `name.namespace.svc` and
    /// `name.namespace`.
    pub fn add_service(&mut self, namespace: &str, name: &str, ips: &[IpAddr]) {
        let fqdn = service_fqdn(namespace, name);
        for n in [
            fqdn.clone(),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}"),
        ] {
            let e = self.names.entry(n.to_ascii_lowercase()).or_default();
            e.extend_from_slice(ips);
            e.sort();
            e.dedup();
        }
    }

    /// The addresses of `name` (any case, trailing dot optional); `None` if the zone
    /// does not have the name.
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        self.names.get(&n).map(Vec::as_slice)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the zone has no name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// `name.namespace.svc.cluster.local`.
pub fn service_fqdn(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads an uncompressed name at `at`; returns it (dotted, no trailing dot) and the
/// offset after it. Queries never use compression; labels are at most 63 bytes, names
/// at most 255.
fn read_name(b: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let len = usize::from(*b.get(at)?);
        at += 1;
        if len == 0 {
            return Some((name, at));
        }
        if len > 63 || name.len() + len > 255 {
            return None;
        }
        let label = b.get(at..at + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(std::str::from_utf8(label).ok()?);
        at += len;
    }
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        // Labels come from the zone or the query and are at most 63 bytes.
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    out.push(0);
}

fn header(id: u16, flags_hi: u8, rcode: u8, qd: u16, an: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&id.to_be_bytes());
    // QR=1, opcode from the query, AA=1 (authoritative), RD echoed; RA=1.
    h.push(0x80 | (flags_hi & 0x79) | 0x04);
    h.push(0x80 | (rcode & 0x0f));
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&an.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// The response to one query message, or `None` when the message is too short to
/// carry an id (nothing to answer to). Pure.
pub fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let id = be16(query, 0)?;
    let flags_hi = *query.get(2)?;
    let qr = flags_hi & 0x80 != 0;
    let opcode = (flags_hi >> 3) & 0x0f;
    let qdcount = be16(query, 4)?;
    if qr {
        return None; // a response: never answer those (no loops)
    }
    if opcode != 0 {
        return Some(header(id, flags_hi, RCODE_NOTIMP, 0, 0));
    }
    let Some((name, at)) = (qdcount == 1).then(|| read_name(query, 12)).flatten() else {
        return Some(header(id, flags_hi, RCODE_FORMERR, 0, 0));
    };
    let (Some(qtype), Some(qclass)) = (be16(query, at), be16(query, at + 2)) else {
        return Some(header(id, flags_hi, RCODE_FORMERR, 0, 0));
    };
    let question = &query[12..at + 4];
    if qclass != CLASS_IN {
        let mut r = header(id, flags_hi, RCODE_NOTIMP, 1, 0);
        r.extend_from_slice(question);
        return Some(r);
    }
    let Some(ips) = zone.lookup(&name) else {
        let mut r = header(id, flags_hi, RCODE_NXDOMAIN, 1, 0);
        r.extend_from_slice(question);
        return Some(r);
    };
    let records: Vec<Vec<u8>> = ips
        .iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(a), TYPE_A) => Some(a.octets().to_vec()),
            (IpAddr::V6(a), TYPE_AAAA) => Some(a.octets().to_vec()),
            _ => None,
        })
        .collect();
    let an = u16::try_from(records.len()).unwrap_or(u16::MAX);
    let mut r = header(id, flags_hi, 0, 1, an);
    r.extend_from_slice(question);
    for rdata in records.iter().take(usize::from(an)) {
        r.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&TTL.to_be_bytes());
        // 4 or 16 bytes.
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
    }
    Some(r)
}

/// A standard query (RD set) for `name` of type A (`v6 == false`) or AAAA.
pub fn query(id: u16, name: &str, v6: bool) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(&mut q, name);
    q.extend_from_slice(&(if v6 { TYPE_AAAA } else { TYPE_A }).to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// The addresses in a response to [`query`] `id`: `Ok(None)` for NXDOMAIN.
pub fn parse_answer(id: u16, msg: &[u8]) -> Result<Option<Vec<IpAddr>>, String> {
    if be16(msg, 0) != Some(id) {
        return Err("wrong id".to_owned());
    }
    let flags = be16(msg, 2).ok_or("short header")?;
    if flags & 0x8000 == 0 {
        return Err("not a response".to_owned());
    }
    match flags & 0x0f {
        0 => {}
        3 => return Ok(None),
        rc => return Err(format!("rcode {rc}")),
    }
    let qd = be16(msg, 4).ok_or("short header")?;
    let an = be16(msg, 6).ok_or("short header")?;
    let mut at = 12;
    for _ in 0..qd {
        let (_, next) = read_name(msg, at).ok_or("bad question")?;
        at = next + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        // Our server always points to the question; accept plain names too.
        at = if msg.get(at).is_some_and(|b| b & 0xc0 == 0xc0) {
            at + 2
        } else {
            read_name(msg, at).ok_or("bad answer name")?.1
        };
        let ty = be16(msg, at).ok_or("short answer")?;
        let len = usize::from(be16(msg, at + 8).ok_or("short answer")?);
        let rdata = msg.get(at + 10..at + 10 + len).ok_or("short rdata")?;
        match (ty, len) {
            (TYPE_A, 4) => ips.push(IpAddr::from(<[u8; 4]>::try_from(rdata).map_err(|_| "a")?)),
            (TYPE_AAAA, 16) => {
                ips.push(IpAddr::from(
                    <[u8; 16]>::try_from(rdata).map_err(|_| "aaaa")?,
                ));
            }
            _ => {}
        }
        at += 10 + len;
    }
    Ok(Some(ips))
}

/// A running DNS server (UDP and TCP on one port of the given addresses). Dropping it
/// stops and joins the serving threads.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("threads", &self.threads.len())
            .finish()
    }
}

const POLL: Duration = Duration::from_millis(50);

impl DnsServer {
    /// Binds UDP and TCP `port` on each of `addrs` inside `netns` (sockets stay in the
    /// namespace they were made in) and serves `zone` on plain threads.
    pub fn start(
        netns: &str,
        addrs: &[IpAddr],
        port: u16,
        zone: Zone,
    ) -> Result<DnsServer, DnsError> {
        let bound = netns::run_in(netns, || {
            addrs
                .iter()
                .map(|a| {
                    let addr = SocketAddr::new(*a, port);
                    let io = |op| move |source| DnsError::Io { op, addr, source };
                    let udp = UdpSocket::bind(addr).map_err(io("bind udp"))?;
                    udp.set_read_timeout(Some(POLL))
                        .map_err(io("udp timeout"))?;
                    let tcp = TcpListener::bind(addr).map_err(io("bind tcp"))?;
                    tcp.set_nonblocking(true).map_err(io("tcp nonblocking"))?;
                    Ok((udp, tcp))
                })
                .collect::<Result<Vec<_>, DnsError>>()
        })
        .map_err(|source| DnsError::Netns {
            netns: netns.to_owned(),
            source,
        })??;
        let zone = Arc::new(zone);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (udp, tcp) in bound {
            let (z, s) = (Arc::clone(&zone), Arc::clone(&stop));
            threads.push(thread::spawn(move || serve_udp(&udp, &z, &s)));
            let (z, s) = (Arc::clone(&zone), Arc::clone(&stop));
            threads.push(thread::spawn(move || serve_tcp(&tcp, &z, &s)));
        }
        Ok(DnsServer { stop, threads })
    }

    /// Stops and joins the server threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve_udp(sock: &UdpSocket, zone: &Zone, stop: &AtomicBool) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && let Some(r) = answer(zone, &buf[..n])
        {
            let _ = sock.send_to(&r, from);
        }
    }
}

fn serve_tcp(listener: &TcpListener, zone: &Zone, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = serve_tcp_conn(conn, zone);
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn serve_tcp_conn(mut conn: TcpStream, zone: &Zone) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg)?;
    if let Some(r) = answer(zone, &msg) {
        let n = u16::try_from(r.len()).unwrap_or(u16::MAX);
        conn.write_all(&n.to_be_bytes())?;
        conn.write_all(&r[..usize::from(n)])?;
    }
    Ok(())
}

fn next_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0x2a00);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16)
}

/// How a name is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One UDP datagram each way.
    Udp,
    /// A TCP connection with a length-prefixed message.
    Tcp,
}

/// Resolves `name` (A, or AAAA with `v6`) by asking `server` from inside `netns`:
/// `Ok(None)` for NXDOMAIN, `Err` when no answer came in `timeout` (e.g. the client's
/// egress policy drops DNS) or the answer is malformed.
pub fn resolve_in(
    netns: &str,
    name: &str,
    v6: bool,
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
) -> Result<Option<Vec<IpAddr>>, DnsError> {
    netns::run_in(netns, || resolve(name, v6, server, transport, timeout)).map_err(|source| {
        DnsError::Netns {
            netns: netns.to_owned(),
            source,
        }
    })?
}

/// [`resolve_in`] from the calling thread's namespace.
pub fn resolve(
    name: &str,
    v6: bool,
    server: SocketAddr,
    transport: Transport,
    timeout: Duration,
) -> Result<Option<Vec<IpAddr>>, DnsError> {
    let id = next_id();
    let q = query(id, name, v6);
    let io = |op| {
        move |source| DnsError::Io {
            op,
            addr: server,
            source,
        }
    };
    let msg = match transport {
        Transport::Udp => {
            let any: SocketAddr = if server.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(any).map_err(io("bind"))?;
            sock.set_read_timeout(Some(timeout))
                .map_err(io("timeout"))?;
            sock.connect(server).map_err(io("connect udp"))?;
            sock.send(&q).map_err(io("send"))?;
            let mut buf = [0u8; 1500];
            let n = sock.recv(&mut buf).map_err(io("receive"))?;
            buf[..n].to_vec()
        }
        Transport::Tcp => {
            let mut conn =
                TcpStream::connect_timeout(&server, timeout).map_err(io("connect tcp"))?;
            conn.set_read_timeout(Some(timeout))
                .map_err(io("timeout"))?;
            let n = u16::try_from(q.len()).unwrap_or(u16::MAX);
            conn.write_all(&n.to_be_bytes()).map_err(io("send"))?;
            conn.write_all(&q).map_err(io("send"))?;
            let mut len = [0u8; 2];
            conn.read_exact(&mut len).map_err(io("receive"))?;
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
            conn.read_exact(&mut msg).map_err(io("receive"))?;
            msg
        }
    };
    parse_answer(id, &msg).map_err(|reason| DnsError::BadAnswer {
        server,
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut z = Zone::new();
        z.add_service(
            "shop",
            "db",
            &[
                "10.96.0.50".parse().unwrap(),
                "fd00:96::50".parse().unwrap(),
            ],
        );
        z
    }

    #[test]
    fn answers_a_and_aaaa_for_every_service_name_form() {
        let z = zone();
        for name in [
            "db.shop.svc.cluster.local",
            "DB.Shop.svc",
            "db.shop",
            "db.shop.svc.cluster.local.",
        ] {
            let r = answer(&z, &query(7, name, false)).unwrap();
            assert_eq!(
                parse_answer(7, &r).unwrap(),
                Some(vec!["10.96.0.50".parse().unwrap()]),
                "{name}"
            );
            let r = answer(&z, &query(8, name, true)).unwrap();
            assert_eq!(
                parse_answer(8, &r).unwrap(),
                Some(vec!["fd00:96::50".parse().unwrap()])
            );
        }
        let r = answer(&z, &query(9, "web.shop.svc.cluster.local", false)).unwrap();
        assert_eq!(parse_answer(9, &r).unwrap(), None, "NXDOMAIN");
    }

    #[test]
    fn garbage_never_panics_and_responses_are_not_answered() {
        let z = zone();
        assert_eq!(answer(&z, &[]), None);
        assert_eq!(answer(&z, &[1]), None);
        let r = answer(&z, &[0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_FORMERR);
        let mut resp = answer(&z, &query(1, "db.shop", false)).unwrap();
        assert_eq!(answer(&z, &resp), None);
        // Every truncation and every single-byte corruption of a query is handled.
        let q = query(3, "db.shop.svc.cluster.local", true);
        for n in 0..q.len() {
            let _ = answer(&z, &q[..n]);
            for v in [0u8, 0x3f, 0x40, 0xc0, 0xff] {
                let mut m = q.clone();
                m[n] = v;
                if let Some(r) = answer(&z, &m) {
                    let _ = parse_answer(3, &r);
                }
            }
        }
        resp.truncate(resp.len() - 3);
        assert!(parse_answer(1, &resp).is_err());
    }
}
