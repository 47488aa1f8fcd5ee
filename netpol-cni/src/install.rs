//! Putting the `netpol-cni` chained plugin on a node, and taking it off again.
//!
//! Two steps, in this order (the runtime must never find an entry whose binary is
//! missing):
//! 1. [`install_binary`] copies the plugin to `<bin dir>/netpol-cni` atomically (a
//!    temporary file in the same directory, fsync, mode 0755, rename; a running copy is
//!    never written to, so no `ETXTBSY`) and skips the copy when the content is identical.
//! 2. [`chain`] adds a [`PluginConfig`] to the network configuration the runtime uses:
//!    the lexicographically first file of the configuration directory ending in
//!    `.conflist`, `.conf` or `.json` (what libcni, containerd and CRI-O pick).
//!    - A configuration list (it has `plugins`) gets the entry appended as the last
//!      plugin, or an existing `"type": "netpol-cni"` entry replaced in place. When the
//!      file already holds exactly the wanted entry nothing is written
//!      ([`ChainOutcome::Unchanged`]), so a second run leaves it byte-identical.
//!    - A single-plugin configuration (`.conf`/`.json` without `plugins`) is converted:
//!      `<stem>.conflist` is written with `cniVersion` and `name` of the original and
//!      `plugins: [<the original minus cniVersion and name>, <entry>]`, then the
//!      original is renamed to `<file>.netpol-orig` ([`ORIG_SUFFIX`], an extension the
//!      runtime ignores) so the new list is the first file. [`unchain`] renames it back.
//!
//! Every write is a temporary file (`.<name>.netpol-tmp`, ignored by the runtime) in the
//! same directory, fsynced and renamed over the target with the target's mode: the
//! runtime sees the old or the new file, never a partial one, and a failed write removes
//! its temporary file. Other fields and plugins are kept as they are (as values: keys
//! come out sorted, since serde_json's `preserve_order` is not enabled).
//!
//! [`unchain`] undoes [`chain`] (idempotent); [`is_chained`] is the cheap check the agent
//! can repeat to notice that the primary CNI rewrote its configuration. [`parse_args`]
//! (clap; `netpol-cni install --help`) and [`run`] are `netpol-cni install|uninstall`
//! for the plugin binary.
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//! use netpol_cni::install::{chain, install_binary, PluginConfig};
//!
//! # fn main() -> Result<(), netpol_cni::install::InstallError> {
//! let entry = PluginConfig { fail_open: true, ..PluginConfig::default() };
//! install_binary(Path::new("/usr/local/bin/netpol-cni"), Path::new("/host/opt/cni/bin"))?;
//! let outcome = chain(Path::new("/host/etc/cni/net.d"), &entry)?;
//! println!("{outcome}"); // e.g. "/host/etc/cni/net.d/10-flannel.conflist: entry added"
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::{self, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use netpol_common::fs::{WriteStep, parent};
use serde_json::{Map, Value, json};

pub use crate::config::{DEFAULT_TIMEOUT_SECONDS, PLUGIN_TYPE, PluginConfig};
/// The file name of the plugin binary in the CNI bin directory.
pub const BINARY_NAME: &str = "netpol-cni";
/// Appended to a single-plugin configuration [`chain`] converted to a list: the runtime
/// only reads `.conflist`, `.conf` and `.json` files, so it ignores the original.
pub const ORIG_SUFFIX: &str = ".netpol-orig";
/// Extensions of the files the runtime reads network configurations from.
const CONFIG_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];
/// Default CNI bin directory (the host's `/opt/cni/bin` as the DaemonSet mounts it).
pub const DEFAULT_BIN_DIR: &str = "/host/opt/cni/bin";
/// Default CNI configuration directory (the host's `/etc/cni/net.d`, mounted).
pub const DEFAULT_CONF_DIR: &str = "/host/etc/cni/net.d";

/// Errors of installing, chaining and unchaining; each names the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A filesystem operation failed.
    #[error("{}: cannot {action}", path.display())]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// What was being done (`read`, `rename to …`, …).
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The configuration directory has no `.conflist`, `.conf` or `.json` file.
    #[error("{}: no CNI network configuration (*.conflist, *.conf, *.json)", dir.display())]
    NoConfig {
        /// The configuration directory.
        dir: PathBuf,
    },
    /// A configuration or entry file is not valid JSON.
    #[error("{}: invalid JSON at line {line}, column {column}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's error (what was expected).
        #[source]
        source: serde_json::Error,
    },
    /// A configuration file is JSON but not an object.
    #[error("{}: not a JSON object", path.display())]
    NotAnObject {
        /// The file.
        path: PathBuf,
    },
    /// `plugins` of a configuration list is not an array.
    #[error("{}: `plugins` is not an array", path.display())]
    PluginsNotArray {
        /// The file.
        path: PathBuf,
    },
    /// A required string field is missing (`cniVersion`; `name` and `type` of a
    /// single-plugin configuration; `plugins` of a `.conflist`).
    #[error("{}: `{field}` is missing or not a {expected}", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
        /// Its JSON type (`string`, `array`).
        expected: &'static str,
    },
    /// A file netpol-cni would replace or delete exists but was not written by it (it has
    /// no `netpol-cni` plugin), so it is left alone.
    #[error("{}: exists and has no netpol-cni plugin, not replacing it", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// Converting `path` to a list would not make the list the runtime's choice: another
    /// configuration file sorts between the two names.
    #[error(
        "{}: converting it to {} would not take effect: {} sorts first",
        path.display(),
        list.display(),
        first.display()
    )]
    Shadowed {
        /// The single-plugin configuration.
        path: PathBuf,
        /// The list it would become.
        list: PathBuf,
        /// The file the runtime would read instead.
        first: PathBuf,
    },
    /// An `--entry` file is not a valid plugin entry (wrong `type`, unknown field, wrong
    /// value type).
    #[error("{}: invalid netpol-cni entry", path.display())]
    InvalidEntry {
        /// The file.
        path: PathBuf,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// The path of the running executable (the default `--source`) is unknown.
    #[error("cannot find the netpol-cni executable, pass --source")]
    CurrentExe {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path, action: impl Into<String>) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    let action = action.into();
    move |source| InstallError::Io {
        path,
        action,
        source,
    }
}

/// Parses an entry in [`PluginConfig::to_json`]'s form (`text` read from `path`, which
/// errors name): `type` must be `netpol-cni`; missing fields take their defaults; unknown
/// fields are errors (a typo must not silently become a default).
pub fn parse_entry(text: &str, path: &Path) -> Result<PluginConfig, InstallError> {
    let value: Value = serde_json::from_str(text).map_err(|e| json_error(path, e))?;
    PluginConfig::from_entry(value).map_err(|source| InstallError::InvalidEntry {
        path: path.to_owned(),
        source,
    })
}

/// Reads and [`parse_entry`]s an entry file.
pub fn read_entry(path: &Path) -> Result<PluginConfig, InstallError> {
    let text = fs::read_to_string(path).map_err(io_err(path, "read"))?;
    parse_entry(&text, path)
}

fn json_error(path: &Path, source: serde_json::Error) -> InstallError {
    InstallError::Json {
        path: path.to_owned(),
        line: source.line(),
        column: source.column(),
        source,
    }
}

/// What [`install_binary`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledBinary {
    /// `<bin dir>/netpol-cni`.
    pub path: PathBuf,
    /// False when the installed binary already had the same content.
    pub copied: bool,
}

impl fmt::Display for InstalledBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.copied {
            "installed"
        } else {
            "up to date"
        };
        write!(f, "{}: {what}", self.path.display())
    }
}

/// Copies `src` to `bin_dir/netpol-cni` atomically with mode 0755, unless that file
/// already has the same content (then only its mode is corrected).
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<InstalledBinary, InstallError> {
    let dst = bin_dir.join(BINARY_NAME);
    if same_content(src, &dst)? {
        let mode = fs::metadata(&dst).map_err(io_err(&dst, "stat"))?.mode() & 0o7777;
        if mode != 0o755 {
            fs::set_permissions(&dst, Permissions::from_mode(0o755))
                .map_err(io_err(&dst, "chmod 0755"))?;
        }
        return Ok(InstalledBinary {
            path: dst,
            copied: false,
        });
    }
    let mut from = File::open(src).map_err(io_err(src, "open"))?;
    write_atomic(&dst, 0o755, |tmp, file| {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = from.read(&mut buf).map_err(io_err(src, "read"))?;
            if n == 0 {
                return Ok(());
            }
            file.write_all(&buf[..n]).map_err(io_err(tmp, "write"))?;
        }
    })?;
    Ok(InstalledBinary {
        path: dst,
        copied: true,
    })
}

/// Whether `dst` exists with the content of `src`, compared in chunks (the binary can be
/// larger than the init container's memory limit allows twice).
fn same_content(src: &Path, dst: &Path) -> Result<bool, InstallError> {
    let mut b = match File::open(dst) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(dst, "open")(e)),
    };
    let mut a = File::open(src).map_err(io_err(src, "open"))?;
    let len = |f: &File, p: &Path| f.metadata().map(|m| m.len()).map_err(io_err(p, "stat"));
    if len(&a, src)? != len(&b, dst)? {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0; 64 * 1024], vec![0; 64 * 1024]);
    loop {
        let n = a.read(&mut x).map_err(io_err(src, "read"))?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n]).map_err(io_err(dst, "read"))?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// Writes `path` atomically ([`netpol_common::fs::write_atomic`]: temporary file
/// `.<name>.netpol-tmp` in the same directory, ignored by the runtime, exact mode, fsync,
/// rename, directory fsync); on any error the temporary file is removed and `path` is
/// untouched.
fn write_atomic(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&Path, &mut File) -> Result<(), InstallError>,
) -> Result<(), InstallError> {
    let written = netpol_common::fs::write_atomic(path, mode, fill).map_err(|e| match e.step {
        WriteStep::Fill(e) => e,
        WriteStep::Io { op, source } => io_err(&e.path, op)(source),
    })?;
    if let Err(e) = written.dir_sync {
        log_dir_sync(path, &e);
    }
    Ok(())
}

fn write_json_atomic(path: &Path, mode: u32, value: &Value) -> Result<(), InstallError> {
    // `{:#}` is serde_json's pretty printer, infallible for a Value.
    let text = format!("{value:#}\n");
    write_atomic(path, mode, |tmp, file| {
        file.write_all(text.as_bytes())
            .map_err(io_err(tmp, "write"))
    })
}

/// Makes a rename in `path`'s directory durable. Best effort: the rename has happened,
/// and a filesystem without directory fsync must not turn success into an error.
fn sync_dir(path: &Path) {
    if let Err(e) = File::open(parent(path)).and_then(|d| d.sync_all()) {
        log_dir_sync(path, &e);
    }
}

fn log_dir_sync(path: &Path, e: &io::Error) {
    tracing::warn!(dir = %parent(path).display(), error = %e, "cannot fsync directory");
}

fn rename(from: &Path, to: &Path) -> Result<(), InstallError> {
    fs::rename(from, to).map_err(io_err(from, format!("rename to {}", to.display())))?;
    sync_dir(to);
    Ok(())
}

fn remove(path: &Path) -> Result<(), InstallError> {
    fs::remove_file(path).map_err(io_err(path, "remove"))?;
    sync_dir(path);
    Ok(())
}

fn file_mode(path: &Path) -> Result<u32, InstallError> {
    Ok(fs::metadata(path).map_err(io_err(path, "stat"))?.mode() & 0o7777)
}

/// The network configuration files of `dir` in the order the runtime considers them
/// (byte order of the names; the runtime uses the first).
fn config_files(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir, "read directory"))? {
        let path = e.map_err(io_err(dir, "read directory"))?.path();
        let is_config = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| CONFIG_EXTENSIONS.contains(&x));
        if !is_config {
            continue;
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => files.push(path),
            Ok(_) => {}
            // A dangling symlink: nothing the runtime can read either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "stat")(e)),
        }
    }
    files.sort();
    Ok(files)
}

/// The configuration file the runtime uses, if any.
fn first_config(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(config_files(dir)?.into_iter().next())
}

fn read_config(path: &Path) -> Result<Map<String, Value>, InstallError> {
    let bytes = fs::read(path).map_err(io_err(path, "read"))?;
    match serde_json::from_slice(&bytes).map_err(|e| json_error(path, e))? {
        Value::Object(m) => Ok(m),
        _ => Err(InstallError::NotAnObject {
            path: path.to_owned(),
        }),
    }
}

fn require_str<'a>(
    config: &'a Map<String, Value>,
    field: &'static str,
    path: &Path,
) -> Result<&'a str, InstallError> {
    config
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| InstallError::MissingField {
            path: path.to_owned(),
            field,
            expected: "string",
        })
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// The `plugins` array of a configuration: `Ok(None)` for a single-plugin
/// configuration, an error for a `.conflist` without it or a non-array.
fn plugins<'a>(
    config: &'a mut Map<String, Value>,
    path: &Path,
) -> Result<Option<&'a mut Vec<Value>>, InstallError> {
    let is_list_file = path.extension().is_some_and(|x| x == "conflist");
    match config.get_mut("plugins") {
        Some(Value::Array(p)) => Ok(Some(p)),
        Some(_) => Err(InstallError::PluginsNotArray {
            path: path.to_owned(),
        }),
        None if is_list_file => Err(InstallError::MissingField {
            path: path.to_owned(),
            field: "plugins",
            expected: "array",
        }),
        None => Ok(None),
    }
}

/// Whether the configuration at `path` is a list with a `netpol-cni` plugin.
fn has_entry(path: &Path) -> Result<bool, InstallError> {
    let mut config = read_config(path)?;
    Ok(plugins(&mut config, path)?.is_some_and(|p| p.iter().any(is_ours)))
}

/// What [`chain`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainOutcome {
    /// The entry was appended to this list.
    Added(PathBuf),
    /// This list had a different `netpol-cni` entry (or several); it was replaced.
    Updated(PathBuf),
    /// This list already had exactly the entry; nothing was written.
    Unchanged(PathBuf),
    /// A single-plugin configuration was converted to a list with the entry.
    Converted {
        /// The original configuration (now renamed to `original`).
        from: PathBuf,
        /// The list written.
        to: PathBuf,
        /// Where the original went (`<from>.netpol-orig`).
        original: PathBuf,
    },
}

impl ChainOutcome {
    /// The configuration list holding the entry now.
    pub fn path(&self) -> &Path {
        match self {
            Self::Added(p) | Self::Updated(p) | Self::Unchanged(p) => p,
            Self::Converted { to, .. } => to,
        }
    }
}

impl fmt::Display for ChainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Added(p) => write!(f, "{}: entry added", p.display()),
            Self::Updated(p) => write!(f, "{}: entry updated", p.display()),
            Self::Unchanged(p) => write!(f, "{}: entry up to date", p.display()),
            Self::Converted { from, to, original } => write!(
                f,
                "{}: written with the entry from {} (original kept as {})",
                to.display(),
                from.display(),
                original.display()
            ),
        }
    }
}

/// Adds `entry` to the network configuration the runtime uses in `conf_dir` (see the
/// module docs). Idempotent: with the entry already in place nothing is written.
pub fn chain(conf_dir: &Path, entry: &PluginConfig) -> Result<ChainOutcome, InstallError> {
    let files = config_files(conf_dir)?;
    let Some(first) = files.first() else {
        return Err(InstallError::NoConfig {
            dir: conf_dir.to_owned(),
        });
    };
    let mut config = read_config(first)?;
    require_str(&config, "cniVersion", first)?;
    let want = entry.to_json();
    let Some(plugins) = plugins(&mut config, first)? else {
        return convert(first, &files[1..], config, want);
    };
    let ours: Vec<usize> = (0..plugins.len())
        .filter(|&i| is_ours(&plugins[i]))
        .collect();
    let outcome = match ours.split_first() {
        None => {
            plugins.push(want);
            ChainOutcome::Added(first.clone())
        }
        Some((&i, rest)) => {
            if rest.is_empty() && plugins[i] == want {
                return Ok(ChainOutcome::Unchanged(first.clone()));
            }
            plugins[i] = want;
            for &j in rest.iter().rev() {
                plugins.remove(j);
            }
            ChainOutcome::Updated(first.clone())
        }
    };
    write_json_atomic(first, file_mode(first)?, &Value::Object(config))?;
    Ok(outcome)
}

/// `<stem>.conflist` beside a single-plugin configuration.
fn list_path(single: &Path) -> PathBuf {
    let mut name = single.file_stem().unwrap_or_default().to_owned();
    name.push(".conflist");
    single.with_file_name(name)
}

fn orig_path(single: &Path) -> PathBuf {
    let mut name = single.as_os_str().to_owned();
    name.push(ORIG_SUFFIX);
    PathBuf::from(name)
}

/// Converts the single-plugin configuration `path` (`others`: the configuration files
/// sorting after it) into `<stem>.conflist` with `want` as second plugin.
fn convert(
    path: &Path,
    others: &[PathBuf],
    mut config: Map<String, Value>,
    want: Value,
) -> Result<ChainOutcome, InstallError> {
    let version = require_str(&config, "cniVersion", path)?.to_owned();
    let name = require_str(&config, "name", path)?.to_owned();
    require_str(&config, "type", path)?;
    let list = list_path(path);
    if let Some(first) = others.iter().find(|o| **o != list && **o < list) {
        return Err(InstallError::Shadowed {
            path: path.to_owned(),
            list,
            first: first.clone(),
        });
    }
    // Our own list from an earlier conversion (the primary CNI has since rewritten the
    // original) is replaced; anything else is not ours to overwrite.
    if fs::symlink_metadata(&list).is_ok() && !has_entry(&list)? {
        return Err(InstallError::Foreign { path: list });
    }
    config.remove("cniVersion");
    config.remove("name");
    let converted = json!({
        "cniVersion": version,
        "name": name,
        "plugins": [Value::Object(config), want],
    });
    // The list first: until the rename below the runtime keeps using the original, and no
    // moment exists without a configuration.
    write_json_atomic(&list, file_mode(path)?, &converted)?;
    let original = orig_path(path);
    rename(path, &original)?;
    Ok(ChainOutcome::Converted {
        from: path.to_owned(),
        to: list,
        original,
    })
}

/// One change [`unchain`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnchainAction {
    /// The `netpol-cni` plugin was removed from this list.
    Removed(PathBuf),
    /// A converted configuration was put back: `original` restored (or, when the
    /// primary CNI had rewritten it meanwhile, its `.netpol-orig` copy dropped) and the
    /// list [`chain`] wrote deleted.
    Restored {
        /// The single-plugin configuration.
        original: PathBuf,
        /// The list deleted (`None`: it was already gone).
        deleted: Option<PathBuf>,
    },
}

impl fmt::Display for UnchainAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Removed(p) => write!(f, "{}: entry removed", p.display()),
            Self::Restored { original, deleted } => {
                write!(f, "{}: restored", original.display())?;
                match deleted {
                    Some(d) => write!(f, " ({} deleted)", d.display()),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Undoes [`chain`] in `conf_dir`: restores every configuration it converted (a
/// `*.netpol-orig` whose list still carries the entry) and removes the `netpol-cni`
/// plugin from the configuration the runtime uses. Idempotent: an empty result means
/// nothing was chained.
pub fn unchain(conf_dir: &Path) -> Result<Vec<UnchainAction>, InstallError> {
    let mut actions = Vec::new();
    let mut origs = Vec::new();
    for e in fs::read_dir(conf_dir).map_err(io_err(conf_dir, "read directory"))? {
        let path = e.map_err(io_err(conf_dir, "read directory"))?.path();
        if let Some(single) = path
            .to_str()
            .and_then(|p| p.strip_suffix(ORIG_SUFFIX))
            .map(PathBuf::from)
        {
            origs.push((path, single));
        }
    }
    origs.sort();
    for (orig, single) in origs {
        let list = list_path(&single);
        let list_exists = fs::symlink_metadata(&list).is_ok();
        if list_exists && !has_entry(&list)? {
            return Err(InstallError::Foreign { path: list });
        }
        if fs::symlink_metadata(&single).is_ok() {
            // Rewritten by the primary CNI after the conversion: the newer file wins.
            remove(&orig)?;
        } else {
            rename(&orig, &single)?;
        }
        let deleted = if list_exists {
            remove(&list)?;
            Some(list)
        } else {
            None
        };
        actions.push(UnchainAction::Restored {
            original: single,
            deleted,
        });
    }
    if let Some(first) = first_config(conf_dir)? {
        let mut config = read_config(&first)?;
        if let Some(plugins) = plugins(&mut config, &first)? {
            let before = plugins.len();
            plugins.retain(|p| !is_ours(p));
            if plugins.len() != before {
                write_json_atomic(&first, file_mode(&first)?, &Value::Object(config))?;
                actions.push(UnchainAction::Removed(first));
            }
        }
    }
    Ok(actions)
}

/// Whether the configuration the runtime uses in `conf_dir` has the `netpol-cni` plugin
/// (false when there is no configuration at all). One directory listing and one read.
pub fn is_chained(conf_dir: &Path) -> Result<bool, InstallError> {
    match first_config(conf_dir)? {
        Some(first) => has_entry(&first),
        None => Ok(false),
    }
}

/// Removes `bin_dir/netpol-cni`; false when it was not there.
pub fn remove_binary(bin_dir: &Path) -> Result<bool, InstallError> {
    let path = bin_dir.join(BINARY_NAME);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(&path, "remove")(e)),
    }
}

/// `netpol-cni install` settings (its flags; the doc comments are the `--help` text).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
// Repeating a flag is not an error: the last one wins, as with most tools.
#[command(args_override_self = true)]
pub struct InstallOptions {
    /// CNI bin directory
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BIN_DIR)]
    pub bin_dir: PathBuf,
    /// CNI network configuration directory
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CONF_DIR)]
    pub conf_dir: PathBuf,
    /// Plugin binary to copy [default: this executable]
    #[arg(long, value_name = "PATH")]
    pub source: Option<PathBuf>,
    /// JSON plugin entry {"type":"netpol-cni","agentSocket","timeoutSeconds","failOpen"}
    /// (the DaemonSet's ConfigMap); the flags below override its fields
    #[arg(long = "entry", value_name = "FILE")]
    pub entry_file: Option<PathBuf>,
    /// Agent socket the plugin talks to [default: the entry's, else /run/netpol/cni.sock]
    #[arg(long, value_name = "PATH")]
    pub agent_socket: Option<PathBuf>,
    /// How long the plugin waits for the agent, 1 to 600 [default: the entry's, else 10]
    // The plugin refuses a conflist outside this range: never write one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(crate::config::TIMEOUT_SECONDS))]
    pub timeout_seconds: Option<u64>,
    /// Let Pods start when the agent does not answer (sets failOpen; without it the entry
    /// decides, default: fail closed)
    #[arg(long)]
    pub fail_open: bool,
}

impl Default for InstallOptions {
    /// The options of a bare `netpol-cni install` (what [`parse_args`] returns for it).
    fn default() -> Self {
        Self {
            bin_dir: PathBuf::from(DEFAULT_BIN_DIR),
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            source: None,
            entry_file: None,
            agent_socket: None,
            timeout_seconds: None,
            fail_open: false,
        }
    }
}

impl InstallOptions {
    /// The entry to chain: the `--entry` file (or the defaults), then the flags.
    pub fn entry(&self) -> Result<PluginConfig, InstallError> {
        let mut entry = match &self.entry_file {
            Some(f) => read_entry(f)?,
            None => PluginConfig::default(),
        };
        if let Some(s) = &self.agent_socket {
            entry.agent_socket = s.clone();
        }
        if let Some(t) = self.timeout_seconds {
            entry.timeout_seconds = t;
        }
        entry.fail_open |= self.fail_open;
        Ok(entry)
    }
}

/// A parsed `netpol-cni install|uninstall` command line.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum InstallArgs {
    /// Copy netpol-cni to the CNI bin directory and chain it into the node's network
    /// configuration (idempotent)
    Install(InstallOptions),
    /// Unchain netpol-cni from the network configuration, then remove its binary
    #[command(args_override_self = true)]
    Uninstall {
        /// CNI bin directory
        #[arg(long, value_name = "DIR", default_value = DEFAULT_BIN_DIR)]
        bin_dir: PathBuf,
        /// CNI network configuration directory
        #[arg(long, value_name = "DIR", default_value = DEFAULT_CONF_DIR)]
        conf_dir: PathBuf,
    },
}

/// `netpol-cni install|uninstall` as clap sees it (the plugin itself takes no arguments:
/// the runtime passes `CNI_*` variables and stdin).
#[derive(Debug, clap::Parser)]
#[command(
    name = BINARY_NAME,
    about = "netpol-cni: chained CNI plugin of netpol; install or uninstall it on a node",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: InstallArgs,
}

/// Parses the arguments after the program name (`install …` or `uninstall …`; `--help`
/// lists the flags); flags take `--flag VALUE` or `--flag=VALUE`, a repeated flag's last
/// value wins. Pure: the default `--source` is resolved by [`run`].
///
/// The error is clap's: [`clap::Error::exit`] prints it (a usage error names the flag and
/// exits 2; `--help` prints the help on stdout and exits 0).
pub fn parse_args(args: &[String]) -> Result<InstallArgs, clap::Error> {
    use clap::Parser as _;
    let argv = std::iter::once(BINARY_NAME).chain(args.iter().map(String::as_str));
    Cli::try_parse_from(argv).map(|cli| cli.command)
}

/// Runs a parsed command and returns a one-line summary of what changed.
///
/// `install` copies the binary before chaining (an entry must never point at a missing
/// binary); `uninstall` unchains before removing the binary, for the same reason.
pub fn run(args: &InstallArgs) -> Result<String, InstallError> {
    match args {
        InstallArgs::Install(o) => {
            let entry = o.entry()?;
            let source = match &o.source {
                Some(s) => s.clone(),
                None => {
                    std::env::current_exe().map_err(|source| InstallError::CurrentExe { source })?
                }
            };
            let binary = install_binary(&source, &o.bin_dir)?;
            let chained = chain(&o.conf_dir, &entry)?;
            Ok(format!("{binary}; {chained}"))
        }
        InstallArgs::Uninstall { bin_dir, conf_dir } => {
            let actions = unchain(conf_dir)?;
            let mut parts: Vec<String> = actions.iter().map(ToString::to_string).collect();
            if actions.is_empty() {
                parts.push(format!("{}: not chained", conf_dir.display()));
            }
            let path = bin_dir.join(BINARY_NAME);
            let removed = if remove_binary(bin_dir)? {
                "removed"
            } else {
                "not installed"
            };
            parts.push(format!("{}: {removed}", path.display()));
            Ok(parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd's default bridge configuration (`10-containerd-net.conflist`), plus an
    /// unrelated top-level field.
    const CONTAINERD: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "disableCheck": false,
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "promiscMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [{ "subnet": "10.88.0.0/16" }],
          [{ "subnet": "2001:4860:4860::/64" }]
        ],
        "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
"#;

    /// flannel's `10-flannel.conflist`.
    const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    { "type": "flannel", "delegate": { "hairpinMode": true, "isDefaultGateway": true } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
"#;

    /// A single-plugin configuration (the CNI bridge plugin's README example).
    const BRIDGE_CONF: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "type": "bridge",
  "bridge": "cnio0",
  "isGateway": true,
  "ipMasq": true,
  "ipam": {
    "type": "host-local",
    "ranges": [[{ "subnet": "10.22.0.0/16" }]],
    "routes": [{ "dst": "0.0.0.0/0" }]
  }
}
"#;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn json_of(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn entry_json_is_the_plugin_contract() {
        assert_eq!(
            PluginConfig::default().to_json(),
            json!({"type": "netpol-cni", "agentSocket": "/run/netpol/cni.sock",
                   "timeoutSeconds": 10, "failOpen": false})
        );
        let e = PluginConfig {
            agent_socket: "/x.sock".into(),
            timeout_seconds: 3,
            fail_open: true,
        };
        let p = Path::new("e.json");
        assert_eq!(parse_entry(&e.to_json().to_string(), p).unwrap(), e);
        assert_eq!(
            parse_entry(r#"{"type":"netpol-cni"}"#, p).unwrap(),
            PluginConfig::default()
        );
        for bad in [
            r#"{"type":"bridge"}"#,
            r#"{"type":"netpol-cni","logLevel":"info"}"#,
            r#"{"type":"netpol-cni","timeoutSeconds":"10"}"#,
            r#"{"agentSocket":"/x"}"#,
        ] {
            let err = parse_entry(bad, p).unwrap_err();
            assert!(
                matches!(err, InstallError::InvalidEntry { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn appends_to_a_conflist_keeping_everything_else() {
        let dir = dir_with(&[("10-containerd-net.conflist", CONTAINERD)]);
        let path = dir.path().join("10-containerd-net.conflist");
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        let before: Value = serde_json::from_str(CONTAINERD).unwrap();

        let out = chain(dir.path(), &PluginConfig::default()).unwrap();
        assert_eq!(out, ChainOutcome::Added(path.clone()));
        let after = json_of(&path);
        let mut expected = before.clone();
        expected["plugins"]
            .as_array_mut()
            .unwrap()
            .push(PluginConfig::default().to_json());
        assert_eq!(after, expected, "every other field and plugin as before");
        assert_eq!(mode(&path), 0o600, "mode kept");
        assert_eq!(
            names(dir.path()),
            ["10-containerd-net.conflist"],
            "no leftovers"
        );
        assert!(is_chained(dir.path()).unwrap());
    }

    #[test]
    fn a_second_run_changes_nothing() {
        let dir = dir_with(&[("10-flannel.conflist", FLANNEL)]);
        let path = dir.path().join("10-flannel.conflist");
        let entry = PluginConfig::default();
        chain(dir.path(), &entry).unwrap();
        let first = fs::read(&path).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        assert_eq!(
            chain(dir.path(), &entry).unwrap(),
            ChainOutcome::Unchanged(path.clone())
        );
        assert_eq!(fs::read(&path).unwrap(), first, "byte-identical");
        assert_eq!(
            fs::metadata(&path).unwrap().ino(),
            inode,
            "not even rewritten"
        );
    }

    #[test]
    fn a_changed_entry_is_updated_in_place() {
        let dir = dir_with(&[("10-flannel.conflist", FLANNEL)]);
        let path = dir.path().join("10-flannel.conflist");
        chain(dir.path(), &PluginConfig::default()).unwrap();
        // Another chained plugin added after ours, and a stale duplicate of ours.
        let mut v = json_of(&path);
        let plugins = v["plugins"].as_array_mut().unwrap();
        plugins.push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
        plugins.push(json!({"type": "netpol-cni", "logLevel": "debug"}));
        fs::write(&path, v.to_string()).unwrap();

        let entry = PluginConfig {
            timeout_seconds: 30,
            fail_open: true,
            ..PluginConfig::default()
        };
        assert_eq!(
            chain(dir.path(), &entry).unwrap(),
            ChainOutcome::Updated(path.clone())
        );
        let types: Vec<String> = json_of(&path)["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(types, ["flannel", "portmap", "netpol-cni", "bandwidth"]);
        assert_eq!(json_of(&path)["plugins"][2], entry.to_json());
        assert_eq!(
            chain(dir.path(), &entry).unwrap(),
            ChainOutcome::Unchanged(path)
        );
    }

    #[test]
    fn a_single_plugin_conf_is_converted_and_restored() {
        let dir = dir_with(&[("10-bridge.conf", BRIDGE_CONF)]);
        let conf = dir.path().join("10-bridge.conf");
        fs::set_permissions(&conf, Permissions::from_mode(0o640)).unwrap();
        let list = dir.path().join("10-bridge.conflist");
        let orig = dir.path().join("10-bridge.conf.netpol-orig");
        let entry = PluginConfig::default();

        assert!(!is_chained(dir.path()).unwrap());
        assert_eq!(
            chain(dir.path(), &entry).unwrap(),
            ChainOutcome::Converted {
                from: conf.clone(),
                to: list.clone(),
                original: orig.clone(),
            }
        );
        assert_eq!(
            names(dir.path()),
            ["10-bridge.conf.netpol-orig", "10-bridge.conflist"]
        );
        let mut plugin: Value = serde_json::from_str(BRIDGE_CONF).unwrap();
        let plugin_map = plugin.as_object_mut().unwrap();
        plugin_map.remove("cniVersion");
        plugin_map.remove("name");
        assert_eq!(
            json_of(&list),
            json!({"cniVersion": "0.4.0", "name": "mynet",
                   "plugins": [plugin, entry.to_json()]})
        );
        assert_eq!(mode(&list), 0o640);
        assert_eq!(fs::read_to_string(&orig).unwrap(), BRIDGE_CONF);
        assert!(is_chained(dir.path()).unwrap());
        assert_eq!(
            chain(dir.path(), &entry).unwrap(),
            ChainOutcome::Unchanged(list.clone())
        );

        assert_eq!(
            unchain(dir.path()).unwrap(),
            [UnchainAction::Restored {
                original: conf.clone(),
                deleted: Some(list),
            }]
        );
        assert_eq!(names(dir.path()), ["10-bridge.conf"]);
        assert_eq!(
            fs::read_to_string(&conf).unwrap(),
            BRIDGE_CONF,
            "byte-identical"
        );
        assert_eq!(mode(&conf), 0o640);
        assert!(unchain(dir.path()).unwrap().is_empty(), "idempotent");
        assert!(!is_chained(dir.path()).unwrap());
    }

    #[test]
    fn a_conf_rewritten_after_conversion_is_converted_again() {
        let dir = dir_with(&[("10-bridge.conf", BRIDGE_CONF)]);
        let conf = dir.path().join("10-bridge.conf");
        chain(dir.path(), &PluginConfig::default()).unwrap();
        // The primary CNI writes its configuration again: the runtime now uses it.
        let newer = BRIDGE_CONF.replace("10.22.0.0/16", "10.23.0.0/16");
        fs::write(&conf, &newer).unwrap();
        assert!(!is_chained(dir.path()).unwrap());
        assert!(matches!(
            chain(dir.path(), &PluginConfig::default()).unwrap(),
            ChainOutcome::Converted { .. }
        ));
        let list = dir.path().join("10-bridge.conflist");
        assert_eq!(
            json_of(&list)["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.23.0.0/16"
        );
        unchain(dir.path()).unwrap();
        assert_eq!(names(dir.path()), ["10-bridge.conf"]);
        assert_eq!(fs::read_to_string(&conf).unwrap(), newer);
    }

    #[test]
    fn the_first_config_file_by_name_is_chained() {
        let dir = dir_with(&[
            ("05-notes.txt", "not JSON"),
            ("10-b.conf", BRIDGE_CONF),
            ("20-flannel.conflist", FLANNEL),
            ("99-late.json", BRIDGE_CONF),
        ]);
        fs::create_dir(dir.path().join("00-dir.conflist")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("01-dangling.conf")).unwrap();
        let out = chain(dir.path(), &PluginConfig::default()).unwrap();
        assert_eq!(out.path(), dir.path().join("10-b.conflist"));
        assert_eq!(
            fs::read_to_string(dir.path().join("20-flannel.conflist")).unwrap(),
            FLANNEL
        );

        // Byte order: ".conf" sorts before ".conflist", "10" before "9".
        let dir = dir_with(&[("9-a.conflist", FLANNEL), ("10-a.json", BRIDGE_CONF)]);
        let out = chain(dir.path(), &PluginConfig::default()).unwrap();
        assert_eq!(out.path(), dir.path().join("10-a.conflist"));
        let dir = dir_with(&[("10-a.conflist", FLANNEL), ("10-a.conf", "{")]);
        let err = chain(dir.path(), &PluginConfig::default()).unwrap_err();
        assert!(err.to_string().contains("10-a.conf:"), "{err}");
    }

    #[test]
    fn invalid_json_names_file_line_and_column() {
        let text = "{\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": [\n    {\"type\": \"bridge\",}\n  ]\n}\n";
        let dir = dir_with(&[("10-net.conflist", text)]);
        let err = chain(dir.path(), &PluginConfig::default()).unwrap_err();
        let InstallError::Json { path, line, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(path, &dir.path().join("10-net.conflist"));
        assert_eq!(*line, 4);
        let msg = err.to_string();
        assert!(
            msg.contains("10-net.conflist: invalid JSON at line 4, column"),
            "{msg}"
        );
        assert!(is_chained(dir.path()).is_err());
        assert_eq!(fs::read_to_string(path).unwrap(), text, "untouched");
        assert_eq!(names(dir.path()), ["10-net.conflist"]);
    }

    #[test]
    fn malformed_configs_are_errors_naming_the_file() {
        let entry = PluginConfig::default();
        let cases = [
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","plugins":{}}"#,
                "`plugins` is not an array",
            ),
            (
                "a.conflist",
                r#"{"name":"x","plugins":[]}"#,
                "`cniVersion` is missing",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"x"}"#,
                "`plugins` is missing",
            ),
            (
                "a.conf",
                r#"{"cniVersion":"1.0.0","type":"bridge"}"#,
                "`name` is missing",
            ),
            (
                "a.conf",
                r#"{"cniVersion":"1.0.0","name":"x"}"#,
                "`type` is missing",
            ),
            ("a.json", "[1, 2]", "not a JSON object"),
        ];
        for (file, text, want) in cases {
            let dir = dir_with(&[(file, text)]);
            let msg = chain(dir.path(), &entry).unwrap_err().to_string();
            assert!(
                msg.contains(file) && msg.contains(want),
                "{file} {text}: {msg}"
            );
            assert_eq!(names(dir.path()), [file], "{text}: nothing written");
        }
    }

    #[test]
    fn no_config_file_is_an_error_naming_the_directory() {
        let dir = dir_with(&[("README", "x"), ("10-x.conf.netpol-orig", BRIDGE_CONF)]);
        let err = chain(dir.path(), &PluginConfig::default()).unwrap_err();
        assert!(matches!(err, InstallError::NoConfig { .. }), "{err:?}");
        assert!(err.to_string().contains(&*dir.path().to_string_lossy()));
        assert!(!is_chained(dir.path()).unwrap());
        let missing = dir.path().join("missing");
        let err = chain(&missing, &PluginConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("missing: cannot read directory"),
            "{err}"
        );
    }

    #[test]
    fn conversion_refuses_foreign_and_shadowed_lists() {
        let dir = dir_with(&[
            ("10-bridge.conf", BRIDGE_CONF),
            ("10-bridge.conflist", FLANNEL),
        ]);
        let err = chain(dir.path(), &PluginConfig::default()).unwrap_err();
        assert!(matches!(err, InstallError::Foreign { .. }), "{err:?}");
        assert_eq!(
            fs::read_to_string(dir.path().join("10-bridge.conflist")).unwrap(),
            FLANNEL
        );
        // "10-bridge.conf.json" sorts between "10-bridge.conf" and "10-bridge.conflist".
        let dir = dir_with(&[
            ("10-bridge.conf", BRIDGE_CONF),
            ("10-bridge.conf.json", BRIDGE_CONF),
        ]);
        let err = chain(dir.path(), &PluginConfig::default()).unwrap_err();
        assert!(matches!(err, InstallError::Shadowed { .. }), "{err:?}");
        assert_eq!(names(dir.path()), ["10-bridge.conf", "10-bridge.conf.json"]);
    }

    #[test]
    fn unchain_removes_the_entry_and_is_idempotent() {
        let dir = dir_with(&[("10-flannel.conflist", FLANNEL)]);
        let path = dir.path().join("10-flannel.conflist");
        chain(dir.path(), &PluginConfig::default()).unwrap();
        assert_eq!(
            unchain(dir.path()).unwrap(),
            [UnchainAction::Removed(path.clone())]
        );
        assert_eq!(
            json_of(&path),
            serde_json::from_str::<Value>(FLANNEL).unwrap()
        );
        assert!(!is_chained(dir.path()).unwrap());
        let bytes = fs::read(&path).unwrap();
        assert!(unchain(dir.path()).unwrap().is_empty());
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_read_only_directory_fails_without_leaving_anything() {
        let dir = dir_with(&[("10-flannel.conflist", FLANNEL)]);
        let path = dir.path().join("10-flannel.conflist");
        fs::set_permissions(dir.path(), Permissions::from_mode(0o555)).unwrap();
        let probe = dir.path().join("probe");
        if fs::write(&probe, "").is_ok() {
            // root with CAP_DAC_OVERRIDE: the write cannot fail here; the injected
            // failure below covers the cleanup.
            eprintln!("skipped: the directory stays writable for this user (root?)");
            fs::remove_file(&probe).unwrap();
            return;
        }
        let err = chain(dir.path(), &PluginConfig::default()).unwrap_err();
        fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        assert!(
            err.to_string()
                .contains(".10-flannel.conflist.netpol-tmp: cannot create"),
            "{err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), FLANNEL);
        assert_eq!(names(dir.path()), ["10-flannel.conflist"]);
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file() {
        let src = dir_with(&[("netpol-cni", "#!/bin/sh\n")]);
        // A non-empty directory where the binary goes: the rename fails after the
        // temporary file was written.
        let bin = tempfile::tempdir().unwrap();
        fs::create_dir(bin.path().join("netpol-cni")).unwrap();
        fs::write(bin.path().join("netpol-cni/x"), "").unwrap();
        let err = install_binary(&src.path().join("netpol-cni"), bin.path()).unwrap_err();
        assert!(err.to_string().contains("cannot rename to"), "{err}");
        assert_eq!(names(bin.path()), ["netpol-cni"]);
    }

    #[test]
    fn the_binary_is_copied_once_with_mode_0755() {
        let src = dir_with(&[("netpol-cni", "#!/bin/sh\necho v1\n")]);
        let src = src.path().join("netpol-cni");
        let bin = tempfile::tempdir().unwrap();
        let dst = bin.path().join("netpol-cni");
        let out = install_binary(&src, bin.path()).unwrap();
        assert_eq!(
            out,
            InstalledBinary {
                path: dst.clone(),
                copied: true
            }
        );
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        assert_eq!(mode(&dst), 0o755);

        assert!(!install_binary(&src, bin.path()).unwrap().copied);
        fs::set_permissions(&dst, Permissions::from_mode(0o644)).unwrap();
        assert!(!install_binary(&src, bin.path()).unwrap().copied);
        assert_eq!(mode(&dst), 0o755, "mode repaired");

        fs::write(&src, "#!/bin/sh\necho v2\n").unwrap();
        assert!(install_binary(&src, bin.path()).unwrap().copied);
        assert_eq!(fs::read_to_string(&dst).unwrap(), "#!/bin/sh\necho v2\n");
        assert_eq!(names(bin.path()), ["netpol-cni"]);
        assert!(remove_binary(bin.path()).unwrap());
        assert!(!remove_binary(bin.path()).unwrap());
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            parse_args(&args("install")).unwrap(),
            InstallArgs::Install(InstallOptions::default())
        );
        assert_eq!(
            parse_args(&args(
                "install --bin-dir /b --conf-dir=/c --source /s --entry /e \
                 --agent-socket /a.sock --timeout-seconds 3 --fail-open"
            ))
            .unwrap(),
            InstallArgs::Install(InstallOptions {
                bin_dir: "/b".into(),
                conf_dir: "/c".into(),
                source: Some("/s".into()),
                entry_file: Some("/e".into()),
                agent_socket: Some("/a.sock".into()),
                timeout_seconds: Some(3),
                fail_open: true,
            })
        );
        assert_eq!(
            parse_args(&args("uninstall --conf-dir /c")).unwrap(),
            InstallArgs::Uninstall {
                bin_dir: DEFAULT_BIN_DIR.into(),
                conf_dir: "/c".into(),
            }
        );
        // A repeated flag: the last value wins (as with the hand-written parser).
        let InstallArgs::Install(o) = parse_args(&args(
            "install --bin-dir /a --bin-dir /b --fail-open --fail-open",
        ))
        .unwrap() else {
            panic!("not install")
        };
        assert_eq!((o.bin_dir.as_path(), o.fail_open), (Path::new("/b"), true));
        // Usage errors are clap's: exit code 2, a message naming the command or flag.
        let errors = [
            // No command: the help, on stderr, exit 2.
            ("", "Usage: netpol-cni <COMMAND>"),
            ("add", "unrecognized subcommand 'add'"),
            ("install --bogus", "unexpected argument '--bogus'"),
            ("install positional", "unexpected argument 'positional'"),
            ("uninstall --fail-open", "unexpected argument '--fail-open'"),
            (
                "install --bin-dir",
                "a value is required for '--bin-dir <DIR>'",
            ),
            (
                "install --bin-dir --fail-open",
                "a value is required for '--bin-dir <DIR>'",
            ),
            (
                "install --bin-dir=",
                "a value is required for '--bin-dir <DIR>'",
            ),
            (
                "install --timeout-seconds ten",
                "invalid value 'ten' for '--timeout-seconds <N>'",
            ),
            (
                "install --fail-open=yes",
                "unexpected value 'yes' for '--fail-open'",
            ),
        ];
        for (line, want) in errors {
            let e = parse_args(&args(line)).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(want), "{line}: {msg}");
            assert_eq!(e.exit_code(), 2, "{line}: {msg}");
        }
        // The error for a wrong flag of `uninstall` shows `uninstall`'s usage.
        let msg = parse_args(&args("uninstall --fail-open"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("Usage: netpol-cni uninstall"), "{msg}");
    }

    #[test]
    fn help_lists_every_flag_and_exits_0() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let e = parse_args(&args("install --help")).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
        let help = e.to_string();
        for flag in [
            "--bin-dir <DIR>",
            "--conf-dir <DIR>",
            "--source <PATH>",
            "--entry <FILE>",
            "--agent-socket <PATH>",
            "--timeout-seconds <N>",
            "--fail-open",
            DEFAULT_BIN_DIR,
            DEFAULT_CONF_DIR,
        ] {
            assert!(help.contains(flag), "{flag} in {help}");
        }
        let help = parse_args(&args("--help")).unwrap_err().to_string();
        assert!(
            help.contains("install") && help.contains("uninstall"),
            "{help}"
        );
    }

    #[test]
    fn entry_file_then_flags() {
        let dir = dir_with(&[(
            "e.json",
            r#"{"type":"netpol-cni","timeoutSeconds":5,"failOpen":true}"#,
        )]);
        let o = InstallOptions {
            entry_file: Some(dir.path().join("e.json")),
            agent_socket: Some("/a.sock".into()),
            ..InstallOptions::default()
        };
        assert_eq!(
            o.entry().unwrap(),
            PluginConfig {
                agent_socket: "/a.sock".into(),
                timeout_seconds: 5,
                fail_open: true
            }
        );
        let o = InstallOptions {
            entry_file: Some(dir.path().join("missing.json")),
            ..InstallOptions::default()
        };
        assert!(
            o.entry()
                .unwrap_err()
                .to_string()
                .contains("missing.json: cannot read")
        );
    }

    #[test]
    fn install_then_uninstall() {
        let src = dir_with(&[("netpol-cni", "binary")]);
        let bin = tempfile::tempdir().unwrap();
        let conf = dir_with(&[("10-flannel.conflist", FLANNEL)]);
        let install = InstallArgs::Install(InstallOptions {
            bin_dir: bin.path().into(),
            conf_dir: conf.path().into(),
            source: Some(src.path().join("netpol-cni")),
            ..InstallOptions::default()
        });
        let summary = run(&install).unwrap();
        let list = conf.path().join("10-flannel.conflist");
        let want = format!("netpol-cni: installed; {}: entry added", list.display());
        assert!(summary.ends_with(&want), "{summary}");
        assert!(is_chained(conf.path()).unwrap());
        let again = run(&install).unwrap();
        assert!(
            again.contains("up to date;") && again.ends_with("entry up to date"),
            "{again}"
        );

        let uninstall = InstallArgs::Uninstall {
            bin_dir: bin.path().into(),
            conf_dir: conf.path().into(),
        };
        let summary = run(&uninstall).unwrap();
        assert!(
            summary.contains("entry removed") && summary.ends_with("netpol-cni: removed"),
            "{summary}"
        );
        assert!(!is_chained(conf.path()).unwrap());
        assert!(names(bin.path()).is_empty());
        let summary = run(&uninstall).unwrap();
        assert!(
            summary.contains("not chained") && summary.ends_with("not installed"),
            "{summary}"
        );
    }

    #[test]
    fn timeout_seconds_outside_1_to_600_is_refused() {
        // See: #9
        let args = |t: &str| parse_args(&["install".to_string(), format!("--timeout-seconds={t}")]);
        for bad in ["0", "601", "100000"] {
            let e = args(bad).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!(
                    "invalid value '{bad}' for '--timeout-seconds <N>'"
                )) && msg.contains("1..=600"),
                "{bad}: {msg}"
            );
            assert_eq!(e.exit_code(), 2);
        }
        for good in ["1", "600"] {
            assert!(args(good).is_ok(), "{good}");
        }
    }
}
