//! What a golden case is: the one definition used by `netpol test` at runtime, by
//! `testkit` and by the compiler's own tests (#9).
//!
//! A *case* is a directory that holds [`EXPECT_FILE`] (`expect.yaml`) or at least one
//! golden file ([`GoldenKind::of`]: `matrix-<proto>-<port>.txt`, `*.nft`). Its manifests
//! are every `*.yaml`, `*.yml` and `*.json` in it except `expect.yaml` and the goldens
//! ([`is_manifest`]), including files in subdirectories that are not cases themselves.
//! Cases are found recursively; hidden directories are skipped ([`is_searched_dir`]); a
//! case may contain further cases.
//!
//! Pure like the rest of the crate: [`discover`] walks a tree through a listing function
//! the caller supplies (the filesystem in `netpol test` and the tests, a map in unit
//! tests), so the rule is here and the IO is the caller's.
//!
//! ```
//! use std::path::{Path, PathBuf};
//! use policy_compiler::case::{Entry, discover};
//!
//! let list = |d: &Path| -> Result<Option<Vec<Entry>>, ()> {
//!     Ok(Some(match d.to_str() {
//!         Some("cases") => vec![Entry::dir("cases/a")],
//!         Some("cases/a") => vec![Entry::file("cases/a/expect.yaml"), Entry::file("cases/a/pods.yaml")],
//!         _ => vec![],
//!     }))
//! };
//! let cases = discover(Path::new("cases"), list).unwrap();
//! assert_eq!(cases[0].dir, PathBuf::from("cases/a"));
//! assert_eq!(cases[0].manifests, vec![PathBuf::from("cases/a/pods.yaml")]);
//! ```

use std::path::{Path, PathBuf};

/// The hand-written expectations of a case.
pub const EXPECT_FILE: &str = "expect.yaml";

/// A kind of golden file, by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GoldenKind {
    /// `matrix-<tcp|udp|sctp>-<port>.txt`: a connectivity matrix.
    Matrix,
    /// `<namespace>_<pod>.nft` (or `node_<node>.nft`): a ruleset.
    Nft,
}

impl GoldenKind {
    /// The golden kind a file name (no directory) belongs to, if any. Only the shape of the
    /// name counts: a golden whose name does not parse is still a golden (and fails).
    pub fn of(file_name: &str) -> Option<Self> {
        if file_name.starts_with("matrix-") && file_name.ends_with(".txt") {
            Some(Self::Matrix)
        } else if file_name.ends_with(".nft") {
            Some(Self::Nft)
        } else {
            None
        }
    }

    /// Short name, in reports and JSON (`matrix`, `nft`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Matrix => "matrix",
            Self::Nft => "nft",
        }
    }
}

/// Whether a file name (no directory) in a case is one of its manifests: `*.yaml`,
/// `*.yml` or `*.json`, neither `expect.yaml` nor a golden.
pub fn is_manifest(file_name: &str) -> bool {
    let ext = file_name.rsplit_once('.').map(|(_, e)| e);
    matches!(ext, Some("yaml" | "yml" | "json"))
        && file_name != EXPECT_FILE
        && GoldenKind::of(file_name).is_none()
}

/// Whether a directory holding these files (names, no directory) is a case.
pub fn is_case<'a>(file_names: impl IntoIterator<Item = &'a str>) -> bool {
    file_names
        .into_iter()
        .any(|n| n == EXPECT_FILE || GoldenKind::of(n).is_some())
}

/// Whether a directory of this name is searched for cases and manifests (hidden ones are
/// not).
pub fn is_searched_dir(dir_name: &str) -> bool {
    !dir_name.starts_with('.')
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path (the listed directory joined with the name).
    pub path: PathBuf,
    /// Whether it is a directory (after following symlinks).
    pub is_dir: bool,
}

impl Entry {
    /// A file entry.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            is_dir: false,
        }
    }

    /// A directory entry.
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            is_dir: true,
        }
    }

    fn name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or("")
    }
}

/// One case: its directory and its files, each list sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The case directory.
    pub dir: PathBuf,
    /// `expect.yaml`, when the case has one.
    pub expect: Option<PathBuf>,
    /// Golden files directly in the case directory.
    pub goldens: Vec<PathBuf>,
    /// Manifests: in the directory and in subdirectories that are not cases.
    pub manifests: Vec<PathBuf>,
}

/// Every case under `root` (itself included), sorted by directory.
///
/// `list(dir)` returns the entries of `dir` in any order, or `None` to leave the directory
/// out (a directory already read through a symlink, for example); its errors stop the walk.
pub fn discover<E>(
    root: &Path,
    mut list: impl FnMut(&Path) -> Result<Option<Vec<Entry>>, E>,
) -> Result<Vec<Case>, E> {
    let mut cases = Vec::new();
    walk(root, None, &mut list, &mut cases)?;
    cases.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(cases)
}

/// Walks `dir`; `owner` is the index of the case whose manifests a non-case `dir` holds.
fn walk<E>(
    dir: &Path,
    owner: Option<usize>,
    list: &mut impl FnMut(&Path) -> Result<Option<Vec<Entry>>, E>,
    cases: &mut Vec<Case>,
) -> Result<(), E> {
    let Some(mut entries) = list(dir)? else {
        return Ok(());
    };
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let files = || entries.iter().filter(|e| !e.is_dir);
    let owner = if is_case(files().map(Entry::name)) {
        let mut case = Case {
            dir: dir.to_path_buf(),
            expect: None,
            goldens: Vec::new(),
            manifests: Vec::new(),
        };
        for f in files() {
            if f.name() == EXPECT_FILE {
                case.expect = Some(f.path.clone());
            } else if GoldenKind::of(f.name()).is_some() {
                case.goldens.push(f.path.clone());
            }
        }
        cases.push(case);
        Some(cases.len() - 1)
    } else {
        owner
    };
    if let Some(i) = owner {
        cases[i].manifests.extend(
            files()
                .filter(|f| is_manifest(f.name()))
                .map(|f| f.path.clone()),
        );
    }
    for d in entries
        .iter()
        .filter(|e| e.is_dir && is_searched_dir(e.name()))
    {
        walk(&d.path, owner, list, cases)?;
    }
    if let Some(i) = owner {
        cases[i].manifests.sort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A tree given as file paths (directories implied).
    fn lister(files: &[&str]) -> impl FnMut(&Path) -> Result<Option<Vec<Entry>>, String> {
        let mut tree: BTreeMap<PathBuf, Vec<Entry>> = BTreeMap::new();
        for f in files {
            let mut p = PathBuf::from(f);
            let mut entry = Entry::file(p.clone());
            while let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                let list = tree.entry(parent.to_path_buf()).or_default();
                if !list.contains(&entry) {
                    list.push(entry);
                }
                entry = Entry::dir(parent);
                p = parent.to_path_buf();
            }
        }
        move |d| Ok(tree.get(d).cloned())
    }

    #[test]
    fn names() {
        assert!(is_manifest("pods.yaml") && is_manifest("a.yml") && is_manifest("b.json"));
        assert!(!is_manifest("expect.yaml") && !is_manifest("README.md"));
        assert!(!is_manifest("stages.txt") && !is_manifest("x_a.nft"));
        assert_eq!(
            GoldenKind::of("matrix-tcp-80.txt"),
            Some(GoldenKind::Matrix)
        );
        assert_eq!(GoldenKind::of("matrix-bad.txt"), Some(GoldenKind::Matrix));
        assert_eq!(GoldenKind::of("x_a.nft"), Some(GoldenKind::Nft));
        assert_eq!(GoldenKind::of("stages.txt"), None);
        assert!(is_case(["pods.yaml", "expect.yaml"]));
        assert!(is_case(["pods.yaml", "x_a.nft"]));
        assert!(!is_case(["pods.yaml", "stages.txt"]));
        assert!(!is_searched_dir(".git") && is_searched_dir("sub"));
    }

    #[test]
    fn nested_cases_plain_subdirectories_and_hidden_ones() {
        let list = lister(&[
            "r/README.md",
            "r/a/expect.yaml",
            "r/a/pods.yaml",
            "r/a/stages.txt",
            "r/a/matrix-tcp-80.txt",
            "r/a/x_p.nft",
            "r/a/more/policies.json",
            "r/a/.hidden/ignored.yaml",
            "r/a/inner/expect.yaml",
            "r/a/inner/pods.yml",
            "r/b/only.yaml",
            "r/c/matrix-udp-53.txt",
            "r/c/p.yaml",
        ]);
        let cases = discover(Path::new("r"), list).unwrap();
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            cases,
            vec![
                Case {
                    dir: p("r/a"),
                    expect: Some(p("r/a/expect.yaml")),
                    goldens: vec![p("r/a/matrix-tcp-80.txt"), p("r/a/x_p.nft")],
                    manifests: vec![p("r/a/more/policies.json"), p("r/a/pods.yaml")],
                },
                Case {
                    dir: p("r/a/inner"),
                    expect: Some(p("r/a/inner/expect.yaml")),
                    goldens: vec![],
                    manifests: vec![p("r/a/inner/pods.yml")],
                },
                Case {
                    dir: p("r/c"),
                    expect: None,
                    goldens: vec![p("r/c/matrix-udp-53.txt")],
                    manifests: vec![p("r/c/p.yaml")],
                },
            ]
        );
    }

    #[test]
    fn listing_errors_and_left_out_directories() {
        let mut calls = 0;
        let err = discover(Path::new("r"), |_| {
            calls += 1;
            Err::<Option<Vec<Entry>>, _>("denied")
        });
        assert_eq!(err, Err("denied"));
        assert_eq!(calls, 1);
        let none = discover(Path::new("r"), |_| Ok::<_, ()>(None)).unwrap();
        assert!(none.is_empty());
    }
}
