//! Helpers shared by every netpol process (the agent, the `netpol-cni` plugin and its
//! installer, the lab and the `netpol` CLI). It depends on nothing but `std`, so the
//! lowest layer of each side can import it without pulling in another side.
//!
//! - [`ErrorChain`]: an error with its sources on one line (`a: b: c`), for logs and
//!   command-line messages.
//! - [`fs::write_atomic`]: the one atomic file write (temporary file in the same
//!   directory, exact mode, fsync, rename, directory fsync), used by the CNI installer
//!   (node configuration, the plugin binary) and the agent's CNI records.
//!
//! # Example
//!
//! ```
//! use netpol_common::ErrorChain;
//!
//! #[derive(Debug)]
//! struct Outer(std::io::Error);
//! impl std::fmt::Display for Outer {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         f.write_str("reading config")
//!     }
//! }
//! impl std::error::Error for Outer {
//!     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
//!         Some(&self.0)
//!     }
//! }
//!
//! let e = Outer(std::io::Error::other("disk on fire"));
//! assert_eq!(ErrorChain(&e).to_string(), "reading config: disk on fire");
//! ```

pub mod fs;

/// Displays an error with its sources (`a: b: c`).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}
