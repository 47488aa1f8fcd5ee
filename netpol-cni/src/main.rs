//! `netpol-cni`: the chained CNI plugin that hands each new Pod sandbox to the netpol
//! agent and returns only once the Pod's ruleset is applied.
//!
//! A container runtime runs it with `CNI_COMMAND` (`ADD`, `DEL`, `CHECK`, `VERSION`) and
//! the other `CNI_*` variables in the environment and the network configuration (with
//! `prevResult`) on stdin; see [`netpol_cni::plugin`] for the configuration fields and
//! docs/kubernetes.md for installing it. Everything it does is in
//! [`netpol_cni::plugin::NetpolCni`], run by `rscni_plugin`'s `Plugin` (the CNI
//! protocol); this file only starts it.
//!
//! `netpol-cni install` / `netpol-cni uninstall` (the DaemonSet's init container) put
//! the binary on the node and chain it into the node's conflist, or undo that; see
//! [`netpol_cni::install`].
//!
//! ```text
//! CNI_COMMAND=VERSION netpol-cni </dev/null
//! {"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}
//! ```

use netpol_cni::install;
use netpol_cni::plugin::NetpolCni;
use netpol_common::ErrorChain;
use rscni_plugin::cni::Plugin;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("install" | "uninstall" | "--help" | "-h")
    ) {
        std::process::exit(installer(&args));
    }
    let plugin = Plugin::default().msg(
        "netpol-cni: chained CNI plugin of netpol (enforces each Pod's NetworkPolicy before it \
         starts); `netpol-cni install --help` for installing",
    );
    let del = std::env::var("CNI_COMMAND").is_ok_and(|c| c == "DEL");
    // The framework has written the CNI error object on stdout already.
    if let Err(e) = plugin.run(&NetpolCni::with_socket()) {
        if del {
            // DEL never fails (junk stdin, a missing variable, an unsupported version):
            // the runtime would retry it forever and keep the sandbox. A runtime ignores
            // the output of a DEL that exits 0. See: #11
            eprintln!(
                "netpol-cni: DEL: {}: {}; exiting 0 (DEL never fails)",
                e.msg(),
                e.details()
            );
            return;
        }
        std::process::exit(1);
    }
}

/// `netpol-cni install|uninstall ...`: prints one summary line and returns 0, or prints
/// the error and returns 2. A usage error (an unknown flag, a missing or invalid value)
/// is clap's: it names the flag, prints the usage and exits 2; `--help` exits 0.
fn installer(args: &[String]) -> i32 {
    let parsed = install::parse_args(args).unwrap_or_else(|e| e.exit());
    match install::run(&parsed) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(e) => {
            eprintln!("netpol-cni: {}", ErrorChain(&e));
            2
        }
    }
}
