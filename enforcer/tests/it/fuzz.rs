//! Fuzzing the agent's inputs from outside: NFLOG datagrams from the kernel (decoder and
//! packet parser) and request bytes on the HTTP endpoint. Arbitrary input never panics,
//! the HTTP server never hangs on it and keeps answering; the stable corpora under
//! `testdata/fuzz/{nflog,http}/` are replayed. Case counts are bounded. See: #11

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use enforcer::drops::nflog::{Message, decode_datagram};
use enforcer::drops::packet;
use enforcer::http::{Health, serve};
use enforcer::metrics::Metrics;
use proptest::prelude::*;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/fuzz")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A `.hex` corpus file: `#` comment lines, then hex digits.
fn unhex(text: &str) -> Vec<u8> {
    let hex: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::chars)
        .filter(char::is_ascii_hexdigit)
        .collect();
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Decodes a datagram and parses every packet in it; returns how many packets decoded.
fn decode_all(buf: &[u8]) -> usize {
    let mut packets = 0;
    for m in decode_datagram(buf) {
        if let Message::Packet(r) = m {
            packets += 1;
            let _ = packet::parse(&r.payload);
        }
    }
    packets
}

#[test]
fn nflog_corpus_replays() {
    let files = corpus("nflog");
    assert!(files.len() >= 8, "corpus walk found {} files", files.len());
    let mut packets = 0;
    for f in &files {
        let bytes = unhex(&std::fs::read_to_string(f).unwrap());
        packets += decode_all(&bytes);
        // Every truncation and single-byte corruption of it.
        for end in 0..bytes.len() {
            decode_all(&bytes[..end]);
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xff;
            decode_all(&bad);
        }
    }
    assert!(
        packets >= 4,
        "the captured datagrams decode ({packets} packets)"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Arbitrary datagrams, and arbitrary bytes behind a valid netlink header.
    #[test]
    fn nflog_arbitrary_datagrams_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        decode_all(&bytes);
        let len = u32::try_from(16 + body.len()).unwrap();
        let mut framed = len.to_ne_bytes().to_vec();
        framed.extend_from_slice(&[0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        framed.extend_from_slice(&body);
        decode_all(&framed);
    }

    /// Arbitrary packets (IPv4 and IPv6 headers with random rest).
    #[test]
    fn packet_parse_never_panics(
        first in prop_oneof![Just(0x45u8), Just(0x4f), Just(0x60), any::<u8>()],
        rest in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut p = vec![first];
        p.extend(rest);
        let _ = packet::parse(&p);
    }
}

/// The agent's HTTP server on a loopback port, in its own runtime thread.
struct Server {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let health = Arc::new(Health::default());
                health.running.store(true, Ordering::SeqCst);
                serve(listener, Arc::new(Metrics::new()), health, rx).await;
            });
        });
        Server {
            addr: addr_rx.recv().unwrap(),
            stop: tx,
            thread: Some(thread),
        }
    }

    /// Sends `bytes`, closes the writing side and reads until the server closes: must end
    /// within 10 s.
    fn exchange(&self, bytes: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may close early on garbage: a failed write is an answer too.
        let _ = s.write_all(bytes);
        let _ = s.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        match s.read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("no end to the answer within 10 s: {e}"),
        }
        out
    }

    /// A well-formed request, the writing side left open (hyper drops a connection whose
    /// client half-closed before it answered): `Connection: close` ends the answer.
    fn get(&self, path: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    fn healthy(&self) -> bool {
        self.get("/healthz").starts_with(b"HTTP/1.1 200")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn http_corpus_replays() {
    let server = Server::start();
    assert!(server.healthy());
    let files = corpus("http");
    assert!(files.len() >= 8, "corpus walk found {} files", files.len());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let _ = server.exchange(&bytes);
        assert!(server.healthy(), "still answering after {}", f.display());
    }
    assert!(server.get("/metrics").starts_with(b"HTTP/1.1 200"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Arbitrary request bytes, raw or after a plausible request line: no panic, no hang,
    /// and the server keeps answering.
    #[test]
    fn http_arbitrary_requests_never_hang(
        raw in proptest::collection::vec(any::<u8>(), 0..400),
        path in "\\PC{0,40}",
        header in "[ -~]{0,60}",
    ) {
        let server = Server::start();
        let _ = server.exchange(&raw);
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n");
        let _ = server.exchange(req.as_bytes());
        prop_assert!(server.healthy());
    }
}
