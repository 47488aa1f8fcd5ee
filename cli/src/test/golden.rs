//! `netpol test`: golden files, a table of kinds ([`GOLDEN_KINDS`]): which files a kind
//! owns, how netpol renders them now, which goldens `expect.yaml` implies, and checking
//! (or `--update`-ing) one golden file.

use std::collections::BTreeSet;
use std::path::Path;

use policy_compiler::case;
use policy_compiler::expect::Expectations;
use policy_compiler::model::NoRuleset;
use policy_compiler::{AllowGraph, MatrixQuery, Model, Protocol, matrix};
use similar::TextDiff;

use super::report::{Check, Status, failed, passed};

/// What golden files are rendered from: one compiled case.
pub(crate) struct Outputs<'a> {
    pub(super) model: &'a Model,
    pub(super) graph: &'a AllowGraph,
    pub(super) expectations: Option<&'a Expectations>,
}

/// A kind of golden file: which file names it owns and how their content is rendered.
pub(crate) struct GoldenKind {
    /// Short name, in reports and JSON (`matrix`).
    pub(crate) name: &'static str,
    /// The file names it owns: the compiler's one definition of a case
    /// ([`policy_compiler::case::GoldenKind::of`]), so `netpol test` and the tests agree on
    /// which files are goldens and which are manifests. See: #9
    pub(crate) owns: case::GoldenKind,
    /// The content the golden file `name` must have; `Err` when the name does not parse
    /// or names nothing in the case (for example an unknown Pod).
    pub(crate) render: fn(&Outputs<'_>, &str) -> Result<String, String>,
    /// File names `--update` creates when they are missing.
    pub(crate) implied: fn(&Outputs<'_>) -> Vec<String>,
}

/// Every golden kind, tried in order; the first that owns a file name wins.
///
/// Extension point: a new kind is a variant of [`policy_compiler::case::GoldenKind`] (the
/// file names it owns) plus one entry here (how they render). `nft` has no implied names:
/// users create an empty `<ns>_<name>.nft` and fill it with `--update`.
pub(crate) const GOLDEN_KINDS: &[GoldenKind] = &[
    GoldenKind {
        name: "matrix",
        owns: case::GoldenKind::Matrix,
        render: render_matrix,
        implied: implied_matrix,
    },
    GoldenKind {
        name: "nft",
        owns: case::GoldenKind::Nft,
        render: render_nft,
        implied: |_| Vec::new(),
    },
];

/// `<ns>_<name>.nft`: the Pod's ruleset (`netpol compile --pod ns/name`), default options.
/// Namespace and Pod names cannot contain `_`, so the first `_` separates them.
fn render_nft(o: &Outputs<'_>, f: &str) -> Result<String, String> {
    let bad = || format!("golden name {f:?} is not <namespace>_<pod>.nft");
    let stem = f.strip_suffix(".nft").ok_or_else(bad)?;
    let (ns, name) = stem.split_once('_').ok_or_else(bad)?;
    let key = format!("{ns}/{name}");
    let id = match o.model.endpoint_by_key(&key) {
        Some(id) => id,
        // `node_<name>.nft`: the node table of node <name> (`netpol compile --node-table`),
        // when no Pod node/<name> exists. See: #10
        None if ns == "node" && o.model.node_names().contains(&name) => {
            let ctx = policy_compiler::ruleset::NodeContext::new(
                o.model,
                name,
                o.model.node_addresses(name),
            );
            let opts = policy_compiler::ruleset::RulesetOptions::default();
            return Ok(
                policy_compiler::ruleset::compile_node(o.model, o.graph, &ctx, &opts).to_nft(),
            );
        }
        None => return Err(format!("{f}: no Pod {key} in the case")),
    };
    if o.model.endpoint(id).no_ruleset() == Some(NoRuleset::HostNetwork) {
        return Err(format!(
            "{f}: {key} is a hostNetwork Pod: it has no ruleset of its own"
        ));
    }
    let opts = policy_compiler::ruleset::RulesetOptions::default();
    Ok(policy_compiler::ruleset::compile_pod(o.model, o.graph, id, &opts).to_nft())
}

pub(super) fn golden_kind(file_name: &str) -> Option<&'static GoldenKind> {
    let owner = case::GoldenKind::of(file_name)?;
    GOLDEN_KINDS.iter().find(|k| k.owns == owner)
}

/// `matrix-tcp-80.txt` -> (TCP, 80).
fn parse_matrix_name(f: &str) -> Result<(Protocol, u16), String> {
    let bad = || format!("golden name {f:?} is not matrix-<tcp|udp|sctp>-<port>.txt");
    let mid = f
        .strip_prefix("matrix-")
        .and_then(|s| s.strip_suffix(".txt"))
        .ok_or_else(bad)?;
    let (proto, digits) = mid.split_once('-').ok_or_else(bad)?;
    let protocol: Protocol = proto.parse().map_err(|_| bad())?;
    let port = digits.parse::<u16>().map_err(|_| bad())?;
    // Canonical names only, so one query has exactly one golden file.
    if proto != protocol.as_str().to_ascii_lowercase() || digits != port.to_string() {
        return Err(bad());
    }
    Ok((protocol, port))
}

/// The canonical golden name of a matrix query.
pub(crate) fn matrix_name(protocol: Protocol, port: u16) -> String {
    format!(
        "matrix-{}-{port}.txt",
        protocol.as_str().to_ascii_lowercase()
    )
}

fn render_matrix(o: &Outputs<'_>, f: &str) -> Result<String, String> {
    let (protocol, port) = parse_matrix_name(f)?;
    let q = MatrixQuery {
        protocol: Some(protocol),
        port: Some(port),
    };
    Ok(matrix(o.model, o.graph, q).to_text())
}

fn implied_matrix(o: &Outputs<'_>) -> Vec<String> {
    let Some(exp) = o.expectations else {
        return Vec::new();
    };
    let names: BTreeSet<String> = exp
        .matrix
        .iter()
        .filter_map(|m| {
            let p = match &m.protocol {
                None => Protocol::Tcp,
                Some(s) => s.parse().ok()?,
            };
            Some(matrix_name(p, m.port))
        })
        .collect();
    names.into_iter().collect()
}

pub(super) fn check_golden(
    kind: &'static GoldenKind,
    outputs: &Outputs<'_>,
    path: &Path,
    fname: &str,
    update: bool,
) -> Check {
    let want = match (kind.render)(outputs, fname) {
        Ok(w) => w,
        Err(e) => return failed(kind.name, fname, e),
    };
    let have = match std::fs::read(path) {
        Ok(h) => Some(h),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return failed(kind.name, fname, format!("cannot read: {e}")),
    };
    if have.as_deref() == Some(want.as_bytes()) {
        return passed(kind.name, fname);
    }
    if update {
        return match std::fs::write(path, &want) {
            Ok(()) => Check {
                kind: kind.name,
                what: fname.to_string(),
                status: Status::Updated,
                report: if have.is_some() {
                    "rewritten".into()
                } else {
                    "created".into()
                },
            },
            Err(e) => failed(kind.name, fname, format!("cannot write: {e}")),
        };
    }
    let old = have.unwrap_or_default();
    failed(kind.name, fname, golden_diff(fname, &old, &want))
}

/// A unified diff from the golden file to the actual output.
pub(crate) fn golden_diff(fname: &str, golden: &[u8], actual: &str) -> String {
    let hint =
        "(run `netpol test --update` to accept the actual output, then review with `git diff`)";
    match std::str::from_utf8(golden) {
        Ok(old) => {
            let diff = TextDiff::from_lines(old, actual);
            let text = diff
                .unified_diff()
                .context_radius(3)
                .header(&format!("{fname} (golden)"), &format!("{fname} (actual)"))
                .to_string();
            format!("golden differs from the actual output {hint}\n{text}")
        }
        Err(_) => format!("golden is not UTF-8 text {hint}; actual output:\n{actual}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_matrix(f: &str) -> bool {
        golden_kind(f).is_some_and(|k| k.name == "matrix")
    }

    #[test]
    fn matrix_golden_names_round_trip() {
        for p in Protocol::ALL {
            let n = matrix_name(p, 80);
            assert!(is_matrix(&n));
            assert_eq!(parse_matrix_name(&n), Ok((p, 80)));
        }
        assert_eq!(matrix_name(Protocol::Udp, 53), "matrix-udp-53.txt");
    }

    #[test]
    fn non_canonical_matrix_names_are_rejected() {
        for bad in [
            "matrix-TCP-80.txt",
            "matrix-tcp-080.txt",
            "matrix-tcp-99999.txt",
            "matrix-tcp.txt",
            "matrix-icmp-1.txt",
            "matrix-tcp-80-x.txt",
        ] {
            assert!(is_matrix(bad), "{bad}");
            assert!(parse_matrix_name(bad).is_err(), "{bad}");
        }
        assert!(!is_matrix("matrix.yaml"));
        assert!(golden_kind("policies.yaml").is_none());
    }

    #[test]
    fn diff_is_unified_and_names_the_file() {
        let d = golden_diff("matrix-tcp-80.txt", b"a\nb\nc\n", "a\nB\nc\n");
        assert!(d.contains("--- matrix-tcp-80.txt (golden)"), "{d}");
        assert!(d.contains("+++ matrix-tcp-80.txt (actual)"), "{d}");
        assert!(d.contains("-b\n+B\n"), "{d}");
        let nl = golden_diff("f", b"a", "a\n");
        assert!(nl.contains("No newline"), "{nl}");
    }
}
