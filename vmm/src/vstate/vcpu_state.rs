//! A vCPU's complete architectural state, as KVM exposes it, for snapshots
//! and live migration.
//!
//! Saved on the vCPU's own thread while it is paused (KVM wants vCPU ioctls
//! from the thread that runs the vCPU), restored before the thread starts.

use devices::persist::Persist;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::vcpu::Vcpu;

/// How many MSRs are read or written per KVM_GET/SET_MSRS call.
const MSR_CHUNK: usize = 64;
/// Size of the legacy `kvm_xsave` area.
const LEGACY_XSAVE_SIZE: usize = 4096;
/// The largest XSAVE area accepted from a state file (x86 areas are a few
/// KiB; AMX makes them ~11 KiB).
const MAX_XSAVE_SIZE: usize = 64 << 10;
/// The most MSRs accepted from a state file (KVM lists a few hundred).
const MAX_MSRS: usize = 4096;

/// Why a vCPU's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM call failed.
    #[error("vCPU state: {op} failed: {source}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// A saved state was refused before it reached KVM.
    #[error("vCPU state refused: {0}")]
    Invalid(String),
}

fn kvm(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { op, source }
}

/// The FPU/SSE/AVX state: the XSAVE area as 32-bit words (KVM_GET_XSAVE's
/// 4 KiB, or KVM_GET_XSAVE2's larger area when the host has more state).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FpuState(pub Vec<u32>);

/// Everything KVM knows about one vCPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the vCPU was configured with.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI...
    #[serde(with = "exact_size")]
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    #[serde(with = "exact_size")]
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    #[serde(with = "exact_size")]
    pub sregs: kvm_sregs,
    /// FPU and extended state.
    pub fpu: FpuState,
    /// Extended control registers (XCR0), if KVM supports them.
    pub xcrs: Option<kvm_xcrs>,
    /// Debug registers, if KVM supports them.
    pub debugregs: Option<kvm_debugregs>,
    /// The local APIC (timers, pending interrupts, LVTs).
    #[serde(with = "exact_size")]
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM reports as saveable and could read.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, NMIs, interrupts and their shadow state.
    pub vcpu_events: Option<kvm_vcpu_events>,
    /// The TSC frequency the guest saw, in kHz.
    pub tsc_khz: Option<u32>,
}

/// (De)serializes a KVM struct as exactly its own size in bytes.
///
/// kvm-bindings' own `Deserialize` zero-fills a short byte string and drops
/// the excess of a long one; a state file with a LAPIC (or registers) of
/// the wrong size must be refused instead, naming the size.
pub mod exact_size {
    use serde::de::{Error, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Serializes `value` as kvm-bindings does (its bytes).
    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        value.serialize(s)
    }

    /// Deserializes exactly `size_of::<T>()` bytes.
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        struct Bytes;
        impl<'a> Visitor<'a> for Bytes {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'a>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    if v.len() > 1 << 16 {
                        return Err(A::Error::custom("oversized KVM struct"));
                    }
                    v.push(b);
                }
                Ok(v)
            }
        }
        let bytes = d.deserialize_bytes(Bytes)?;
        let expected = std::mem::size_of::<T>();
        if bytes.len() != expected {
            let why = format!(
                "{} is {} bytes, expected {expected}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("KVM struct"),
                bytes.len()
            );
            // postcard's error drops custom messages; the log keeps this one.
            log::error!("snapshot state refused: {why}");
            return Err(D::Error::custom(why));
        }
        T::deserialize(serde::de::value::BytesDeserializer::<D::Error>::new(&bytes))
    }
}

/// What this host's KVM can save, asked once per VM so a vCPU thread needs
/// neither the system nor the VM file descriptor to save itself.
#[derive(Debug, Clone, Default)]
pub struct StateCaps {
    msr_indices: Vec<u32>,
    xcrs: bool,
    debugregs: bool,
    vcpu_events: bool,
    xsave2_size: usize,
}

impl StateCaps {
    /// Queries KVM.
    pub fn query(kvm_sys: &Kvm, vm: &VmFd) -> Result<Self, VcpuStateError> {
        let list = kvm_sys
            .get_msr_index_list()
            .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
        Ok(Self {
            msr_indices: list.as_slice().to_vec(),
            xcrs: kvm_sys.check_extension(Cap::Xcrs),
            debugregs: kvm_sys.check_extension(Cap::Debugregs),
            vcpu_events: kvm_sys.check_extension(Cap::VcpuEvents),
            xsave2_size: usize::try_from(vm.check_extension_int(Cap::Xsave2)).unwrap_or(0),
        })
    }
}

/// Reads every saveable MSR, skipping the ones KVM lists but cannot read.
fn save_msrs(caps: &StateCaps, vcpu: &VcpuFd) -> Result<Vec<kvm_msr_entry>, VcpuStateError> {
    let mut saved = Vec::with_capacity(caps.msr_indices.len());
    let mut pending: Vec<u32> = caps.msr_indices.clone();
    while !pending.is_empty() {
        let chunk: Vec<kvm_msr_entry> = pending
            .iter()
            .take(MSR_CHUNK)
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&chunk).map_err(|_| VcpuStateError::Kvm {
            op: "building an MSR list",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // KVM stops at the first MSR it cannot read: skip that one.
        let consumed = (read + 1).min(chunk.len());
        if read < chunk.len() {
            log::debug!("MSR {:#x} is not readable; not saved", chunk[read].index);
        }
        pending.drain(..consumed);
    }
    Ok(saved)
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running.
    pub fn save(caps: &StateCaps, vcpu: &VcpuFd) -> Result<Self, VcpuStateError> {
        // The MP state first: reading it makes KVM settle pending INIT/SIPI
        // handling into the registers read next.
        let mp_state = vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let fpu = save_fpu(caps.xsave2_size, vcpu)?;
        let xcrs = if caps.xcrs {
            Some(vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?)
        } else {
            None
        };
        let debugregs = if caps.debugregs {
            Some(vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?)
        } else {
            None
        };
        let lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
        let tsc_khz = vcpu.get_tsc_khz().ok();
        let msrs = save_msrs(caps, vcpu)?;
        // Events last: the reads above must not leave anything pending behind.
        let vcpu_events = if caps.vcpu_events {
            Some(vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?)
        } else {
            None
        };
        let cpuid = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        Ok(Self {
            cpuid,
            mp_state,
            regs,
            sregs,
            fpu,
            xcrs,
            debugregs,
            lapic,
            msrs,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Checks a saved state against this host before any of it reaches KVM:
    /// a CPUID table KVM can take, an XSAVE area at least as large as the
    /// one this host's KVM reads (a smaller one would make KVM read past
    /// its end), and sane list lengths. The LAPIC's size is fixed by its
    /// type: a state of another size does not decode.
    pub fn validate(&self, caps: &StateCaps) -> Result<(), VcpuStateError> {
        let invalid = |why: String| Err(VcpuStateError::Invalid(why));
        if self.cpuid.is_empty() {
            return invalid("the CPUID table is empty".into());
        }
        if self.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return invalid(format!(
                "{} CPUID entries (KVM takes at most {KVM_MAX_CPUID_ENTRIES})",
                self.cpuid.len()
            ));
        }
        let xsave_bytes = self.fpu.0.len().saturating_mul(4);
        let host = caps.xsave2_size.max(LEGACY_XSAVE_SIZE);
        if xsave_bytes < host {
            return invalid(format!(
                "XSAVE area of {xsave_bytes} bytes, this host's KVM needs {host}"
            ));
        }
        if xsave_bytes > MAX_XSAVE_SIZE {
            return invalid(format!("XSAVE area of {xsave_bytes} bytes"));
        }
        if self.msrs.len() > MAX_MSRS {
            return invalid(format!("{} MSRs", self.msrs.len()));
        }
        Ok(())
    }

    /// Writes the state into a freshly created vCPU. The order matters:
    /// CPUID first (KVM checks MSRs and XSAVE features against it), then
    /// registers and FPU, the LAPIC before the MSRs (the TSC-deadline MSR
    /// lives in the LAPIC), and the pending events last so nothing set
    /// afterwards clears them.
    pub fn restore(&self, caps: &StateCaps, vcpu: &VcpuFd) -> Result<(), VcpuStateError> {
        self.validate(caps)?;
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| VcpuStateError::Kvm {
            op: "building the CPUID table",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        if let Some(khz) = self.tsc_khz {
            if vcpu.get_tsc_khz().ok() != Some(khz) {
                if let Err(e) = vcpu.set_tsc_khz(khz) {
                    log::warn!("cannot scale the TSC to the saved {khz} kHz ({e}); the guest's clock may drift");
                }
            }
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        restore_fpu(vcpu, &self.fpu)?;
        if let Some(xcrs) = &self.xcrs {
            vcpu.set_xcrs(xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        }
        if let Some(debugregs) = &self.debugregs {
            vcpu.set_debug_regs(debugregs)
                .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        }
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        for chunk in self.msrs.chunks(MSR_CHUNK) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError::Kvm {
                op: "building an MSR list",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
            let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if written < chunk.len() {
                return Err(VcpuStateError::Kvm {
                    op: "KVM_SET_MSRS (an MSR was refused)",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        if let Some(events) = &self.vcpu_events {
            vcpu.set_vcpu_events(events)
                .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        }
        Ok(())
    }
}

/// A vCPU saves and restores through [`Persist`]: restoring writes a
/// checked state into a freshly created, not yet started vCPU (KVM objects
/// exist before their state can be set, so the constructor argument is the
/// new vCPU itself).
impl Persist<'_> for Vcpu {
    type State = VcpuState;
    type ConstructorArgs = Vcpu;
    type Error = VcpuStateError;

    fn save(&self) -> Result<VcpuState, VcpuStateError> {
        self.save_state()
    }

    fn restore(vcpu: Vcpu, state: &VcpuState) -> Result<Vcpu, VcpuStateError> {
        vcpu.restore_state(state)?;
        Ok(vcpu)
    }
}

fn save_fpu(size: usize, vcpu: &VcpuFd) -> Result<FpuState, VcpuStateError> {
    if size > LEGACY_XSAVE_SIZE {
        let extra = (size - LEGACY_XSAVE_SIZE).div_ceil(4);
        let mut xsave = Xsave::new(extra).map_err(|_| VcpuStateError::Kvm {
            op: "allocating the XSAVE2 area",
            source: kvm_ioctls::Error::new(libc::ENOMEM),
        })?;
        // SAFETY: `xsave` was allocated with room for the size KVM reported
        // through KVM_CAP_XSAVE2, which is what KVM_GET_XSAVE2 writes.
        unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(kvm("KVM_GET_XSAVE2"))?;
        let header = xsave.as_fam_struct_ref();
        let mut words = header.xsave.region.to_vec();
        words.extend_from_slice(xsave.as_slice());
        return Ok(FpuState(words));
    }
    let xsave = vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
    Ok(FpuState(xsave.region.to_vec()))
}

fn restore_fpu(vcpu: &VcpuFd, fpu: &FpuState) -> Result<(), VcpuStateError> {
    let words = &fpu.0;
    match words.len() {
        len if len <= LEGACY_XSAVE_SIZE / 4 => {
            let mut xsave = kvm_xsave::default();
            xsave.region[..words.len()].copy_from_slice(words);
            // SAFETY: a legacy-sized area, exactly what KVM_SET_XSAVE reads.
            unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm("KVM_SET_XSAVE"))
        }
        _ => {
            let (legacy, extra) = words.split_at(LEGACY_XSAVE_SIZE / 4);
            let mut xsave = Xsave::from_entries(extra).map_err(|_| VcpuStateError::Kvm {
                op: "building the XSAVE2 area",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
            // SAFETY: we only write the fixed header of the FAM struct we own.
            unsafe { xsave.as_mut_fam_struct() }
                .xsave
                .region
                .copy_from_slice(legacy);
            // SAFETY: the area has the size it was saved with, which is the
            // size KVM_CAP_XSAVE2 reports on a compatible host.
            unsafe { vcpu.set_xsave2(&xsave) }.map_err(kvm("KVM_SET_XSAVE2"))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::snapshot::format::{from_bytes, to_bytes};

    /// A plausible saved vCPU (one CPUID leaf, a legacy XSAVE area).
    pub(crate) fn sample() -> VcpuState {
        VcpuState {
            cpuid: vec![kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            }],
            mp_state: kvm_mp_state::default(),
            regs: kvm_regs {
                rip: 0x1000,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            fpu: FpuState(vec![0; LEGACY_XSAVE_SIZE / 4]),
            xcrs: None,
            debugregs: None,
            lapic: kvm_lapic_state::default(),
            msrs: vec![kvm_msr_entry {
                index: 0x10,
                data: 42,
                ..Default::default()
            }],
            vcpu_events: None,
            tsc_khz: Some(2_000_000),
        }
    }

    fn caps(xsave2_size: usize) -> StateCaps {
        StateCaps {
            xsave2_size,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_through_the_snapshot_encoding() {
        let state = sample();
        let back: VcpuState = from_bytes(&to_bytes(&state).unwrap()).unwrap();
        assert_eq!(back.regs.rip, 0x1000);
        assert_eq!(back.msrs[0].data, 42);
        assert_eq!(back.fpu.0.len(), LEGACY_XSAVE_SIZE / 4);
        assert_eq!(to_bytes(&back).unwrap(), to_bytes(&state).unwrap());
        assert!(state.validate(&caps(0)).is_ok());
    }

    #[test]
    fn states_this_host_cannot_take_are_refused_by_name() {
        let refused = |state: &VcpuState, caps: &StateCaps| match state.validate(caps) {
            Err(VcpuStateError::Invalid(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        let mut no_cpuid = sample();
        no_cpuid.cpuid.clear();
        assert!(refused(&no_cpuid, &caps(0)).contains("CPUID table is empty"));

        let mut many = sample();
        many.cpuid = vec![kvm_cpuid_entry2::default(); KVM_MAX_CPUID_ENTRIES + 1];
        assert!(refused(&many, &caps(0)).contains("CPUID entries"));

        // A legacy area on a host whose KVM wants a larger XSAVE2 area.
        let why = refused(&sample(), &caps(8192));
        assert!(
            why.contains("XSAVE area of 4096 bytes") && why.contains("8192"),
            "{why}"
        );
        let mut short = sample();
        short.fpu.0.truncate(10);
        assert!(refused(&short, &caps(0)).contains("XSAVE area of 40 bytes"));
    }

    #[test]
    fn a_lapic_of_the_wrong_size_does_not_decode() {
        #[derive(Serialize, Deserialize)]
        struct Lapic {
            #[serde(with = "exact_size")]
            lapic: kvm_lapic_state,
        }
        let size = std::mem::size_of::<kvm_lapic_state>();
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[0x20] = 7;
        let back: Lapic = from_bytes(&to_bytes(&Lapic { lapic }).unwrap()).unwrap();
        assert_eq!(back.lapic.regs[0x20], 7);
        // postcard encodes a byte string and a sequence of bytes alike.
        for len in [size - 1, size + 1, 0] {
            assert!(
                from_bytes::<Lapic>(&to_bytes(&vec![1u8; len]).unwrap()).is_err(),
                "a {len}-byte LAPIC decoded"
            );
        }
    }
}
