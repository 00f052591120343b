//! A whole migration without KVM: the source streams a sample state from a
//! stand-in VM, the destination receives it under its policy and runs the
//! hand-off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::snapshot::tests::sample;

/// A paused stand-in VM: its memory and the sample state.
struct FakeVm {
    mem: GuestMemory,
    paused: bool,
}

impl SourceVm for FakeVm {
    fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    fn take_dirty(&mut self) -> Result<Vec<Vec<u64>>, MigrationError> {
        Ok(vec![vec![0; 4]; self.mem.num_regions()])
    }

    fn pause_and_collect(&mut self) -> Result<(Vec<Vec<u64>>, Vec<u8>), MigrationError> {
        self.paused = true;
        let state = crate::snapshot::encode_state(&sample()).map_err(state_err)?;
        Ok((self.take_dirty()?, state))
    }
}

/// Runs a migration of the sample VM to a destination with `policy`:
/// what the source got, and what the destination got (and whether it ran
/// the guest), and whether the source paused.
fn migrate(policy: IncomingPolicy) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let key = MigrationKey::from_bytes(&[5; 32]).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let dest = {
        let (key, ran) = (key.clone(), ran.clone());
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let ch = Channel::accept(s, &key, MAX_MESSAGE)?;
            let mut incoming = receive_vm(ch, &policy)?;
            finish_incoming(&mut incoming.channel, Ok(()), &mut || {
                ran.store(true, Ordering::SeqCst);
                Ok(())
            })?;
            Ok(incoming.state)
        })
    };
    let mut vm = FakeVm {
        mem: sample().memory.create_memory().unwrap(),
        paused: false,
    };
    vm.mem
        .write_slice(b"guest data", GuestAddress(0x1000))
        .unwrap();
    let sent = send_vm(&mut vm, &format!("unix:{}", path.display()), &key);
    let received = dest.join().unwrap();
    Outcome {
        sent,
        received,
        ran: ran.load(Ordering::SeqCst),
        paused: vm.paused,
    }
}

struct Outcome {
    sent: Result<MigrationReport, MigrationError>,
    received: Result<MicroVmState, MigrationError>,
    ran: bool,
    paused: bool,
}

#[test]
fn the_guest_moves_with_the_destinations_own_disk() {
    let policy = IncomingPolicy {
        drives: vec![api::DriveOverride {
            drive_id: "root".into(),
            path_on_host: "/srv/allowed.ext4".into(),
        }],
        ..Default::default()
    };
    let Outcome {
        sent,
        received,
        ran,
        paused,
    } = migrate(policy);
    assert!(paused);
    let report = sent.unwrap();
    assert!(report.bytes >= 4096 && report.state_bytes > 0, "{report:?}");
    let state = received.unwrap();
    assert_eq!(
        state.config.drives[0].path_on_host,
        std::path::PathBuf::from("/srv/allowed.ext4")
    );
    assert!(ran);
}

#[test]
fn a_disk_the_destination_did_not_allow_is_refused_and_the_source_keeps_the_guest() {
    let Outcome {
        sent,
        received,
        ran,
        paused,
    } = migrate(IncomingPolicy::default());
    // The state came last, with the guest paused: the caller resumes it.
    assert!(paused);
    let err = received.err().unwrap();
    assert!(
        matches!(&err, MigrationError::Refused(m) if m.contains("\"root\"") && m.contains("--drive-override")),
        "{err}"
    );
    assert!(!ran);
    // Refused before READY: the source resumes (not AfterCommit).
    let err = sent.err().unwrap();
    assert!(!matches!(err, MigrationError::AfterCommit(_)), "{err}");
}

#[test]
fn more_memory_than_the_destination_allows_is_refused() {
    let policy = IncomingPolicy {
        max_mem: 1 << 20,
        ..Default::default()
    };
    let Outcome {
        sent,
        received,
        ran,
        paused,
    } = migrate(policy);
    assert!(matches!(received, Err(MigrationError::Refused(_))));
    // Refused at HELLO: the guest never even paused.
    assert!(!paused);
    assert!(!ran);
    assert!(!matches!(sent, Ok(_) | Err(MigrationError::AfterCommit(_))));
}
