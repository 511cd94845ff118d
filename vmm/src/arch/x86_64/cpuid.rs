//! Per-vCPU CPUID: KVM's supported set, with APIC ids and a one-socket topology of N cores.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` cores (ceil(log2 n)).
pub fn core_id_bits(n: u8) -> u32 {
    u32::from(n.max(1)).next_power_of_two().trailing_zeros()
}

fn patch_entry(e: &mut kvm_cpuid_entry2, apic_id: u8, ncpus: u8) {
    let id = u32::from(apic_id);
    let n = u32::from(ncpus);
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((n & 0xff) << 16);
            e.ecx |= ECX_HYPERVISOR;
            if ncpus > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE if e.eax & 0x1f != 0 => {
            // Cores per package - 1 in 31:26; caches are private to a core except L3.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((n - 1) & 0x3f) << 26);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_id_bits(ncpus);
                    e.ebx = n;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_AMD_SIZES => {
            e.ecx = (core_id_bits(ncpus) << 12) | ((n - 1) & 0xff);
        }
        _ => {}
    }
}

/// Adapt `supported` (from KVM_GET_SUPPORTED_CPUID) for vCPU `apic_id` of `ncpus`.
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u8, ncpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        patch_entry(e, apic_id, ncpus);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x21, // leaf 4: L1 data cache
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn apic_ids_and_topology() {
        let base = CpuId::from_entries(&[
            entry(1, 0),
            entry(4, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0008, 0),
        ])
        .unwrap();
        let c = vcpu_cpuid(&base, 3, 4);
        let leaf1 = find(&c, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_eq!(find(&c, 4, 0).eax >> 26, 3);
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        assert_eq!((smt.ebx, smt.edx, (smt.ecx >> 8) & 0xff), (1, 3, 1));
        assert_eq!((core.eax, core.ebx, (core.ecx >> 8) & 0xff), (2, 4, 2));
        assert_eq!(find(&c, 0xb, 2).ebx, 0);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, 3);
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(64), 6);
    }

    #[test]
    fn real_kvm_cpuid_when_available() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipping the KVM-backed CPUID check");
            return;
        };
        let sup = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let c = vcpu_cpuid(&sup, 1, 2);
        assert_eq!(find(&c, 1, 0).ebx >> 24, 1);
    }
}
