//! Files written atomically: a reader (the container runtime reading its CNI
//! configuration, the agent reading its records after a restart) sees the old content or
//! the new, never a partial file, even across a crash.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Suffix of the temporary file beside the target (`.<name>.netpol-tmp`): the CNI
/// runtime ignores it (not `.conf`, `.conflist` or `.json`), and so does the records
/// directory listing (not `.json`).
pub const TMP_SUFFIX: &str = ".netpol-tmp";

/// A step of [`write_atomic`] failed; the target is unchanged and the temporary file
/// removed.
#[derive(Debug)]
pub struct WriteError<E> {
    /// The file the step was about (the temporary file, or the target's directory).
    pub path: PathBuf,
    /// The step: `remove stale temporary file`, `create`, `chmod 644`, `fsync`,
    /// `rename to <target>`; [`WriteStep::Fill`] when the caller's `fill` failed.
    pub step: WriteStep<E>,
}

/// What failed in [`write_atomic`].
#[derive(Debug)]
pub enum WriteStep<E> {
    /// A file system operation (`op`) failed.
    Io {
        /// What was being done.
        op: String,
        /// The IO error.
        source: io::Error,
    },
    /// The caller's `fill` failed.
    Fill(E),
}

/// What [`write_atomic`] did beyond the write itself.
#[derive(Debug)]
#[must_use = "a failed directory fsync should be logged"]
pub struct Written {
    /// Fsync of the target's directory (which makes the rename durable). Best effort:
    /// the rename has happened, and a file system without directory fsync must not turn
    /// success into an error, so the caller decides whether to log it.
    pub dir_sync: io::Result<()>,
}

/// `.<name>.netpol-tmp` beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Writes `path` atomically: `fill` writes a temporary file in the same directory
/// ([`temp_path`], created new, a stale one from an interrupted run removed first),
/// which is given `mode` exactly (not masked by the umask), fsynced and renamed over
/// `path`; then the directory is fsynced ([`Written::dir_sync`]). On any error the
/// temporary file is removed and `path` is untouched.
///
/// `fill` gets the temporary file's path (for its own error messages) and the file.
pub fn write_atomic<E>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&Path, &mut File) -> Result<(), E>,
) -> Result<Written, WriteError<E>> {
    let tmp = TempFile {
        path: temp_path(path),
        keep: false,
    };
    let io_err = |op: String| {
        let p = tmp.path.clone();
        move |source| WriteError {
            path: p,
            step: WriteStep::Io { op, source },
        }
    };
    match fs::remove_file(&tmp.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("remove stale temporary file".into())(e));
        }
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp.path)
        .map_err(io_err("create".into()))?;
    fill(&tmp.path, &mut file).map_err(|e| WriteError {
        path: tmp.path.clone(),
        step: WriteStep::Fill(e),
    })?;
    // The umask applied at creation; set the mode exactly.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {mode:o}")))?;
    file.sync_all().map_err(io_err("fsync".into()))?;
    drop(file);
    fs::rename(&tmp.path, path).map_err(io_err(format!("rename to {}", path.display())))?;
    let mut tmp = tmp;
    tmp.keep = true;
    Ok(Written {
        dir_sync: sync_dir(path),
    })
}

/// Makes a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent(path)).and_then(|d| d.sync_all())
}

/// The directory of `path` (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes a temporary file unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "netpol-common-fs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_with_exact_mode_and_leaves_no_temporary_file() {
        let d = tempdir();
        let target = d.join("a.conflist");
        fs::write(&target, "old").unwrap();
        // A stale temporary file of an interrupted run is replaced.
        fs::write(temp_path(&target), "stale").unwrap();
        let w = write_atomic(&target, 0o640, |_, f| f.write_all(b"new")).unwrap();
        assert!(w.dir_sync.is_ok());
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o640);
        assert!(!temp_path(&target).exists());
        assert_eq!(temp_path(&target), d.join(".a.conflist.netpol-tmp"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_fill_keeps_the_old_file_and_removes_the_temporary_one() {
        let d = tempdir();
        let target = d.join("r.json");
        fs::write(&target, "old").unwrap();
        let err = write_atomic(&target, 0o644, |_, f| {
            f.write_all(b"partial").unwrap();
            Err("disk on fire")
        })
        .unwrap_err();
        assert!(matches!(err.step, WriteStep::Fill("disk on fire")));
        assert_eq!(err.path, temp_path(&target));
        assert_eq!(fs::read_to_string(&target).unwrap(), "old");
        assert!(!temp_path(&target).exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_directory_is_a_create_error() {
        let d = tempdir();
        let target = d.join("no/such/dir/x.json");
        let err = write_atomic(&target, 0o644, |_, _| Ok::<(), ()>(())).unwrap_err();
        assert!(
            matches!(&err.step, WriteStep::Io { op, source } if op == "create" && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
