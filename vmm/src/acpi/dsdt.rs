//! The DSDT: `\_S5_` for poweroff, the PCI0 host bridge, COM1, the GED, its power button and
//! the VM generation id device it notifies after a restore.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, EISAName, FieldAccessType, FieldEntry,
    FieldLockRule, FieldUpdateRule, OpRegionSpace, Path,
};
use acpi_tables::{sdt::Sdt, Aml};

use super::vmgenid::VMGENID_ADDR;
use super::{
    GED_EVENT_PORT, GED_EVENT_POWER_BUTTON, GED_EVENT_VMGENID, GED_GSI, OEM_ID, S5_SLEEP_TYPE,
};
use crate::arch::x86_64::layout::{PCI_MMIO_SIZE, PCI_MMIO_START};
use crate::legacy::serial::{COM1_IRQ, COM1_PORT};

/// Name of the power-button device the GED notifies.
const PWRB: &str = "\\_SB_.PWRB";
/// Name of the VM generation id device the GED notifies.
const VGEN: &str = "\\_SB_.VGEN";

/// The VMGenID device: Linux's `vmgenid` driver matches `VMGENCTR` or `VM_GEN_COUNTER`,
/// Windows `VM_Gen_Counter`; `ADDR` is the id's address as (low, high) dwords.
fn vmgenid() -> Vec<u8> {
    let mut out = Vec::new();
    let (low, high) = (VMGENID_ADDR as u32, (VMGENID_ADDR >> 32) as u32);
    aml::Device::new(
        VGEN.into(),
        vec![
            &aml::Name::new("_HID".into(), &"VMGENCTR"),
            &aml::Name::new("_CID".into(), &"VM_Gen_Counter"),
            &aml::Name::new("_DDN".into(), &"VM_Gen_Counter"),
            &aml::Name::new("ADDR".into(), &aml::Package::new(vec![&low, &high])),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

fn s5() -> Vec<u8> {
    let mut out = Vec::new();
    let package = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &package).to_aml_bytes(&mut out);
    out
}

fn pci_host_bridge() -> Vec<u8> {
    let mmio_end = (PCI_MMIO_START + PCI_MMIO_SIZE - 1) as u32;
    let mut out = Vec::new();
    // One statement, so the temporaries the AML tree borrows live until it is serialized.
    aml::Device::new(
        "\\_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &0u8),
            &aml::Name::new("_SEG".into(), &0u8),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new("_BBN".into(), &0u8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &AddressSpace::<u16>::new_bus_number(0, 0xff),
                    &aml::IO::new(0xcf8, 0xcf8, 1, 8),
                    &AddressSpace::<u16>::new_io(0, 0xcf7, None),
                    &AddressSpace::<u16>::new_io(0xd00, 0xffff, None),
                    &AddressSpace::<u32>::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        PCI_MMIO_START as u32,
                        mmio_end,
                        None,
                    ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// COM1 as an ACPI device: in hardware-reduced mode Linux has no legacy PIC, so ISA IRQ 4 is
/// only usable when a device's _CRS names GSI 4 (8250_pnp then binds ttyS0 to it).
fn com1() -> Vec<u8> {
    let mut out = Vec::new();
    aml::Device::new(
        "\\_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT, COM1_PORT, 0, 8),
                    &aml::Interrupt::new(true, true, false, false, COM1_IRQ),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

fn ged_and_power_button() -> Vec<u8> {
    let mut out = Vec::new();
    aml::Device::new(
        PWRB.into(),
        vec![
            &aml::Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &aml::Name::new("_UID".into(), &0u8),
        ],
    )
    .to_aml_bytes(&mut out);

    let pwrb: Path = PWRB.into();
    let vgen: Path = VGEN.into();
    let pending = aml::Path::new("GDAT");
    // _EVT: Local0 = GDAT (pending events, cleared by the read); if the power-button bit is
    // set, notify the power button device.
    aml::Device::new(
        "\\_SB_.GED_".into(),
        vec![
            &aml::Name::new("_HID".into(), &"ACPI0013"),
            &aml::Name::new("_UID".into(), &0u8),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Interrupt::new(
                    true, true, false, false, GED_GSI,
                )]),
            ),
            &aml::OpRegion::new(
                "GDST".into(),
                OpRegionSpace::SystemIO,
                &GED_EVENT_PORT,
                &1u8,
            ),
            &aml::Field::new(
                "GDST".into(),
                FieldAccessType::Byte,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![FieldEntry::Named(*b"GDAT", 8)],
            ),
            &aml::Method::new(
                "_EVT".into(),
                1,
                true,
                vec![
                    &aml::Store::new(&aml::Local(0), &pending),
                    &aml::And::new(&aml::Local(1), &aml::Local(0), &GED_EVENT_POWER_BUTTON),
                    &aml::If::new(
                        &aml::Equal::new(&aml::Local(1), &GED_EVENT_POWER_BUTTON),
                        vec![&aml::Notify::new(&pwrb, &0x80u8)],
                    ),
                    &aml::And::new(&aml::Local(2), &aml::Local(0), &GED_EVENT_VMGENID),
                    &aml::If::new(
                        &aml::Equal::new(&aml::Local(2), &GED_EVENT_VMGENID),
                        vec![&aml::Notify::new(&vgen, &0x80u8)],
                    ),
                ],
            ),
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// Build the DSDT.
pub fn build_dsdt() -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CPDSDT  ", 1);
    dsdt.append_slice(&s5());
    dsdt.append_slice(&pci_host_bridge());
    dsdt.append_slice(&com1());
    dsdt.append_slice(&vmgenid());
    dsdt.append_slice(&ged_and_power_button());
    dsdt.update_checksum();
    dsdt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_has_the_devices_and_a_valid_checksum() {
        let dsdt = build_dsdt();
        let bytes = dsdt.as_slice();
        assert_eq!(&bytes[0..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        for name in [
            &b"_S5_"[..],
            b"PCI0",
            b"COM1",
            b"GED_",
            b"PWRB",
            b"_EVT",
            b"ACPI0013",
            b"GDAT",
            b"VGEN",
            b"VMGENCTR",
            b"VM_Gen_Counter",
            b"ADDR",
        ] {
            assert!(
                contains(bytes, name),
                "{} missing",
                String::from_utf8_lossy(name)
            );
        }
    }
}
