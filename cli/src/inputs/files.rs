//! Reading input files without trusting the file system: only regular files are opened
//! (checked before opening and again on the open file, which is opened `O_NONBLOCK` so a
//! FIFO or device can never block), sizes are capped per file and in total, dangling
//! symlinks in a directory (an editor's `.#file.yaml` lock) are skipped with a warning
//! naming the link, and a directory reached twice (a symlink loop) is read once. See: #11

use std::collections::BTreeSet;
use std::fs::Metadata;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use policy_compiler::Diagnostic;

/// One MiB.
const MIB: u64 = 1024 * 1024;

/// Default cap on each input file and on all inputs together, in MiB.
pub(crate) const DEFAULT_MAX_INPUT_MIB: u64 = 64;

/// Size caps of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes of one file (or of stdin).
    pub(crate) per_file: u64,
    /// Bytes of all inputs together.
    pub(crate) total: u64,
}

impl Limits {
    /// `mib` MiB per file and in total.
    pub(crate) fn mib(mib: u64) -> Self {
        let b = mib.saturating_mul(MIB);
        Limits {
            per_file: b,
            total: b,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::mib(DEFAULT_MAX_INPUT_MIB)
    }
}

/// What kind of non-regular file `meta` is, for messages.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, meta: &Metadata) -> String {
    format!(
        "{}: {}: netpol reads only regular files",
        path.display(),
        kind_of(meta)
    )
}

fn show(n: u64) -> String {
    if n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// Collects the files to read under `p`: `p` itself when given explicitly (it must then be
/// a regular file or a directory), else files named `*.yaml`, `*.yml` or `*.json`,
/// directories recursively in name order. Problems that make the input unreadable are
/// errors; a dangling symlink inside a directory and a directory reached a second time are
/// warnings.
pub(crate) fn collect(
    p: &Path,
    explicit: bool,
    out: &mut Vec<PathBuf>,
    warnings: &mut Vec<Diagnostic>,
    seen_dirs: &mut BTreeSet<(u64, u64)>,
) -> Result<(), Box<Diagnostic>> {
    let name = p.display().to_string();
    let error = |msg: String| Box::new(Diagnostic::file_error(&name, None, msg));
    let lmeta =
        std::fs::symlink_metadata(p).map_err(|e| error(format!("cannot read path: {e}")))?;
    let meta = if lmeta.file_type().is_symlink() {
        match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) if !explicit => {
                let target = std::fs::read_link(p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                warnings.push(
                    Diagnostic::file_error(
                        &name,
                        None,
                        format!("skipped: dangling symlink to {target} ({e})"),
                    )
                    .warning(),
                );
                return Ok(());
            }
            Err(e) => {
                return Err(error(format!("cannot follow symlink: {e}")));
            }
        }
    } else {
        lmeta
    };
    if meta.is_dir() {
        if !seen_dirs.insert((meta.dev(), meta.ino())) {
            warnings.push(
                Diagnostic::file_error(
                    &name,
                    None,
                    "skipped: directory already read (a symlink loop or a second link to it)",
                )
                .warning(),
            );
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| error(format!("cannot read directory: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, false, out, warnings, seen_dirs)?;
        }
        return Ok(());
    }
    let wanted = explicit
        || matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
    if !wanted {
        return Ok(());
    }
    if !meta.is_file() {
        return Err(error(not_regular(p, &meta)));
    }
    out.push(p.to_path_buf());
    Ok(())
}

/// Reads a regular file as UTF-8 within the per-file cap and what is left of the total
/// (`budget`, decreased by the bytes read). Never blocks on a FIFO or device: the type is
/// checked before opening, the file is opened `O_NONBLOCK`, and checked again once open.
pub(crate) fn read_regular(
    path: &Path,
    limits: Limits,
    budget: &mut u64,
) -> Result<String, String> {
    let before = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if !before.is_file() {
        return Err(not_regular(path, &before));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path)
        .map_err(|e| format!("cannot read file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    if meta.len() > limits.per_file {
        return Err(over_file_cap(path, limits));
    }
    read_capped(file, path, limits, budget)
}

/// Reads stdin within the caps.
pub(crate) fn read_stdin(limits: Limits, budget: &mut u64) -> Result<String, String> {
    read_capped(std::io::stdin().lock(), Path::new("-"), limits, budget)
}

fn over_file_cap(path: &Path, limits: Limits) -> String {
    format!(
        "{}: larger than the input cap of {} per file (raise it with --max-input-mib)",
        path.display(),
        show(limits.per_file)
    )
}

fn read_capped(
    r: impl std::io::Read,
    path: &Path,
    limits: Limits,
    budget: &mut u64,
) -> Result<String, String> {
    let cap = limits.per_file.min(*budget);
    let mut bytes = Vec::new();
    r.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    let n = bytes.len() as u64;
    if n > cap {
        return Err(if cap == limits.per_file {
            over_file_cap(path, limits)
        } else {
            format!(
                "{}: inputs together are larger than the cap of {} (raise it with --max-input-mib)",
                path.display(),
                show(limits.total)
            )
        });
    }
    *budget -= n;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}
