//! Kernel parameters for hosts whose KVM emulates guest kernel code.
//!
//! Without VT-x/AMD-V, some KVM builds run the guest kernel through KVM's
//! instruction emulator. The guest then sees the host's real CPUID whatever
//! `KVM_SET_CPUID2` says, and a few instructions it cannot emulate
//! (`xrstor`, `clac`/`stac`, `cmpxchg16b`, ...) stop the VM. The guest kernel
//! avoids them when told to on its command line. flint detects such a host and
//! adds those words itself, so the same config boots here and on bare metal.

use api::EmulationQuirks;

/// What an emulating host needs on the guest kernel's command line.
pub const EMULATED_HOST_BOOT_ARGS: &str =
    "noxsave clearcpuid=cx16,smap,fsgsbase,invpcid,pcid,rdrand,rdseed,popcnt,rdtscp,rdpid";

/// Whether `/proc/cpuinfo` text shows hardware virtualization (`vmx` or `svm`).
pub fn cpuinfo_has_hw_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Whether the CPU itself reports VT-x (CPUID.1:ECX.VMX) or AMD-V
/// (CPUID.80000001h:ECX.SVM).
pub fn cpuid_has_hw_virtualization() -> bool {
    use std::arch::x86_64::__cpuid;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86_64 CPU and only reads registers.
    let (leaf1, max_ext) = unsafe { (__cpuid(1), __cpuid(0x8000_0000).eax) };
    let vmx = leaf1.ecx & (1 << 5) != 0;
    let svm = max_ext >= 0x8000_0001 && {
        #[allow(unused_unsafe)]
        // SAFETY: as above; the extended leaf exists (checked against the maximum).
        let ext = unsafe { __cpuid(0x8000_0001) };
        ext.ecx & (1 << 2) != 0
    };
    vmx || svm
}

/// Whether this host's KVM has to emulate guest kernel code. `/proc/cpuinfo`
/// is the better witness (the kernel clears `vmx` when firmware disabled it);
/// inside a jail without /proc, the CPU's own CPUID answers.
pub fn host_emulates_guest_code() -> bool {
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(text) => !cpuinfo_has_hw_virtualization(&text),
        Err(_) => !cpuid_has_hw_virtualization(),
    }
}

/// The extra boot arguments for `mode` (with `emulating` the detection result),
/// or `None` when nothing is to be added or `boot_args` already has them.
pub fn extra_boot_args(
    mode: EmulationQuirks,
    emulating: impl FnOnce() -> bool,
    boot_args: &str,
) -> Option<&'static str> {
    let wanted = match mode {
        EmulationQuirks::Off => false,
        EmulationQuirks::On => true,
        EmulationQuirks::Auto => emulating(),
    };
    let already = boot_args
        .split_whitespace()
        .any(|w| w == "noxsave" || w.starts_with("clearcpuid="));
    (wanted && !already).then_some(EMULATED_HOST_BOOT_ARGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx smx est\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm lahf_lm\n";
    const NESTED_NO_VIRT: &str =
        "processor\t: 0\nflags\t\t: fpu tsc hypervisor vmxnotreal\nvmx flags\t: none\n";

    #[test]
    fn detects_vmx_and_svm_only_as_whole_flags() {
        assert!(cpuinfo_has_hw_virtualization(INTEL));
        assert!(cpuinfo_has_hw_virtualization(AMD));
        assert!(!cpuinfo_has_hw_virtualization(NESTED_NO_VIRT));
        assert!(!cpuinfo_has_hw_virtualization(""));
    }

    #[test]
    fn cpuid_agrees_with_cpuinfo_on_this_host() {
        if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
            // Firmware can disable VT-x that CPUID still reports; the other
            // way round never happens.
            if cpuinfo_has_hw_virtualization(&text) {
                assert!(cpuid_has_hw_virtualization());
            }
        }
    }

    #[test]
    fn mode_decides_and_detection_is_only_asked_in_auto() {
        let base = "console=ttyS0";
        assert_eq!(
            extra_boot_args(EmulationQuirks::Auto, || true, base),
            Some(EMULATED_HOST_BOOT_ARGS)
        );
        assert_eq!(extra_boot_args(EmulationQuirks::Auto, || false, base), None);
        assert_eq!(
            extra_boot_args(EmulationQuirks::On, || panic!("not asked"), base),
            Some(EMULATED_HOST_BOOT_ARGS)
        );
        assert_eq!(
            extra_boot_args(EmulationQuirks::Off, || panic!("not asked"), base),
            None
        );
    }

    #[test]
    fn nothing_added_when_the_user_chose_already() {
        let args = "console=ttyS0 noxsave clearcpuid=smap";
        assert_eq!(extra_boot_args(EmulationQuirks::On, || true, args), None);
    }
}
