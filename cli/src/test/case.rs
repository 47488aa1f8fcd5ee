//! `netpol test`: finding cases and loading their manifests.
//!
//! What a case is (which directory, which files are manifests, `expect.yaml`, goldens) is
//! the compiler's one definition, [`policy_compiler::case`], shared with testkit and the
//! compiler's tests (#9); this module only reads the filesystem for it: directories in
//! sorted order, each read once (symlink loops, with a warning inside a case), and the
//! manifests through the same regular-file checks as `-f` (dangling symlinks skipped with
//! a warning). See: #11

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use policy_compiler::case::{Case, Entry, discover};
use policy_compiler::{Diagnostic, Inputs, load};

use crate::inputs::{self, Limits, Sources};

pub(super) fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot read directory: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    out.sort();
    Ok(out)
}

/// Every case under `dir` (itself included), sorted, with the warnings of the walk (a
/// directory reached again through a symlink is read once) by the case they belong to.
pub(super) fn find_cases(dir: &Path) -> Result<Vec<(Case, Vec<Diagnostic>)>, String> {
    let mut seen = BTreeSet::new();
    let mut skipped = Vec::new();
    let cases = discover(dir, |d| -> Result<_, String> {
        if let Ok(m) = std::fs::metadata(d)
            && !seen.insert((m.dev(), m.ino()))
        {
            skipped.push(d.to_path_buf());
            return Ok(None);
        }
        let listed = entries(d)?;
        Ok(Some(
            listed
                .into_iter()
                .map(|p| {
                    let is_dir = p.is_dir();
                    Entry { path: p, is_dir }
                })
                .collect(),
        ))
    })?;
    let mut out: Vec<(Case, Vec<Diagnostic>)> =
        cases.into_iter().map(|c| (c, Vec::new())).collect();
    for d in skipped {
        // The innermost case holding the directory; outside every case it is no one's.
        if let Some((_, warnings)) = out.iter_mut().rev().find(|(c, _)| d.starts_with(&c.dir)) {
            warnings.push(
                Diagnostic::file_error(
                    &d.display().to_string(),
                    None,
                    "skipped: directory already read (a symlink loop or a second link to it)",
                )
                .warning(),
            );
        }
    }
    Ok(out)
}

/// The case's manifests, loaded: inputs, load diagnostics (with the walk's `warnings`)
/// and the number of files.
pub(super) fn case_inputs(
    case: &Case,
    warnings: &[Diagnostic],
) -> Result<(Inputs, Vec<Diagnostic>, usize), String> {
    let mut files = Vec::new();
    let mut warnings = warnings.to_vec();
    for p in &case.manifests {
        inputs::collect(p, false, &mut files, &mut warnings, &mut BTreeSet::new())
            .map_err(|d| d.to_string())?;
    }
    if files.is_empty() {
        return Err("no manifest (*.yaml, *.yml, *.json) in the case directory".to_owned());
    }
    let sources = Sources::read(&files, Limits::default()).map_err(|diags| {
        diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(
                "
",
            )
    })?;
    let (inputs, mut diags) = load(&sources.texts());
    diags.extend(warnings);
    Ok((inputs, diags, files.len()))
}
