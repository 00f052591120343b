//! The shim's errors and how they reach containerd (ttrpc status codes).

use containerd_shim::protos::ttrpc;
use thiserror::Error;

/// Why a shim operation failed.
#[derive(Debug, Error)]
pub enum ShimError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad runtime spec: {0}")]
    Spec(String),
    #[error("mounting the rootfs: {0}")]
    Mount(String),
    #[error("building the root image: {0}")]
    Image(String),
    #[error("VM: {0}")]
    Vm(String),
    #[error("guest agent: {0}")]
    Agent(#[from] agent_protocol::ClientError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Usage(String),
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            ShimError::State(_) => ttrpc::Code::FAILED_PRECONDITION,
            ShimError::Spec(_) | ShimError::Usage(_) => ttrpc::Code::INVALID_ARGUMENT,
            _ => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}
