//! `netpol gen`: a synthetic cluster's manifests, for benchmarks and scale tests.

use std::path::Path;

use policy_compiler::synth::{SynthParams, generate};

/// Writes the manifests for `params` to `out` (stdout when `None`); returns the exit code.
pub(crate) fn run(params: &SynthParams, out: Option<&Path>) -> i32 {
    let text = generate(params);
    let written = match out {
        Some(path) => {
            std::fs::write(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                crate::output::exit_on(&e);
            }
            Ok(())
        }
    };
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
