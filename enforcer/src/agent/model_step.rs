//! The compile's first step: the model and graph of the state, patched from the last
//! good ones when the state says what changed (#12 point 3), built otherwise; and
//! what the compile replaces is freed on a background thread, off the event's path.

use std::sync::Arc;
use std::sync::mpsc;

use policy_compiler::{AllowGraph, Diagnostic, Patched};

use crate::reporter::CompiledModel;
use crate::state::{ModelDelta, State};

/// How the model of a compile came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelSource {
    /// Built from every object.
    #[default]
    Built,
    /// The last model patched with the changed objects (graph built again).
    Patched,
    /// Nothing the model reads changed: the last model and graph stand.
    Kept,
}

/// The model and graph of `state` now, or the errors that refuse it. `last` is the
/// last good compile, made from the state as it was when `delta` started (`None` for
/// either: build). A patch takes the last model out of `last` when nothing else holds
/// it (else copies it); when the patch cannot be done `last` is left as it was.
pub(super) fn model_of(
    state: &State,
    last: &mut Option<Arc<CompiledModel>>,
    delta: Option<ModelDelta>,
    dropper: &mut Dropper,
) -> Result<(Arc<CompiledModel>, ModelSource), Vec<Diagnostic>> {
    if let (Some(delta), Some(compiled)) = (&delta, last.as_ref())
        && delta.is_empty()
    {
        // Nothing the model reads changed (a netns mapping, a forced recompile).
        return Ok((compiled.clone(), ModelSource::Kept));
    }
    if let (Some(delta), Some(compiled)) = (delta, last.take()) {
        let (mut model, graph, shared) = match Arc::try_unwrap(compiled) {
            Ok(c) => (c.model, Some(c.graph), None),
            Err(shared) => (shared.model.clone(), None, Some(shared)),
        };
        match state.patch_model(&mut model, &delta) {
            Patched::Done => {
                // The last graph (and the last model, while the drop reporter holds
                // it) is freed elsewhere.
                dropper.drop_later(graph);
                dropper.drop_later(shared);
                let graph = AllowGraph::build(&model);
                return Ok((
                    Arc::new(CompiledModel { model, graph }),
                    ModelSource::Patched,
                ));
            }
            Patched::Rebuild(why) => {
                tracing::debug!(why, "model built again");
                // Unchanged by the patch that was not done: the last compile stands.
                *last = match (shared, graph) {
                    (Some(s), _) => Some(s),
                    (None, Some(graph)) => Some(Arc::new(CompiledModel { model, graph })),
                    (None, None) => None,
                };
            }
        }
    }
    let (model, diags) = state.build_model();
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags.into_iter().filter(Diagnostic::is_error).collect());
    }
    let graph = AllowGraph::build(&model);
    Ok((Arc::new(CompiledModel { model, graph }), ModelSource::Built))
}

type Garbage = Box<dyn Send>;

/// Frees what it is given on its own thread (started at the first use), so that
/// freeing a cluster's model, graph or tables never delays an event. Without a
/// thread (it could not be started) values are freed in place.
#[derive(Debug, Default)]
pub(super) struct Dropper {
    tx: Option<mpsc::Sender<Garbage>>,
    failed: bool,
}

impl Dropper {
    /// Frees `value` on the dropper's thread.
    pub(super) fn drop_later<T: Send + 'static>(&mut self, value: T) {
        if self.tx.is_none() && !self.failed {
            let (tx, rx) = mpsc::channel::<Garbage>();
            let started = std::thread::Builder::new()
                .name("netpol-dropper".into())
                .spawn(move || {
                    // Each value is freed as it is received; the thread ends with the
                    // reconciler (its sender).
                    for garbage in rx {
                        drop(garbage);
                    }
                });
            match started {
                Ok(_) => self.tx = Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no dropper thread: freeing in place");
                    self.failed = true;
                }
            }
        }
        match &self.tx {
            Some(tx) => {
                // A send fails only when the thread is gone: the value comes back and
                // is freed here.
                if let Err(mpsc::SendError(garbage)) = tx.send(Box::new(value)) {
                    drop(garbage);
                }
            }
            None => drop(value),
        }
    }
}
