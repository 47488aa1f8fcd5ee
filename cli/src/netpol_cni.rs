//! `netpol-cni`: the chained CNI plugin that hands each new Pod sandbox to the netpol
//! agent and returns only once the Pod's ruleset is applied.
//!
//! A container runtime runs it with `CNI_COMMAND` (`ADD`, `DEL`, `CHECK`, `VERSION`) and
//! the other `CNI_*` variables in the environment and the network configuration (with
//! `prevResult`) on stdin; see [`enforcer::cni::plugin`] for the configuration fields and
//! docs/kubernetes.md for installing it. Everything it does is in
//! [`enforcer::cni::plugin::run`]; this file only does the IO.
//!
//! `netpol-cni install` / `netpol-cni uninstall` (the DaemonSet's init container) put
//! the binary on the node and chain it into the node's conflist, or undo that; see
//! [`enforcer::cni::install`].
//!
//! ```text
//! CNI_COMMAND=VERSION netpol-cni </dev/null
//! {"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};

use enforcer::cni::install;
use enforcer::cni::plugin::{self, NetConf, SocketTransport, Transport};

/// Largest network configuration read from stdin.
const MAX_STDIN: u64 = 4 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("install" | "uninstall" | "--help" | "-h")
    ) {
        std::process::exit(installer(&args));
    }
    let vars: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin) {
        eprintln!("netpol-cni: cannot read stdin: {e}");
    }
    let connect = |conf: &NetConf| -> Box<dyn Transport> {
        Box::new(SocketTransport {
            path: conf.agent_socket.clone(),
        })
    };
    let out = plugin::run(&vars, &stdin, &connect);
    // The runtime reads stdout to its end; a failed write leaves nothing better to do.
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    std::process::exit(out.code);
}

/// `netpol-cni install|uninstall ...`: prints one summary line, or the error and usage.
fn installer(args: &[String]) -> i32 {
    if matches!(args.first().map(String::as_str), Some("--help" | "-h")) {
        println!("{}", install::USAGE);
        return 0;
    }
    match install::parse_args(args).and_then(|a| install::run(&a)) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!("netpol-cni: {msg}\n\n{}", install::USAGE);
            2
        }
    }
}
