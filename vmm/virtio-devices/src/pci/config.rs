//! A PCI type-0 configuration space: header, BARs with size probing, capability list.
//!
//! The guest owns nothing here: every write is filtered through a per-bit writable mask, so
//! read-only fields (IDs, class, capability bodies) cannot be changed and BAR writes keep their
//! alignment and type bits. Sizing writes (all ones) are recognised so the VMM is only told
//! about real BAR moves.

use super::{BarKind, BarMove, PciBar};

/// Dwords in the conventional (non-extended) configuration space.
pub const CONFIG_DWORDS: usize = 64;
/// Dwords in the PCIe extended configuration space (ECAM); beyond the first 64 they read 0.
pub const EXTENDED_CONFIG_DWORDS: usize = 1024;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

const BAR0_REG: usize = 4;
const CAP_PTR_OFFSET: usize = 0x34;
const FIRST_CAP_OFFSET: usize = 0x40;
const STATUS_CAP_LIST: u32 = 1 << (16 + 4);
/// Command register bits the guest may change: I/O, memory, bus master, parity, SERR, INTx off.
const COMMAND_WRITABLE: u32 = 0x0547;

/// Identity of a PCI function (the read-only part of the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID (0x1af4 for virtio).
    pub vendor_id: u16,
    /// Device ID (0x1040 + virtio type for modern virtio).
    pub device_id: u16,
    /// Revision ID (>= 1 for non-transitional virtio devices).
    pub revision: u8,
    /// Class code, subclass and programming interface, e.g. (0x02, 0x00, 0x00) for Ethernet.
    pub class: (u8, u8, u8),
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Legacy interrupt pin (0 none, 1 INTA#..4 INTD#).
    pub interrupt_pin: u8,
}

/// Why a configuration space could not be built or a BAR not placed (VMM-side mistakes).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// BAR index out of range or already used (64-bit BARs take two registers).
    #[error("BAR {0} is out of range or already in use; pick a free BAR index 0..=5 (0..=4 for 64-bit BARs)")]
    BarUnavailable(usize),
    /// BAR sizes must be powers of two (minimum 16 bytes for memory, 4 for I/O).
    #[error("BAR size {0:#x} is not a power of two of at least 16 (memory) / 4 (I/O) bytes")]
    BarSize(u64),
    /// No BAR was registered at this index.
    #[error("BAR {0} is not implemented by this device")]
    NoSuchBar(usize),
    /// The address is not aligned to the BAR size or does not fit the BAR type.
    #[error(
        "address {addr:#x} is not valid for BAR {bar} (must be size-aligned and fit the BAR width)"
    )]
    BarAddress { bar: usize, addr: u64 },
    /// A snapshot's config space is not the 64 dwords of a type-0 header.
    #[error(
        "snapshot config space has {0} dwords, expected {CONFIG_DWORDS}; the snapshot is corrupt"
    )]
    StateLength(usize),
    /// The capability list is full.
    #[error("no room for a {0}-byte capability in the 256-byte configuration space")]
    CapabilitySpace(usize),
}

#[derive(Clone, Copy, Debug)]
struct BarSlot {
    kind: BarKind,
    size: u64,
    prefetchable: bool,
    /// Address last reported to (or set by) the VMM.
    reported: u64,
}

/// A type-0 PCI configuration space.
#[derive(Debug)]
pub struct PciConfiguration {
    regs: [u32; CONFIG_DWORDS],
    writable: [u32; CONFIG_DWORDS],
    bars: [Option<BarSlot>; NUM_BARS],
    /// Registers that currently hold a sizing pattern (all ones written by the guest).
    sizing: [bool; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfiguration {
    /// A header-only configuration space for `header`; add BARs and capabilities next.
    pub fn new(header: PciHeader) -> Self {
        let mut regs = [0u32; CONFIG_DWORDS];
        regs[0] = u32::from(header.vendor_id) | u32::from(header.device_id) << 16;
        let (class, subclass, prog_if) = header.class;
        regs[2] = u32::from(header.revision)
            | u32::from(prog_if) << 8
            | u32::from(subclass) << 16
            | u32::from(class) << 24;
        regs[11] = u32::from(header.subsystem_vendor_id) | u32::from(header.subsystem_id) << 16;
        regs[15] = u32::from(header.interrupt_pin) << 8;
        let mut writable = [0u32; CONFIG_DWORDS];
        writable[1] = COMMAND_WRITABLE;
        writable[3] = 0x0000_ff00; // latency timer (cache line size reads 0, fine for PCIe)
        writable[15] = 0x0000_00ff; // interrupt line: scratch for the OS
        Self {
            regs,
            writable,
            bars: [None; NUM_BARS],
            sizing: [false; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP_OFFSET,
        }
    }

    /// Declare BAR `index` with `kind` and `size` (a power of two). A 64-bit memory BAR also
    /// takes register `index + 1`.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), ConfigError> {
        let regs_needed = if kind == BarKind::Memory64 { 2 } else { 1 };
        if index + regs_needed > NUM_BARS
            || (index..index + regs_needed).any(|i| self.bar_register_taken(i))
        {
            return Err(ConfigError::BarUnavailable(index));
        }
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let max = match kind {
            BarKind::Memory64 => 1 << 63,
            BarKind::Memory32 => 1 << 31,
            BarKind::Io => 1 << 16,
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(ConfigError::BarSize(size));
        }
        let type_bits = match kind {
            BarKind::Io => 0x1,
            BarKind::Memory32 => u32::from(prefetchable) << 3,
            BarKind::Memory64 => 0x4 | u32::from(prefetchable) << 3,
        };
        let low_flags_mask = if kind == BarKind::Io { 0x3 } else { 0xf };
        let reg = BAR0_REG + index;
        self.regs[reg] = type_bits;
        self.writable[reg] = (!(size - 1) as u32) & !low_flags_mask;
        if kind == BarKind::Memory64 {
            self.regs[reg + 1] = 0;
            self.writable[reg + 1] = (!(size - 1) >> 32) as u32;
        }
        self.bars[index] = Some(BarSlot {
            kind,
            size,
            prefetchable,
            reported: 0,
        });
        Ok(())
    }

    fn bar_register_taken(&self, reg_index: usize) -> bool {
        self.bars[reg_index].is_some()
            || (reg_index > 0
                && matches!(self.bars[reg_index - 1], Some(s) if s.kind == BarKind::Memory64))
    }

    /// Append a capability with `id` and `body` (the bytes after the ID and next pointer);
    /// `writable` gives per-byte masks of guest-writable bits in `body` (shorter = read-only
    /// tail). Returns the capability's offset in configuration space.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = 2 + body.len();
        let offset = self.next_cap;
        if offset + len > CONFIG_DWORDS * 4 {
            return Err(ConfigError::CapabilitySpace(len));
        }
        self.set_byte(offset, id);
        self.set_byte(offset + 1, 0);
        for (i, b) in body.iter().enumerate() {
            self.set_byte(offset + 2 + i, *b);
        }
        for (i, mask) in writable.iter().take(body.len()).enumerate() {
            let at = offset + 2 + i;
            self.writable[at / 4] |= u32::from(*mask) << ((at % 4) * 8);
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, offset as u8),
            None => {
                self.set_byte(CAP_PTR_OFFSET, offset as u8);
                self.regs[1] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(offset);
        self.next_cap = (offset + len).next_multiple_of(4);
        Ok(offset)
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        let shift = (offset % 4) * 8;
        let reg = &mut self.regs[offset / 4];
        *reg = (*reg & !(0xff << shift)) | u32::from(value) << shift;
    }

    /// Read configuration dword `reg` (byte offset `reg * 4`). Extended space reads 0;
    /// beyond it reads all ones (no such register).
    pub fn read_reg(&self, reg: usize) -> u32 {
        match reg {
            r if r < CONFIG_DWORDS => self.regs[r],
            r if r < EXTENDED_CONFIG_DWORDS => 0,
            _ => {
                tracing::warn!(
                    reg,
                    "PCI config read beyond the 4 KiB space; returns all ones"
                );
                u32::MAX
            }
        }
    }

    /// Read `data.len()` bytes at byte `offset` (helper for capability parsers and tests).
    pub fn read_bytes(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i;
            *b = (self.read_reg(at / 4) >> ((at % 4) * 8)) as u8;
        }
    }

    /// Guest write of `data` (1, 2 or 4 bytes) at byte `offset` within dword `reg`. Only
    /// writable bits change. Returns the BAR move this write completed, if any.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let Some((value, byte_mask)) = merge_bytes(offset, data) else {
            tracing::warn!(
                reg,
                offset,
                len = data.len(),
                "malformed PCI config write ignored"
            );
            return None;
        };
        if reg >= CONFIG_DWORDS {
            tracing::debug!(
                reg,
                "PCI config write to unimplemented extended space ignored"
            );
            return None;
        }
        let mask = byte_mask & self.writable[reg];
        self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
        let bar_reg = reg.checked_sub(BAR0_REG).filter(|r| *r < NUM_BARS)?;
        self.sizing[bar_reg] = value & byte_mask == byte_mask;
        self.detect_bar_move(bar_reg)
    }

    fn detect_bar_move(&mut self, bar_reg: usize) -> Option<BarMove> {
        let index = if self.bars[bar_reg].is_some() {
            bar_reg
        } else {
            bar_reg.checked_sub(1)?
        };
        let slot = self.bars[index]?;
        let regs_used = if slot.kind == BarKind::Memory64 { 2 } else { 1 };
        if self.sizing[index..index + regs_used].iter().any(|s| *s) {
            return None;
        }
        let new = self.bar_address(index)?;
        if new == slot.reported {
            return None;
        }
        self.bars[index] = Some(BarSlot {
            reported: new,
            ..slot
        });
        Some(BarMove {
            bar: index,
            old: slot.reported,
            new,
            size: slot.size,
        })
    }

    /// The address BAR `index` decodes at now (type bits stripped).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let slot = self.bars.get(index).copied().flatten()?;
        let reg = BAR0_REG + index;
        Some(match slot.kind {
            BarKind::Io => u64::from(self.regs[reg] & !0x3),
            BarKind::Memory32 => u64::from(self.regs[reg] & !0xf),
            BarKind::Memory64 => {
                u64::from(self.regs[reg] & !0xf) | u64::from(self.regs[reg + 1]) << 32
            }
        })
    }

    /// Place BAR `index` at `addr` (VMM allocation at boot; not reported as a move).
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), ConfigError> {
        let slot = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(ConfigError::NoSuchBar(index))?;
        let limit = match slot.kind {
            BarKind::Memory64 => u64::MAX,
            BarKind::Memory32 => u64::from(u32::MAX),
            BarKind::Io => 0xffff,
        };
        if addr % slot.size != 0 || addr.checked_add(slot.size - 1).is_none_or(|e| e > limit) {
            return Err(ConfigError::BarAddress { bar: index, addr });
        }
        let reg = BAR0_REG + index;
        self.regs[reg] = (self.regs[reg] & !self.writable[reg]) | addr as u32;
        if slot.kind == BarKind::Memory64 {
            self.regs[reg + 1] = (addr >> 32) as u32;
        }
        self.bars[index] = Some(BarSlot {
            reported: addr,
            ..slot
        });
        Ok(())
    }

    /// All implemented BARs with their current addresses.
    pub fn bars(&self) -> Vec<PciBar> {
        (0..NUM_BARS)
            .filter_map(|index| {
                let slot = self.bars[index]?;
                Some(PciBar {
                    index,
                    kind: slot.kind,
                    size: slot.size,
                    prefetchable: slot.prefetchable,
                    addr: self.bar_address(index)?,
                })
            })
            .collect()
    }

    /// The guest-writable part of config space for a snapshot: every dword with only its
    /// writable bits (command, latency timer, interrupt line, capability control words),
    /// BAR registers zeroed; BAR addresses go separately through [`bars`](Self::bars).
    pub fn save_writable(&self) -> Vec<u32> {
        (0..CONFIG_DWORDS)
            .map(|reg| match reg {
                r if (BAR0_REG..BAR0_REG + NUM_BARS).contains(&r) => 0,
                r => self.regs[r] & self.writable[r],
            })
            .collect()
    }

    /// Put back [`save_writable`](Self::save_writable)'s dwords. Only writable bits are
    /// taken (a corrupted snapshot cannot change IDs or capability bodies) and BAR
    /// registers are left alone; place BARs with [`set_bar_address`](Self::set_bar_address).
    pub fn restore_writable(&mut self, saved: &[u32]) -> Result<(), ConfigError> {
        if saved.len() != CONFIG_DWORDS {
            return Err(ConfigError::StateLength(saved.len()));
        }
        for (reg, value) in saved.iter().enumerate() {
            if (BAR0_REG..BAR0_REG + NUM_BARS).contains(&reg) {
                continue;
            }
            let mask = self.writable[reg];
            self.regs[reg] = (self.regs[reg] & !mask) | (value & mask);
        }
        self.sizing = [false; NUM_BARS];
        Ok(())
    }

    /// Whether the guest enabled memory-space decoding (command register bit 1).
    pub fn memory_enabled(&self) -> bool {
        self.regs[1] & 0x2 != 0
    }
}

/// Place `data` at byte `offset` of a dword: (value, mask of written bits), or None when the
/// access is not 1, 2 or 4 bytes inside the dword.
pub(crate) fn merge_bytes(offset: u64, data: &[u8]) -> Option<(u32, u32)> {
    let offset = usize::try_from(offset).ok().filter(|o| *o < 4)?;
    if !matches!(data.len(), 1 | 2 | 4) || offset + data.len() > 4 {
        return None;
    }
    let mut value = 0u32;
    let mut mask = 0u32;
    for (i, b) in data.iter().enumerate() {
        let shift = (offset + i) * 8;
        value |= u32::from(*b) << shift;
        mask |= 0xff << shift;
    }
    Some((value, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1044,
            revision: 1,
            class: (0xff, 0, 0),
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
            interrupt_pin: 1,
        }
    }

    #[test]
    fn header_fields_are_read_only() {
        let mut cfg = PciConfiguration::new(header());
        assert_eq!(cfg.read_reg(0), 0x1044_1af4);
        cfg.write_reg(0, 0, &[0, 0, 0, 0]);
        cfg.write_reg(2, 0, &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(cfg.read_reg(0), 0x1044_1af4);
        assert_eq!(cfg.read_reg(2), 0xff00_0001);
        assert_eq!(cfg.read_reg(11), 0x0040_1af4);
    }

    #[test]
    fn command_register_keeps_only_defined_bits() {
        let mut cfg = PciConfiguration::new(header());
        cfg.write_reg(1, 0, &[0xff, 0xff]);
        assert_eq!(cfg.read_reg(1) & 0xffff, COMMAND_WRITABLE);
        assert!(cfg.memory_enabled());
        cfg.write_reg(1, 0, &[0x0]);
        assert!(!cfg.memory_enabled());
    }

    #[test]
    fn bar64_sizing_reports_size_and_no_move() {
        let mut cfg = PciConfiguration::new(header());
        cfg.add_bar(0, BarKind::Memory64, 0x4000, false).unwrap();
        cfg.set_bar_address(0, 0x1_0000_0000).unwrap();
        assert_eq!(cfg.write_reg(4, 0, &[0xff; 4]), None);
        assert_eq!(cfg.read_reg(4), 0xffff_c004);
        assert_eq!(cfg.write_reg(5, 0, &[0xff; 4]), None);
        assert_eq!(cfg.read_reg(5), 0xffff_ffff);
        // Restore the original address: still no move.
        assert_eq!(cfg.write_reg(4, 0, &0u32.to_le_bytes()), None);
        assert_eq!(cfg.write_reg(5, 0, &1u32.to_le_bytes()), None);
        assert_eq!(cfg.bar_address(0), Some(0x1_0000_0000));
    }

    #[test]
    fn bar_reprogramming_is_reported() {
        let mut cfg = PciConfiguration::new(header());
        cfg.add_bar(2, BarKind::Memory32, 0x1000, false).unwrap();
        cfg.set_bar_address(2, 0xe000_0000).unwrap();
        let mv = cfg.write_reg(6, 0, &0xe010_0000u32.to_le_bytes()).unwrap();
        assert_eq!(
            mv,
            BarMove {
                bar: 2,
                old: 0xe000_0000,
                new: 0xe010_0000,
                size: 0x1000
            }
        );
        assert_eq!(cfg.bars()[0].addr, 0xe010_0000);
        // Unaligned bits are dropped by the writable mask.
        let mv = cfg.write_reg(6, 0, &0xe020_0123u32.to_le_bytes()).unwrap();
        assert_eq!(mv.new, 0xe020_0000);
    }

    #[test]
    fn io_bar_sizing() {
        let mut cfg = PciConfiguration::new(header());
        cfg.add_bar(1, BarKind::Io, 0x20, false).unwrap();
        cfg.write_reg(5, 0, &[0xff; 4]);
        assert_eq!(cfg.read_reg(5), 0xffff_ffe1);
    }

    #[test]
    fn bar_allocation_errors() {
        let mut cfg = PciConfiguration::new(header());
        cfg.add_bar(0, BarKind::Memory64, 0x1000, true).unwrap();
        assert_eq!(
            cfg.add_bar(1, BarKind::Memory32, 0x1000, false),
            Err(ConfigError::BarUnavailable(1))
        );
        assert_eq!(
            cfg.add_bar(5, BarKind::Memory64, 0x1000, false),
            Err(ConfigError::BarUnavailable(5))
        );
        assert_eq!(
            cfg.add_bar(2, BarKind::Memory32, 0x1800, false),
            Err(ConfigError::BarSize(0x1800))
        );
        assert_eq!(
            cfg.set_bar_address(0, 0x1001),
            Err(ConfigError::BarAddress {
                bar: 0,
                addr: 0x1001
            })
        );
        assert_eq!(cfg.set_bar_address(3, 0), Err(ConfigError::NoSuchBar(3)));
    }

    #[test]
    fn capability_chain() {
        let mut cfg = PciConfiguration::new(header());
        let a = cfg.add_capability(0x09, &[3, 1], &[]).unwrap();
        let b = cfg
            .add_capability(0x11, &[0, 0, 0xaa, 0xbb], &[0, 0xc0])
            .unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x44);
        assert_ne!(cfg.read_reg(1) & STATUS_CAP_LIST, 0);
        let mut ptr = [0u8];
        cfg.read_bytes(CAP_PTR_OFFSET, &mut ptr);
        assert_eq!(ptr[0], 0x40);
        let mut cap = [0u8; 4];
        cfg.read_bytes(a, &mut cap);
        assert_eq!(cap, [0x09, 0x44, 3, 1]);
        // Only the writable bits of b's body change.
        cfg.write_reg(b / 4, 2, &[0xff, 0xff]);
        cfg.write_reg(b / 4 + 1, 0, &[0, 0]);
        let mut body = [0u8; 4];
        cfg.read_bytes(b + 2, &mut body);
        assert_eq!(body, [0, 0xc0, 0xaa, 0xbb]);
    }

    #[test]
    fn odd_writes_are_ignored() {
        let mut cfg = PciConfiguration::new(header());
        cfg.write_reg(1, 3, &[0xff, 0xff]);
        cfg.write_reg(1, 0, &[0xff, 0xff, 0xff]);
        cfg.write_reg(1, u64::MAX, &[0xff]);
        assert_eq!(cfg.read_reg(1) & 0xffff, 0);
        assert_eq!(cfg.read_reg(100), 0);
        assert_eq!(cfg.read_reg(5000), u32::MAX);
        assert_eq!(cfg.write_reg(2000, 0, &[1]), None);
    }
}
