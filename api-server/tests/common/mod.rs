//! Test harness: the real API server on a temporary socket, a fake VMM
//! behind it, and the real client in front.

#![allow(dead_code)]

pub mod fake_vmm;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use api::ApiRequest;
use api_server::{ApiServerHandle, ServerOptions};
use serde_json::Value;

pub use fake_vmm::FakeVmm;

/// A running server with its fake VMM; stops both when dropped.
pub struct TestServer {
    pub socket: PathBuf,
    pub server: Option<ApiServerHandle>,
    pub vmm: Option<FakeVmm>,
    _dir: tempfile::TempDir,
}

/// Options with short timeouts, so timeout tests run fast.
pub fn quick_options() -> ServerOptions {
    ServerOptions {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        reply_timeout: Duration::from_secs(5),
        ..ServerOptions::default()
    }
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(quick_options(), Duration::ZERO)
    }

    pub fn start_with(options: ServerOptions, vmm_delay: Duration) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let (tx, rx) = mpsc::channel();
        let (vmm, wake) = FakeVmm::start(rx, vmm_delay);
        let server =
            api_server::spawn_api_server_with(&socket, tx, wake, options).expect("server starts");
        TestServer {
            socket,
            server: Some(server),
            vmm: Some(vmm),
            _dir: dir,
        }
    }

    /// Sends a request; returns the status and the body parsed as JSON
    /// (`Null` for an empty body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = api_server::client::request(&self.socket, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
        };
        (status, json)
    }

    /// Sends a request that must fail with `status`; returns the
    /// fault_message.
    pub fn fault(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> String {
        let (got, json) = self.call(method, path, body);
        assert_eq!(got, status, "{method} {path}: {json}");
        json["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {json}"))
            .to_owned()
    }

    /// The requests the fake VMM has answered so far.
    pub fn requests(&self) -> Vec<ApiRequest> {
        let vmm = self.vmm.as_ref().expect("vmm running");
        vmm.requests.lock().expect("lock").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        if let Some(vmm) = self.vmm.take() {
            vmm.join();
        }
    }
}

/// Sends a bodyless request by hand and returns the raw answer (headers and
/// body), for checks the client hides (headers, odd methods).
pub fn raw_request(socket: &std::path::Path, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}
