//! Real-packet connectivity probes between hosts of a [`Topology`].
//!
//! A [`Prober`] starts servers inside host namespaces and runs clients inside other host
//! namespaces; every packet crosses the kernels' netfilter hooks (the client's `output`,
//! the server's `input`, and back), so a probe answers "does the loaded nftables ruleset
//! let this connection through?". No external tools are used.
//!
//! | protocol | server | client says "connected" when |
//! |---|---|---|
//! | TCP  | `TcpListener` on the host's address | the three-way handshake completes within the timeout (a RST is "refused", silence is "timed out") |
//! | UDP  | `UdpSocket` echoing every datagram | the echo of its token comes back (it resends every 100 ms) |
//! | SCTP | raw IP socket, protocol 132 | an INIT ACK answering its INIT comes back |
//!
//! # SCTP without the kernel's SCTP module
//!
//! This kernel may lack the SCTP module (`socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)`
//! fails with `EPROTONOSUPPORT`), so SCTP is spoken by hand over raw IP sockets
//! (`socket(AF_INET{,6}, SOCK_RAW, 132)`, needs `CAP_NET_RAW`):
//!
//! 1. The client, in the source namespace, sends an SCTP packet holding one INIT chunk:
//!    common header with source port, destination port, verification tag 0 and a correct
//!    CRC32c checksum; the INIT carries a fresh non-zero Initiate Tag. It goes out through
//!    the normal IP output path, so the client's netfilter `output` hook sees it
//!    (`sctp dport 80` and conntrack both work on it: conntrack tracks SCTP without the
//!    SCTP module).
//! 2. The server, in the destination namespace, has a raw socket for protocol 132 bound
//!    to the host's address. The kernel hands a raw socket a copy of an incoming packet in
//!    `ip_local_deliver_finish` / `ip6_input_finish`, i.e. only **after** the netfilter
//!    `input` hook accepted it. So a packet the server sees passed the client's `output`
//!    and the server's `input` hooks. (Without a raw socket the kernel would answer ICMP
//!    protocol-unreachable; with one, nothing else happens.)
//! 3. If the INIT is for a port the server listens on, the server answers with an INIT ACK
//!    (verification tag = the client's Initiate Tag, carrying a dummy State Cookie). In
//!    conntrack that is a reply packet (`ct state established`), crossing the server's
//!    `output` and the client's `input` hooks, just like a TCP SYN-ACK.
//! 4. The client's own raw socket receives all SCTP packets delivered to its namespace;
//!    it reports "connected" once it sees an INIT ACK from the target address and port
//!    whose verification tag is its Initiate Tag. It resends the INIT every 100 ms until
//!    the timeout.
//!
//! The association is never completed (no COOKIE ECHO): policies are about whether a
//! connection may be opened, and INIT / INIT ACK is the SCTP equivalent of SYN / SYN-ACK.
//! Ports without a server get no answer (real SCTP would send ABORT), so they time out.
//! IPv4 raw sockets deliver the IP header in front of the SCTP packet; it is stripped.
//! If raw sockets cannot be created (no `CAP_NET_RAW`, seccomp, …) the probe fails with
//! [`ProbeError::RawSocket`] naming the errno, instead of claiming "not connected".

mod sctp;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, recvfrom,
    sendto, setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::netns::{self, NetnsError};
use crate::topology::{Host, Topology};

/// The protocol of a probe is the compiler's [`policy_compiler::Protocol`] (TCP, UDP,
/// SCTP), re-exported here so `netpol_lab::probe::Protocol` keeps naming it.
pub use policy_compiler::Protocol;

/// Errors of the prober. A probe that is *blocked* is not an error; see
/// [`ProbeResult::connected`].
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No host of that name in the topology.
    #[error("unknown host {host:?}")]
    UnknownHost {
        /// The name asked for.
        host: String,
    },
    /// Entering the host's namespace failed.
    #[error("host {host}: cannot enter its netns")]
    Netns {
        /// Host name.
        host: String,
        /// The namespace error.
        #[source]
        source: NetnsError,
    },
    /// A server socket could not be bound.
    #[error("host {host}: cannot bind {protocol} server on {addr}")]
    Bind {
        /// Host name.
        host: String,
        /// Server protocol.
        protocol: Protocol,
        /// Address and port.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A raw SCTP socket could not be created, bound or used.
    #[error("host {host}: raw SCTP socket (IP protocol 132): {op} failed: {source}")]
    RawSocket {
        /// Host name.
        host: String,
        /// `socket`, `bind`, `sendto`, …
        op: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A probe client failed in a way that says nothing about the ruleset.
    #[error("host {host}: {protocol} client to {to}: {source}")]
    Client {
        /// Host name.
        host: String,
        /// Probe protocol.
        protocol: Protocol,
        /// Target.
        to: SocketAddr,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A server thread panicked.
    #[error("a {protocol} server on host {host} panicked")]
    ServerPanicked {
        /// Host name.
        host: String,
        /// Server protocol.
        protocol: Protocol,
    },
}

/// A server to start: `protocol` on `port` on every address of `host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listener {
    /// Host name in the topology.
    pub host: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
}

impl Listener {
    /// A listener spec.
    pub fn new(host: impl Into<String>, protocol: Protocol, port: u16) -> Self {
        Self {
            host: host.into(),
            protocol,
            port,
        }
    }
}

/// One probe: a client in host `from` opens `protocol` to `to`:`port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeSpec {
    /// Source host name.
    pub from: String,
    /// Destination address.
    pub to: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

impl ProbeSpec {
    /// A probe spec.
    pub fn new(from: impl Into<String>, to: IpAddr, protocol: Protocol, port: u16) -> Self {
        Self {
            from: from.into(),
            to,
            protocol,
            port,
        }
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {}",
            self.from,
            SocketAddr::new(self.to, self.port),
            self.protocol
        )
    }
}

/// Outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether the connection was established (handshake, echo or INIT ACK seen).
    pub connected: bool,
    /// What happened, e.g. `connected`, `refused (TCP RST)`, `timed out after 400ms`.
    pub detail: String,
    /// Time the probe took.
    pub elapsed: Duration,
}

/// How often an unanswered UDP datagram or SCTP INIT is sent again.
const RESEND: Duration = Duration::from_millis(100);
/// How long server loops block before checking for shutdown.
const SERVER_TICK: Duration = Duration::from_millis(100);
/// Default number of probes run at once by [`Prober::probe_all`].
pub const DEFAULT_PARALLELISM: usize = 64;

struct Server {
    host: String,
    protocol: Protocol,
    thread: JoinHandle<()>,
}

/// Servers running in host namespaces plus a way to run clients from any host.
///
/// Dropping the prober stops and joins its servers. Drop it before the [`Topology`].
pub struct Prober {
    hosts: Vec<Host>,
    servers: Vec<Server>,
    stop: Arc<AtomicBool>,
    parallelism: usize,
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("hosts", &self.hosts.len())
            .field("servers", &self.servers.len())
            .field("parallelism", &self.parallelism)
            .finish()
    }
}

fn next_nonce() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Mix in the pid so concurrent test processes use different tags; never zero.
    (n.wrapping_mul(0x9e37_79b9) ^ std::process::id().rotate_left(16)).max(1)
}

fn host_addrs(host: &Host) -> Vec<IpAddr> {
    host.ipv4
        .map(|n| IpAddr::V4(n.addr()))
        .into_iter()
        .chain(host.ipv6.map(|n| IpAddr::V6(n.addr())))
        .collect()
}

fn raw_sctp_socket(
    host: &str,
    family: IpAddr,
    read_timeout: Duration,
) -> Result<OwnedFd, ProbeError> {
    let err = |op| {
        let host = host.to_owned();
        move |source| ProbeError::RawSocket { host, op, source }
    };
    let af = match family {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        af,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .map_err(err("socket"))?;
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &TimeVal::microseconds(i64::try_from(read_timeout.as_micros()).unwrap_or(i64::MAX)),
    )
    .map_err(err("setsockopt(SO_RCVTIMEO)"))?;
    Ok(fd)
}

fn sockaddr(addr: IpAddr) -> SockaddrStorage {
    SockaddrStorage::from(SocketAddr::new(addr, 0))
}

fn peer_ip(addr: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(IpAddr::V4(v4.ip()))
    } else {
        addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
    }
}

/// Receives one SCTP packet; `Ok(None)` on timeout or a non-SCTP / corrupt packet.
fn recv_sctp(fd: &OwnedFd, buf: &mut [u8]) -> Result<Option<(IpAddr, sctp::Packet)>, nix::Error> {
    let (len, from) = match recvfrom::<SockaddrStorage>(fd.as_raw_fd(), buf) {
        Ok(r) => r,
        Err(nix::Error::EAGAIN | nix::Error::EINTR) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(from) = from.as_ref().and_then(peer_ip) else {
        return Ok(None);
    };
    let data = &buf[..len];
    let payload = if from.is_ipv4() {
        sctp::strip_ipv4_header(data)
    } else {
        Some(data)
    };
    Ok(payload.and_then(sctp::parse).map(|p| (from, p)))
}

/// Accept queue of a TCP probe server. The kernel completes handshakes on its own and
/// only queues them for `accept`; a full queue drops the SYN (`ListenDrops` in
/// `/proc/net/netstat`) and the client retries after its 1 s retransmission timeout,
/// which a probe would take for a block. The default (128 in `std`) overflowed under
/// load while hundreds of probes a second hit one server. See: #12
const TCP_BACKLOG: i32 = 4096;

fn serve_tcp(listener: TcpListener, stop: Arc<AtomicBool>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::socket::{Backlog, listen};
    // Listening again on a listening socket only changes its backlog (capped by
    // net.core.somaxconn).
    if let Err(e) = Backlog::new(TCP_BACKLOG).and_then(|b| listen(&listener, b)) {
        tracing::debug!(error = %e, "tcp probe server keeps the default backlog");
    }
    let tick = PollTimeout::try_from(SERVER_TICK).unwrap_or(PollTimeout::NONE);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            // The handshake is what probes measure; the connection can close at once.
            Ok((stream, _)) => drop(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Wake as soon as a connection is queued (or the tick passes).
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, tick).is_err() {
                    thread::sleep(SERVER_TICK / 5);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp probe server accept failed");
                thread::sleep(SERVER_TICK);
            }
        }
    }
}

fn serve_udp(socket: UdpSocket, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                if let Err(e) = socket.send_to(&buf[..len], from) {
                    tracing::debug!(error = %e, %from, "udp probe echo not sent");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::debug!(error = %e, "udp probe server recv failed");
                thread::sleep(SERVER_TICK / 5);
            }
        }
    }
}

fn serve_sctp(fd: OwnedFd, port: u16, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match recv_sctp(&fd, &mut buf) {
            Ok(Some((from, pkt)))
                if pkt.chunk_type == sctp::CHUNK_INIT
                    && pkt.dst_port == port
                    && pkt.verification_tag == 0 =>
            {
                let Some(peer_tag) = pkt.initiate_tag.filter(|&t| t != 0) else {
                    continue;
                };
                let reply = sctp::init_ack(port, pkt.src_port, peer_tag, next_nonce());
                if let Err(e) = sendto(fd.as_raw_fd(), &reply, &sockaddr(from), MsgFlags::empty()) {
                    tracing::debug!(error = %e, %from, "sctp probe INIT ACK not sent");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "sctp probe server recv failed");
                thread::sleep(SERVER_TICK / 5);
            }
        }
    }
}

/// Creates and binds the sockets of one listener inside the current thread's netns.
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Sctp(OwnedFd),
}

fn bind_listener(
    host: &str,
    addr: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Result<Bound, ProbeError> {
    let sa = SocketAddr::new(addr, port);
    let bind_err = |source| ProbeError::Bind {
        host: host.to_owned(),
        protocol,
        addr: sa,
        source,
    };
    match protocol {
        Protocol::Tcp => {
            let l = TcpListener::bind(sa).map_err(bind_err)?;
            l.set_nonblocking(true).map_err(bind_err)?;
            Ok(Bound::Tcp(l))
        }
        Protocol::Udp => {
            let s = UdpSocket::bind(sa).map_err(bind_err)?;
            s.set_read_timeout(Some(SERVER_TICK)).map_err(bind_err)?;
            Ok(Bound::Udp(s))
        }
        Protocol::Sctp => {
            let fd = raw_sctp_socket(host, addr, SERVER_TICK)?;
            // Bound to the host address: the socket only sees packets addressed to it.
            bind(fd.as_raw_fd(), &sockaddr(addr)).map_err(|source| ProbeError::RawSocket {
                host: host.to_owned(),
                op: "bind",
                source,
            })?;
            Ok(Bound::Sctp(fd))
        }
    }
}

impl Prober {
    /// Starts the listeners. Each binds to every address (IPv4 and IPv6) of its host.
    ///
    /// Sockets are created on a thread inside the host's namespace (a socket stays in the
    /// namespace it was made in); the serving loops then run on ordinary threads.
    pub fn start(topology: &Topology, listeners: &[Listener]) -> Result<Self, ProbeError> {
        let mut prober = Prober {
            // The node of a routed topology probes too (kubelet-style probes).
            hosts: topology
                .hosts()
                .iter()
                .chain(topology.node())
                .cloned()
                .collect(),
            servers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            parallelism: DEFAULT_PARALLELISM,
        };
        for l in listeners {
            let host = prober.host(&l.host)?.clone();
            let bound = netns::run_in(&host.netns, || {
                host_addrs(&host)
                    .into_iter()
                    .map(|a| bind_listener(&host.name, a, l.protocol, l.port))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|source| ProbeError::Netns {
                host: host.name.clone(),
                source,
            })??;
            for b in bound {
                let stop = Arc::clone(&prober.stop);
                let port = l.port;
                let thread = thread::Builder::new()
                    .name(format!("probe-srv-{}", l.protocol))
                    .spawn(move || match b {
                        Bound::Tcp(s) => serve_tcp(s, stop),
                        Bound::Udp(s) => serve_udp(s, stop),
                        Bound::Sctp(fd) => serve_sctp(fd, port, stop),
                    })
                    .map_err(|source| ProbeError::Netns {
                        host: host.name.clone(),
                        source: NetnsError::Thread {
                            netns: host.netns.clone(),
                            source,
                        },
                    })?;
                prober.servers.push(Server {
                    host: host.name.clone(),
                    protocol: l.protocol,
                    thread,
                });
            }
        }
        Ok(prober)
    }

    /// Sets how many probes [`Prober::probe_all`] runs at once (at least 1).
    pub fn with_parallelism(mut self, parallelism: usize) -> Self {
        self.parallelism = parallelism.max(1);
        self
    }

    fn host(&self, name: &str) -> Result<&Host, ProbeError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| ProbeError::UnknownHost {
                host: name.to_owned(),
            })
    }

    /// Opens `protocol` from host `from` to `to`:`port`, giving up after `timeout`.
    ///
    /// The client runs on a fresh thread inside `from`'s namespace. Blocked traffic is
    /// `Ok` with `connected: false`; `Err` means the probe itself could not run.
    pub fn probe(
        &self,
        from: &str,
        to: IpAddr,
        protocol: Protocol,
        port: u16,
        timeout: Duration,
    ) -> Result<ProbeResult, ProbeError> {
        let host = self.host(from)?;
        let target = SocketAddr::new(to, port);
        netns::run_in(&host.netns, || {
            let start = Instant::now();
            let outcome = match protocol {
                Protocol::Tcp => tcp_client(target, timeout),
                Protocol::Udp => udp_client(target, timeout),
                Protocol::Sctp => sctp_client(&host.name, target, timeout),
            };
            outcome.map(|(connected, detail)| ProbeResult {
                connected,
                detail,
                elapsed: start.elapsed(),
            })
        })
        .map_err(|source| ProbeError::Netns {
            host: host.name.clone(),
            source,
        })?
        .map_err(|e| match e {
            ClientError::Io(source) => ProbeError::Client {
                host: host.name.clone(),
                protocol,
                to: target,
                source,
            },
            ClientError::Probe(e) => e,
        })
    }

    /// Runs many probes, up to the parallelism (default [`DEFAULT_PARALLELISM`]) at once.
    /// Results come in the order of `probes`.
    pub fn probe_all(
        &self,
        probes: &[ProbeSpec],
        timeout: Duration,
    ) -> Vec<Result<ProbeResult, ProbeError>> {
        let next = AtomicUsize::new(0);
        let workers = self.parallelism.min(probes.len()).max(1);
        let mut results: Vec<Option<Result<ProbeResult, ProbeError>>> =
            probes.iter().map(|_| None).collect();
        let done = std::sync::Mutex::new(Vec::with_capacity(probes.len()));
        thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = probes.get(i) else { break };
                        let r = self.probe(&p.from, p.to, p.protocol, p.port, timeout);
                        if let Ok(mut done) = done.lock() {
                            done.push((i, r));
                        }
                    }
                });
            }
        });
        for (i, r) in done.into_inner().unwrap_or_else(|e| e.into_inner()) {
            results[i] = Some(r);
        }
        results
            .into_iter()
            .zip(probes)
            .map(|(r, p)| {
                // Every index below probes.len() is taken by exactly one worker; a
                // missing result can only mean that worker panicked.
                r.unwrap_or_else(|| {
                    Err(ProbeError::Netns {
                        host: p.from.clone(),
                        source: NetnsError::Panicked {
                            netns: p.from.clone(),
                            message: "probe worker died".to_owned(),
                        },
                    })
                })
            })
            .collect()
    }

    /// Stops and joins all servers, reporting a panicked one.
    pub fn stop(mut self) -> Result<(), ProbeError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ProbeError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = None;
        for s in self.servers.drain(..) {
            if s.thread.join().is_err() {
                first.get_or_insert(ProbeError::ServerPanicked {
                    host: s.host,
                    protocol: s.protocol,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "probe server failed");
        }
    }
}

enum ClientError {
    Io(io::Error),
    Probe(ProbeError),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {timeout:?}")
}

/// Outcome of an IO error that says something about reachability, or `None`.
fn blocked_detail(e: &io::Error, timeout: Duration) -> Option<String> {
    use io::ErrorKind as K;
    match e.kind() {
        K::TimedOut | K::WouldBlock => Some(timed_out(timeout)),
        K::ConnectionRefused => Some("refused".to_owned()),
        K::HostUnreachable | K::NetworkUnreachable => Some(format!("unreachable: {e}")),
        _ if e.raw_os_error() == Some(nix::libc::EPERM) => {
            Some("blocked locally (EPERM from netfilter)".to_owned())
        }
        _ => None,
    }
}

fn tcp_client(target: SocketAddr, timeout: Duration) -> Result<(bool, String), ClientError> {
    match TcpStream::connect_timeout(&target, timeout) {
        Ok(_) => Ok((true, "connected".to_owned())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Ok((false, "refused (TCP RST)".to_owned()))
        }
        Err(e) => match blocked_detail(&e, timeout) {
            Some(d) => Ok((false, d)),
            None => Err(e.into()),
        },
    }
}

fn udp_client(target: SocketAddr, timeout: Duration) -> Result<(bool, String), ClientError> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(target)?;
    let token = format!("netpol-probe-{:08x}", next_nonce());
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok((false, timed_out(timeout)));
        }
        if let Err(e) = socket.send(token.as_bytes()) {
            return match blocked_detail(&e, timeout) {
                Some(d) => Ok((false, d)),
                None => Err(e.into()),
            };
        }
        let wait = RESEND.min(deadline - now).max(Duration::from_millis(1));
        socket.set_read_timeout(Some(wait))?;
        match socket.recv(&mut buf) {
            Ok(len) if &buf[..len] == token.as_bytes() => {
                return Ok((true, "echo received".to_owned()));
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Ok((false, "refused (ICMP port unreachable)".to_owned()));
            }
            Err(e) => {
                return match blocked_detail(&e, timeout) {
                    Some(d) => Ok((false, d)),
                    None => Err(e.into()),
                };
            }
        }
    }
}

fn sctp_client(
    host: &str,
    target: SocketAddr,
    timeout: Duration,
) -> Result<(bool, String), ClientError> {
    let raw_err = |op| {
        let host = host.to_owned();
        move |source| ClientError::Probe(ProbeError::RawSocket { host, op, source })
    };
    let tick = Duration::from_millis(20);
    let fd = raw_sctp_socket(host, target.ip(), tick).map_err(ClientError::Probe)?;
    let tag = next_nonce();
    let src_port = 32_768 + (tag % 28_000) as u16;
    let init = sctp::init(src_port, target.port(), tag);
    let dest = sockaddr(target.ip());
    let deadline = Instant::now() + timeout;
    let mut next_send = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok((false, timed_out(timeout)));
        }
        if now >= next_send {
            match sendto(fd.as_raw_fd(), &init, &dest, MsgFlags::empty()) {
                Ok(_) => {}
                Err(nix::Error::EPERM) => {
                    return Ok((false, "blocked locally (EPERM from netfilter)".to_owned()));
                }
                Err(e @ (nix::Error::ENETUNREACH | nix::Error::EHOSTUNREACH)) => {
                    return Ok((false, format!("unreachable: {e}")));
                }
                Err(e) => return Err(raw_err("sendto")(e)),
            }
            next_send = now + RESEND;
        }
        match recv_sctp(&fd, &mut buf).map_err(raw_err("recvfrom"))? {
            Some((from, pkt))
                if from == target.ip()
                    && pkt.chunk_type == sctp::CHUNK_INIT_ACK
                    && pkt.verification_tag == tag
                    && pkt.src_port == target.port()
                    && pkt.dst_port == src_port =>
            {
                return Ok((true, "INIT ACK received".to_owned()));
            }
            _ => {}
        }
    }
}
