//! What the agent trusts to say which network namespace is a Pod's, and what it does
//! when two Pods claim one namespace. See the threat model in `docs/agent.md`.
//!
//! - [`NetnsTrust`]: whether the Pod annotation `netpol.io/netns` (written by whoever
//!   writes the Pod) may name a netns at all. From the Kubernetes API it may not
//!   ([`NetnsTrust::NoAnnotation`]: a Pod's author could point its permissive ruleset at
//!   another Pod's netns, or at the node's); from the operator's manifest directory it may
//!   name a netns in `/var/run/netns` by plain name only ([`check_annotation`]).
//! - [`conflicts`]: Pods resolved to one namespace (same handle, same path, or the same
//!   namespace file inode). The agent fails closed for all of them: their namespace gets
//!   [`DENY_ALL`], never one of their (possibly permissive) rulesets.

use std::collections::BTreeMap;

use crate::netns::{self, NetnsError};

/// How far a state source's Pod annotations are trusted to name a netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetnsTrust {
    /// The annotation is ignored: the netns comes from CNI records, the operator's
    /// netns map and discovery by IP only (the Kubernetes source: any Pod author writes
    /// annotations).
    NoAnnotation,
    /// The annotation may name a netns in `/var/run/netns` by plain name (no path, no
    /// `/`, no `..`): the manifest directory, written by the operator.
    #[default]
    PlainNames,
}

/// Why an annotation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The annotation is not a plain netns name.
    #[error(
        "annotation netpol.io/netns={value:?} refused: only a plain name in /var/run/netns is accepted"
    )]
    NotAPlainName {
        /// The annotation's value.
        value: String,
        /// What is wrong with it.
        #[source]
        source: NetnsError,
    },
}

/// Checks an annotation value: a plain netns name (`[A-Za-z0-9_.-]`, 1..=64 bytes, not
/// `.` or `..`), never an absolute path such as `/proc/1/ns/net`.
pub fn check_annotation(value: &str) -> Result<&str, TrustError> {
    netns::validate_plain_name(value)
        .map(|()| value)
        .map_err(|source| TrustError::NotAPlainName {
            value: value.to_owned(),
            source,
        })
}

/// A ruleset that drops everything but loopback, applied to a namespace claimed by more
/// than one Pod: it is no wider than any of their policies, whichever Pod owns it.
pub const DENY_ALL: &str = "# netpol: netns claimed by more than one Pod: deny all (fail closed)
add table inet netpol
delete table inet netpol
table inet netpol {
\tchain ingress {
\t\ttype filter hook input priority filter; policy drop;
\t\tiif lo accept
\t}

\tchain egress {
\t\ttype filter hook output priority filter; policy drop;
\t\toif lo accept
\t}
}
";

/// What identifies a namespace: the inode of its file when it exists, else its
/// normalised handle (`/var/run/netns/a` and `a` are one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Identity {
    Inode { dev: u64, ino: u64 },
    Handle(String),
}

fn identity(handle: &str) -> Identity {
    use std::os::unix::fs::MetadataExt;
    let normal = if netns::is_path(handle) {
        netns::from_path(handle)
    } else {
        handle.to_owned()
    };
    // Only for a handle the agent would use: never stat an invalid path.
    if netns::validate_name(&normal).is_ok()
        && let Ok(meta) = std::fs::metadata(netns::path(&normal))
    {
        return Identity::Inode {
            dev: meta.dev(),
            ino: meta.ino(),
        };
    }
    Identity::Handle(normal)
}

/// Pods whose namespaces are one: each group (two or more Pods, in key order) by the
/// handle of its first Pod. Empty when every Pod has a namespace of its own. Generic
/// over the Pod key, so this module does not depend on the state index (which depends
/// on it).
pub fn conflicts<K: Ord + Clone>(local: &BTreeMap<K, String>) -> BTreeMap<String, Vec<K>> {
    let mut by_identity: BTreeMap<Identity, Vec<(&K, &String)>> = BTreeMap::new();
    for (pod, handle) in local {
        by_identity
            .entry(identity(handle))
            .or_default()
            .push((pod, handle));
    }
    by_identity
        .into_values()
        .filter(|pods| pods.len() > 1)
        .map(|pods| {
            let handle = pods[0].1.clone();
            (handle, pods.into_iter().map(|(p, _)| p.clone()).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodKey;

    // See: #11
    #[test]
    fn annotation_with_absolute_path_is_refused() {
        for bad in ["/proc/1/ns/net", "/var/run/netns/other", "/run/netns/x"] {
            assert!(check_annotation(bad).is_err(), "{bad}");
        }
    }

    // See: #11
    #[test]
    fn annotation_with_dotdot_or_slash_is_refused() {
        for bad in [
            "..",
            ".",
            "../x",
            "a/b",
            "a/../b",
            "",
            "a\0b",
            &"x".repeat(65),
        ] {
            assert!(check_annotation(bad).is_err(), "{bad:?}");
        }
        for good in ["cni-1234", "ns_a", "a.b"] {
            assert_eq!(check_annotation(good).unwrap(), good);
        }
    }

    // See: #11
    #[test]
    fn two_pods_one_netns_conflict_by_name_and_path() {
        let mut local = BTreeMap::new();
        local.insert(PodKey::new("x", "a"), "nps-shared".to_owned());
        local.insert(
            PodKey::new("x", "b"),
            "/var/run/netns/nps-shared".to_owned(),
        );
        local.insert(PodKey::new("x", "c"), "nps-own".to_owned());
        let got = conflicts(&local);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got["nps-shared"],
            [PodKey::new("x", "a"), PodKey::new("x", "b")]
        );
        local.remove(&PodKey::new("x", "b"));
        assert!(conflicts(&local).is_empty());
    }

    // See: #11
    #[test]
    fn two_paths_to_one_file_conflict_by_inode() {
        let dir = std::env::temp_dir().join(format!("nps-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ns");
        std::fs::write(&file, "").unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let mut local = BTreeMap::new();
        local.insert(PodKey::new("x", "a"), file.display().to_string());
        local.insert(PodKey::new("x", "b"), link.display().to_string());
        let got = conflicts(&local);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
    }
}
