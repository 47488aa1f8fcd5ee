//! Rendering one Pod's ruleset (and the node table) for the reconciler.

use std::net::IpAddr;

use policy_compiler::ruleset::{
    NodeContext, PeerClassifier, RulesetOptions, compile_node, compile_pod, compile_pod_split,
};
use policy_compiler::{AllowGraph, EndpointId, Model};

use super::shared::SharedRenders;
use crate::plan::{Desired, SplicedText, TableText};

/// Error of a [`RulesetSource`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RenderError {
    /// What went wrong.
    pub message: String,
}

/// Renders one Pod's ruleset: `nft -f` text replacing `table inet netpol` in one
/// transaction. [`CompiledRulesets`] is the real one; unit tests use fakes.
pub trait RulesetSource: Send + Sync {
    /// The ruleset of `pod` (an endpoint of `model`).
    fn render(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
    ) -> Result<String, RenderError>;

    /// The ruleset of `pod` on a node whose own namespace has `node_addresses` (traffic
    /// from them is the node's). Defaults to [`RulesetSource::render`].
    fn render_on_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        node_addresses: &[IpAddr],
    ) -> Result<String, RenderError> {
        let _ = node_addresses;
        self.render(model, graph, pod)
    }

    /// The desired ruleset of `pod` in `netns`: [`RulesetSource::render_on_node`] with
    /// `node_addresses` (`Some`: the agent owns a node table) or
    /// [`RulesetSource::render`]. Defaults to that text without parts (every change
    /// replaces the table); [`CompiledRulesets`] splits it into skeleton and peer-map
    /// entries, so peer changes become element updates.
    fn render_desired(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        node_addresses: Option<&[IpAddr]>,
        netns: &str,
    ) -> Result<Desired, RenderError> {
        let text = match node_addresses {
            Some(addrs) => self.render_on_node(model, graph, pod, addrs)?,
            None => self.render(model, graph, pod)?,
        };
        Ok(Desired::new(netns, text))
    }

    /// [`RulesetSource::render_desired`] with the peer lookups of `shared` (one sweep
    /// per distinct lookup per compile, shared by the tables that need it): the same
    /// result. Defaults to [`RulesetSource::render_desired`].
    fn render_desired_shared(
        &self,
        shared: &SharedRenders<'_>,
        pod: EndpointId,
        node_addresses: Option<&[IpAddr]>,
        netns: &str,
    ) -> Result<Desired, RenderError> {
        self.render_desired(shared.model(), shared.graph(), pod, node_addresses, netns)
    }

    /// True when [`RulesetSource::render_desired`] is a function of what
    /// `compile_pod` reads and nothing else, so an unchanged input fingerprint may keep
    /// the last render (incremental compile, `agent/incremental.rs`). Defaults to
    /// `false`: every compile renders again.
    fn renders_like_compile_pod(&self) -> bool {
        false
    }

    /// The node table (`nft -f` text replacing the node's `table inet netpol`), or
    /// `None` when this source has none. Defaults to `None`.
    fn render_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        ctx: &NodeContext,
    ) -> Result<Option<String>, RenderError> {
        let _ = (model, graph, ctx);
        Ok(None)
    }

    /// The node table as a desired ruleset in the node's namespace, or `None` when
    /// this source has none. Defaults to [`RulesetSource::render_node`]'s text without
    /// parts (every change replaces the table); [`CompiledRulesets`] splits it into
    /// skeleton and peer-map entries, so peer changes become element updates.
    fn render_node_desired(
        &self,
        model: &Model,
        graph: &AllowGraph,
        ctx: &NodeContext,
    ) -> Result<Option<Desired>, RenderError> {
        Ok(self
            .render_node(model, graph, ctx)?
            .map(|text| Desired::new(crate::node::OWN_NETNS, text)))
    }
}

/// The real renderer: [`policy_compiler::ruleset::compile_pod`] and its `nft -f` text
/// (which starts with `add table` + `delete table`: one transaction replacing the table).
#[derive(Debug, Clone, Default)]
pub struct CompiledRulesets {
    /// Options of the generated rulesets (NFLOG group of the drop rules).
    pub options: RulesetOptions,
}

impl CompiledRulesets {
    fn options_for(&self, node_addresses: Option<&[IpAddr]>) -> RulesetOptions {
        match node_addresses {
            Some(addrs) => RulesetOptions {
                node_addresses: addrs.to_vec(),
                defer_services: true,
                ..self.options.clone()
            },
            // No node table on this path: Service addresses are judged before DNAT.
            None => RulesetOptions {
                defer_services: false,
                ..self.options.clone()
            },
        }
    }
}

impl RulesetSource for CompiledRulesets {
    fn renders_like_compile_pod(&self) -> bool {
        true
    }

    fn render_desired(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        node_addresses: Option<&[IpAddr]>,
        netns: &str,
    ) -> Result<Desired, RenderError> {
        let rs = compile_pod(model, graph, pod, &self.options_for(node_addresses));
        Ok(Desired::with_parts(
            netns,
            rs.to_nft(),
            &rs.skeleton().to_nft(),
            rs.peer_entries(),
        )
        .with_ruleset(std::sync::Arc::new(rs)))
    }

    fn render_desired_shared(
        &self,
        shared: &SharedRenders<'_>,
        pod: EndpointId,
        node_addresses: Option<&[IpAddr]>,
        netns: &str,
    ) -> Result<Desired, RenderError> {
        let (model, graph) = (shared.model(), shared.graph());
        let opts = self.options_for(node_addresses);
        let lookups = |c: &PeerClassifier| shared.lookup(c);
        let Some(split) = compile_pod_split(model, graph, pod, &opts, &lookups) else {
            // Audit policies: rendered from two models, not shared.
            return self.render_desired(model, graph, pod, node_addresses, netns);
        };
        let mut elements = Vec::with_capacity(split.lookups.len());
        for l in &split.lookups {
            let s = shared.swept(l).ok_or_else(|| RenderError {
                message: "peer lookup not from this compile's memo".to_owned(),
            })?;
            elements.push(s.elements.clone());
        }
        let entries = shared.entries(&split.lookups);
        let skeleton = split.skeleton.to_nft();
        // The split itself (skeleton + shared lookups) for a netlink replace: made whole
        // only when a replace needs it; the text likewise, when an apply asks for it
        // (`TableText::Spliced`: the element text stays shared). See: #12
        let split = std::sync::Arc::new(split);
        let text = TableText::Spliced(std::sync::Arc::new(SplicedText {
            split: split.clone(),
            elements,
        }));
        Ok(
            Desired::with_shared_parts(netns, text, &skeleton, entries.entries, entries.digest)
                .with_split(split),
        )
    }

    fn render(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
    ) -> Result<String, RenderError> {
        Ok(compile_pod(model, graph, pod, &self.options_for(None)).to_nft())
    }

    fn render_on_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        node_addresses: &[IpAddr],
    ) -> Result<String, RenderError> {
        Ok(compile_pod(model, graph, pod, &self.options_for(Some(node_addresses))).to_nft())
    }

    fn render_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        ctx: &NodeContext,
    ) -> Result<Option<String>, RenderError> {
        Ok(Some(
            compile_node(model, graph, ctx, &self.options).to_nft(),
        ))
    }

    fn render_node_desired(
        &self,
        model: &Model,
        graph: &AllowGraph,
        ctx: &NodeContext,
    ) -> Result<Option<Desired>, RenderError> {
        let rs = compile_node(model, graph, ctx, &self.options);
        Ok(Some(
            Desired::with_parts(
                crate::node::OWN_NETNS,
                rs.to_nft(),
                &rs.skeleton().to_nft(),
                rs.peer_entries(),
            )
            .with_ruleset(std::sync::Arc::new(rs)),
        ))
    }
}
