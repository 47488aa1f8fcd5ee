//! Where the agent's cluster state comes from: one trait for every source.
//!
//! A [`StateSource`] produces [`Scan`]s: batches of state-index events plus the
//! diagnostics and problems found while reading them, and whether the objects form a
//! complete view. The agent consumes them in one place (`Reconciler::handle_scan`), so
//! the manifest directory and the Kubernetes API feed the state index the same way.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::manifests::{self, ManifestDir, Scan, WatchOptions};
use crate::metrics::Metrics;
use crate::state::{Object, PodKey};
use crate::trust::NetnsTrust;

/// Fetches one Pod (and its Namespace) straight from the source, for a CNI `ADD` that
/// arrives before the source's stream shows the Pod.
pub trait PodLookup: Send + Sync {
    /// The Pod and its Namespace as state objects (what exists of them), or why not.
    fn lookup(&self, pod: PodKey) -> BoxFuture<'static, Result<Vec<Object>, String>>;
}

/// A producer of [`Scan`]s, started on the current tokio runtime.
pub trait StateSource: Send {
    /// Starts producing scans; the first one is a complete view (or says it is not).
    /// Production stops when the receiver is dropped.
    fn start(self: Box<Self>) -> mpsc::Receiver<Scan>;

    /// [`StateSource::start`], for sources that keep metrics of their own in the agent's
    /// `metrics` (the Kubernetes source's `netpol_watch_*`). The agent starts sources this
    /// way; by default the metrics are not used.
    fn start_with_metrics(self: Box<Self>, metrics: Arc<Metrics>) -> mpsc::Receiver<Scan> {
        let _ = metrics;
        self.start()
    }

    /// A short description for logs (`manifests /etc/netpol`, `kubernetes`).
    fn describe(&self) -> String;

    /// How far this source's Pod annotations are trusted to name a netns
    /// ([`crate::trust`]). By default not at all: whoever writes a Pod writes them.
    fn netns_trust(&self) -> NetnsTrust {
        NetnsTrust::NoAnnotation
    }

    /// A way to fetch single Pods ahead of the stream (`None`: the stream is all there
    /// is, as for a manifest directory).
    fn lookup(&self) -> Option<Arc<dyn PodLookup>> {
        None
    }
}

/// The manifest directory, watched for changes (debounced, with periodic rescans).
#[derive(Debug)]
pub struct ManifestSource {
    dir: ManifestDir,
    options: WatchOptions,
}

impl ManifestSource {
    /// Watches `dir` with `options`.
    pub fn new(dir: ManifestDir, options: WatchOptions) -> Self {
        Self { dir, options }
    }
}

impl StateSource for ManifestSource {
    fn start(self: Box<Self>) -> mpsc::Receiver<Scan> {
        manifests::watch(self.dir, self.options)
    }

    fn describe(&self) -> String {
        format!("manifests {}", self.dir.root().display())
    }

    /// The operator writes the directory: plain netns names are trusted.
    fn netns_trust(&self) -> NetnsTrust {
        NetnsTrust::PlainNames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_source_first_scan_is_a_complete_view() {
        let dir = std::env::temp_dir().join(format!("netpol-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pod.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\n",
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let source: Box<dyn StateSource> = Box::new(ManifestSource::new(
            ManifestDir::new(&dir, None),
            WatchOptions::default(),
        ));
        assert!(source.describe().starts_with("manifests "));
        let scan = rt.block_on(async {
            let mut rx = source.start();
            rx.recv().await
        });
        std::fs::remove_dir_all(&dir).unwrap();
        let scan = scan.expect("a first scan");
        assert!(scan.complete);
        assert!(!scan.events.is_empty());
    }
}
