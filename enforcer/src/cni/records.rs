//! CNI records on disk, so a restarted agent still knows each Pod's netns and IPs.
//!
//! One JSON file per Pod (`<namespace>_<name>.json`: `_` is valid in neither, so names
//! never collide), written atomically ([`netpol_common::fs::write_atomic`]: temp file,
//! fsync, rename, directory fsync). The directory is a
//! hostPath (`/var/lib/netpol/cni`) in the DaemonSet. A file that cannot be read is
//! reported and skipped: that Pod falls back to netns discovery.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use netpol_common::fs::WriteStep;

use crate::state::{CniRecord, PodKey};

/// Mode of a record file (what `File::create` gave them under the usual umask 022).
const RECORD_MODE: u32 = 0o644;

/// Errors of the record store; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading, writing or removing a file failed.
    #[error("cni record {path}: {op} failed")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// `read`, `write`, `remove`, `list`.
        op: &'static str,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// A file is not a valid record.
    #[error("cni record {path}: invalid content")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The decode error (with line and column).
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct File {
    namespace: String,
    name: String,
    #[serde(flatten)]
    record: CniRecord,
}

/// The record directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// A store in `dir` (created on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, pod: &PodKey) -> PathBuf {
        self.dir
            .join(format!("{}_{}.json", pod.namespace, pod.name))
    }

    /// Writes `pod`'s record atomically.
    pub fn save(&self, pod: &PodKey, record: &CniRecord) -> Result<(), RecordError> {
        let path = self.path(pod);
        let io = |op, source| RecordError::Io {
            path: path.clone(),
            op,
            source,
        };
        fs::create_dir_all(&self.dir).map_err(|e| io("write", e))?;
        let body = serde_json::to_vec_pretty(&File {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            record: record.clone(),
        })
        .map_err(|source| RecordError::Invalid {
            path: path.clone(),
            source,
        })?;
        let written =
            netpol_common::fs::write_atomic(&path, RECORD_MODE, |_, f| f.write_all(&body))
                .map_err(|e| match e.step {
                    WriteStep::Io { source, .. } | WriteStep::Fill(source) => io("write", source),
                })?;
        if let Err(e) = written.dir_sync {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot fsync the cni records directory");
        }
        Ok(())
    }

    /// Removes `pod`'s record (absent is fine).
    pub fn remove(&self, pod: &PodKey) -> Result<(), RecordError> {
        let path = self.path(pod);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io {
                path,
                op: "remove",
                source,
            }),
        }
    }

    /// Every readable record, in name order, and the errors of the others.
    pub fn load(&self) -> (Vec<(PodKey, CniRecord)>, Vec<RecordError>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (out, errors),
            Err(source) => {
                errors.push(RecordError::Io {
                    path: self.dir.clone(),
                    op: "list",
                    source,
                });
                return (out, errors);
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let text = match fs::read(&path) {
                Ok(t) => t,
                Err(source) => {
                    errors.push(RecordError::Io {
                        path,
                        op: "read",
                        source,
                    });
                    continue;
                }
            };
            match serde_json::from_slice::<File>(&text) {
                Ok(f) => out.push((PodKey::new(f.namespace, f.name), f.record)),
                Err(source) => errors.push(RecordError::Invalid { path, source }),
            }
        }
        (out, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path().join("cni"));
        assert!(store.load().0.is_empty(), "missing directory is empty");
        let rec = CniRecord {
            container_id: "c1".into(),
            netns: "cni-1".into(),
            ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            uid: Some("u1".into()),
        };
        let pod = PodKey::new("x", "a");
        store.save(&pod, &rec).unwrap();
        store.save(&PodKey::new("y", "b"), &rec).unwrap();
        std::fs::write(store.dir().join("junk.json"), "{").unwrap();
        let (loaded, errors) = store.load();
        assert_eq!(
            loaded,
            [(pod.clone(), rec.clone()), (PodKey::new("y", "b"), rec)]
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("junk.json"), "{}", errors[0]);
        store.remove(&pod).unwrap();
        store.remove(&pod).unwrap();
        assert_eq!(store.load().0.len(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.path()
                    .to_string_lossy()
                    .ends_with(netpol_common::fs::TMP_SUFFIX)
            })
            .collect();
        assert!(leftovers.is_empty());
    }
}
