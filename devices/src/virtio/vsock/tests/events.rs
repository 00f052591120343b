//! The device on a real event loop: host sockets wake it through the epoll
//! fd it registers, queue kicks through the queue eventfds.

use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};

use super::*;

#[test]
fn host_connect_runs_on_the_event_loop() {
    let t = T::new();
    let T {
        mut g, dev, dir, ..
    } = t;
    let uds = dir.path().join("v.sock");
    let dev = Arc::new(Mutex::new(dev));
    let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    // Activation kicked every queue: the loop drains them.
    em.run_with_timeout(0).unwrap();

    g.post_rx(2, RX_BUF);
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        em.run_with_timeout(100).unwrap();
        got.extend(g.take_rx());
        if !got.is_empty() {
            break;
        }
    }
    let req = got[0].0;
    assert_eq!(req.op, Op::Request as u16);

    g.send(&pkt(Op::Response, 52, req.src_port, 0), &[]);
    dev.lock().unwrap().queue_events()[1].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(read_line(&mut host), format!("OK {}\n", req.src_port));

    host.write_all(b"ping").unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        em.run_with_timeout(100).unwrap();
        got.extend(g.take_rx());
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got[0].1, b"ping");
    // Nothing left to do: the loop goes quiet (no busy wake-ups).
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
}
