//! The plugin's configuration: its own fields of its entry in the node's network
//! configuration list. One struct for both sides of the contract: the installer writes
//! it ([`crate::install::chain`], from the DaemonSet's ConfigMap), the plugin reads it on
//! every exec ([`crate::plugin::NetpolCni`]), with one set of defaults.
//!
//! ```text
//! {"type": "netpol-cni", "agentSocket": "/run/netpol/cni.sock", "timeoutSeconds": 10, "failOpen": false}
//! ```

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use rscni_plugin::error::Error;
use rscni_plugin::types::NetConf;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::DEFAULT_SOCKET;

/// The plugin's `type` in a network configuration (also its binary's name).
pub const PLUGIN_TYPE: &str = "netpol-cni";
/// Default seconds the plugin waits for the agent.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;
/// The `timeoutSeconds` the plugin accepts.
pub const TIMEOUT_SECONDS: RangeInclusive<u64> = 1..=600;
/// The configuration keys that are the plugin's (the rest of a network configuration is
/// the CNI spec's: `cniVersion`, `name`, `type`, `prevResult`, ...).
pub const KEYS: [&str; 3] = ["agentSocket", "timeoutSeconds", "failOpen"];

/// The plugin's fields of its network configuration; a missing field takes its default
/// ([`PluginConfig::default`]); unknown fields are refused when parsing an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Unix socket of the node agent (`agentSocket`).
    #[serde(serialize_with = "lossy_path")]
    pub agent_socket: PathBuf,
    /// How long `ADD` waits for the agent, in seconds (`timeoutSeconds`), within
    /// [`TIMEOUT_SECONDS`].
    pub timeout_seconds: u64,
    /// Whether a Pod may start when the agent cannot confirm its policy in time
    /// (`failOpen`).
    pub fail_open: bool,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            agent_socket: PathBuf::from(DEFAULT_SOCKET),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            fail_open: false,
        }
    }
}

/// A non-UTF-8 socket path is written lossily (it cannot be a JSON string otherwise).
fn lossy_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The `type` field of an entry: only `netpol-cni`.
#[derive(Deserialize)]
enum EntryType {
    #[serde(rename = "netpol-cni")]
    NetpolCni,
}

impl PluginConfig {
    /// The entry as it goes into `plugins`:
    /// `{"type":"netpol-cni","agentSocket":…,"timeoutSeconds":…,"failOpen":…}`.
    pub fn to_json(&self) -> Value {
        // Serializing three plain fields into a Value cannot fail.
        let mut map = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        map.insert("type".into(), Value::String(PLUGIN_TYPE.into()));
        Value::Object(map)
    }

    /// Reads an entry in [`to_json`](Self::to_json)'s form: `type` must be `netpol-cni`,
    /// missing fields take their defaults, unknown fields are errors (a typo must not
    /// silently become a default).
    pub fn from_entry(value: Value) -> Result<Self, serde_json::Error> {
        let mut map: Map<String, Value> = serde_json::from_value(value)?;
        let kind = map.remove("type").unwrap_or(Value::Null);
        let EntryType::NetpolCni = serde_json::from_value(kind).map_err(|e| {
            <serde_json::Error as serde::de::Error>::custom(format!(
                "`type` must be \"{PLUGIN_TYPE}\": {e}"
            ))
        })?;
        serde_json::from_value(Value::Object(map))
    }

    /// The plugin's settings from the network configuration it was exec'd with (only its
    /// own [`KEYS`]; the rest is the CNI spec's), checked.
    pub fn from_conf(conf: &NetConf) -> Result<Self, Error> {
        let ours: Map<String, Value> = KEYS
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), conf.custom.get(k)?.clone())))
            .collect();
        let config: Self = serde_json::from_value(Value::Object(ours))
            .map_err(|e| Error::InvalidNetworkConfig(format!("netpol-cni: {e}")))?;
        if !TIMEOUT_SECONDS.contains(&config.timeout_seconds) {
            return Err(Error::InvalidNetworkConfig(format!(
                "netpol-cni: timeoutSeconds {} is out of range {}..={}",
                config.timeout_seconds,
                TIMEOUT_SECONDS.start(),
                TIMEOUT_SECONDS.end()
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn written_entry_reads_back_and_defaults_are_one_set() {
        let c = PluginConfig {
            agent_socket: "/x.sock".into(),
            timeout_seconds: 3,
            fail_open: true,
        };
        assert_eq!(PluginConfig::from_entry(c.to_json()).unwrap(), c);
        // The defaults the installer writes are the defaults the plugin assumes.
        assert_eq!(
            PluginConfig::from_entry(json!({"type": "netpol-cni"})).unwrap(),
            serde_json::from_value::<PluginConfig>(json!({})).unwrap()
        );
        assert!(PluginConfig::from_entry(json!({"agentSocket": "/x"})).is_err());
        assert!(PluginConfig::from_entry(json!({"type": "bridge"})).is_err());
        assert!(PluginConfig::from_entry(json!({"type": "netpol-cni", "x": 1})).is_err());
    }
}
