//! A custom CPU template's `msr_modifiers` (`PUT /cpu-config`), applied to
//! each vCPU after its boot MSRs: KVM_GET_MSRS reads what the vCPU holds,
//! the template's fixed bits replace those bits, KVM_SET_MSRS writes the
//! result back. An MSR KVM will not read or write fails the boot naming
//! it, as Firecracker does: a template silently half-applied would lie to
//! the guest.

use api::{BitmapFilter, MsrModifier};
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// Why a template's MSRs could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MsrTemplateError {
    /// KVM does not know (or will not read) this MSR on this host.
    #[error("MSR {addr:#x}: KVM_GET_MSRS does not read it on this host (msr_modifiers)")]
    Unreadable {
        /// The MSR index.
        addr: u32,
    },
    /// KVM refused the new value.
    #[error("MSR {addr:#x}: KVM_SET_MSRS refused the value {value:#x} (msr_modifiers)")]
    Refused {
        /// The MSR index.
        addr: u32,
        /// The value the template asked for.
        value: u64,
    },
    /// An ioctl failed outright.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// The MSR list could not be built.
    #[error("MSR list: {0:?}")]
    List(vmm_sys_util::fam::Error),
}

/// `current` with the bits `filter` fixes replaced by its values.
pub fn apply_bitmap(current: u64, filter: BitmapFilter) -> u64 {
    (current & !filter.mask) | (filter.value & filter.mask)
}

/// Applies `modifiers` to the vCPU `fd`, one MSR at a time (so an error
/// names the MSR at fault); returns the values written, in order.
pub fn apply_msr_modifiers(
    fd: &VcpuFd,
    modifiers: &[MsrModifier],
) -> Result<Vec<(u32, u64)>, MsrTemplateError> {
    let mut written = Vec::with_capacity(modifiers.len());
    for m in modifiers {
        let current = read_msr(fd, m.addr)?;
        let value = apply_bitmap(current, m.bitmap);
        let msrs = one(m.addr, value)?;
        let set = fd.set_msrs(&msrs).map_err(|source| MsrTemplateError::Kvm {
            op: "KVM_SET_MSRS",
            source,
        })?;
        if set != 1 {
            return Err(MsrTemplateError::Refused {
                addr: m.addr,
                value,
            });
        }
        written.push((m.addr, value));
    }
    Ok(written)
}

/// The value of MSR `addr` on the vCPU `fd`.
pub fn read_msr(fd: &VcpuFd, addr: u32) -> Result<u64, MsrTemplateError> {
    let mut msrs = one(addr, 0)?;
    let read = fd
        .get_msrs(&mut msrs)
        .map_err(|source| MsrTemplateError::Kvm {
            op: "KVM_GET_MSRS",
            source,
        })?;
    match msrs.as_slice().first() {
        Some(entry) if read == 1 => Ok(entry.data),
        _ => Err(MsrTemplateError::Unreadable { addr }),
    }
}

fn one(index: u32, data: u64) -> Result<Msrs, MsrTemplateError> {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(MsrTemplateError::List)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `IA32_TSC_AUX`: the value RDTSCP/RDPID return; harmless to set.
    const MSR_TSC_AUX: u32 = 0xc000_0103;

    #[test]
    fn bitmap_keeps_x_bits_and_forces_the_others() {
        let f = api::parse_bitmap("0b1x0x_10", 64, "t").unwrap();
        // Bits 5 and 1 forced to 1, bits 3 and 0 forced to 0; 4 and 2 kept.
        assert_eq!(apply_bitmap(0, f), 0b10_0010);
        assert_eq!(apply_bitmap(u64::MAX, f), !0b1001);
        assert_eq!(apply_bitmap(0b1_0100, f), 0b11_0110);
        let all = api::parse_bitmap(&format!("0b{}", "1".repeat(64)), 64, "t").unwrap();
        assert_eq!(apply_bitmap(0, all), u64::MAX);
        assert_eq!(apply_bitmap(0xdead, BitmapFilter::default()), 0xdead);
    }

    /// A real vCPU (no guest, no memory): the template's bits land in
    /// `IA32_TSC_AUX` and read back; an MSR KVM does not know is an error
    /// naming it.
    #[test]
    fn modifiers_reach_a_real_vcpu() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: no /dev/kvm ({e})");
                return;
            }
            Err(e) => panic!("CI needs /dev/kvm: {e}"),
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        // KVM only accepts TSC_AUX when the guest's CPUID has RDTSCP/RDPID.
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        if read_msr(&vcpu, MSR_TSC_AUX).is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "KVM on this host does not read IA32_TSC_AUX"
            );
            eprintln!("skipped: KVM does not read IA32_TSC_AUX here");
            return;
        }
        let bitmap = api::parse_bitmap("0b1010_xxxx_0000_0101", 64, "t").unwrap();
        let before = read_msr(&vcpu, MSR_TSC_AUX).unwrap();
        let written = apply_msr_modifiers(
            &vcpu,
            &[MsrModifier {
                addr: MSR_TSC_AUX,
                bitmap,
            }],
        )
        .unwrap();
        let after = read_msr(&vcpu, MSR_TSC_AUX).unwrap();
        assert_eq!(written, vec![(MSR_TSC_AUX, after)]);
        assert_eq!(after, apply_bitmap(before, bitmap));
        assert_eq!(after & 0xf0ff, 0xa005, "{after:#x}");

        let unknown = MsrModifier {
            addr: 0x4fff_fff0,
            bitmap,
        };
        let err = apply_msr_modifiers(&vcpu, &[unknown]).unwrap_err();
        assert!(err.to_string().contains("0x4ffffff0"), "{err}");
    }
}
