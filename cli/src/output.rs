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
