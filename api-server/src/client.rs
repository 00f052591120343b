//! A minimal client for the API socket, for `flint ctl` and the tests: one
//! request per connection, answers returned as status and body text.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// How long [`request`] waits for a whole answer: longer than the server's
/// default reply timeout, so the server's 503 arrives before we give up.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(75);

/// Largest answer body accepted; real answers are a few KiB.
const MAX_ANSWER: usize = 4 << 20;

/// Why a request got no answer; each message names the socket so a user
/// with several VMs sees which one failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {} (is flint running with --api-sock?)", socket.display(), os_message(source))]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The method or path cannot be sent as given.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The connection failed mid-exchange or the answer was not HTTP.
    #[error("{}: {source}", socket.display())]
    Http {
        /// The socket path.
        socket: PathBuf,
        /// hyper's description.
        source: hyper::Error,
    },
    /// The answer's body could not be read (too large, or cut off).
    #[error("{}: cannot read the answer: {message}", socket.display())]
    Body {
        /// The socket path.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No whole answer within the timeout.
    #[error("{}: no answer within {after:?}", socket.display())]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The client's own runtime could not be created.
    #[error("cannot start the API client: {0}")]
    Runtime(io::Error),
}

/// `io::Error`'s Display ends in " (os error N)", noise for a user.
fn os_message(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// Sends one request to the API server at `socket` and returns the status
/// and body text (invalid UTF-8 replaced), waiting at most
/// [`DEFAULT_CLIENT_TIMEOUT`].
///
/// `path` may include a query; `body`, if any, is sent as JSON.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    request_with_timeout(socket, method, path, body, DEFAULT_CLIENT_TIMEOUT)
}

/// [`request`] with a chosen timeout for the whole exchange.
pub fn request_with_timeout(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    if !path.starts_with('/') {
        return Err(ClientError::InvalidRequest(format!(
            "path {path:?} must start with '/'"
        )));
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|e| ClientError::InvalidRequest(format!("method {method:?}: {e}")))?;
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost");
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default().to_owned()));
    let req = builder
        .body(body)
        .map_err(|e| ClientError::InvalidRequest(format!("path {path:?}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ClientError::Runtime)?;
    runtime.block_on(async {
        match tokio::time::timeout(timeout, exchange(socket, req)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                socket: socket.to_owned(),
                after: timeout,
            }),
        }
    })
}

async fn exchange(socket: &Path, req: Request<Full<Bytes>>) -> Result<(u16, String), ClientError> {
    let http_err = |source| ClientError::Http {
        socket: socket.to_owned(),
        source,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("API client connection: {e}");
        }
    });
    let response = sender.send_request(req).await.map_err(http_err)?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| ClientError::Body {
            socket: socket.to_owned(),
            message: e.to_string(),
        })?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
