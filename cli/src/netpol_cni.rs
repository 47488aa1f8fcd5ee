//! `netpol-cni`: the chained CNI plugin that hands each new Pod sandbox to the netpol
//! agent and returns only once the Pod's ruleset is applied.
//!
//! A container runtime runs it with `CNI_COMMAND` (`ADD`, `DEL`, `CHECK`, `VERSION`) and
//! the other `CNI_*` variables in the environment and the network configuration (with
//! `prevResult`) on stdin; see [`enforcer::cni::plugin`] for the configuration fields and
//! docs/kubernetes.md for installing it. Everything it does is in
//! [`enforcer::cni::plugin::run`]; this file only does the IO.
//!
//! ```text
//! CNI_COMMAND=VERSION netpol-cni </dev/null
//! {"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};

use enforcer::cni::plugin::{self, NetConf, SocketTransport, Transport};

/// Largest network configuration read from stdin.
const MAX_STDIN: u64 = 4 * 1024 * 1024;

fn main() {
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
