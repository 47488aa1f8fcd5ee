//! Loading and listing nftables rulesets inside a network namespace with the `nft` tool.
//!
//! [`apply`] feeds the ruleset text to `nft -f -` running in the namespace
//! (`ip netns exec NAME nft -f -`). `nft -f` loads a file as one netlink batch, so the
//! ruleset is applied atomically: either all of it or nothing. Put `flush table …` or
//! `destroy table …` at the top of the text to replace a table in the same transaction.
//!
//! This is the one place that runs `nft` (the agent's [`crate::applier::NftApplier`]
//! goes through it too).

use crate::netns::{self, NetnsError};

/// Errors of nft operations; each names the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` rejected the ruleset; `stderr` has nft's own error with line and column.
    #[error("netns {netns}: nft rejected the ruleset: {stderr}")]
    Rejected {
        /// Namespace the ruleset was for.
        netns: String,
        /// nft's standard error.
        stderr: String,
    },
    /// Running `nft` failed (no such namespace, nft missing, …).
    #[error("netns {netns}: cannot run nft")]
    Run {
        /// Namespace name.
        netns: String,
        /// The underlying namespace error (includes stderr).
        #[source]
        source: NetnsError,
    },
    /// `nft -j list ruleset` printed something that is not JSON.
    #[error("netns {netns}: nft printed invalid JSON")]
    Json {
        /// Namespace name.
        netns: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

fn nft(netns: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, NftError> {
    let out = netns::exec(netns, "nft", args, stdin).map_err(|source| NftError::Run {
        netns: netns.to_owned(),
        source,
    })?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(NftError::Rejected {
            netns: netns.to_owned(),
            stderr: out.stderr,
        })
    }
}

/// Applies `ruleset` (nft syntax) inside `netns` in one transaction (`nft -f -`).
pub fn apply(netns: &str, ruleset: &str) -> Result<(), NftError> {
    nft(netns, &["-f", "-"], Some(ruleset.as_bytes())).map(drop)
}

/// Applies an nftables JSON document inside `netns` in one transaction (`nft -j -f -`),
/// reporting nft's own error text on rejection (the `nftables` crate's helper drops it).
pub fn apply_json(netns: &str, document: &serde_json::Value) -> Result<(), NftError> {
    let text = document.to_string();
    nft(netns, &["-j", "-f", "-"], Some(text.as_bytes())).map(drop)
}

/// One table as nft's JSON (`nft -j list table FAMILY NAME`).
pub fn list_table_json(
    netns: &str,
    family: &str,
    name: &str,
) -> Result<serde_json::Value, NftError> {
    let stdout = nft(netns, &["-j", "list", "table", family, name], None)?;
    serde_json::from_slice(&stdout).map_err(|source| NftError::Json {
        netns: netns.to_owned(),
        source,
    })
}

/// Checks `ruleset` without applying it (`nft -c -f -`); still needs a namespace.
pub fn check(netns: &str, ruleset: &str) -> Result<(), NftError> {
    nft(netns, &["-c", "-f", "-"], Some(ruleset.as_bytes())).map(drop)
}

/// One table as nft text (`nft list table FAMILY NAME`).
pub fn list_table(netns: &str, family: &str, name: &str) -> Result<String, NftError> {
    let stdout = nft(netns, &["list", "table", family, name], None)?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Deletes one table (`nft delete table FAMILY NAME`).
pub fn delete_table(netns: &str, family: &str, name: &str) -> Result<(), NftError> {
    nft(netns, &["delete", "table", family, name], None).map(drop)
}

/// Whether `err` is nft saying the table (or chain, set) does not exist.
pub fn is_no_such_table(err: &NftError) -> bool {
    matches!(err, NftError::Rejected { stderr, .. } if stderr.contains("No such file or directory"))
}

/// Removes every table in `netns` (`nft flush ruleset`).
pub fn flush(netns: &str) -> Result<(), NftError> {
    nft(netns, &["flush", "ruleset"], None).map(drop)
}

/// The ruleset of `netns` as nft's JSON (`nft -j list ruleset`).
pub fn list_json(netns: &str) -> Result<serde_json::Value, NftError> {
    let stdout = nft(netns, &["-j", "list", "ruleset"], None)?;
    serde_json::from_slice(&stdout).map_err(|source| NftError::Json {
        netns: netns.to_owned(),
        source,
    })
}

/// The ruleset of `netns` as nft text (`nft list ruleset`).
pub fn list_text(netns: &str) -> Result<String, NftError> {
    let stdout = nft(netns, &["list", "ruleset"], None)?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}
