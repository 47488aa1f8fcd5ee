//! Event-driven drift detection: one thread holds an [`EventSocket`] (subscribed to
//! `NFNLGRP_NFTABLES`) per enforced network namespace and polls them all; a commit in
//! a namespace (the agent's own, or anyone's) sends its name to the agent loop, which
//! verifies only the tables there ([`Reconciler::verify_netns`]). The verify interval
//! stays as a slow safety net (a lost event, a namespace whose socket could not be made).
//!
//! [`Reconciler::verify_netns`]: super::Reconciler::verify_netns

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::nfnl::EventSocket;

/// How long one poll waits before the thread looks at its commands again.
const POLL: Duration = Duration::from_millis(250);

enum Cmd {
    Track(BTreeSet<String>),
    Stop,
}

/// The watcher thread.
pub(super) struct NftEvents {
    tx: mpsc::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl NftEvents {
    /// Starts the thread; namespaces with a commit are sent on `changed`.
    pub(super) fn start(
        changed: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("netpol-nft-events".into())
            .spawn(move || run(&rx, &changed))?;
        Ok(Self {
            tx,
            thread: Some(thread),
        })
    }

    /// Watches exactly `netns` from now on.
    pub(super) fn track(&self, netns: BTreeSet<String>) {
        let _ = self.tx.send(Cmd::Track(netns));
    }
}

impl Drop for NftEvents {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: &mpsc::Receiver<Cmd>, changed: &tokio::sync::mpsc::UnboundedSender<String>) {
    let mut sockets: BTreeMap<String, EventSocket> = BTreeMap::new();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    loop {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Track(netns)) => {
                    wanted = netns;
                    failed.retain(|n| wanted.contains(n));
                }
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        sockets.retain(|n, _| wanted.contains(n));
        for n in &wanted {
            if sockets.contains_key(n) || failed.contains(n) {
                continue;
            }
            match EventSocket::open(n) {
                Ok(s) => {
                    sockets.insert(n.clone(), s);
                }
                Err(e) => {
                    // Verified by the safety-net pass; retried when the set changes.
                    tracing::debug!(netns = n, error = %netpol_common::ErrorChain(&e), "no nftables events for this netns");
                    failed.insert(n.clone());
                }
            }
        }
        if sockets.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        let names: Vec<String> = sockets.keys().cloned().collect();
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = sockets
                .values()
                .map(|s| PollFd::new(s.fd(), PollFlags::POLLIN))
                .collect();
            let timeout = PollTimeout::try_from(POLL).unwrap_or(PollTimeout::NONE);
            if poll(&mut fds, timeout).is_err() {
                std::thread::sleep(POLL);
                continue;
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        for (name, ready) in names.into_iter().zip(ready) {
            if !ready {
                continue;
            }
            let Some(s) = sockets.get_mut(&name) else {
                continue;
            };
            let event = match s.drain() {
                Ok(any) => any,
                Err(e) => {
                    // Verify it now and leave it to the safety-net pass from then on.
                    tracing::debug!(netns = name, error = %netpol_common::ErrorChain(&e), "nftables events lost for this netns");
                    sockets.remove(&name);
                    failed.insert(name.clone());
                    true
                }
            };
            if event && changed.send(name).is_err() {
                return;
            }
        }
    }
}
