//! Rate limiting of drop events: one summary per key and window, bounded memory.
//!
//! The first event of a key opens a window of [`AggregatorConfig::window`]; every event
//! of that key until the window ends only adds to its count. [`Aggregator::flush`]
//! returns the summaries of the windows that have ended, so each key yields at most one
//! summary per window however fast packets are dropped. At most
//! [`AggregatorConfig::max_keys`] windows are open (or ended but not yet flushed) at once;
//! events of new keys beyond that are not kept, only counted as `suppressed`.
//!
//! Pure: no clock, no threads. The caller passes `now` (an [`Instant`]) to every call,
//! so tests drive it with a fake clock.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::{DropEvent, L4Proto, LogPrefix};

/// Window length and memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregatorConfig {
    /// Length of a window.
    pub window: Duration,
    /// Most keys held at once (open windows plus ended, unflushed ones).
    pub max_keys: usize,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(1),
            max_keys: 4096,
        }
    }
}

/// What makes two drops "the same": Pod and direction (from the prefix), addresses,
/// protocol and destination port. The source port is not part of it: a client retrying
/// from new ephemeral ports is one flow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DropKey {
    /// Pod and direction that dropped.
    pub pod: LogPrefix,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Protocol.
    pub protocol: L4Proto,
    /// Destination port, for TCP, UDP and SCTP.
    pub dst_port: Option<u16>,
    /// Where it was dropped: the same flow dropped by a Pod's own table and by the
    /// node table (after DNAT) are two reports.
    pub netns: String,
}

impl DropKey {
    /// The key of an event.
    pub fn of(ev: &DropEvent) -> Self {
        Self {
            pod: ev.prefix.clone(),
            src_ip: ev.src_ip,
            dst_ip: ev.dst_ip,
            protocol: ev.protocol,
            dst_port: ev.dst_port,
            netns: ev.netns.clone(),
        }
    }
}

/// All drops of one key in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSummary {
    /// The key.
    pub key: DropKey,
    /// Namespace the first event was read in.
    pub netns: String,
    /// Number of dropped packets.
    pub count: u64,
    /// Source port of the last event.
    pub src_port: Option<u16>,
    /// Timestamp of the first event.
    pub first_ts: SystemTime,
    /// Timestamp of the last event.
    pub last_ts: SystemTime,
    /// The window length.
    pub window: Duration,
}

/// Result of [`Aggregator::flush`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Summaries of ended windows, sorted by key.
    pub summaries: Vec<DropSummary>,
    /// Events not kept since the previous flush because `max_keys` keys were held.
    pub suppressed: u64,
}

#[derive(Debug)]
struct Open {
    summary: DropSummary,
    ends: Instant,
}

/// Counts drop events per [`DropKey`] and window.
#[derive(Debug)]
pub struct Aggregator {
    config: AggregatorConfig,
    open: BTreeMap<DropKey, Open>,
    ended: Vec<DropSummary>,
    suppressed: u64,
}

impl Aggregator {
    /// An empty aggregator. A zero window is treated as 1 ns, zero `max_keys` as 1.
    pub fn new(mut config: AggregatorConfig) -> Self {
        config.window = config.window.max(Duration::from_nanos(1));
        config.max_keys = config.max_keys.max(1);
        Self {
            config,
            open: BTreeMap::new(),
            ended: Vec::new(),
            suppressed: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> AggregatorConfig {
        self.config
    }

    /// Number of keys held (open plus ended, unflushed windows).
    pub fn len(&self) -> usize {
        self.open.len() + self.ended.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts one event seen at `now`.
    pub fn record(&mut self, ev: &DropEvent, now: Instant) {
        let key = DropKey::of(ev);
        if let Some(open) = self.open.get_mut(&key) {
            if now < open.ends {
                let s = &mut open.summary;
                s.count = s.count.saturating_add(1);
                s.src_port = ev.src_port;
                s.first_ts = s.first_ts.min(ev.ts);
                s.last_ts = s.last_ts.max(ev.ts);
                return;
            }
            // The window ended before this event (no flush in time): keep its summary
            // for the next flush and open a new one, if the bound allows another.
            if self.len() >= self.config.max_keys {
                self.suppressed = self.suppressed.saturating_add(1);
                return;
            }
            if let Some(old) = self.open.remove(&key) {
                self.ended.push(old.summary);
            }
        } else if self.len() >= self.config.max_keys {
            self.suppressed = self.suppressed.saturating_add(1);
            return;
        }
        let summary = DropSummary {
            key: key.clone(),
            netns: ev.netns.clone(),
            count: 1,
            src_port: ev.src_port,
            first_ts: ev.ts,
            last_ts: ev.ts,
            window: self.config.window,
        };
        let ends = now + self.config.window;
        self.open.insert(key, Open { summary, ends });
    }

    /// Returns the summaries of every window that ended at or before `now`, and the
    /// suppressed count since the previous flush.
    pub fn flush(&mut self, now: Instant) -> Flushed {
        let done: Vec<DropKey> = self
            .open
            .iter()
            .filter(|(_, o)| o.ends <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut summaries = std::mem::take(&mut self.ended);
        summaries.extend(
            done.iter()
                .filter_map(|k| self.open.remove(k))
                .map(|o| o.summary),
        );
        summaries.sort_by(|a, b| a.key.cmp(&b.key).then(a.first_ts.cmp(&b.first_ts)));
        Flushed {
            summaries,
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// Ends every window now (at shutdown) and returns everything.
    pub fn drain(&mut self) -> Flushed {
        let mut summaries = std::mem::take(&mut self.ended);
        summaries.extend(
            std::mem::take(&mut self.open)
                .into_values()
                .map(|o| o.summary),
        );
        summaries.sort_by(|a, b| a.key.cmp(&b.key).then(a.first_ts.cmp(&b.first_ts)));
        Flushed {
            summaries,
            suppressed: std::mem::take(&mut self.suppressed),
        }
    }

    /// When the next window ends (the time to call [`Aggregator::flush`] next); `now`
    /// if ended windows wait; `None` if nothing is held.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if !self.ended.is_empty() || self.suppressed > 0 {
            return Some(now);
        }
        self.open.values().map(|o| o.ends).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::Direction;

    fn ev(src: &str, dst_port: u16, src_port: u16) -> DropEvent {
        DropEvent {
            netns: "ns-b".to_owned(),
            prefix: LogPrefix {
                namespace: "x".to_owned(),
                pod: "b".to_owned(),
                direction: Direction::Ingress,
                cluster: None,
                audit: false,
            },
            src_ip: src.parse().unwrap(),
            dst_ip: "10.0.0.12".parse().unwrap(),
            protocol: L4Proto::Tcp,
            src_port: Some(src_port),
            dst_port: Some(dst_port),
            ts: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(src_port)),
        }
    }

    fn agg(window_ms: u64, max_keys: usize) -> Aggregator {
        Aggregator::new(AggregatorConfig {
            window: Duration::from_millis(window_ms),
            max_keys,
        })
    }

    #[test]
    fn repeated_drops_collapse_into_one_summary_per_window() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = agg(1000, 16);
        for i in 0..50u16 {
            a.record(&ev("10.0.0.11", 81, 40000 + i), ms(u64::from(i) * 10));
        }
        assert_eq!(a.next_deadline(ms(0)), Some(ms(1000)));
        assert!(a.flush(ms(999)).summaries.is_empty(), "window still open");
        let f = a.flush(ms(1000));
        assert_eq!(f.summaries.len(), 1);
        let s = &f.summaries[0];
        assert_eq!(s.count, 50);
        assert_eq!(s.src_port, Some(40049));
        assert_eq!(
            s.first_ts,
            SystemTime::UNIX_EPOCH + Duration::from_secs(40000)
        );
        assert_eq!(
            s.last_ts,
            SystemTime::UNIX_EPOCH + Duration::from_secs(40049)
        );
        assert_eq!(f.suppressed, 0);
        assert!(a.is_empty());
        assert_eq!(a.next_deadline(ms(1000)), None);
    }

    #[test]
    fn keys_are_separate_and_output_is_sorted() {
        let t0 = Instant::now();
        let mut a = agg(100, 16);
        a.record(&ev("10.0.0.13", 81, 1), t0);
        a.record(&ev("10.0.0.11", 82, 2), t0);
        a.record(&ev("10.0.0.11", 81, 3), t0);
        a.record(&ev("10.0.0.11", 81, 4), t0); // same key, other source port
        let f = a.flush(t0 + Duration::from_millis(100));
        let got: Vec<(String, Option<u16>, u64)> = f
            .summaries
            .iter()
            .map(|s| (s.key.src_ip.to_string(), s.key.dst_port, s.count))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.11".to_owned(), Some(81), 2),
                ("10.0.0.11".to_owned(), Some(82), 1),
                ("10.0.0.13".to_owned(), Some(81), 1),
            ]
        );
    }

    #[test]
    fn an_event_after_the_window_opens_a_new_one() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = agg(100, 16);
        a.record(&ev("10.0.0.11", 81, 1), ms(0));
        a.record(&ev("10.0.0.11", 81, 2), ms(50));
        // Not flushed in time: the old window is kept, a new one starts.
        a.record(&ev("10.0.0.11", 81, 3), ms(150));
        assert_eq!(a.len(), 2);
        assert_eq!(a.next_deadline(ms(150)), Some(ms(150)));
        let f = a.flush(ms(160));
        assert_eq!(f.summaries.len(), 1);
        assert_eq!(f.summaries[0].count, 2);
        let f = a.flush(ms(250));
        assert_eq!(f.summaries.len(), 1);
        assert_eq!(f.summaries[0].count, 1);
        assert_eq!(f.summaries[0].src_port, Some(3));
    }

    #[test]
    fn memory_is_bounded_and_overflow_is_counted() {
        let t0 = Instant::now();
        let mut a = agg(1000, 3);
        for i in 0..10u8 {
            a.record(&ev(&format!("10.0.1.{i}"), 81, 1), t0);
        }
        // Known keys still count while full.
        a.record(&ev("10.0.1.0", 81, 2), t0);
        assert_eq!(a.len(), 3);
        let f = a.flush(t0 + Duration::from_secs(1));
        assert_eq!(f.summaries.len(), 3);
        assert_eq!(f.summaries[0].count, 2);
        assert_eq!(f.suppressed, 7);
        // The suppressed count is reported once.
        assert_eq!(a.flush(t0 + Duration::from_secs(2)).suppressed, 0);
        // Ended-but-unflushed windows count toward the bound.
        let mut a = agg(10, 2);
        let ms = |n| t0 + Duration::from_millis(n);
        a.record(&ev("10.0.2.1", 81, 1), ms(0));
        a.record(&ev("10.0.2.1", 81, 1), ms(20));
        a.record(&ev("10.0.2.2", 81, 1), ms(20));
        a.record(&ev("10.0.2.1", 81, 1), ms(40));
        a.record(&ev("10.0.2.1", 81, 1), ms(60));
        assert_eq!(a.len(), 2);
        let f = a.drain();
        assert_eq!(f.suppressed, 3);
        assert_eq!(f.summaries.len(), 2);
    }

    #[test]
    fn drain_returns_open_windows() {
        let t0 = Instant::now();
        let mut a = agg(1000, 4);
        a.record(&ev("10.0.0.11", 81, 1), t0);
        let f = a.drain();
        assert_eq!(f.summaries.len(), 1);
        assert!(a.is_empty());
        // Degenerate configuration is clamped, not a panic or a division by zero.
        let mut z = agg(0, 0);
        z.record(&ev("10.0.0.11", 81, 1), t0);
        assert_eq!(z.flush(t0 + Duration::from_nanos(1)).summaries.len(), 1);
    }
}
