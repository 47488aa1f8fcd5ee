//! Drop reports: which Pod's policy dropped what, read from NFLOG.
//!
//! Each compiled per-Pod ruleset ends an isolated direction with
//! `counter log group 100 prefix "netpol:<ns>/<name>:<dir> " drop`. This module turns
//! those log messages into reports:
//!
//! ```text
//!  kernel: log group N ──NETLINK_NETFILTER──▶ NflogSocket (one per Pod netns)
//!        ──LogRecord──▶ DropEvent::from_record (prefix + IP/TCP/UDP/SCTP header)
//!        ──DropEvent──▶ Aggregator (per key and window: one report with a count)
//!        ──DropSummary──▶ describe(model, graph) ──DropReport──▶ one JSON line
//! ```
//!
//! - [`nflog`]: the socket, opened inside the Pod's namespace on a dedicated thread,
//!   bound to the group in packet-copy mode; decoding of nfnetlink_log messages.
//! - [`packet`]: bounds-checked parsing of the copied IPv4/IPv6 header and ports.
//! - [`DropListener`]: a socket plus a reader thread, delivering [`DropEvent`]s.
//! - [`aggregate::Aggregator`]: pure rate limiting with bounded memory, driven by the
//!   caller's clock.
//! - [`report::describe`]: names the Pods, the isolating policies and explain's nearest
//!   miss; [`report::DropReport::to_json_line`].
//!
//! See `docs/drops.md` for the JSON format.
//!
//! # Example
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use enforcer::drops::{DropListener, aggregate::{Aggregator, AggregatorConfig}, nflog::NflogConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = DropListener::start("pod-netns", &NflogConfig::default())?;
//! let mut agg = Aggregator::new(AggregatorConfig::default());
//! loop {
//!     if let Some(ev) = listener.recv_timeout(Duration::from_millis(200)) {
//!         agg.record(&ev, Instant::now());
//!     }
//!     let flushed = agg.flush(Instant::now());
//!     for s in &flushed.summaries {
//!         println!("{} {} -> {} x{}", s.key.pod, s.key.src_ip, s.key.dst_ip, s.count);
//!     }
//! #   break;
//! }
//! # Ok(())
//! # }
//! ```

pub mod aggregate;
pub mod nflog;
pub mod packet;
pub mod report;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use policy_compiler::Direction;
use serde::Serialize;

use crate::netns::NetnsError;
pub use nflog::{LogRecord, NflogConfig, NflogSocket};
pub use packet::{L4Proto, PacketInfo};

/// Errors of the drop listener; each names the namespace.
#[derive(Debug, thiserror::Error)]
pub enum DropsError {
    /// Entering the namespace to create the socket failed.
    #[error("netns {netns}: cannot open the nflog socket there")]
    Netns {
        /// Namespace name.
        netns: String,
        /// The namespace error.
        #[source]
        source: Box<NetnsError>,
    },
    /// A socket call failed.
    #[error("netns {netns}: nflog socket: {op} failed")]
    Socket {
        /// Namespace name.
        netns: String,
        /// `socket`, `bind`, `send config`, `recv`, …
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The kernel refused to bind the group (or never acknowledged it).
    #[error(
        "netns {netns}: cannot bind nflog group {group} (EPERM: another socket in this netns \
         has it; ENOENT/EOPNOTSUPP: no nfnetlink_log, see /proc/net/netfilter/nfnetlink_log)"
    )]
    Bind {
        /// Namespace name.
        netns: String,
        /// The group.
        group: u16,
        /// The kernel's errno.
        #[source]
        source: io::Error,
    },
    /// The reader thread could not be started or panicked.
    #[error("netns {netns}: drop reader thread: {message}")]
    Thread {
        /// Namespace name.
        netns: String,
        /// What happened.
        message: String,
    },
}

/// The ClusterNetworkPolicy rule a log prefix names: `:a<policy>.<rule>` (Admin) or
/// `:b<policy>.<rule>` (Baseline), indexes into the compiled model
/// ([`policy_compiler::ruleset::cluster_log_prefix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterRuleRef {
    /// Admin or Baseline.
    pub tier: policy_compiler::model::Tier,
    /// Index in `Model::cluster_policies`.
    pub policy: u32,
    /// Index of the rule in the direction's rules.
    pub rule: u32,
}

impl ClusterRuleRef {
    fn parse(s: &str) -> Option<Self> {
        let tier = match s.as_bytes().first()? {
            b'a' => policy_compiler::model::Tier::Admin,
            b'b' => policy_compiler::model::Tier::Baseline,
            _ => return None,
        };
        let (p, r) = s.get(1..)?.split_once('.')?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(p) || !digits(r) {
            return None;
        }
        Some(Self {
            tier,
            policy: p.parse().ok()?,
            rule: r.parse().ok()?,
        })
    }
}

impl fmt::Display for ClusterRuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.tier {
            policy_compiler::model::Tier::Admin => 'a',
            policy_compiler::model::Tier::Baseline => 'b',
        };
        write!(f, "{t}{}.{}", self.policy, self.rule)
    }
}

/// The Pod and direction a log prefix names: `netpol:<namespace>/<pod>:<direction> `,
/// and for a ClusterNetworkPolicy Deny rule `netpol:<namespace>/<pod>:<direction>:<rule> `
/// ([`ClusterRuleRef`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPrefix {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Which chain dropped: `ingress` (hook input) or `egress` (hook output).
    pub direction: Direction,
    /// The ClusterNetworkPolicy Deny rule that dropped (`None`: the NetworkPolicy stage).
    pub cluster: Option<ClusterRuleRef>,
    /// Logged by an audit chain (`netpol-audit:`): accepted, would be dropped by audit
    /// policies (#12, docs/audit.md); rule references index the audited model.
    pub audit: bool,
}

impl LogPrefix {
    /// The prefix's fixed start.
    pub const TAG: &'static str = "netpol:";

    /// The fixed start of an audit chain's prefix (a would-be drop, accepted).
    pub const AUDIT_TAG: &'static str = policy_compiler::ruleset::AUDIT_LOG_TAG;

    /// Parses `netpol:<ns>/<name>:<ingress|egress>[:<a|b><policy>.<rule>]` (trailing
    /// spaces ignored). `None` for anything else, e.g. another tool's prefix or one the
    /// kernel cut at 127 bytes.
    pub fn parse(prefix: &str) -> Option<Self> {
        let trimmed = prefix.trim_end();
        let (rest, audit) = match trimmed.strip_prefix(Self::AUDIT_TAG) {
            Some(rest) => (rest, true),
            None => (trimmed.strip_prefix(Self::TAG)?, false),
        };
        let (mut pod, mut dir) = rest.rsplit_once(':')?;
        let mut cluster = None;
        if dir != "ingress" && dir != "egress" {
            cluster = Some(ClusterRuleRef::parse(dir)?);
            (pod, dir) = pod.rsplit_once(':')?;
        }
        let direction = match dir {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        let (namespace, pod) = pod.split_once('/')?;
        if namespace.is_empty() || pod.is_empty() || pod.contains('/') {
            return None;
        }
        Some(Self {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            direction,
            cluster,
            audit,
        })
    }

    /// The stage that dropped: `networkpolicy`, `admin` or `baseline` (a metrics label).
    pub fn tier(&self) -> &'static str {
        match self.cluster.map(|c| c.tier) {
            None => "networkpolicy",
            Some(policy_compiler::model::Tier::Admin) => "admin",
            Some(policy_compiler::model::Tier::Baseline) => "baseline",
        }
    }

    /// `ns/name`.
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }
}

impl fmt::Display for LogPrefix {
    /// The prefix as a ruleset writes it, trailing space included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}/{}:{}",
            if self.audit {
                Self::AUDIT_TAG
            } else {
                Self::TAG
            },
            self.namespace,
            self.pod,
            self.direction
        )?;
        match self.cluster {
            Some(c) => write!(f, ":{c} "),
            None => f.write_str(" "),
        }
    }
}

/// One dropped packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// Network namespace whose ruleset dropped it.
    pub netns: String,
    /// Pod and direction from the log prefix.
    pub prefix: LogPrefix,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Transport protocol.
    pub protocol: L4Proto,
    /// Source port (TCP, UDP, SCTP).
    pub src_port: Option<u16>,
    /// Destination port (TCP, UDP, SCTP).
    pub dst_port: Option<u16>,
    /// Kernel timestamp if sent (input hook), else the time it was read.
    pub ts: SystemTime,
}

/// Why a log record did not become a [`DropEvent`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No prefix, or not a netpol prefix.
    #[error("prefix {0:?} is not netpol:<ns>/<pod>:<direction>")]
    Prefix(Option<String>),
    /// The payload is not a readable IP packet.
    #[error("payload: {0}")]
    Packet(#[from] packet::PacketError),
}

impl DropEvent {
    /// Builds the event of one log record read in `netns` at `received`.
    pub fn from_record(
        netns: &str,
        record: &LogRecord,
        received: SystemTime,
    ) -> Result<Self, EventError> {
        let prefix = record
            .prefix
            .as_deref()
            .and_then(LogPrefix::parse)
            .ok_or_else(|| EventError::Prefix(record.prefix.clone()))?;
        let p = packet::parse(&record.payload)?;
        Ok(Self {
            netns: netns.to_owned(),
            prefix,
            src_ip: p.src_ip,
            dst_ip: p.dst_ip,
            protocol: p.protocol,
            src_port: p.src_port,
            dst_port: p.dst_port,
            ts: record.timestamp.unwrap_or(received),
        })
    }
}

/// Counters of a [`DropListener`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ListenerStats {
    /// Events delivered.
    pub events: u64,
    /// Log records with another prefix (another tool sharing the group).
    pub foreign: u64,
    /// Messages or payloads that did not parse.
    pub malformed: u64,
    /// Receive-buffer overruns reported by the kernel (each loses one or more messages).
    pub lost: u64,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    foreign: AtomicU64,
    malformed: AtomicU64,
    lost: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ListenerStats {
        ListenerStats {
            events: self.events.load(Ordering::Relaxed),
            foreign: self.foreign.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

/// An [`NflogSocket`] read by its own thread, delivering [`DropEvent`]s on a channel.
///
/// The socket is created inside the namespace; the reader is an ordinary thread (the
/// socket stays in its namespace). [`DropListener::stop`] or dropping ends the thread
/// within one poll interval and closes the socket, releasing the group.
#[derive(Debug)]
pub struct DropListener {
    netns: String,
    events: mpsc::Receiver<DropEvent>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Result<(), DropsError>>>,
}

impl DropListener {
    /// Binds `config.group` in `netns` and starts reading. Returns once the kernel has
    /// acknowledged the bind, so packets dropped after this call are reported.
    pub fn start(netns: &str, config: &NflogConfig) -> Result<Self, DropsError> {
        let mut socket = NflogSocket::open(netns, config)?;
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (stop2, counters2, ns) = (Arc::clone(&stop), Arc::clone(&counters), netns.to_owned());
        let thread = thread::Builder::new()
            .name(format!("drops-{netns}"))
            .spawn(move || read_loop(&ns, &mut socket, &tx, &stop2, &counters2))
            .map_err(|e| DropsError::Thread {
                netns: netns.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            netns: netns.to_owned(),
            events,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    /// Namespace the listener reads.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<DropEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Events already received, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = DropEvent> + '_ {
        self.events.try_iter()
    }

    /// Counters so far.
    pub fn stats(&self) -> ListenerStats {
        self.counters.snapshot()
    }

    /// Stops the reader, closes the socket and returns the final counters, or the error
    /// that ended the reader early.
    pub fn stop(mut self) -> Result<ListenerStats, DropsError> {
        self.shutdown()?;
        Ok(self.counters.snapshot())
    }

    fn shutdown(&mut self) -> Result<(), DropsError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(DropsError::Thread {
                netns: self.netns.clone(),
                message: "panicked".to_owned(),
            }),
        }
    }
}

impl Drop for DropListener {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(netns = %self.netns, error = %e, "drop listener failed");
        }
    }
}

fn read_loop(
    netns: &str,
    socket: &mut NflogSocket,
    tx: &mpsc::Sender<DropEvent>,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<(), DropsError> {
    while !stop.load(Ordering::Relaxed) {
        let messages = match socket.recv() {
            Ok(m) => m,
            Err(nflog::RecvError::Overrun) => {
                counters.lost.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(netns, "nflog receive buffer overrun: drop reports lost");
                continue;
            }
            Err(nflog::RecvError::Io(source)) => {
                return Err(DropsError::Socket {
                    netns: netns.to_owned(),
                    op: "recv",
                    source,
                });
            }
        };
        let now = SystemTime::now();
        for m in messages {
            match m {
                nflog::Message::Packet(rec) => match DropEvent::from_record(netns, &rec, now) {
                    Ok(ev) => {
                        counters.events.fetch_add(1, Ordering::Relaxed);
                        if tx.send(ev).is_err() {
                            // The listener is gone: nobody wants more events.
                            return Ok(());
                        }
                    }
                    Err(EventError::Prefix(p)) => {
                        counters.foreign.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(netns, prefix = ?p, "nflog record of another prefix");
                    }
                    Err(e @ EventError::Packet(_)) => {
                        counters.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(netns, error = %e, "unreadable logged packet");
                    }
                },
                nflog::Message::Malformed(why) => {
                    counters.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(netns, why, "malformed nflog message");
                }
                nflog::Message::Ack | nflog::Message::Error(_) | nflog::Message::Other => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drops::nflog::tests::packet_message;
    use crate::drops::packet::tests::{tcp, v4};

    #[test]
    fn prefixes_round_trip_and_reject_others() {
        let p = LogPrefix::parse("netpol:x/b:ingress ").unwrap();
        assert_eq!(p.pod_key(), "x/b");
        assert_eq!(p.direction, Direction::Ingress);
        assert_eq!(p.to_string(), "netpol:x/b:ingress ");
        let e = LogPrefix::parse("netpol:kube-system/coredns-5d78c9869d-abcde:egress").unwrap();
        assert_eq!(e.namespace, "kube-system");
        assert_eq!(e.direction, Direction::Egress);
        assert_eq!(e.cluster, None);
        // See: #13 — a ClusterNetworkPolicy Deny names its rule.
        let c = LogPrefix::parse("netpol:x/b:egress:b12.3 ").unwrap();
        assert_eq!(c.pod_key(), "x/b");
        assert_eq!(c.direction, Direction::Egress);
        assert_eq!(
            c.cluster,
            Some(ClusterRuleRef {
                tier: policy_compiler::model::Tier::Baseline,
                policy: 12,
                rule: 3
            })
        );
        assert_eq!(c.to_string(), "netpol:x/b:egress:b12.3 ");
        let text = policy_compiler::ruleset::cluster_log_prefix(
            "x",
            "b",
            Direction::Ingress,
            policy_compiler::model::Tier::Admin,
            0,
            7,
        );
        assert_eq!(LogPrefix::parse(&text).unwrap().to_string(), text);
        // See: #12 — an audit chain's prefix: a would-be drop.
        let a = LogPrefix::parse("netpol-audit:x/b:egress:a0.1 ").unwrap();
        assert!(a.audit && !c.audit);
        assert_eq!(a.pod_key(), "x/b");
        assert_eq!(a.tier(), "admin");
        assert_eq!(a.to_string(), "netpol-audit:x/b:egress:a0.1 ");
        assert!(LogPrefix::parse("netpol-audit:x/b:ingress ").unwrap().audit);
        assert!(LogPrefix::parse("netpol-audit:x/b").is_none());
        assert!(LogPrefix::parse("netpol-auditx/b:ingress ").is_none());
        for bad in [
            "netpol:x/b:egress:c1.2 ",
            "netpol:x/b:egress:a1 ",
            "netpol:x/b:egress:a.2 ",
            "netpol:x/b:egress:a1.2x ",
            "netpol:x/b:a1.2 ",
            "netpol:x/b:egress:a99999999999.1 ",
            "",
            "netpol:",
            "netpol:x/b",
            "netpol:x/b:sideways ",
            "netpol:/b:ingress ",
            "netpol:x/:ingress ",
            "netpol:x:ingress ",
            "netpol:x/b/c:ingress ",
            "other:x/b:ingress ",
            "netpol:x/b-cut-by-the-kern",
        ] {
            assert_eq!(LogPrefix::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn record_becomes_event() {
        let payload = v4(6, [10, 0, 0, 11], [10, 0, 0, 12], &tcp(40000, 81));
        let msg = packet_message(2, "netpol:x/b:ingress ", &payload, None);
        let got = nflog::decode_datagram(&msg);
        let [nflog::Message::Packet(rec)] = got.as_slice() else {
            panic!("{got:?}")
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        let ev = DropEvent::from_record("ns1", rec, now).unwrap();
        assert_eq!(ev.netns, "ns1");
        assert_eq!(ev.prefix.pod_key(), "x/b");
        assert_eq!(ev.src_ip.to_string(), "10.0.0.11");
        assert_eq!(ev.dst_ip.to_string(), "10.0.0.12");
        assert_eq!((ev.src_port, ev.dst_port), (Some(40000), Some(81)));
        assert_eq!(ev.protocol, L4Proto::Tcp);
        assert_eq!(ev.ts, now);

        let foreign = LogRecord {
            prefix: Some("iptables: ".to_owned()),
            ..rec.clone()
        };
        assert!(matches!(
            DropEvent::from_record("ns1", &foreign, now),
            Err(EventError::Prefix(_))
        ));
        let junk = LogRecord {
            payload: vec![0x45, 0],
            ..rec.clone()
        };
        assert!(matches!(
            DropEvent::from_record("ns1", &junk, now),
            Err(EventError::Packet(_))
        ));
    }
}
