//! The failure-point matrix of the hand-off, driven over a socketpair
//! without KVM: whichever side or connection fails where, at most one guest
//! runs, and exactly one unless a side died holding it.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::*;
use crate::migration::channel::MigrationKey;

const T: Duration = Duration::from_secs(10);

/// Where the guest runs at the end.
#[derive(Debug, PartialEq, Eq)]
enum Runs {
    Source,
    Destination,
    /// A side died holding the guest (the unavoidable case).
    Nowhere,
}

fn run(fault: Option<&str>) -> (Runs, SourceEnd) {
    let fault = fault.map(|f| Fault::parse(f).unwrap());
    let (src_fault, dst_fault) = match fault {
        Some(f) if format!("{:?}", f.point).starts_with("Source") => (Some(f), None),
        Some(f) => (None, Some(f)),
        None => (None, None),
    };
    let key = MigrationKey::from_bytes(&[7; 32]).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let resumed = Arc::new(AtomicBool::new(false));
    let (dest_gone_tx, dest_gone) = mpsc::channel();
    let dest = {
        let key = key.clone();
        let resumed = resumed.clone();
        std::thread::spawn(move || {
            let mut ch = Channel::accept(b, &key, 1 << 20).unwrap();
            let result = destination(&mut ch, dst_fault, Ok(()), T, &mut || {
                resumed.store(true, Ordering::SeqCst);
                Ok(())
            });
            // A destination that failed (or "died") closes its end before
            // the source goes on.
            drop(ch);
            let _ = dest_gone_tx.send(());
            result.is_ok()
        })
    };
    let mut ch = Channel::connect(a, &key, 1 << 20).unwrap();
    let mut stopped = false;
    let end = source(&mut ch, src_fault, T, T, &mut || {
        stopped = true;
        // Let a destination that fails after READY finish failing first,
        // so "died before COMMIT was sent" is what the test exercises.
        if dst_fault.is_some_and(|f| f.point == Point::DestAfterReady) {
            let _ = dest_gone.recv_timeout(T);
        }
    });
    let source_died = src_fault.is_some_and(|f| f.action == Action::Exit);
    drop(ch);
    let dest_runs = dest.join().unwrap();
    assert_eq!(dest_runs, resumed.load(Ordering::SeqCst));
    let source_runs = matches!(end, SourceEnd::BeforeCommit(_)) && !source_died;
    assert!(
        !(source_runs && dest_runs),
        "{fault:?}: the guest runs in two places ({end:?})"
    );
    let runs = if source_runs {
        Runs::Source
    } else if dest_runs {
        Runs::Destination
    } else {
        Runs::Nowhere
    };
    (runs, end)
}

#[test]
fn no_fault_moves_the_guest() {
    let (runs, end) = run(None);
    assert_eq!(runs, Runs::Destination);
    assert!(matches!(end, SourceEnd::Running), "{end:?}");
}

#[test]
fn failures_before_commit_keep_the_guest_at_the_source() {
    for fault in [
        "source-before-ready:cut",
        "source-after-ready:cut",
        "dest-before-ready:cut",
        "dest-before-ready:exit",
        "dest-after-ready:cut",
        "dest-after-ready:exit",
    ] {
        let (runs, end) = run(Some(fault));
        assert_eq!(runs, Runs::Source, "{fault}: {end:?}");
    }
}

#[test]
fn after_commit_the_destination_runs_the_guest_whatever_the_source_does() {
    for fault in [
        "source-after-commit:cut",
        "source-after-commit:exit",
        "dest-after-commit:cut",
        "dest-before-running:cut",
    ] {
        let (runs, end) = run(Some(fault));
        assert_eq!(runs, Runs::Destination, "{fault}: {end:?}");
    }
    // Without RUNNING the source reports that the guest is not its own.
    let (_, end) = run(Some("dest-before-running:cut"));
    assert!(matches!(end, SourceEnd::AfterCommit(_)), "{end:?}");
}

#[test]
fn a_source_killed_before_commit_leaves_no_second_copy() {
    // The source's guest dies with it; the destination must discard its
    // paused copy rather than guess.
    for fault in ["source-before-ready:exit", "source-after-ready:exit"] {
        let (runs, end) = run(Some(fault));
        assert_eq!(runs, Runs::Nowhere, "{fault}: {end:?}");
    }
}

#[test]
fn a_destination_killed_after_commit_loses_the_guest_but_never_doubles_it() {
    // The one unavoidable loss: COMMIT was taken and the taker died. The
    // source does not resume (it cannot know the destination did not run).
    let (runs, end) = run(Some("dest-after-commit:exit"));
    assert_eq!(runs, Runs::Nowhere);
    assert!(matches!(end, SourceEnd::AfterCommit(_)), "{end:?}");
}

#[test]
fn a_destination_that_cannot_restore_says_so_and_the_source_keeps_the_guest() {
    let key = MigrationKey::from_bytes(&[7; 32]).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let k = key.clone();
    let dest = std::thread::spawn(move || {
        let mut ch = Channel::accept(b, &k, 1 << 20).unwrap();
        destination(&mut ch, None, Err("no KVM".into()), T, &mut || {
            panic!("must not resume")
        })
        .is_err()
    });
    let mut ch = Channel::connect(a, &key, 1 << 20).unwrap();
    let end = source(&mut ch, None, T, T, &mut || panic!("must not stop"));
    assert!(dest.join().unwrap());
    match end {
        SourceEnd::BeforeCommit(e) => assert!(e.to_string().contains("no KVM"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn faults_parse() {
    assert!(Fault::parse("source-after-ready:cut").is_some());
    assert!(Fault::parse("dest-after-commit:exit").is_some());
    for bad in [
        "",
        "source-after-ready",
        "nowhere:cut",
        "dest-after-ready:boom",
    ] {
        assert!(Fault::parse(bad).is_none(), "{bad}");
    }
}
