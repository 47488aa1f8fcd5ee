//! `netpol test`: what a case is and what its manifests are.
//!
//! A *case* is a directory that holds `expect.yaml` or at least one golden file
//! ([`super::golden::GOLDEN_KINDS`]). Its manifests are every `*.yaml`, `*.yml` and
//! `*.json` in it except `expect.yaml` and the goldens, including files in subdirectories
//! that are not cases themselves. Cases are found recursively (hidden directories are
//! skipped); a case may contain further cases.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use policy_compiler::{Inputs, load};

use super::golden::golden_kind;
use crate::inputs::{self, Limits, Sources};

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

pub(super) fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot read directory: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    out.sort();
    Ok(out)
}

pub(super) fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn is_case(dir: &Path) -> Result<bool, String> {
    Ok(entries(dir)?.iter().any(|p| {
        p.is_file() && (file_name(p) == "expect.yaml" || golden_kind(file_name(p)).is_some())
    }))
}

/// Every case directory under `dir` (itself included), sorted; a directory reached again
/// through a symlink is not searched twice (a loop would never end).
pub(super) fn find_cases(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    find_cases_in(dir, out, &mut BTreeSet::new())
}

fn find_cases_in(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut BTreeSet<(u64, u64)>,
) -> Result<(), String> {
    if let Ok(m) = std::fs::metadata(dir)
        && !seen.insert((m.dev(), m.ino()))
    {
        return Ok(());
    }
    if is_case(dir)? {
        out.push(dir.to_path_buf());
    }
    for p in entries(dir)? {
        if p.is_dir() && !is_hidden(&p) {
            find_cases_in(&p, out, seen)?;
        }
    }
    Ok(())
}

/// Manifests of a case: files in it and in subdirectories that are not cases, sorted.
/// Regular files only; dangling symlinks are skipped with a warning and every directory is
/// read once (symlink loops), as for `-f`. See: #11
fn manifests(dir: &Path, top: bool, out: &mut Vec<PathBuf>, walk: &mut Walk) -> Result<(), String> {
    if !top && is_case(dir)? {
        return Ok(());
    }
    for p in entries(dir)? {
        if p.is_dir() {
            if is_hidden(&p) {
                continue;
            }
            match std::fs::metadata(&p) {
                Ok(m) if !walk.seen_dirs.insert((m.dev(), m.ino())) => {
                    walk.warnings.push(
                        policy_compiler::Diagnostic::file_error(
                            &p.display().to_string(),
                            None,
                            "skipped: directory already read (a symlink loop or a second link to it)",
                        )
                        .warning(),
                    );
                }
                _ => manifests(&p, false, out, walk)?,
            }
            continue;
        }
        let name = file_name(&p);
        if name != "expect.yaml" && golden_kind(name).is_none() {
            inputs::collect(&p, false, out, &mut walk.warnings, &mut walk.seen_dirs)
                .map_err(|d| d.to_string())?;
        }
    }
    Ok(())
}

/// State of a walk over a case's manifests.
#[derive(Default)]
struct Walk {
    warnings: Vec<policy_compiler::Diagnostic>,
    seen_dirs: BTreeSet<(u64, u64)>,
}

/// The case's manifests, loaded: inputs, load diagnostics and the number of files.
pub(super) fn case_inputs(
    dir: &Path,
) -> Result<(Inputs, Vec<policy_compiler::Diagnostic>, usize), String> {
    let mut files = Vec::new();
    let mut walk = Walk::default();
    if let Ok(m) = std::fs::metadata(dir) {
        walk.seen_dirs.insert((m.dev(), m.ino()));
    }
    manifests(dir, true, &mut files, &mut walk)?;
    if files.is_empty() {
        return Err("no manifest (*.yaml, *.yml, *.json) in the case directory".to_owned());
    }
    let sources = Sources::read(&files, Limits::default()).map_err(|diags| {
        diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let (inputs, mut diags) = load(&sources.texts());
    diags.extend(walk.warnings);
    Ok((inputs, diags, files.len()))
}
