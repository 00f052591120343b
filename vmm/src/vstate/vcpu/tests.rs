//! vCPU threads against the host's KVM: kicks, pause/resume, bounded stop.

use super::*;
use std::sync::Condvar;

/// A port device whose writes block until it is opened: a vCPU stuck in
/// a device (a host file that does not answer, a lock held elsewhere).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<(bool, bool)>, Condvar)>);

impl Gate {
    /// Waits until a vCPU is inside the device (60 s at most).
    fn wait_entered(&self) {
        let (lock, cv) = &*self.0;
        let state = lock.lock().unwrap();
        let (state, _) = cv
            .wait_timeout_while(state, Duration::from_secs(60), |s| !s.0)
            .unwrap();
        assert!(state.0, "the vCPU never reached the device");
    }
    fn open(&self) {
        self.0 .0.lock().unwrap().1 = true;
        self.0 .1.notify_all();
    }
}

impl devices::bus::BusDevice for Gate {
    fn read(&mut self, _: u64, _: u64, _: &mut [u8]) {}
    fn write(&mut self, _: u64, _: u64, _: &[u8]) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.0 = true;
        cv.notify_all();
        while !state.1 {
            state = cv.wait(state).unwrap();
        }
    }
}

/// Real-mode code at guest 0x1000: vCPU 0 loops on `out 0x80, al`, vCPU 1
/// on `out 0x81, al` (at 0x1010), vCPU 2 on `jmp $` (at 0x1020).
const CODE: [(u64, &[u8]); 3] = [
    (0x1000, &[0xe6, 0x80, 0xeb, 0xfc]),
    (0x1010, &[0xe6, 0x81, 0xeb, 0xfc]),
    (0x1020, &[0xeb, 0xfe]),
];

fn test_vm() -> Vm {
    let vm = Vm::new().expect("KVM is needed for the vCPU tests");
    // SAFETY: a fresh anonymous mapping, never unmapped (KVM uses it for
    // the rest of the test process).
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            0x1000,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    for (addr, code) in CODE {
        // SAFETY: every piece of code lies within the 4 KiB mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                code.as_ptr(),
                mem.cast::<u8>().add((addr - 0x1000) as usize),
                code.len(),
            )
        };
    }
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0x1000,
        memory_size: 0x1000,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping outlives the VM (it is never unmapped).
    unsafe { vm.fd().set_user_memory_region(region) }.unwrap();
    vm
}

/// vCPU `id` of `vm` running `CODE[id]`, its port bus holding `device`
/// at 0x81; returns the vCPU and its port bus.
fn test_vcpu(vm: &Vm, id: u8, device: Option<Gate>) -> (Vcpu, Arc<Bus>) {
    let mut pio = Bus::new();
    if let Some(device) = device {
        pio.insert(Arc::new(Mutex::new(device)), 0x81, 1).unwrap();
    }
    let pio = Arc::new(pio);
    let buses = VcpuBuses {
        pio: pio.clone(),
        mmio: Arc::new(Bus::new()),
        exits: Arc::default(),
    };
    let (tx, _rx) = channel();
    std::mem::forget(_rx);
    let events = VcpuEventSender::new(tx, EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let vcpu = Vcpu::new(
        id,
        vm,
        buses,
        events,
        Arc::new(StateCaps::default()),
        Instant::now(),
    )
    .unwrap();
    let mut sregs = vcpu.fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.fd.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: CODE[usize::from(id)].0,
        rflags: 2,
        ..Default::default()
    };
    vcpu.fd.set_regs(&regs).unwrap();
    (vcpu, pio)
}

/// Runs `f` on a thread; fails if it has not returned after a generous
/// timeout (the old code never returned).
fn must_return<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[test]
fn a_kick_before_kvm_run_is_not_lost() {
    let vm = test_vm();
    // vCPU 2 spins on `jmp $`: only a kick ever gets KVM_RUN to return.
    let (mut vcpu, _) = test_vcpu(&vm, 2, None);
    install_kick_handler().unwrap();
    // The kick lands while the thread is outside KVM_RUN (no signal
    // can interrupt a KVM_RUN that has not started): the flag alone
    // makes the next KVM_RUN return.
    vcpu.immediate_exit.store(1);
    let vcpu = must_return("KVM_RUN after a kick", move || {
        assert!(matches!(vcpu.run_once(), Step::Continue));
        vcpu
    });
    assert_eq!(vcpu.buses.exits.interrupted.load(Ordering::Relaxed), 1);
}

#[test]
fn pause_and_resume_answer_every_time() {
    let vm = test_vm();
    let (vcpu, pio) = test_vcpu(&vm, 0, None);
    let handle = vcpu.start(false, false).unwrap();
    must_return("pause/resume", move || {
        for _ in 0..50 {
            handle.pause().unwrap();
            handle.resume().unwrap();
        }
        drop(handle);
    });
    assert!(pio.unhandled().writes.load(Ordering::Relaxed) > 0);
}

#[test]
fn stop_is_bounded_when_a_vcpu_is_stuck_in_a_device() {
    let vm = test_vm();
    let gate = Gate::default();
    let (vcpu, _) = test_vcpu(&vm, 1, Some(gate.clone()));
    let mut handle = vcpu.start(false, false).unwrap();
    gate.wait_entered();
    let handle = must_return("stop", move || {
        handle.stop();
        handle
    });
    assert!(handle.thread.is_none());
    gate.open();
}

#[test]
fn pause_is_all_or_nothing() {
    let vm = test_vm();
    let gate = Gate::default();
    let (vcpu0, pio0) = test_vcpu(&vm, 0, None);
    let (vcpu1, _) = test_vcpu(&vm, 1, Some(gate.clone()));
    let handles = vec![
        vcpu0.start(false, false).unwrap(),
        vcpu1.start(false, false).unwrap(),
    ];
    gate.wait_entered();
    let (handles, result) = must_return("pause_all", move || {
        let result = pause_all(&handles);
        (handles, result)
    });
    match result {
        Err(PauseError::Pause { ids }) => assert_eq!(ids, vec![1]),
        other => panic!("expected vCPU 1 to fail to pause: {other:?}"),
    }
    // vCPU 0 was resumed: it keeps running its loop.
    let before = pio0.unhandled().writes.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while pio0.unhandled().writes.load(Ordering::Relaxed) == before {
        assert!(Instant::now() < deadline, "vCPU 0 stayed paused");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Once the device lets go, vCPU 1 pauses and resumes (as queued),
    // and the whole VM pauses and resumes.
    gate.open();
    must_return("pause_all/resume_all", move || {
        pause_all(&handles).unwrap();
        resume_all(&handles).unwrap();
        drop(handles);
    });
}
