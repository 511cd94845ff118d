//! One vCPU's architectural state, read from KVM while the vCPU is parked and written back
//! into a fresh vCPU on restore.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

/// `MSR_IA32_TSC`: restored first, so the guest's TSC deadline below is relative to it.
pub const MSR_IA32_TSC: u32 = 0x10;
/// `MSR_IA32_TSC_DEADLINE`: restored last (Firecracker learnt that a deadline written before
/// the TSC fires at once or never).
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// MSRs read or written per ioctl.
const MSR_CHUNK: usize = 64;

/// Why a vCPU's state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A vCPU ioctl failed.
    #[error("vCPU {id}: KVM {what} failed: {source}")]
    Ioctl {
        /// Index of the vCPU.
        id: u8,
        /// The ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The state does not fit this host's KVM.
    #[error("vCPU {id}: {why}")]
    Mismatch {
        /// Index of the vCPU.
        id: u8,
        /// What does not fit.
        why: String,
    },
}

/// Everything KVM holds for one vCPU, in restore order.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// Index (APIC id).
    pub id: u8,
    /// The CPUID table the guest saw; a restore on a host whose KVM cannot offer it is refused.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// MSRs in restore order (TSC first, TSC deadline last).
    pub msrs: Vec<kvm_msr_entry>,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state as 32-bit words (the KVM_CAP_XSAVE2 size; 1024 words without it).
    pub xsave: Vec<u32>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Running, halted or waiting for SIPI.
    pub mp_state: kvm_mp_state,
}

/// The MSR indices worth saving: what this KVM reports, TSC first and TSC deadline last.
pub fn msr_indices(kvm: &Kvm) -> Result<Vec<u32>, kvm_ioctls::Error> {
    let mut list: Vec<u32> = kvm.get_msr_index_list()?.as_slice().to_vec();
    list.sort_by_key(|&i| match i {
        MSR_IA32_TSC => (0, i),
        MSR_IA32_TSC_DEADLINE => (2, i),
        _ => (1, i),
    });
    list.dedup();
    Ok(list)
}

/// Size of the xsave area in 32-bit words (KVM_CAP_XSAVE2 reports bytes, 0 when unsupported).
pub fn xsave_words(kvm: &Kvm) -> usize {
    let bytes = kvm.check_extension_int(Cap::Xsave2);
    (bytes.max(4096) as usize).div_ceil(4)
}

/// Fresh xsave buffer of `words` words in all.
fn xsave_buffer(words: usize) -> Xsave {
    Xsave::new(words.saturating_sub(1024)).expect("xsave size within the FAM limit")
}

impl VcpuState {
    /// Read vCPU `id`'s state; the vCPU must be out of KVM_RUN (paused). `msr_list` comes from
    /// [`msr_indices`], `xsave_words` from [`xsave_words`].
    pub fn save(
        fd: &VcpuFd,
        id: u8,
        msr_list: &[u32],
        xsave_words: usize,
    ) -> Result<Self, VcpuStateError> {
        let io = |what| move |source| VcpuStateError::Ioctl { id, what, source };
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(io("GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let mut msrs = Vec::with_capacity(msr_list.len());
        read_msrs(fd, msr_list, &mut msrs).map_err(io("GET_MSRS"))?;
        let mut xsave = xsave_buffer(xsave_words);
        // SAFETY: the buffer is sized from KVM_CAP_XSAVE2 as get_xsave2 requires.
        unsafe { fd.get_xsave2(&mut xsave) }.map_err(io("GET_XSAVE2"))?;
        let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(xsave.as_slice());
        Ok(Self {
            id,
            cpuid,
            msrs,
            regs: fd.get_regs().map_err(io("GET_REGS"))?,
            sregs: fd.get_sregs().map_err(io("GET_SREGS"))?,
            xsave: words,
            xcrs: fd.get_xcrs().map_err(io("GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(io("GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(io("GET_LAPIC"))?,
            events: fd.get_vcpu_events().map_err(io("GET_VCPU_EVENTS"))?,
            mp_state: fd.get_mp_state().map_err(io("GET_MP_STATE"))?,
        })
    }

    /// Write this state into `fd`, a freshly created vCPU of a restored VM.
    pub fn restore(&self, kvm: &Kvm, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let id = self.id;
        let io = |what| move |source| VcpuStateError::Ioctl { id, what, source };
        let mismatch = |why: String| VcpuStateError::Mismatch { id, why };
        let cpuid = CpuId::from_entries(&self.cpuid)
            .map_err(|_| mismatch(format!("{} CPUID entries is too many", self.cpuid.len())))?;
        fd.set_cpuid2(&cpuid).map_err(|e| {
            mismatch(format!(
                "this host's KVM refuses the snapshot's CPUID ({e}): restore on a host with the same CPU model"
            ))
        })?;
        // CPUID first (it decides which MSRs and xsave features exist), then the rest.
        fd.set_sregs(&self.sregs).map_err(io("SET_SREGS"))?;
        fd.set_regs(&self.regs).map_err(io("SET_REGS"))?;
        let words = xsave_words(kvm);
        if self.xsave.len() > words || self.xsave.len() < 1024 {
            return Err(mismatch(format!(
                "the snapshot's xsave area has {} words; this host's has {words}: restore on a host with the same CPU",
                self.xsave.len()
            )));
        }
        let mut xsave = xsave_buffer(self.xsave.len());
        // SAFETY: only plain data is written into the buffer's own storage.
        unsafe {
            let fam = xsave.as_mut_fam_struct();
            fam.xsave.region.copy_from_slice(&self.xsave[..1024]);
        }
        xsave.as_mut_slice().copy_from_slice(&self.xsave[1024..]);
        // SAFETY: the buffer holds a complete xsave image of the size KVM reported.
        unsafe { fd.set_xsave2(&xsave) }.map_err(io("SET_XSAVE2"))?;
        fd.set_xcrs(&self.xcrs).map_err(io("SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(io("SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(io("SET_LAPIC"))?;
        for chunk in self.msrs.chunks(MSR_CHUNK) {
            let msrs = Msrs::from_entries(chunk).expect("chunk within the FAM limit");
            let set = fd.set_msrs(&msrs).map_err(io("SET_MSRS"))?;
            if set != chunk.len() {
                return Err(mismatch(format!(
                    "this host's KVM refuses MSR {:#x}: restore on a host with the same CPU",
                    chunk[set].index
                )));
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(io("SET_VCPU_EVENTS"))?;
        fd.set_mp_state(self.mp_state).map_err(io("SET_MP_STATE"))
    }
}

/// Read every MSR of `list` that this vCPU can read into `out`, in order. KVM stops a batch at
/// the first MSR it cannot read; that one is skipped (it is not part of this CPU's state).
fn read_msrs(
    fd: &VcpuFd,
    list: &[u32],
    out: &mut Vec<kvm_msr_entry>,
) -> Result<(), kvm_ioctls::Error> {
    let mut rest = list;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).expect("chunk within the FAM limit");
        let read = fd.get_msrs(&mut msrs)?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // Skip the MSR that stopped the batch (if any) and go on after it.
        let skip = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[skip..];
    }
    Ok(())
}
