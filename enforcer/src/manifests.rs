//! The manifest-directory source: Kubernetes objects from files, watched for changes.
//!
//! [`ManifestDir::scan`] reads the directory (recursively: `*.yaml`, `*.yml`, `*.json`)
//! and the optional netns mapping file, and returns the changes since the last scan as
//! state [`Event`]s. Files are compared by content hash, so an unchanged file is never
//! parsed again.
//!
//! **Fail closed.** A file that does not load, or whose objects the compiler rejects
//! (any error [`Diagnostic`]), keeps contributing the objects of its last good version
//! until it becomes valid again; the diagnostics are returned once per bad version. A file
//! that has never been valid contributes nothing and makes the scan incomplete
//! ([`Scan::complete`]): the agent does not compile an incomplete view, since a policy
//! missing from it could open a Pod. An unreadable directory or file keeps the last
//! known objects (source unreachable).
//!
//! [`watch`] runs scans on a tokio task: after filesystem notifications (inotify via
//! `notify`), debounced, and every `rescan` interval as a safety net.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use policy_compiler::{Diagnostic, Model, Severity, SourceText, load};
use tokio::sync::mpsc;

use crate::netns;
use crate::plan::Checksum;
use crate::state::{Event, Object, ObjectKey, PodKey};

/// Problems of the source other than invalid manifests (those are [`Diagnostic`]s).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The directory (or a subdirectory) could not be listed; nothing changes.
    #[error("cannot read directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A file could not be read; its last good objects stay.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A line of the netns mapping file is invalid; the last good mapping stays.
    #[error("{path}:{line}: {message}")]
    NetnsMap {
        /// The mapping file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Two files define the same object; the later file (in path order) wins.
    #[error("{key} is defined in {first} and {second}; using {second}")]
    Duplicate {
        /// The object.
        key: ObjectKey,
        /// The earlier file.
        first: String,
        /// The later file.
        second: String,
    },
}

#[derive(Debug)]
struct FileEntry {
    hash: Checksum,
    /// Shared with [`ManifestDir`]'s published view: a scan clones pointers, not the
    /// objects of every unchanged file. See: #12
    good: Option<Vec<Arc<Object>>>,
}

#[derive(Debug, Default)]
struct MapEntry {
    hash: Option<Checksum>,
    good: Option<BTreeMap<PodKey, String>>,
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Changes for the state index (the first scan is one `Reset` and one `NetnsMap`).
    pub events: Vec<Event>,
    /// Diagnostics of files that changed in this scan (errors and warnings).
    pub diagnostics: Vec<Diagnostic>,
    /// Files that changed into an invalid version (their last good objects stay).
    pub invalid_files: Vec<PathBuf>,
    /// IO, mapping and duplicate problems.
    pub problems: Vec<ManifestError>,
    /// Every present file (and the mapping file) has a valid version, current or last
    /// good: the objects are a complete view. Recomputed by every scan.
    pub complete: bool,
    /// `complete` differs from the previous scan's: the scan must reach the agent even
    /// without events (deleting the only never-valid file changes nothing else). See: #11
    pub complete_changed: bool,
    /// Files changed within the settle window (still being written): their last good
    /// objects stay and the caller should scan again after the window. See: #11
    pub unsettled: Vec<PathBuf>,
    /// Manifest files listed by the walk (each read at most once per scan).
    pub files_listed: usize,
}

impl Scan {
    /// Whether the scan carries anything for the agent.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.diagnostics.is_empty()
            && self.problems.is_empty()
            && !self.complete_changed
    }
}

/// A directory of manifests plus an optional netns mapping file, and what was last read.
#[derive(Debug)]
pub struct ManifestDir {
    root: PathBuf,
    netns_map: Option<PathBuf>,
    files: BTreeMap<PathBuf, FileEntry>,
    map: MapEntry,
    published: BTreeMap<ObjectKey, Arc<Object>>,
    started: bool,
    last_complete: Option<bool>,
    settle: Duration,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// A directory's identity: symlink loops (two links to `.`, a link to a parent) reach the
/// same (device, inode) again and are walked once. See: #11
type DirId = (u64, u64);

fn walk(
    dir: &Path,
    seen: &mut std::collections::BTreeSet<DirId>,
    out: &mut Vec<PathBuf>,
) -> Result<(), ManifestError> {
    use std::os::unix::fs::MetadataExt as _;
    let err = |source| ManifestError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let meta = std::fs::metadata(dir).map_err(err)?;
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        entries.push(entry.map_err(err)?.path());
    }
    entries.sort();
    for path in entries {
        // Follows symlinks. Hidden directories are skipped: in a ConfigMap volume the
        // files are symlinks into `..data`, which would otherwise be read twice.
        if path.is_dir() {
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                walk(&path, seen, out)?;
            }
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses a netns mapping file: lines `namespace/pod netns-name`, `#` comments.
pub fn parse_netns_map(path: &Path, text: &str) -> Result<BTreeMap<PodKey, String>, ManifestError> {
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| ManifestError::NetnsMap {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [pod, netns] = fields[..] else {
            return Err(bad(format!(
                "expected `namespace/pod netns-name`, got {line:?}"
            )));
        };
        let pod = PodKey::parse(pod).ok_or_else(|| bad(format!("invalid Pod {pod:?}")))?;
        netns::validate_name(netns).map_err(|e| bad(e.to_string()))?;
        if map.insert(pod.clone(), netns.to_owned()).is_some() {
            return Err(bad(format!("{pod} is mapped twice")));
        }
    }
    Ok(map)
}

impl ManifestDir {
    /// A source reading `root` and, if given, the netns mapping file.
    pub fn new(root: impl Into<PathBuf>, netns_map: Option<PathBuf>) -> Self {
        Self {
            root: root.into(),
            netns_map,
            files: BTreeMap::new(),
            map: MapEntry::default(),
            published: BTreeMap::new(),
            started: false,
            last_complete: None,
            settle: Duration::ZERO,
        }
    }

    /// Files modified less than `settle` ago are not read yet (a writer may still be
    /// writing them in place): their last good objects stay, and the scan lists them in
    /// [`Scan::unsettled`]. Zero (the default) reads every file at once.
    #[must_use]
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The netns mapping file.
    pub fn netns_map(&self) -> Option<&Path> {
        self.netns_map.as_deref()
    }

    /// Reads what changed since the last scan (file IO; never blocks on a FIFO or device).
    pub fn scan(&mut self) -> Scan {
        self.scan_at(std::time::SystemTime::now())
    }

    /// [`scan`](Self::scan) with an explicit clock for the settle window.
    pub fn scan_at(&mut self, now: std::time::SystemTime) -> Scan {
        let mut scan = Scan::default();
        let mut paths = Vec::new();
        match walk(&self.root, &mut Default::default(), &mut paths) {
            Ok(()) => {
                scan.files_listed = paths.len();
                self.files.retain(|p, _| paths.contains(p));
                for path in paths {
                    self.read_file(path, now, &mut scan);
                }
            }
            Err(e) => scan.problems.push(e),
        }
        let map_changed = self.read_map(&mut scan);
        // Always recomputed from every present file, never carried over. See: #11
        // A new file still being written is not known to be valid either.
        scan.complete = self.files.values().all(|f| f.good.is_some())
            && scan.unsettled.iter().all(|p| self.files.contains_key(p))
            && (self.netns_map.is_none() || self.map.good.is_some());
        scan.complete_changed = self.last_complete.is_some_and(|c| c != scan.complete);
        self.last_complete = Some(scan.complete);

        let current = self.union(&mut scan);
        if !self.started {
            self.started = true;
            // The state shares the objects with this source's files (one copy). See: #12
            scan.events
                .push(Event::Reset(current.values().cloned().collect()));
            scan.events
                .push(Event::NetnsMap(self.map.good.clone().unwrap_or_default()));
        } else {
            for (key, obj) in &current {
                // An object of a file this scan did not read again is the same
                // allocation: no deep comparison.
                if self
                    .published
                    .get(key)
                    .is_none_or(|old| !Arc::ptr_eq(old, obj) && !old.same_content(obj))
                {
                    scan.events.push(Event::Apply(obj.clone()));
                }
            }
            for key in self.published.keys() {
                if !current.contains_key(key) {
                    scan.events.push(Event::Delete(key.clone()));
                }
            }
            if map_changed {
                scan.events
                    .push(Event::NetnsMap(self.map.good.clone().unwrap_or_default()));
            }
        }
        self.published = current;
        scan
    }

    fn read_file(&mut self, path: PathBuf, now: std::time::SystemTime, scan: &mut Scan) {
        let (bytes, mtime) = match read_regular(&path) {
            Ok(b) => b,
            // Deleted between listing and reading: the next scan drops it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(source) => {
                scan.problems.push(ManifestError::ReadFile { path, source });
                return;
            }
        };
        // Modified within the settle window: maybe half written; keep the last good
        // objects and let the caller rescan after the window. A modification time in the
        // future (clock steps) counts as settled, so no file waits forever. See: #11
        let fresh = now.duration_since(mtime).is_ok_and(|age| age < self.settle);
        if fresh {
            scan.unsettled.push(path);
            return;
        }
        // Invalid UTF-8 makes the file invalid, as the CLI refuses it: one rule for both
        // (decoding it lossily could change a name or a label). See: #11
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let name = path.display().to_string();
                scan.diagnostics.push(Diagnostic::file_error(
                    &name,
                    None,
                    format!(
                        "not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                ));
                scan.invalid_files.push(path.clone());
                let good = self.files.get_mut(&path).and_then(|f| f.good.take());
                let hash = Checksum::of(&String::from_utf8_lossy(e.as_bytes()));
                self.files.insert(path, FileEntry { hash, good });
                return;
            }
        };
        let hash = Checksum::of(&text);
        if self.files.get(&path).is_some_and(|f| f.hash == hash) {
            return;
        }
        let name = path.display().to_string();
        let (inputs, mut diags) = load(&[SourceText {
            name: &name,
            text: &text,
        }]);
        // Objects the compiler would reject make the file invalid too: a dropped
        // policy must not open anything.
        let (_, model_diags) = Model::build(&inputs);
        diags.extend(model_diags);
        let valid = !diags.iter().any(|d| d.severity == Severity::Error);
        scan.diagnostics.extend(diags);
        let good = if valid {
            let objects = Object::all(inputs);
            // Not `collect`: collecting in place would keep the buffer of the objects
            // (2.3 KB a Pod) for pointers of 8 bytes, as long as the file is good
            // (a fifth of the agent's live memory). See: #12
            let mut good = Vec::with_capacity(objects.len());
            // An object whose content did not change keeps its published allocation,
            // which the state shares: the scan's diff then sees it by address, and no
            // second copy lives here while the state keeps the old one. See: #12
            good.extend(
                objects
                    .into_iter()
                    .map(|o| match self.published.get(&o.key()) {
                        Some(old) if old.same_content(&o) => old.clone(),
                        _ => Arc::new(o),
                    }),
            );
            Some(good)
        } else {
            scan.invalid_files.push(path.clone());
            self.files.get_mut(&path).and_then(|f| f.good.take())
        };
        self.files.insert(path, FileEntry { hash, good });
    }

    /// Returns whether the good mapping changed.
    fn read_map(&mut self, scan: &mut Scan) -> bool {
        let Some(path) = &self.netns_map else {
            return false;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(source) => {
                if self.map.hash.take().is_some() || self.map.good.is_none() {
                    scan.problems.push(ManifestError::ReadFile {
                        path: path.clone(),
                        source,
                    });
                }
                return false;
            }
        };
        let hash = Checksum::of(&text);
        if self.map.hash == Some(hash) {
            return false;
        }
        self.map.hash = Some(hash);
        match parse_netns_map(path, &text) {
            Ok(map) => {
                let changed = self.map.good.as_ref() != Some(&map);
                self.map.good = Some(map);
                changed
            }
            Err(e) => {
                scan.problems.push(e);
                false
            }
        }
    }

    fn union(&self, scan: &mut Scan) -> BTreeMap<ObjectKey, Arc<Object>> {
        let mut out: BTreeMap<ObjectKey, Arc<Object>> = BTreeMap::new();
        let mut from: BTreeMap<ObjectKey, &Path> = BTreeMap::new();
        for (path, entry) in &self.files {
            for obj in entry.good.iter().flatten() {
                let key = obj.key();
                if let Some(first) = from.insert(key.clone(), path) {
                    scan.problems.push(ManifestError::Duplicate {
                        key: key.clone(),
                        first: first.display().to_string(),
                        second: path.display().to_string(),
                    });
                }
                out.insert(key, obj.clone());
            }
        }
        out
    }
}

/// Timing of [`watch`].
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Quiet time after the last notification before scanning.
    pub debounce: Duration,
    /// Scan at least this often, notifications or not.
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(200),
            rescan: Duration::from_secs(10),
        }
    }
}

fn relevant(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn notifier(
    dir: &ManifestDir,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.as_ref().is_ok_and(relevant) || res.is_err() {
            // The receiver is gone only when the watch task ended.
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir.root(), RecursiveMode::Recursive)?;
    if let Some(parent) = dir.netns_map().and_then(Path::parent) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        watcher.watch(parent, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Scans `dir` now and after every (debounced) change, on a tokio task; non-empty scans
/// (and always the first) are sent on the returned channel. The task ends when the
/// receiver is dropped. Without working notifications it polls every 500 ms.
pub fn watch(mut dir: ManifestDir, opts: WatchOptions) -> mpsc::Receiver<Scan> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let (ntx, nrx) = mpsc::unbounded_channel();
        let (watcher, mut nrx, rescan) = match notifier(&dir, ntx) {
            Ok(w) => (Some(w), Some(nrx), opts.rescan),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.root().display(), "no filesystem notifications; polling");
                (None, None, opts.rescan.min(Duration::from_millis(500)))
            }
        };
        let _watcher = watcher;
        let mut first = true;
        // After a scan that skipped files still being written: scan again once they
        // have had the settle window to finish. See: #11
        let mut settle_wait: Option<Duration> = None;
        loop {
            if !first {
                let wait = settle_wait.map_or(rescan, |s| s.min(rescan));
                let notified = async {
                    match nrx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    n = notified => {
                        if n.is_none() {
                            nrx = None;
                        }
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = tx.closed() => return,
                }
                // Debounce: wait until nothing arrives for `debounce`.
                if let Some(rx) = nrx.as_mut() {
                    while let Ok(Some(())) = tokio::time::timeout(opts.debounce, rx.recv()).await {}
                }
            }
            let task = tokio::task::spawn_blocking(move || {
                let scan = dir.scan();
                (dir, scan)
            });
            let Ok((back, scan)) = task.await else {
                tracing::error!("manifest scan panicked; the watch stops, last known state kept");
                return;
            };
            settle_wait = (!scan.unsettled.is_empty()).then_some(back.settle.max(opts.debounce));
            dir = back;
            if (first || !scan.is_empty()) && tx.send(scan).await.is_err() {
                return;
            }
            first = false;
        }
    });
    rx
}

/// Largest manifest file read (bigger files are a read problem, not an allocation).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a regular file of at most [`MAX_FILE_BYTES`]: the type is checked before opening
/// and on the open file, which is opened `O_NONBLOCK`, so a FIFO named `*.yaml` or a
/// link to `/dev/zero` never blocks the scan or fills memory. See: #11
fn read_regular(path: &Path) -> io::Result<(Vec<u8>, std::time::SystemTime)> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let not_regular = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, socket or device): skipped",
        )
    };
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let too_big = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than the cap of {} MiB",
                MAX_FILE_BYTES / (1024 * 1024)
            ),
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let mtime = meta.modified()?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    Ok((bytes, mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    const POD_A: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\n";
    const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
    const ALLOW_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n";
    const BAD_SELECTOR: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {matchLabels: {'bad key!': x}}\n";

    fn feed(state: &mut State, scan: &Scan) {
        for e in &scan.events {
            state.handle(e.clone());
        }
    }

    fn policy_has_ingress(state: &State) -> bool {
        state.inputs().policies[0]
            .object
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .is_some()
    }

    #[test]
    fn first_scan_resets_then_changes_are_diffs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        std::fs::write(dir.path().join("sub/pol.yml"), DENY).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml [").unwrap();
        // ConfigMap volume layout: hidden data directory, symlinks at the top.
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::write(dir.path().join("..data/pod.yaml"), POD_A).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let mut state = State::new();
        let scan = src.scan();
        assert!(scan.complete && scan.problems.is_empty(), "{scan:?}");
        assert!(matches!(&scan.events[0], Event::Reset(o) if o.len() == 2));
        feed(&mut state, &scan);
        assert_eq!(state.len(), 2);

        assert!(src.scan().is_empty(), "nothing changed");
        std::fs::write(dir.path().join("sub/pol.yml"), ALLOW_80).unwrap();
        let scan = src.scan();
        assert!(
            matches!(&scan.events[..], [Event::Apply(_)]),
            "{:?}",
            scan.events
        );
        feed(&mut state, &scan);
        assert!(policy_has_ingress(&state));

        std::fs::remove_file(dir.path().join("pod.yaml")).unwrap();
        let scan = src.scan();
        assert!(matches!(&scan.events[..], [Event::Delete(k)] if k.name == "a"));
        feed(&mut state, &scan);
        assert_eq!(state.len(), 1);
    }

    // See: #12
    #[test]
    fn state_shares_the_sources_objects_and_files_hold_no_spare_slots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), format!("{POD_A}---\n{DENY}")).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let mut state = State::new();
        feed(&mut state, &src.scan());
        let good = src.files.values().next().unwrap().good.as_ref().unwrap();
        assert_eq!(good.len(), 2);
        // Collected in place, the pointers would keep the objects' buffer (~290 slots).
        assert!(good.capacity() <= 2, "capacity {}", good.capacity());
        for (key, obj) in &src.published {
            assert!(
                std::ptr::eq(state.get(key).unwrap(), &**obj),
                "{key}: the state holds a copy"
            );
        }
        // A change is shared too, and so are the unchanged objects of a file read again.
        std::fs::write(dir.path().join("a.yaml"), format!("{POD_A}---\n{ALLOW_80}")).unwrap();
        feed(&mut state, &src.scan());
        assert!(policy_has_ingress(&state));
        for (key, obj) in &src.published {
            assert!(std::ptr::eq(state.get(key).unwrap(), &**obj), "{key}");
        }
    }

    #[test]
    fn invalid_file_keeps_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("pol.yaml");
        std::fs::write(&pol, ALLOW_80).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let mut state = State::new();
        feed(&mut state, &src.scan());

        for bad in [BAD_SELECTOR, "kind: [\n", ""] {
            std::fs::write(&pol, bad).unwrap();
            let scan = src.scan();
            if bad.is_empty() {
                // An empty file is valid: its objects are gone.
                assert!(matches!(&scan.events[..], [Event::Delete(_)]));
                continue;
            }
            assert!(scan.events.is_empty(), "{bad}: {:?}", scan.events);
            assert_eq!(scan.invalid_files, std::slice::from_ref(&pol));
            assert!(scan.complete);
            let d = scan.diagnostics.iter().find(|d| d.is_error()).unwrap();
            assert!(
                d.to_string().starts_with(&format!("{}:", pol.display())),
                "{d}"
            );
            assert!(d.line.is_some(), "{d}");
            feed(&mut state, &scan);
            assert!(policy_has_ingress(&state), "last good kept");
            assert!(src.scan().is_empty(), "reported once");
        }
    }

    #[test]
    fn never_valid_file_makes_the_scan_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pol.yaml"), BAD_SELECTOR).unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let scan = src.scan();
        assert!(!scan.complete);
        std::fs::write(dir.path().join("pol.yaml"), DENY).unwrap();
        let scan = src.scan();
        assert!(scan.complete);
        assert!(matches!(&scan.events[..], [Event::Apply(_)]));
    }

    #[test]
    fn fifo_and_device_files_never_block_the_scan() {
        // See: #11 (a FIFO named `*.yaml` blocked the scan forever; a link to /dev/zero
        // allocated ~2 GB per scan).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("pipe.yaml"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.yaml")).unwrap();
        let root = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut src = ManifestDir::new(root, None);
            let _ = tx.send(src.scan());
        });
        let scan = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the scan returns: it never opens a FIFO for blocking reads");
        let problems: Vec<String> = scan.problems.iter().map(|p| format!("{p:?}")).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("pipe.yaml")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("zero.yaml")),
            "{problems:?}"
        );
        assert!(matches!(&scan.events[..], [Event::Reset(objs), _] if objs.len() == 1));
    }

    #[test]
    fn deleting_a_never_valid_file_after_another_change_completes_the_scan() {
        // See: #11 (the scan after the deletion had no events, so the watch never sent
        // it and the agent stayed "never been valid: not compiling").
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        assert!(src.scan().complete);
        // Another change and a never-valid file in the same scan.
        std::fs::write(dir.path().join("pol.yaml"), DENY).unwrap();
        std::fs::write(dir.path().join("broken.yaml"), BAD_SELECTOR).unwrap();
        let scan = src.scan();
        assert!(!scan.complete && scan.complete_changed);
        assert!(matches!(&scan.events[..], [Event::Apply(_)]));
        // Unchanged: still incomplete, nothing to send.
        let scan = src.scan();
        assert!(!scan.complete && scan.is_empty(), "{scan:?}");
        std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
        let scan = src.scan();
        assert!(scan.events.is_empty() && scan.diagnostics.is_empty());
        assert!(scan.complete && scan.complete_changed);
        assert!(
            !scan.is_empty(),
            "the watch must send a completeness change"
        );
        assert!(src.scan().is_empty());
    }

    #[test]
    fn symlink_loops_are_walked_once() {
        // See: #11 (two links to `.` made every walk fail with RSS growing; one loop
        // link read each file 41 times).
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        std::fs::write(dir.path().join("sub/pol.yaml"), DENY).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("loop2")).unwrap();
        std::os::unix::fs::symlink("..", dir.path().join("sub/up")).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let scan = src.scan();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert!(scan.complete);
        assert_eq!(scan.files_listed, 2, "each file listed (and read) once");
        assert!(matches!(&scan.events[0], Event::Reset(o) if o.len() == 2));
        let again = src.scan();
        assert!(again.is_empty() && again.files_listed == 2, "{again:?}");
    }

    #[test]
    fn file_modified_within_the_settle_window_keeps_its_last_good_objects() {
        // See: #11 (a slow in-place writer exposed a truncated selector).
        let settle = Duration::from_secs(1);
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("pol.yaml");
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        std::fs::write(&pol, ALLOW_80).unwrap();
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let mut src = ManifestDir::new(dir.path(), None).with_settle(settle);
        let mut state = State::new();
        // Fresh at start: a new file still being written blocks compilation.
        let scan = src.scan_at(mtime(&pol));
        assert_eq!(scan.unsettled.len(), 2);
        assert!(!scan.complete);
        let scan = src.scan_at(mtime(&pol) + settle);
        assert!(scan.complete && scan.unsettled.is_empty(), "{scan:?}");
        feed(&mut state, &scan);
        assert!(policy_has_ingress(&state));

        // Half written in place (truncated): not read within the window.
        std::fs::write(&pol, &ALLOW_80[..ALLOW_80.len() - 20]).unwrap();
        let scan = src.scan_at(mtime(&pol) + settle / 2);
        assert!(scan.unsettled.contains(&pol), "{scan:?}");
        assert!(scan.events.is_empty() && scan.diagnostics.is_empty());
        assert!(scan.complete, "the file has a last good version");
        // Finished: read once the window has passed.
        std::fs::write(&pol, DENY).unwrap();
        assert!(src.scan_at(mtime(&pol)).events.is_empty());
        let scan = src.scan_at(mtime(&pol) + settle);
        assert!(matches!(&scan.events[..], [Event::Apply(_)]), "{scan:?}");
        feed(&mut state, &scan);
        assert!(!policy_has_ingress(&state));
        // A modification time in the future (clock stepped back) counts as settled.
        std::fs::write(&pol, ALLOW_80).unwrap();
        let scan = src.scan_at(mtime(&pol) - Duration::from_secs(60));
        assert!(scan.unsettled.is_empty() && !scan.events.is_empty());
    }

    #[test]
    fn invalid_utf8_file_is_invalid_like_in_the_cli() {
        // See: #11 (the agent decoded invalid UTF-8 lossily while the CLI rejected it).
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = POD_A.as_bytes().to_vec();
        bytes.extend_from_slice(b"\n# \xff\xfe\n");
        std::fs::write(dir.path().join("pod.yaml"), &bytes).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let scan = src.scan();
        assert!(!scan.complete, "a never-valid file blocks compilation");
        assert!(
            scan.diagnostics
                .iter()
                .any(|d| d.is_error() && d.message.starts_with("not UTF-8")),
            "{:?}",
            scan.diagnostics
        );
        assert_eq!(scan.invalid_files.len(), 1);
    }

    #[test]
    fn missing_directory_is_a_problem_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let mut state = State::new();
        feed(&mut state, &src.scan());
        let moved = dir.path().with_extension("moved");
        std::fs::rename(dir.path(), &moved).unwrap();
        let scan = src.scan();
        assert!(scan.events.is_empty());
        assert!(matches!(
            &scan.problems[..],
            [ManifestError::ReadDir { .. }]
        ));
        std::fs::rename(&moved, dir.path()).unwrap();
        assert!(src.scan().events.is_empty(), "same objects as before");
    }

    #[test]
    fn netns_map_is_parsed_and_bad_versions_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("netns.map");
        std::fs::write(&map, "# pods\nx/a ns-a\n\nx/b  ns-b # comment\n").unwrap();
        let mut src = ManifestDir::new(dir.path(), Some(map.clone()));
        let scan = src.scan();
        let Some(Event::NetnsMap(m)) = scan.events.last() else {
            panic!("{:?}", scan.events)
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[&PodKey::new("x", "b")], "ns-b");

        std::fs::write(&map, "x/a ns-a\nx/b bad/name\n").unwrap();
        let scan = src.scan();
        assert!(scan.events.is_empty());
        let msg = scan.problems[0].to_string();
        assert!(msg.contains("netns.map:2:"), "{msg}");

        std::fs::write(&map, "x/a ns-a\n").unwrap();
        let scan = src.scan();
        assert!(matches!(&scan.events[..], [Event::NetnsMap(m)] if m.len() == 1));
        for bad in ["x/a", "a ns", "x/a n1\nx/a n2"] {
            assert!(parse_netns_map(&map, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duplicates_are_reported_and_the_later_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), DENY).unwrap();
        std::fs::write(dir.path().join("b.yaml"), ALLOW_80).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let scan = src.scan();
        assert!(matches!(
            &scan.problems[..],
            [ManifestError::Duplicate { .. }]
        ));
        let mut state = State::new();
        feed(&mut state, &scan);
        assert!(policy_has_ingress(&state));
    }

    #[tokio::test]
    async fn watch_rescans_a_file_once_the_settle_window_has_passed() {
        // See: #11 (a file skipped as still being written must not wait for the next
        // periodic rescan, here 60 s, nor for another notification).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        let mut rx = watch(
            ManifestDir::new(dir.path(), None).with_settle(Duration::from_millis(300)),
            WatchOptions {
                debounce: Duration::from_millis(50),
                rescan: Duration::from_secs(60),
            },
        );
        let first = rx.recv().await.unwrap();
        if !first.complete {
            // pod.yaml was itself fresh: wait for the settled scan.
            let next = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(next.complete, "{next:?}");
        }
        std::fs::write(dir.path().join("pol.yaml"), DENY).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let scan = rx.recv().await.unwrap();
                if !scan.events.is_empty() {
                    return scan;
                }
            }
        })
        .await
        .expect("rescanned after the settle window, not after the 60 s rescan");
        assert!(matches!(&next.events[..], [Event::Apply(_)]), "{next:?}");
    }

    #[tokio::test]
    async fn watch_sends_debounced_scans() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD_A).unwrap();
        let mut rx = watch(
            ManifestDir::new(dir.path(), None),
            WatchOptions {
                debounce: Duration::from_millis(50),
                rescan: Duration::from_secs(1),
            },
        );
        let first = rx.recv().await.unwrap();
        assert!(matches!(&first.events[0], Event::Reset(o) if o.len() == 1));
        std::fs::write(dir.path().join("pol.yaml"), DENY).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(&next.events[..], [Event::Apply(_)]), "{next:?}");
    }
}
