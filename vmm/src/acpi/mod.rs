//! ACPI tables for a hardware-reduced PC: RSDP -> XSDT -> FADT (sleep/reset registers, DSDT),
//! MADT (one LAPIC per vCPU, the IOAPIC, ISA overrides). Linux uses them for SMP, clean
//! poweroff/reset and the GED power button.

pub mod dsdt;
pub mod tables;
pub mod vmgenid;

pub use tables::{create_acpi_tables, AcpiLayout};

/// I/O port of the sleep control register (write SLP_TYP|SLP_EN to enter S5).
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// I/O port of the sleep status register.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// I/O port of the reset register.
pub const RESET_PORT: u16 = 0x602;
/// I/O port the GED `_EVT` method reads to learn which events are pending.
pub const GED_EVENT_PORT: u16 = 0x603;
/// First port and length of the whole power-management block above.
pub const PM_PORTS: (u16, u16) = (SLEEP_CONTROL_PORT, 4);
/// Value Linux writes to [`RESET_PORT`] to reset the machine.
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP for S5 (soft off), exported in `\_S5_`.
pub const S5_SLEEP_TYPE: u8 = 5;
/// GSI the GED raises for power-button events.
pub const GED_GSI: u32 = 5;
/// GED event bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u8 = 1;
/// GED event bit: the VM generation id changed (a restore): notify the VMGenID device.
pub const GED_EVENT_VMGENID: u8 = 2;
/// OEM id in every table.
pub const OEM_ID: [u8; 6] = *b"CLDPHN";
