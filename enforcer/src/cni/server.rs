//! The agent's end of the plugin socket.
//!
//! [`bind`] makes the unix socket (parent directory created, a stale socket from a
//! previous agent replaced, mode 0600: only root may talk to the agent); [`serve`]
//! accepts connections, reads one [`Request`] line from each, hands it to the agent loop
//! as a [`CniCall`] and writes the loop's [`Response`] back. Malformed requests are
//! answered with an error and never reach the loop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::{MAX_LINE, Request, Response, WIRE_VERSION};

/// How long a connection may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A plugin request on its way to the agent loop, with the way back.
#[derive(Debug)]
pub struct CniCall {
    /// The request.
    pub request: Request,
    /// Where the loop sends the answer.
    pub reply: oneshot::Sender<Response>,
}

/// Errors of setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket's directory, the stale socket or the socket itself.
    #[error("cni socket {path}: {op} failed")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket at `path` (mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |op, source| ServerError::Io {
        path: path.to_owned(),
        op,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("create directory", e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "replaced a stale cni socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale socket", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", e))?;
    Ok(listener)
}

/// Serves the socket until `shutdown` turns true; each connection on its own task.
pub async fn serve(
    listener: UnixListener,
    calls: mpsc::Sender<CniCall>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, calls.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cni socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The request line; `None` when the peer closed without a word (the plugin's STATUS
/// probe).
async fn read_request(stream: &mut UnixStream) -> Result<Option<Request>, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream.take(MAX_LINE as u64 + 1));
    match tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err("no request line within 5 s".to_owned()),
        Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.is_empty() {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    let request: Request =
        serde_json::from_slice(&line).map_err(|e| format!("invalid request: {e}"))?;
    if request.version != WIRE_VERSION {
        return Err(format!(
            "wire version {} not supported (agent speaks {WIRE_VERSION}): upgrade netpol-cni \
             and the agent together",
            request.version
        ));
    }
    Ok(Some(request))
}

async fn connection(mut stream: UnixStream, calls: mpsc::Sender<CniCall>) {
    let response = match read_request(&mut stream).await {
        Ok(None) => return,
        Err(message) => {
            tracing::warn!(error = message, "bad cni request");
            Response::error(message)
        }
        Ok(Some(request)) => {
            let (reply, answer) = oneshot::channel();
            if calls.send(CniCall { request, reply }).await.is_err() {
                Response::error("the agent is stopping")
            } else {
                answer
                    .await
                    .unwrap_or_else(|_| Response::error("the agent is stopping"))
            }
        }
    };
    let mut line = match serde_json::to_vec(&response) {
        Ok(l) => l,
        // A Response is two plain fields; it always serializes.
        Err(_) => return,
    };
    line.push(b'\n');
    // The plugin may have timed out and gone: nothing to do about a failed write.
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}
