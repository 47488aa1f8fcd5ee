//! Rendering one Pod's ruleset (and the node table) for the reconciler.

use std::net::IpAddr;

use policy_compiler::ruleset::{NodeContext, RulesetOptions, compile_node, compile_pod};
use policy_compiler::{AllowGraph, EndpointId, Model};

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
}

/// The real renderer: [`policy_compiler::ruleset::compile_pod`] and its `nft -f` text
/// (which starts with `add table` + `delete table`: one transaction replacing the table).
#[derive(Debug, Clone, Default)]
pub struct CompiledRulesets {
    /// Options of the generated rulesets (NFLOG group of the drop rules).
    pub options: RulesetOptions,
}

impl RulesetSource for CompiledRulesets {
    fn render(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
    ) -> Result<String, RenderError> {
        // No node table on this path: Service addresses are judged before DNAT.
        let options = RulesetOptions {
            defer_services: false,
            ..self.options.clone()
        };
        Ok(compile_pod(model, graph, pod, &options).to_nft())
    }

    fn render_on_node(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        node_addresses: &[IpAddr],
    ) -> Result<String, RenderError> {
        let options = RulesetOptions {
            node_addresses: node_addresses.to_vec(),
            defer_services: true,
            ..self.options.clone()
        };
        Ok(compile_pod(model, graph, pod, &options).to_nft())
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
}
