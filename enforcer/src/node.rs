//! The node the agent runs on: its addresses, and its own `table inet netpol`.
//!
//! The agent runs in the node's network namespace (`hostNetwork: true`; in the lab and
//! in tests, `ip netns exec <node> netpol agent …`). Two things live there:
//!
//! - **The node's addresses** ([`node_addresses`]): every address of the agent's own
//!   namespace ([`own_addresses`], `getifaddrs(3)`, without loopback and IPv6
//!   link-local) plus the `InternalIP`/`ExternalIP` addresses of the Node object named
//!   by `--node` ([`object_addresses`]). Traffic from these addresses is the node's
//!   (kubelet probes, traffic masqueraded by kube-proxy) and always reaches a Pod; see
//!   docs/ruleset.md.
//! - **The node table**: the compiler's `ruleset::compile_node` output, loaded with a
//!   plain `nft -f -` in the agent's own namespace ([`apply_table`]; no `ip netns exec`,
//!   no `setns`), listed back with [`list_table`] for drift repair.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::netns::{self, NetnsError};
use crate::nft::NftError;

/// Name used for the agent's own namespace in errors and logs.
pub const OWN_NETNS: &str = "(node)";

/// Errors reading the node's addresses.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `getifaddrs(3)` failed in the agent's namespace.
    #[error("cannot list the node's addresses (getifaddrs)")]
    Addresses(#[source] nix::Error),
}

/// Whether an interface address counts as the node's (never the source of routed traffic
/// to a Pod otherwise): [`netns::is_routable`].
pub use crate::netns::is_routable as is_node_address;

/// The addresses of the calling thread's network namespace (the agent's: the node's),
/// sorted and deduplicated.
pub fn own_addresses() -> Result<Vec<IpAddr>, NodeError> {
    let set = netns::routable_addresses().map_err(NodeError::Addresses)?;
    Ok(set.into_iter().collect())
}

/// `status.addresses` of a Node of type `InternalIP` or `ExternalIP` that parse as IP
/// addresses (host names and unparsable values are skipped), sorted.
pub fn object_addresses(node: &Node) -> Vec<IpAddr> {
    let set: BTreeSet<IpAddr> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.trim().parse().ok())
        .filter(|ip| is_node_address(*ip, false))
        .collect();
    set.into_iter().collect()
}

/// The union of `own` (the namespace's addresses) and the Node object's, sorted.
pub fn node_addresses(own: &[IpAddr], node: Option<&Node>) -> Vec<IpAddr> {
    let mut set: BTreeSet<IpAddr> = own.iter().copied().collect();
    set.extend(node.map(object_addresses).unwrap_or_default());
    set.into_iter().collect()
}

fn nft_here(args: &[&str], stdin: Option<&[u8]>) -> Result<netns::CommandOutput, NftError> {
    netns::run_here(OWN_NETNS, "nft", args, stdin).map_err(|source: NetnsError| NftError::Run {
        netns: OWN_NETNS.to_owned(),
        source,
    })
}

/// Loads `ruleset` (nft text that replaces its table) into the agent's own namespace
/// in one transaction (`nft -f -`).
pub fn apply_table(ruleset: &str) -> Result<(), NftError> {
    let out = nft_here(&["-f", "-"], Some(ruleset.as_bytes()))?;
    if out.success {
        Ok(())
    } else {
        Err(NftError::Rejected {
            netns: OWN_NETNS.to_owned(),
            stderr: out.stderr,
        })
    }
}

/// The kernel's listing of `table FAMILY NAME` in the agent's own namespace, `None`
/// when there is no such table.
pub fn list_table(family: &str, name: &str) -> Result<Option<String>, NftError> {
    let out = nft_here(&["list", "table", family, name], None)?;
    if out.success {
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else if out.stderr.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(NftError::Rejected {
            netns: OWN_NETNS.to_owned(),
            stderr: out.stderr,
        })
    }
}

/// Deletes `table FAMILY NAME` from the agent's own namespace; succeeds if it is gone.
pub fn delete_table(family: &str, name: &str) -> Result<(), NftError> {
    let out = nft_here(&["delete", "table", family, name], None)?;
    if out.success || out.stderr.contains("No such file or directory") {
        Ok(())
    } else {
        Err(NftError::Rejected {
            netns: OWN_NETNS.to_owned(),
            stderr: out.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    #[test]
    fn node_object_addresses_are_internal_and_external_ips_only() {
        let addr = |t: &str, a: &str| NodeAddress {
            type_: t.to_owned(),
            address: a.to_owned(),
        };
        let node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    addr("Hostname", "kind-worker"),
                    addr("InternalIP", "172.18.0.3"),
                    addr("InternalIP", "fc00:f853:ccd:e793::3"),
                    addr("ExternalIP", "203.0.113.9"),
                    addr("InternalIP", "not-an-ip"),
                    addr("InternalDNS", "10.0.0.1"),
                ]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        let got: Vec<String> = object_addresses(&node)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["172.18.0.3", "203.0.113.9", "fc00:f853:ccd:e793::3"]);
        let own: Vec<IpAddr> = vec!["172.18.0.3".parse().unwrap(), "10.1.1.1".parse().unwrap()];
        assert_eq!(node_addresses(&own, Some(&node)).len(), 4);
        assert_eq!(node_addresses(&own, None).len(), 2);
    }

    #[test]
    fn loopback_and_link_local_v6_are_not_node_addresses() {
        assert!(!is_node_address("127.0.0.1".parse().unwrap(), true));
        assert!(!is_node_address("10.0.0.1".parse().unwrap(), true));
        assert!(!is_node_address("fe80::1".parse().unwrap(), false));
        assert!(!is_node_address("::1".parse().unwrap(), false));
        assert!(is_node_address("169.254.1.1".parse().unwrap(), false));
        assert!(is_node_address("172.18.0.2".parse().unwrap(), false));
    }

    #[test]
    fn own_addresses_never_include_loopback() {
        let own = own_addresses().unwrap();
        assert!(own.iter().all(|a| !a.is_loopback()), "{own:?}");
    }
}
