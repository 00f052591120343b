//! The `ioctl(2)` request numbers flint's threads may use once their filter
//! is on, computed the way `<linux/ioctl.h>` does (x86_64 layout) from the
//! same argument types `kvm-ioctls` passes.
//!
//! Only the low 32 bits of the request are compared: the kernel's `ioctl`
//! takes an `unsigned int`, and some callers sign-extend it.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_ioeventfd,
    kvm_irq_level, kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msi,
    kvm_msr_list, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const KVMIO: u32 = 0xAE;

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u32) -> u32 {
    ioc(0, nr, 0)
}
const fn ior(nr: u32, size: usize) -> u32 {
    ioc(IOC_READ, nr, size)
}
const fn iow(nr: u32, size: usize) -> u32 {
    ioc(IOC_WRITE, nr, size)
}
const fn iowr(nr: u32, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, size)
}

// --- /dev/kvm (system) queries: read-only, harmless, and what a snapshot
// --- may ask before saving MSRs or CPUID.
/// `KVM_CHECK_EXTENSION` (also valid on VM fds).
pub const KVM_CHECK_EXTENSION: u32 = io(0x03);
/// `KVM_GET_MSR_INDEX_LIST`: which MSRs a snapshot must save.
pub const KVM_GET_MSR_INDEX_LIST: u32 = iowr(0x02, size_of::<kvm_msr_list>());
/// `KVM_GET_SUPPORTED_CPUID`.
pub const KVM_GET_SUPPORTED_CPUID: u32 = iowr(0x05, size_of::<kvm_cpuid2>());

// --- VM fd, at run time (event loop: snapshots, migration, device hot paths).
/// `KVM_GET_DIRTY_LOG` (dirty page tracking for live migration). `_IOW` in linux/kvm.h.
pub const KVM_GET_DIRTY_LOG: u32 = iow(0x42, size_of::<kvm_dirty_log>());
/// `KVM_SET_USER_MEMORY_REGION` (turning dirty logging on/off, restore).
pub const KVM_SET_USER_MEMORY_REGION: u32 = iow(0x46, size_of::<kvm_userspace_memory_region>());
/// `KVM_IRQ_LINE` (level-triggered legacy interrupts without an irqfd).
pub const KVM_IRQ_LINE: u32 = iow(0x61, size_of::<kvm_irq_level>());
/// `KVM_GET_IRQCHIP` (PIC/IOAPIC state for snapshots).
pub const KVM_GET_IRQCHIP: u32 = iowr(0x62, size_of::<kvm_irqchip>());
/// `KVM_SET_IRQCHIP`. `_IOR` in linux/kvm.h (a historical quirk).
pub const KVM_SET_IRQCHIP: u32 = ior(0x63, size_of::<kvm_irqchip>());
/// `KVM_SET_GSI_ROUTING` (MSI routes).
pub const KVM_SET_GSI_ROUTING: u32 = iow(0x6a, size_of::<kvm_irq_routing>());
/// `KVM_IRQFD` (device interrupts; (un)registered at activation/reset/restore).
pub const KVM_IRQFD: u32 = iow(0x76, size_of::<kvm_irqfd>());
/// `KVM_IOEVENTFD` (queue notifications).
pub const KVM_IOEVENTFD: u32 = iow(0x79, size_of::<kvm_ioeventfd>());
/// `KVM_SET_CLOCK` (kvmclock on restore).
pub const KVM_SET_CLOCK: u32 = iow(0x7b, size_of::<kvm_clock_data>());
/// `KVM_GET_CLOCK` (kvmclock for snapshots).
pub const KVM_GET_CLOCK: u32 = ior(0x7c, size_of::<kvm_clock_data>());
/// `KVM_GET_PIT2` (PIT state for snapshots).
pub const KVM_GET_PIT2: u32 = ior(0x9f, size_of::<kvm_pit_state2>());
/// `KVM_SET_PIT2`.
pub const KVM_SET_PIT2: u32 = iow(0xa0, size_of::<kvm_pit_state2>());
/// `KVM_SIGNAL_MSI`.
pub const KVM_SIGNAL_MSI: u32 = iow(0xa5, size_of::<kvm_msi>());

// --- vCPU fd (the vCPU thread: the run loop, register dumps, snapshots).
/// `KVM_RUN`: the hot path, checked first.
pub const KVM_RUN: u32 = io(0x80);
/// `KVM_GET_REGS`.
pub const KVM_GET_REGS: u32 = ior(0x81, size_of::<kvm_regs>());
/// `KVM_SET_REGS`.
pub const KVM_SET_REGS: u32 = iow(0x82, size_of::<kvm_regs>());
/// `KVM_GET_SREGS`.
pub const KVM_GET_SREGS: u32 = ior(0x83, size_of::<kvm_sregs>());
/// `KVM_SET_SREGS`.
pub const KVM_SET_SREGS: u32 = iow(0x84, size_of::<kvm_sregs>());
/// `KVM_GET_MSRS`.
pub const KVM_GET_MSRS: u32 = iowr(0x88, size_of::<kvm_msrs>());
/// `KVM_SET_MSRS`.
pub const KVM_SET_MSRS: u32 = iow(0x89, size_of::<kvm_msrs>());
/// `KVM_GET_FPU`.
pub const KVM_GET_FPU: u32 = ior(0x8c, size_of::<kvm_fpu>());
/// `KVM_SET_FPU`.
pub const KVM_SET_FPU: u32 = iow(0x8d, size_of::<kvm_fpu>());
/// `KVM_GET_LAPIC`.
pub const KVM_GET_LAPIC: u32 = ior(0x8e, size_of::<kvm_lapic_state>());
/// `KVM_SET_LAPIC`.
pub const KVM_SET_LAPIC: u32 = iow(0x8f, size_of::<kvm_lapic_state>());
/// `KVM_SET_CPUID2`.
pub const KVM_SET_CPUID2: u32 = iow(0x90, size_of::<kvm_cpuid2>());
/// `KVM_GET_CPUID2`.
pub const KVM_GET_CPUID2: u32 = iowr(0x91, size_of::<kvm_cpuid2>());
/// `KVM_GET_MP_STATE`.
pub const KVM_GET_MP_STATE: u32 = ior(0x98, size_of::<kvm_mp_state>());
/// `KVM_SET_MP_STATE`.
pub const KVM_SET_MP_STATE: u32 = iow(0x99, size_of::<kvm_mp_state>());
/// `KVM_GET_VCPU_EVENTS`.
pub const KVM_GET_VCPU_EVENTS: u32 = ior(0x9f, size_of::<kvm_vcpu_events>());
/// `KVM_SET_VCPU_EVENTS`.
pub const KVM_SET_VCPU_EVENTS: u32 = iow(0xa0, size_of::<kvm_vcpu_events>());
/// `KVM_GET_DEBUGREGS`.
pub const KVM_GET_DEBUGREGS: u32 = ior(0xa1, size_of::<kvm_debugregs>());
/// `KVM_SET_DEBUGREGS`.
pub const KVM_SET_DEBUGREGS: u32 = iow(0xa2, size_of::<kvm_debugregs>());
/// `KVM_SET_TSC_KHZ` (restore on a host with another TSC rate).
pub const KVM_SET_TSC_KHZ: u32 = io(0xa2);
/// `KVM_GET_TSC_KHZ`.
pub const KVM_GET_TSC_KHZ: u32 = io(0xa3);
/// `KVM_GET_XSAVE`.
pub const KVM_GET_XSAVE: u32 = ior(0xa4, size_of::<kvm_xsave>());
/// `KVM_SET_XSAVE`.
pub const KVM_SET_XSAVE: u32 = iow(0xa5, size_of::<kvm_xsave>());
/// `KVM_GET_XCRS`.
pub const KVM_GET_XCRS: u32 = ior(0xa6, size_of::<kvm_xcrs>());
/// `KVM_SET_XCRS`.
pub const KVM_SET_XCRS: u32 = iow(0xa7, size_of::<kvm_xcrs>());
/// `KVM_KVMCLOCK_CTRL` (tell the guest it was paused, against soft-lockup warnings).
pub const KVM_KVMCLOCK_CTRL: u32 = io(0xad);
/// `KVM_GET_XSAVE2` (xsave state larger than 4 KiB, AMX).
pub const KVM_GET_XSAVE2: u32 = ior(0xcf, size_of::<kvm_xsave>());

// --- TAP devices (devices/src/virtio/net/tap.rs). TUNSETOFFLOAD runs when
// --- the guest driver activates virtio-net, i.e. on a vCPU thread (MMIO
// --- write of DRIVER_OK); the others when a tap is opened.
/// `TUNSETIFF`.
pub const TUNSETIFF: u32 = libc::TUNSETIFF as u32;
/// `TUNSETVNETHDRSZ`.
pub const TUNSETVNETHDRSZ: u32 = libc::TUNSETVNETHDRSZ as u32;
/// `TUNSETOFFLOAD`.
pub const TUNSETOFFLOAD: u32 = libc::TUNSETOFFLOAD as u32;

// --- Terminals and file descriptor flags (console/TerminalMode, std, mio).
/// `TCGETS` (`tcgetattr`, `isatty`).
pub const TCGETS: u32 = libc::TCGETS as u32;
/// `TCSETS` (`tcsetattr(TCSANOW)`: restoring the terminal at exit).
pub const TCSETS: u32 = libc::TCSETS as u32;
/// `TCSETSW` (`tcsetattr(TCSADRAIN)`).
pub const TCSETSW: u32 = libc::TCSETSW as u32;
/// `TCSETSF` (`tcsetattr(TCSAFLUSH)`).
pub const TCSETSF: u32 = libc::TCSETSF as u32;
/// `TIOCGWINSZ` (terminal size).
pub const TIOCGWINSZ: u32 = libc::TIOCGWINSZ as u32;
/// `FIONBIO` (std's and mio's `set_nonblocking`).
pub const FIONBIO: u32 = libc::FIONBIO as u32;
/// `FIOCLEX` (std's `set_cloexec`).
pub const FIOCLEX: u32 = libc::FIOCLEX as u32;
/// `FIONCLEX`.
pub const FIONCLEX: u32 = libc::FIONCLEX as u32;

/// What a vCPU thread may ask: its own vCPU (run loop, register dumps on a
/// fatal exit, snapshot save/restore), capability queries, and the tap
/// offloads set when the guest activates virtio-net. `KVM_RUN` comes first:
/// the filter checks rules in order.
pub const VCPU: &[u32] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_SET_SREGS,
    KVM_GET_MSRS,
    KVM_SET_MSRS,
    KVM_GET_FPU,
    KVM_SET_FPU,
    KVM_GET_LAPIC,
    KVM_SET_LAPIC,
    KVM_SET_CPUID2,
    KVM_GET_CPUID2,
    KVM_GET_MP_STATE,
    KVM_SET_MP_STATE,
    KVM_GET_VCPU_EVENTS,
    KVM_SET_VCPU_EVENTS,
    KVM_GET_DEBUGREGS,
    KVM_SET_DEBUGREGS,
    KVM_SET_TSC_KHZ,
    KVM_GET_TSC_KHZ,
    KVM_GET_XSAVE,
    KVM_GET_XSAVE2,
    KVM_SET_XSAVE,
    KVM_GET_XCRS,
    KVM_SET_XCRS,
    KVM_KVMCLOCK_CTRL,
    KVM_CHECK_EXTENSION,
    KVM_GET_MSR_INDEX_LIST,
    KVM_GET_SUPPORTED_CPUID,
    TUNSETOFFLOAD,
];

/// What the VMM thread may ask after boot: run-time VM ioctls (interrupts,
/// eventfds, memory slots, state for snapshots and migration), taps, the
/// terminal, and fd flags. No `KVM_CREATE_*`: the VM is built by then.
pub const VMM: &[u32] = &[
    KVM_IRQ_LINE,
    KVM_IRQFD,
    KVM_IOEVENTFD,
    KVM_SIGNAL_MSI,
    KVM_SET_GSI_ROUTING,
    KVM_SET_USER_MEMORY_REGION,
    KVM_GET_DIRTY_LOG,
    KVM_GET_IRQCHIP,
    KVM_SET_IRQCHIP,
    KVM_GET_CLOCK,
    KVM_SET_CLOCK,
    KVM_GET_PIT2,
    KVM_SET_PIT2,
    KVM_CHECK_EXTENSION,
    KVM_GET_MSR_INDEX_LIST,
    KVM_GET_SUPPORTED_CPUID,
    TUNSETIFF,
    TUNSETVNETHDRSZ,
    TUNSETOFFLOAD,
    TCGETS,
    TCSETS,
    TCSETSW,
    TCSETSF,
    TIOCGWINSZ,
    FIONBIO,
    FIOCLEX,
    FIONCLEX,
];

/// What the API thread (tokio + hyper on a Unix socket) may ask: fd flags
/// only.
pub const API: &[u32] = &[FIONBIO, FIOCLEX, FIONCLEX, TCGETS];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_linux() {
        // Values as strace and linux/kvm.h give them on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_SET_CPUID2, 0x4008_ae90);
        assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_GET_XSAVE2, 0x9000_aecf);
        assert_eq!(KVM_KVMCLOCK_CTRL, 0xaead);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_ae79);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_SET_IRQCHIP, 0x8208_ae63);
        assert_eq!(KVM_GET_PIT2, 0x8070_ae9f);
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(KVM_GET_DIRTY_LOG, 0x4010_ae42);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TCGETS, 0x5401);
    }
}
