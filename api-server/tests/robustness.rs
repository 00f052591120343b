//! The server under stress and misuse: slow or half-sent requests, a busy or
//! vanished VMM, socket reuse, many concurrent clients, and the counters.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use api_server::{ApiServerError, ServerOptions};
use common::{quick_options, TestServer};
use vmm_sys_util::eventfd::EventFd;

/// Reads until EOF (or the 10 s safety timeout) and returns what came.
fn read_all(stream: &mut UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn half_sent_request_times_out_without_blocking_others() {
    let options = ServerOptions {
        header_timeout: Duration::from_millis(1500),
        ..quick_options()
    };
    let t = TestServer::start_with(options, Duration::ZERO);
    let mut slow = UnixStream::connect(&t.socket).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut idle = UnixStream::connect(&t.socket).unwrap();
    let began = Instant::now();
    // Others are served while those two hang.
    for _ in 0..3 {
        assert_eq!(t.call("GET", "/", None).0, 200);
    }
    let served = began.elapsed();
    assert!(served < Duration::from_secs(1), "{served:?}");
    // The half-sent one is closed once the header timeout (1.5 s) runs out.
    let _ = read_all(&mut slow);
    let waited = began.elapsed();
    assert!(waited >= Duration::from_millis(1200), "early: {waited:?}");
    assert!(waited < Duration::from_secs(6), "not closed: {waited:?}");
    // So is a connection that never sent anything.
    assert_eq!(read_all(&mut idle), "");
    assert!(began.elapsed() < Duration::from_secs(6));
}

#[test]
fn slow_body_gets_408() {
    let t = TestServer::start();
    let mut stream = UnixStream::connect(&t.socket).unwrap();
    let head = "PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"metri";
    stream.write_all(head.as_bytes()).unwrap();
    let began = Instant::now();
    let answer = read_all(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("fault_message"), "{answer}");
    assert!(began.elapsed() < Duration::from_secs(5));
    assert!(t.requests().is_empty());
}

#[test]
fn busy_vmm_does_not_stop_the_api_and_slow_answers_get_503() {
    let options = ServerOptions {
        reply_timeout: Duration::from_millis(1500),
        ..quick_options()
    };
    let t = TestServer::start_with(options, Duration::from_secs(3));
    let socket = t.socket.clone();
    let slow = std::thread::spawn(move || api_server::client::request(&socket, "GET", "/", None));
    std::thread::sleep(Duration::from_millis(100));
    let began = Instant::now();
    for _ in 0..3 {
        assert_eq!(t.call("GET", "/version", None).0, 200);
    }
    let served = began.elapsed();
    assert!(served < Duration::from_secs(1), "{served:?}");
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("did not answer within"), "{body}");
    let metrics = t.server.as_ref().unwrap().metrics();
    assert_eq!(metrics.vmm_timeouts, 1);
}

#[test]
fn vanished_vmm_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let (tx, rx) = mpsc::channel();
    drop(rx);
    let server =
        api_server::spawn_api_server_with(&socket, tx, EventFd::new(0).unwrap(), quick_options())
            .unwrap();
    let (status, body) = api_server::client::request(&socket, "GET", "/", None).unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("not running"), "{body}");
    // /version does not need the VMM.
    assert_eq!(
        api_server::client::request(&socket, "GET", "/version", None)
            .unwrap()
            .0,
        200
    );
    server.shutdown();
}

#[test]
fn live_socket_is_refused_and_stale_one_replaced() {
    let t = TestServer::start();
    let (tx, _rx) = mpsc::channel();
    let err =
        api_server::spawn_api_server(&t.socket, tx.clone(), EventFd::new(0).unwrap()).unwrap_err();
    assert!(matches!(err, ApiServerError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("socket in use by a live process"),
        "{err}"
    );
    assert_eq!(
        t.call("GET", "/", None).0,
        200,
        "the first server must survive"
    );

    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let server =
        api_server::spawn_api_server(&stale, tx.clone(), EventFd::new(0).unwrap()).unwrap();
    assert_eq!(
        api_server::client::request(&stale, "GET", "/version", None)
            .unwrap()
            .0,
        200
    );
    server.shutdown();
    assert!(!stale.exists(), "shutdown must remove the socket");

    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    let err = api_server::spawn_api_server(&file, tx, EventFd::new(0).unwrap()).unwrap_err();
    assert!(matches!(err, ApiServerError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn client_names_the_socket_when_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let err = api_server::client::request(&socket, "GET", "/", None).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot connect to {}: ", socket.display())),
        "{text}"
    );
    assert!(
        text.ends_with("No such file or directory (is flint running with --api-sock?)"),
        "{text}"
    );
}

#[test]
fn concurrent_clients_all_succeed_and_are_counted() {
    let t = TestServer::start();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let socket = t.socket.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| api_server::client::request(&socket, "GET", "/", None).map(|r| r.0))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ok = 0;
    for thread in threads {
        for result in thread.join().unwrap() {
            assert_eq!(result.unwrap(), 200);
            ok += 1;
        }
    }
    assert_eq!(ok, 200);
    assert_eq!(t.call("PUT", "/nope", Some("{}")).0, 404);
    assert_eq!(t.call("PATCH", "/vm", Some("{}")).0, 400);
    let metrics = t.server.as_ref().unwrap().metrics();
    assert_eq!(metrics.requests, 202);
    assert_eq!((metrics.get, metrics.put, metrics.patch), (200, 1, 1));
    assert_eq!(metrics.errors, 2);
    let json = serde_json::to_value(metrics).unwrap();
    assert_eq!(json["requests"], 202);
}

#[test]
fn hundreds_of_slow_or_idle_connections_do_not_keep_a_new_client_waiting() {
    // Timeouts far beyond the client's wait below, so only the connection
    // bound (displacing the longest-idle connection) can get the new
    // client its answer.
    let options = ServerOptions {
        header_timeout: Duration::from_secs(120),
        body_timeout: Duration::from_secs(120),
        ..quick_options()
    };
    let t = TestServer::start_with(options, Duration::ZERO);
    let mut hogs = Vec::new();
    for i in 0..200 {
        let mut stream = UnixStream::connect(&t.socket).unwrap();
        if i % 2 == 0 {
            // Slow: a request trickling in (one byte so far)...
            stream.write_all(b"G").unwrap();
        } // ...or idle: nothing at all.
        hogs.push(stream);
    }
    // A trickle of one more byte each, as slow clients do.
    for stream in hogs.iter_mut().step_by(2) {
        let _ = stream.write_all(b"E");
    }
    let answer = api_server::client::request_with_timeout(
        &t.socket,
        "GET",
        "/",
        None,
        Duration::from_secs(60),
    );
    assert_eq!(answer.unwrap().0, 200);
    let metrics = t.server.as_ref().unwrap().metrics();
    assert!(metrics.evicted >= 137, "{metrics:?}");
    // The displaced connections were closed, not left hanging.
    let mut first = hogs.remove(0);
    assert_eq!(read_all(&mut first), "");
}

#[test]
fn connections_waiting_for_the_vmm_are_kept_and_new_ones_refused_quickly() {
    let options = ServerOptions {
        max_connections: 1,
        reply_timeout: Duration::from_secs(60),
        ..quick_options()
    };
    let t = TestServer::start_with(options, Duration::from_secs(5));
    let socket = t.socket.clone();
    let waiting =
        std::thread::spawn(move || api_server::client::request(&socket, "GET", "/", None));
    // Until the one slot's client waits for the (slow) VMM.
    while t.requests().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut extra = UnixStream::connect(&t.socket).unwrap();
    let answer = read_all(&mut extra);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("fault_message"), "{answer}");
    // The waiting client was not displaced.
    assert_eq!(waiting.join().unwrap().unwrap().0, 200);
    assert_eq!(t.server.as_ref().unwrap().metrics().refused, 1);
}
