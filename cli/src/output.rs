//! Standard output for every command: a closed pipe (`netpol matrix ... | head`) ends
//! the process quietly with exit 0 instead of a panic (Rust ignores SIGPIPE, so `print!`
//! would panic on EPIPE).

use std::io::{ErrorKind, Write as _};

/// Writes `text` to stdout and flushes. On a closed pipe the process exits 0 at once
/// (nobody reads the rest); on another write error it prints the error and exits 1.
pub(crate) fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        exit_on(&e);
    }
}

/// [`emit`] with a newline.
pub(crate) fn emitln(text: &str) {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    emit(&s);
}

/// Ends the process for a stdout write error: quietly (0) for a closed pipe.
pub(crate) fn exit_on(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// Buffered stdout for long streamed outputs (`list`, `diff`), with [`emit`]'s handling
/// of a closed pipe.
pub(crate) struct Out {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
}

impl Out {
    /// Locks stdout.
    pub(crate) fn new() -> Out {
        Out {
            w: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
        }
    }

    /// Writes `s`.
    pub(crate) fn put(&mut self, s: &str) {
        if let Err(e) = self.w.write_all(s.as_bytes()) {
            exit_on(&e);
        }
    }

    /// Flushes.
    pub(crate) fn finish(mut self) {
        if let Err(e) = self.w.flush() {
            exit_on(&e);
        }
    }
}
