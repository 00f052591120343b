//! One HTTP connection of the API server: routing, body limits, handing the
//! request to the VMM and turning its answer into HTTP. Everything here runs
//! on the server's single runtime thread, so nothing may block for long:
//! waiting for the VMM past a short inline wait happens on a blocking-pool
//! thread.

use std::convert::Infallible;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::UnixStream;

use crate::routes::{self, BodySpec, Parsed};
use crate::server::Shared;
use api::FIRECRACKER_API_VERSION;
use api::{ApiError, ApiMessage, ApiRequest, ApiResponse, VersionInfo};

/// What every answer is: a small, fully buffered body.
type Answer = Response<Full<Bytes>>;

/// Serves HTTP/1.1 (keep-alive) on one accepted connection until the client
/// closes it or a timeout does. hyper's header timer also runs while a
/// keep-alive connection is idle, so idle connections are closed too.
pub(crate) async fn serve_connection(stream: UnixStream, shared: Arc<Shared>, id: u64) {
    let header_timeout = shared.options.header_timeout;
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(req, &shared, id).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Bounds each connection's read buffer, so headers past 64 KiB get
        // hyper's own 431 instead of costing the VMM process memory.
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("API connection closed: {e}");
    }
}

/// Answers one request and counts it.
async fn handle(req: Request<Incoming>, shared: &Shared, id: u64) -> Answer {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let answer = answer(req, shared, id).await;
    shared
        .metrics
        .record(&method, &path, answer.status().as_u16());
    answer
}

async fn answer(req: Request<Incoming>, shared: &Shared, id: u64) -> Answer {
    let path = req.uri().path().to_owned();
    let Some(matched) = routes::match_path(&path) else {
        return error(ApiError::not_found(format!("no such path: {path}")));
    };
    let method = req.method().as_str().to_owned();
    let Some(route) = matched.route(&method) else {
        let allow = matched.methods().join(", ");
        let mut answer = error(ApiError::new(
            405,
            format!("method {method} not allowed on {path}; allowed: {allow}"),
        ));
        if let Ok(value) = HeaderValue::from_str(&allow) {
            answer.headers_mut().insert(ALLOW, value);
        }
        return answer;
    };
    let body = if route.body == BodySpec::None {
        Bytes::new()
    } else {
        match read_body(req.into_body(), shared).await {
            Ok(body) => body,
            Err(mut answer) => {
                // The rest of the body is unread: the connection cannot carry
                // another request.
                answer
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                return answer;
            }
        }
    };
    match routes::parse(&matched, route, &body) {
        Err(e) => error(e),
        Ok(Parsed::Version) => json(
            StatusCode::OK,
            &VersionInfo {
                firecracker_version: FIRECRACKER_API_VERSION.to_owned(),
                flint_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        ),
        Ok(Parsed::Vmm(request)) => {
            // While it waits for the VMM the connection is not displaced by
            // new clients: its client wants the answer.
            shared.connections().set_busy(id, true);
            let response = ask_vmm(request, shared).await;
            shared.connections().set_busy(id, false);
            from_vmm(response)
        }
    }
}

/// Reads the whole body, refusing it past `max_body` bytes (up front when
/// Content-Length says so) or when it trickles in slower than `body_timeout`.
async fn read_body(body: Incoming, shared: &Shared) -> Result<Bytes, Answer> {
    let max = shared.options.max_body;
    let too_large = || {
        error(ApiError::new(
            413,
            format!("request body too large: at most {max} bytes accepted"),
        ))
    };
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    let timeout = shared.options.body_timeout;
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(error(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        )))),
        Err(_) => Err(error(ApiError::new(
            408,
            format!("request body not received within {timeout:?}"),
        ))),
    }
}

/// How long the runtime thread itself waits for the VMM's answer before it
/// hands the wait to a blocking-pool thread. Configuration answers and
/// `GET /` come well within it (tens of microseconds), and taking them here
/// saves a thread hop each way (and, after an idle spell, creating that
/// thread); other connections are held up by at most this long.
const INLINE_WAIT: Duration = Duration::from_millis(1);

/// Hands a request to the VMM and waits for its answer, blocking the
/// runtime for at most [`INLINE_WAIT`]; a VMM that is gone or too slow gets
/// the client a 503.
async fn ask_vmm(request: ApiRequest, shared: &Shared) -> ApiResponse {
    let unavailable = |message: String| ApiResponse::Error(ApiError::new(503, message));
    let (reply, answer) = mpsc::channel();
    if shared.to_vmm.send(ApiMessage { request, reply }).is_err() {
        return unavailable("the VMM is not running".to_owned());
    }
    if let Err(e) = shared.wake_vmm.write(1) {
        log::warn!("API: cannot wake the VMM: {e}");
    }
    let timeout = shared.options.reply_timeout;
    match answer.recv_timeout(INLINE_WAIT.min(timeout)) {
        Ok(response) => return response,
        Err(RecvTimeoutError::Disconnected) => {
            return unavailable("the VMM dropped the request without answering".to_owned())
        }
        Err(RecvTimeoutError::Timeout) => {}
    }
    let wait = tokio::task::spawn_blocking(move || answer.recv_timeout(timeout));
    // The outer timeout covers time queued for a blocking-pool thread.
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(RecvTimeoutError::Disconnected))) => {
            unavailable("the VMM dropped the request without answering".to_owned())
        }
        Ok(Ok(Err(RecvTimeoutError::Timeout))) | Err(_) => {
            shared.metrics.record_vmm_timeout();
            unavailable(format!("the VMM did not answer within {timeout:?}"))
        }
        Ok(Err(e)) => unavailable(format!("waiting for the VMM failed: {e}")),
    }
}

/// Turns the VMM's answer into HTTP: `Empty` is 204, `Error` its status
/// with a `fault_message`, and any other variant 200 with the value it
/// carries as the body, so a new answer type needs no code here.
fn from_vmm(response: ApiResponse) -> Answer {
    match response {
        ApiResponse::Empty => {
            let mut answer = Response::new(Full::new(Bytes::new()));
            *answer.status_mut() = StatusCode::NO_CONTENT;
            answer
        }
        ApiResponse::Error(e) => error(e),
        other => match serde_json::to_value(other) {
            // Serde writes a newtype variant as {"Variant": value}.
            Ok(serde_json::Value::Object(tagged)) if tagged.len() == 1 => {
                match tagged.into_iter().next() {
                    Some((_, value)) => json(StatusCode::OK, &value),
                    None => error(ApiError::new(500, "empty answer from the VMM")),
                }
            }
            Ok(other) => error(ApiError::new(
                500,
                format!("the VMM answered with an unexpected shape: {other}"),
            )),
            Err(e) => error(ApiError::new(500, format!("cannot encode the answer: {e}"))),
        },
    }
}

/// The error body every failure has: `{"fault_message": "..."}`.
#[derive(Serialize)]
struct Fault<'a> {
    fault_message: &'a str,
}

fn error(e: ApiError) -> Answer {
    match StatusCode::from_u16(e.status) {
        Ok(status) if status.is_client_error() || status.is_server_error() => json(
            status,
            &Fault {
                fault_message: &e.fault_message,
            },
        ),
        _ => {
            let message = format!(
                "the VMM answered with bad status {}: {}",
                e.status, e.fault_message
            );
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &Fault {
                    fault_message: &message,
                },
            )
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(e) => {
            let message = format!("cannot encode the answer: {e}");
            let fault = serde_json::json!({ "fault_message": message });
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                fault.to_string().into_bytes(),
            )
        }
    };
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}
