//! Lab topology: hosts in their own network namespaces on one bridged L2 segment.
//!
//! ```text
//!   <prefix>-0            <prefix>-1                  <prefix>-hub
//!  ┌──────────┐          ┌──────────┐          ┌────────────────────────┐
//!  │ lo  eth0 ├──veth────┼──────────┼──────────┤ h0 ─┐                  │
//!  └──────────┘          │ lo  eth0 ├──veth────┤ h1 ─┼── br0 (bridge)   │
//!                        └──────────┘          │ …  ─┘                  │
//!                                              └────────────────────────┘
//! ```
//!
//! - The bridge and every hub-side veth end live in a dedicated hub namespace, so the
//!   host's own network namespace gets no interface, address or route. Interface names
//!   are per namespace, so parallel topologies never collide.
//! - Each host namespace has `lo` and `eth0` with the host's IPv4 and/or IPv6 address,
//!   plus an on-link default route per family (`default dev eth0`), so hosts whose
//!   addresses are in different subnets still reach each other over the segment.
//! - IPv6 duplicate address detection is off (`accept_dad=0`, addresses added with
//!   `nodad`), so IPv6 works as soon as [`Topology::build`] returns.
//! - Multicast snooping is off on the bridge so neighbour discovery is flooded.
//!
//! [`Topology::build_routed`] builds the other layout, a real node: the hub is the node
//! (node IP, forwarding) and every host a Pod on a routed veth; see [`routed`].
//!
//! Namespace names are `<prefix>-hub` and `<prefix>-<n>` for the n-th host. The prefix is
//! 1..=16 ASCII letters or digits (no `-`), so [`Topology::cleanup_stale`] can tell a
//! topology's namespaces from any other prefix's.

use std::fmt::Write as _;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::netns::{self, NetnsError};

pub mod routed;

pub use routed::NodeSpec;

/// Errors building or tearing down a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The prefix is not 1..=16 ASCII letters or digits.
    #[error("invalid topology prefix {prefix:?}: must be 1..=16 ASCII letters or digits")]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
    },
    /// Two hosts share a name.
    #[error("duplicate host name {name:?}")]
    DuplicateHost {
        /// The repeated name.
        name: String,
    },
    /// A host has neither an IPv4 nor an IPv6 address.
    #[error("host {name:?} has no address")]
    NoAddress {
        /// The host's name.
        name: String,
    },
    /// A host's namespace already exists (a stale run? see `cleanup_stale`).
    #[error("netns {netns} already exists; remove leftovers with cleanup_stale({prefix:?})")]
    Exists {
        /// The namespace that exists.
        netns: String,
        /// The topology prefix.
        prefix: String,
    },
    /// A namespace operation failed while building `step`.
    #[error("topology {prefix}: {step}")]
    Netns {
        /// The topology prefix.
        prefix: String,
        /// The build or teardown step.
        step: String,
        /// The failing namespace operation.
        #[source]
        source: Box<NetnsError>,
    },
}

/// One host to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Host name, unique in the topology (e.g. a Pod's `namespace/name`).
    pub name: String,
    /// IPv4 address with prefix length, e.g. `10.0.0.11/24`.
    pub ipv4: Option<Ipv4Net>,
    /// IPv6 address with prefix length, e.g. `fd00::11/64`.
    pub ipv6: Option<Ipv6Net>,
}

impl HostSpec {
    /// A host spec; give at least one address.
    pub fn new(name: impl Into<String>, ipv4: Option<Ipv4Net>, ipv6: Option<Ipv6Net>) -> Self {
        Self {
            name: name.into(),
            ipv4,
            ipv6,
        }
    }
}

/// A host that exists: its spec plus the namespace it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host name from the spec.
    pub name: String,
    /// Network namespace name, `<prefix>-<n>`.
    pub netns: String,
    /// IPv4 address of `eth0`, if any.
    pub ipv4: Option<Ipv4Net>,
    /// IPv6 address of `eth0`, if any.
    pub ipv6: Option<Ipv6Net>,
}

/// Name of the interface every host uses to reach the segment.
pub const HOST_IFACE: &str = "eth0";
/// Name of the bridge inside the hub namespace.
pub const BRIDGE: &str = "br0";

/// Hosts on one bridged segment, each in its own network namespace.
///
/// Dropping a `Topology` removes all its namespaces (errors are logged);
/// [`Topology::teardown`] does the same and reports errors.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    hub: String,
    hosts: Vec<Host>,
    /// The node (hub) as a host, in the routed layout.
    node: Option<Host>,
    live: bool,
}

fn validate_prefix(prefix: &str) -> Result<(), TopologyError> {
    if prefix.is_empty() || prefix.len() > 16 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(TopologyError::InvalidPrefix {
            prefix: prefix.to_owned(),
        });
    }
    Ok(())
}

/// Whether `name` is a namespace name a topology with `prefix` creates.
fn owned_by(prefix: &str, name: &str) -> bool {
    match name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    {
        Some("hub") => true,
        Some(n) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
}

impl Topology {
    /// Creates the hub, one namespace per host, the links and addresses.
    ///
    /// On error everything created so far is removed again.
    pub fn build(prefix: &str, hosts: &[HostSpec]) -> Result<Self, TopologyError> {
        Self::build_layout(prefix, None, hosts)
    }

    /// Builds a real node: the hub namespace is the node (`node`'s addresses on a dummy
    /// `eth0`, forwarding on) and every host a Pod on a routed veth pair into it (no
    /// bridge). See [`routed`]. The node is [`Topology::node`], a [`Host`] named
    /// `node.name` living in [`Topology::hub`].
    ///
    /// On error everything created so far is removed again.
    pub fn build_routed(
        prefix: &str,
        node: &NodeSpec,
        hosts: &[HostSpec],
    ) -> Result<Self, TopologyError> {
        Self::build_layout(prefix, Some(node), hosts)
    }

    fn build_layout(
        prefix: &str,
        node: Option<&NodeSpec>,
        hosts: &[HostSpec],
    ) -> Result<Self, TopologyError> {
        validate_prefix(prefix)?;
        if let Some(node) = node
            && hosts.iter().any(|h| h.name == node.name)
        {
            return Err(TopologyError::DuplicateHost {
                name: node.name.clone(),
            });
        }
        for (i, h) in hosts.iter().enumerate() {
            if hosts[..i].iter().any(|o| o.name == h.name) {
                return Err(TopologyError::DuplicateHost {
                    name: h.name.clone(),
                });
            }
            if h.ipv4.is_none() && h.ipv6.is_none() {
                return Err(TopologyError::NoAddress {
                    name: h.name.clone(),
                });
            }
        }
        let hub = format!("{prefix}-hub");
        let hosts: Vec<Host> = hosts
            .iter()
            .enumerate()
            .map(|(n, h)| Host {
                name: h.name.clone(),
                netns: format!("{prefix}-{n}"),
                ipv4: h.ipv4,
                ipv6: h.ipv6,
            })
            .collect();
        for netns in std::iter::once(&hub).chain(hosts.iter().map(|h| &h.netns)) {
            if netns::exists(netns) {
                return Err(TopologyError::Exists {
                    netns: netns.clone(),
                    prefix: prefix.to_owned(),
                });
            }
        }
        // `live` from the start: if a step fails, Drop removes what was made.
        let node = node.map(|n| Host {
            name: n.name.clone(),
            netns: hub.clone(),
            ipv4: Some(n.ipv4),
            ipv6: n.ipv6,
        });
        let topo = Topology {
            prefix: prefix.to_owned(),
            hub,
            hosts,
            node,
            live: true,
        };
        topo.create()?;
        Ok(topo)
    }

    fn step_err(&self, step: impl Into<String>) -> impl FnOnce(NetnsError) -> TopologyError {
        let prefix = self.prefix.clone();
        let step = step.into();
        move |source| TopologyError::Netns {
            prefix,
            step,
            source: Box::new(source),
        }
    }

    fn sysctls<K: AsRef<str> + Sync>(
        &self,
        netns: &str,
        who: &str,
        keys: &[(K, &str)],
    ) -> Result<(), TopologyError> {
        netns::run_in(netns, || {
            for (key, value) in keys {
                write_sysctl(key.as_ref(), value).map_err(|e| (key.as_ref().to_owned(), e))?;
            }
            Ok::<(), (String, std::io::Error)>(())
        })
        .map_err(self.step_err(format!("enter netns of {who}")))?
        .map_err(|(key, source)| TopologyError::Netns {
            prefix: self.prefix.clone(),
            step: format!("sysctl {key} for {who}"),
            source: Box::new(NetnsError::Spawn {
                netns: netns.to_owned(),
                op: format!("sysctl {key}"),
                program: "/proc/sys".to_owned(),
                source,
            }),
        })
    }

    fn create(&self) -> Result<(), TopologyError> {
        netns::add(&self.hub).map_err(self.step_err("create hub netns"))?;
        for h in &self.hosts {
            netns::add(&h.netns).map_err(self.step_err(format!("create netns of {}", h.name)))?;
            // Interfaces moved in later take `default`; `all` is or-ed into each one.
            self.sysctls(
                &h.netns,
                &h.name,
                &[
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                ],
            )?;
        }
        if let Some(node) = &self.node {
            return self.create_routed(node);
        }

        let mut hub_cmds = String::new();
        let _ = writeln!(hub_cmds, "link set lo up");
        let _ = writeln!(
            hub_cmds,
            "link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0"
        );
        let _ = writeln!(hub_cmds, "link set {BRIDGE} up");
        for (n, h) in self.hosts.iter().enumerate() {
            let _ = writeln!(
                hub_cmds,
                "link add h{n} type veth peer name {HOST_IFACE} netns {}",
                h.netns
            );
            let _ = writeln!(hub_cmds, "link set h{n} master {BRIDGE}");
            let _ = writeln!(hub_cmds, "link set h{n} up");
        }
        netns::ip_batch(&self.hub, "hub links", &hub_cmds)
            .map_err(self.step_err("create bridge and veth pairs"))?;

        for h in &self.hosts {
            let mut cmds = String::new();
            let _ = writeln!(cmds, "link set lo up");
            if let Some(v4) = h.ipv4 {
                let _ = writeln!(cmds, "addr add {v4} dev {HOST_IFACE}");
            }
            if let Some(v6) = h.ipv6 {
                let _ = writeln!(cmds, "addr add {v6} dev {HOST_IFACE} nodad");
            }
            let _ = writeln!(cmds, "link set {HOST_IFACE} up");
            if h.ipv4.is_some() {
                let _ = writeln!(cmds, "route add 0.0.0.0/0 dev {HOST_IFACE}");
            }
            if h.ipv6.is_some() {
                let _ = writeln!(cmds, "route add ::/0 dev {HOST_IFACE}");
            }
            netns::ip_batch(&h.netns, "host links", &cmds)
                .map_err(self.step_err(format!("configure {}", h.name)))?;
        }
        Ok(())
    }

    fn create_routed(&self, node: &Host) -> Result<(), TopologyError> {
        self.sysctls(&self.hub, &node.name, routed::NODE_SYSCTLS)?;
        let spec = NodeSpec {
            name: node.name.clone(),
            // `build_routed` always sets the node's IPv4 address.
            ipv4: node.ipv4.unwrap_or_default(),
            ipv6: node.ipv6,
        };
        netns::ip_batch(
            &self.hub,
            "node links",
            &routed::node_commands(&spec, &self.hosts),
        )
        .map_err(self.step_err("create the node's interface, veth pairs and routes"))?;
        self.sysctls(&self.hub, &node.name, &routed::veth_sysctls(&self.hosts))?;
        for h in &self.hosts {
            netns::ip_batch(&h.netns, "host links", &routed::host_commands(h))
                .map_err(self.step_err(format!("configure {}", h.name)))?;
        }
        Ok(())
    }

    /// The node of a routed topology ([`Topology::build_routed`]): a [`Host`] in the
    /// hub namespace with the node's addresses. `None` for the bridge layout.
    pub fn node(&self) -> Option<&Host> {
        self.node.as_ref()
    }

    /// The prefix all namespace names start with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Name of the hub namespace: the bridge's, or the node in the routed layout.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// All hosts, in the order given to [`Topology::build`].
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host with this name (the node too, in the routed layout).
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts
            .iter()
            .chain(self.node.iter())
            .find(|h| h.name == name)
    }

    /// Removes all namespaces of the topology, reporting the first error.
    pub fn teardown(mut self) -> Result<(), TopologyError> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), TopologyError> {
        if !self.live {
            return Ok(());
        }
        self.live = false;
        let mut first = None;
        for netns in self
            .hosts
            .iter()
            .map(|h| h.netns.as_str())
            .chain(std::iter::once(self.hub.as_str()))
        {
            if netns::exists(netns)
                && let Err(e) = netns::delete(netns)
            {
                first.get_or_insert(TopologyError::Netns {
                    prefix: self.prefix.clone(),
                    step: "teardown".to_owned(),
                    source: Box::new(e),
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Removes every namespace named `<prefix>-hub` or `<prefix>-<digits>`: the
    /// leftovers of a crashed run with this prefix. Returns the removed names.
    pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, TopologyError> {
        validate_prefix(prefix)?;
        let err = |source| TopologyError::Netns {
            prefix: prefix.to_owned(),
            step: "cleanup_stale".to_owned(),
            source: Box::new(source),
        };
        let mut removed = Vec::new();
        for name in netns::list().map_err(err)? {
            if owned_by(prefix, &name) {
                netns::delete(&name).map_err(err)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(error = %e, "lab topology teardown failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ownership_is_exact() {
        assert!(owned_by("np1", "np1-hub"));
        assert!(owned_by("np1", "np1-0"));
        assert!(owned_by("np1", "np1-12"));
        assert!(!owned_by("np1", "np12-0"));
        assert!(!owned_by("np1", "np1-"));
        assert!(!owned_by("np1", "np1-x"));
        assert!(!owned_by("np1", "np1-hubx"));
        assert!(!owned_by("np1", "other"));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("np123").is_ok());
        for bad in ["", "a-b", "a_b", "x".repeat(17).as_str()] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_specs_are_rejected_before_touching_the_kernel() {
        let v4 = "10.0.0.1/24".parse().ok();
        let dup = [HostSpec::new("a", v4, None), HostSpec::new("a", v4, None)];
        assert!(matches!(
            Topology::build("t", &dup),
            Err(TopologyError::DuplicateHost { .. })
        ));
        let none = [HostSpec::new("a", None, None)];
        assert!(matches!(
            Topology::build("t", &none),
            Err(TopologyError::NoAddress { .. })
        ));
    }
}
