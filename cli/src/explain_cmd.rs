//! `netpol explain SRC DST [--port P] [--exit-code]`: the CLI side of
//! `policy_compiler::explain`. `--port` takes a number, a range (`8080-8090`: allowed
//! only when every port of it is) or a port name (resolved against the destination's
//! declared container ports, as NetworkPolicy resolves named ports). `--exit-code` exits
//! 1 when the answer is "denied" (for a range: not every port allowed), for scripts.

use policy_compiler::{PortQuery, PortRanges, PortSet, Protocol, Subject, explain_with_audit};
use serde::Serialize;

use crate::inputs::{self, EXIT_INVALID};
use crate::{ExplainFormat, InputArgs};

/// Exit code of `--exit-code` when denied.
const EXIT_DENIED: i32 = 1;

/// What `--port` asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortArg {
    /// One port.
    Number(u16),
    /// An inclusive range.
    Range(u16, u16),
    /// A container port name of the destination.
    Name(String),
}

/// Parses `80`, `8080-8090` or a port name.
pub(crate) fn parse_port(s: &str) -> Result<PortArg, String> {
    if let Ok(n) = s.parse::<u16>() {
        return Ok(PortArg::Number(n));
    }
    if let Some((a, b)) = s.split_once('-')
        && let (Ok(lo), Ok(hi)) = (a.parse::<u16>(), b.parse::<u16>())
    {
        if lo > hi {
            return Err(format!("port range {s:?}: {lo} is above {hi}"));
        }
        return Ok(PortArg::Range(lo, hi));
    }
    policy_compiler::validate::iana_svc_name(s)
        .map(|()| PortArg::Name(s.to_string()))
        .map_err(|e| format!("{s:?} is neither a port, a range LO-HI nor a port name: {e}"))
}

/// The arguments of `explain`.
pub(crate) struct ExplainArgs<'a> {
    pub(crate) src: &'a str,
    pub(crate) dst: &'a str,
    pub(crate) port: Option<String>,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) output: ExplainFormat,
    pub(crate) exit_code: bool,
    pub(crate) input: &'a InputArgs,
}

#[derive(Serialize)]
struct RangeAnswer<'a> {
    protocol: Protocol,
    from: u16,
    to: u16,
    /// Every port of the range allowed.
    allowed: bool,
    /// The part of the range that is allowed.
    allowed_ports: PortSet,
    explanation: &'a policy_compiler::Explanation,
}

/// A Service destination: answered per backend after DNAT (`--port` a Service port
/// number or name).
fn run_service(
    a: &ExplainArgs<'_>,
    c: &inputs::Compiled,
    s: Subject,
    svc: &policy_compiler::Service,
) -> i32 {
    let ports: Vec<usize> = match &a.port {
        None => Vec::new(),
        Some(p) => {
            let found: Vec<usize> = svc
                .find_ports(p)
                .into_iter()
                .filter(|i| a.protocol.is_none_or(|pr| svc.ports[*i].protocol == pr))
                .collect();
            if found.is_empty() {
                let have: Vec<String> = svc.ports.iter().map(|p| p.describe()).collect();
                eprintln!(
                    "error: Service {} has no port {p}{}; its ports: {}",
                    svc.key(),
                    a.protocol.map(|p| format!(" ({p})")).unwrap_or_default(),
                    if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    }
                );
                return EXIT_INVALID;
            }
            found
        }
    };
    // The audited answer beside the enforced one, when audit policies exist (#12).
    let e = policy_compiler::explain_service_with_audit(
        &c.model,
        &c.graph,
        c.graph.audit(),
        s,
        svc,
        &ports,
    );
    match a.output {
        ExplainFormat::Text => crate::output::emit(&e.to_string()),
        ExplainFormat::Json => crate::output::emitln(&crate::to_json(&e)),
    }
    if a.exit_code && !e.allowed {
        EXIT_DENIED
    } else {
        0
    }
}

/// Runs `netpol explain`.
pub(crate) fn run(a: &ExplainArgs<'_>) -> i32 {
    let c = match inputs::compile_input(a.input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (s, d) = match (
        policy_compiler::parse_source(&c.model, a.src),
        policy_compiler::parse_destination(&c.model, a.dst),
    ) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    if a.protocol.is_some() && a.port.is_none() {
        eprintln!("error: --protocol needs --port");
        return EXIT_INVALID;
    }
    let d = match d {
        policy_compiler::Destination::Subject(d) => d,
        policy_compiler::Destination::Service(svc) => {
            return run_service(a, &c, s, svc);
        }
    };
    let port = match a.port.as_deref().map(parse_port) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("error: --port {e}");
            return EXIT_INVALID;
        }
    };
    let protocol = a.protocol.unwrap_or(Protocol::Tcp);
    let number = match &port {
        None => None,
        Some(PortArg::Number(n)) => Some(*n),
        Some(PortArg::Range(..)) => None,
        Some(PortArg::Name(name)) => {
            let Subject::Endpoint(id) = d else {
                eprintln!(
                    "error: --port {name}: a named port needs a destination that declares it, not an address"
                );
                return EXIT_INVALID;
            };
            let dst = c.model.endpoint(id);
            match dst.resolve_named_port(name, protocol).first() {
                Some(n) => Some(*n),
                None => {
                    eprintln!(
                        "error: --port {name}: {} declares no {protocol} port named {name}",
                        dst.key()
                    );
                    return EXIT_INVALID;
                }
            }
        }
    };
    let query = number.map(|port| PortQuery { protocol, port });
    // The audited verdict beside the enforced one, when audit policies exist (#12).
    let mut e = explain_with_audit(&c.model, &c.graph, c.graph.audit(), s, d, query);
    e.caveats = c.caveats();
    let allowed = if let Some(PortArg::Range(lo, hi)) = port {
        let want = PortSet::of(protocol, PortRanges::range(lo, hi));
        let part = e.allowed_traffic.intersect(&want);
        let all = part == want;
        let verdict = if all {
            "allowed"
        } else if part.is_empty() {
            "denied"
        } else {
            "partly allowed"
        };
        match a.output {
            ExplainFormat::Text => {
                crate::output::emit(&e.to_string());
                crate::output::emitln(&format!(
                    "{protocol} {lo}-{hi}: {verdict}{}",
                    if all || part.is_empty() {
                        String::new()
                    } else {
                        format!(" ({part})")
                    }
                ));
            }
            ExplainFormat::Json => crate::output::emitln(&crate::to_json(&RangeAnswer {
                protocol,
                from: lo,
                to: hi,
                allowed: all,
                allowed_ports: part,
                explanation: &e,
            })),
        }
        all
    } else {
        match a.output {
            ExplainFormat::Text => crate::output::emit(&e.to_string()),
            ExplainFormat::Json => crate::output::emitln(&crate::to_json(&e)),
        }
        e.allowed
    };
    if a.exit_code && !allowed {
        EXIT_DENIED
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_number_range_or_name() {
        assert_eq!(parse_port("80"), Ok(PortArg::Number(80)));
        assert_eq!(parse_port("8080-8090"), Ok(PortArg::Range(8080, 8090)));
        assert_eq!(parse_port("http"), Ok(PortArg::Name("http".into())));
        assert!(parse_port("90-80").unwrap_err().contains("above"));
        assert!(parse_port("-x-").is_err());
        assert!(parse_port("70000").is_err());
    }
}
