//! Keeping `netpol-cni` chained in the node's CNI configuration (a primary CNI that
//! rewrites its conflist drops the entry).

use super::Reconciler;

impl Reconciler {
    /// Chains `netpol-cni` into the node's CNI configuration again if the primary CNI
    /// rewrote it without the entry (with [`super::CniConfig::chain`]). Counted in
    /// `netpol_cni_rechains_total`; a problem is logged when it first appears.
    pub fn ensure_chained(&mut self) {
        let Some(chain) = &self.chain else { return };
        let dir = &chain.conf_dir;
        let result = crate::cni::install::is_chained(dir).and_then(|chained| {
            if chained {
                Ok(None)
            } else {
                crate::cni::install::chain(dir, &chain.entry).map(Some)
            }
        });
        match result {
            Ok(None) => self.chain_problem = None,
            Ok(Some(outcome)) => {
                self.chain_problem = None;
                self.metrics.cni_rechains.inc();
                tracing::warn!(%outcome, "netpol-cni was not chained in the node's CNI configuration (rewritten by the primary CNI?): chained again");
            }
            Err(e) => {
                let problem = netpol_common::ErrorChain(&e).to_string();
                if self.chain_problem.as_deref() != Some(&problem) {
                    tracing::error!(
                        error = problem,
                        "cannot keep netpol-cni chained: new Pods may start without waiting for their policy"
                    );
                    self.chain_problem = Some(problem);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{AgentConfig, ChainConfig, CniConfig, CompiledRulesets, Reconciler};
    use crate::applier::RecordingApplier;
    use crate::cni::install::{PluginConfig, is_chained};
    use crate::metrics::Metrics;

    // See: #5
    #[test]
    fn ensure_chained_chains_again_after_the_primary_cni_rewrites_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let flannel = r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"flannel","delegate":{"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
        let file = dir.path().join("10-flannel.conflist");
        std::fs::write(&file, flannel).unwrap();
        let metrics = Arc::new(Metrics::new());
        let config = AgentConfig {
            cni: Some(CniConfig {
                socket: "/run/netpol/cni.sock".into(),
                records: None,
                chain: Some(ChainConfig {
                    conf_dir: dir.path().to_owned(),
                    entry: PluginConfig::default(),
                }),
            }),
            ..AgentConfig::default()
        };
        let mut rec = Reconciler::new(
            &config,
            Arc::new(CompiledRulesets::default()),
            Arc::new(RecordingApplier::new()),
            metrics.clone(),
        );
        rec.ensure_chained();
        assert!(is_chained(dir.path()).unwrap());
        assert_eq!(metrics.cni_rechains.get(), 1);
        rec.ensure_chained();
        assert_eq!(
            metrics.cni_rechains.get(),
            1,
            "already chained: nothing written"
        );
        // The primary CNI writes its configuration again, without our entry.
        std::fs::write(&file, flannel).unwrap();
        rec.ensure_chained();
        assert!(is_chained(dir.path()).unwrap());
        assert_eq!(metrics.cni_rechains.get(), 2);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let types: Vec<&str> = v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["flannel", "portmap", "netpol-cni"]);
        // No configuration at all: a problem, remembered, not a panic.
        std::fs::remove_file(&file).unwrap();
        rec.ensure_chained();
        assert!(rec.chain_problem.is_some());
        assert_eq!(metrics.cni_rechains.get(), 2);
    }
}
