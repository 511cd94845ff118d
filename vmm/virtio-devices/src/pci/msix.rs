//! MSI-X: the vector table and pending-bit array a guest programs through a BAR, and the
//! capability that advertises them.
//!
//! The guest controls every byte here, so accesses that are not naturally aligned dword
//! (or qword) accesses, or that fall outside the table, are logged and ignored. Delivery goes
//! through [`MsiSink`], which the VMM implements with KVM GSI routes + irqfds.

use std::io;

use serde::{Deserialize, Serialize};

/// PCI capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per MSI-X table entry (address low, address high, data, vector control).
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// The spec's limit on table size (the capability encodes size - 1 in 11 bits).
pub const MAX_MSIX_VECTORS: u16 = 2048;

const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_CONTROL_MASKED: u32 = 1;

/// An MSI message as the guest programmed it into a table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixMessage {
    /// Message address (x86: 0xfee..... with the destination APIC ID).
    pub addr: u64,
    /// Message data (x86: vector and delivery mode).
    pub data: u32,
    /// True when delivery is currently suppressed: the entry is masked, the function is
    /// masked, or MSI-X is disabled. A masked vector that fires is latched in the PBA.
    pub masked: bool,
}

/// Where MSI-X interrupts go. The VMM implements it with a KVM GSI route + irqfd per vector;
/// tests count calls. Called from vCPU threads (guest programming the table) and device
/// worker threads (interrupts), hence `Send + Sync`.
pub trait MsiSink: Send + Sync {
    /// Vector `vector`'s message changed (address/data/mask): update the GSI route.
    fn program(&self, vector: u16, msg: MsixMessage);
    /// Deliver `vector` now (it is enabled and unmasked).
    fn trigger(&self, vector: u16) -> io::Result<()>;
    /// MSI-X is disabled and the device interrupted: assert the legacy INTx line if the VMM
    /// wires one. The ISR status register has already been set. Default: INTx not wired.
    fn trigger_intx(&self) -> io::Result<()> {
        tracing::trace!("interrupt while MSI-X is disabled and INTx is not wired");
        Ok(())
    }
}

/// Why an interrupt could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    /// The guest pointed a queue/config at a vector the table does not have.
    #[error("MSI-X vector {vector} is outside the {size}-entry table; guest misprogrammed it")]
    VectorOutOfRange { vector: u16, size: u16 },
    /// A snapshot's table does not have this function's size (another device or build).
    #[error("snapshot MSI-X table has {entries} entries and {pba_words} PBA words; this function has {size} vectors: restore with the same device configuration")]
    StateSize {
        entries: usize,
        pba_words: usize,
        size: u16,
    },
}

/// What happened to an interrupt request.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Sent to the sink.
    Sent,
    /// The vector is masked: its pending bit is set and it fires on unmask.
    Pending,
    /// MSI-X is disabled: the caller falls back to INTx + ISR.
    Disabled,
}

/// One table entry exactly as the guest programmed it (snapshot state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntry {
    /// Message address, low dword.
    pub addr_lo: u32,
    /// Message address, high dword.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

/// What a snapshot keeps of an MSI-X table: every entry and the pending bits. Enable and
/// function mask live in the capability's control word, saved with config space.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    /// The table entries, in vector order.
    pub entries: Vec<MsixEntry>,
    /// The pending-bit array, 64 vectors per word.
    pub pba: Vec<u64>,
}

/// The MSI-X table + PBA + enable/function-mask state of one PCI function.
#[derive(Debug)]
pub struct MsixTable {
    entries: Vec<MsixEntry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// A table of `vectors` entries (clamped to 1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Self {
        let n = vectors.clamp(1, MAX_MSIX_VECTORS);
        Self {
            entries: vec![
                MsixEntry {
                    control: VECTOR_CONTROL_MASKED,
                    ..MsixEntry::default()
                };
                usize::from(n)
            ],
            pba: vec![0; usize::from(n).div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    /// Number of vectors.
    pub fn size(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes the table occupies in its BAR.
    pub fn table_bytes(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA occupies in its BAR.
    pub fn pba_bytes(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The capability body (message control, table offset/BIR, PBA offset/BIR) and the
    /// per-byte writable masks (enable + function mask only) for
    /// [`PciConfiguration::add_capability`](super::PciConfiguration::add_capability).
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> ([u8; 10], [u8; 2]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.size() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(table_bar & 0x7)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(pba_bar & 0x7)).to_le_bytes());
        (
            body,
            [0, ((CONTROL_ENABLE | CONTROL_FUNCTION_MASK) >> 8) as u8],
        )
    }

    /// The guest wrote the capability's message control word.
    pub fn set_control(&mut self, control: u16, sink: &dyn MsiSink) {
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if enabled == self.enabled && function_masked == self.function_masked {
            return;
        }
        tracing::debug!(enabled, function_masked, "MSI-X control changed");
        self.enabled = enabled;
        self.function_masked = function_masked;
        for vector in 0..self.size() {
            sink.program(vector, self.message(vector));
            self.deliver_if_pending(vector, sink);
        }
    }

    /// The message of `vector` with its effective mask.
    pub fn message(&self, vector: u16) -> MsixMessage {
        let e = self.entries[usize::from(vector)];
        MsixMessage {
            addr: u64::from(e.addr_lo) | u64::from(e.addr_hi) << 32,
            data: e.data,
            masked: self.masked(vector),
        }
    }

    fn masked(&self, vector: u16) -> bool {
        !self.enabled
            || self.function_masked
            || self.entries[usize::from(vector)].control & VECTOR_CONTROL_MASKED != 0
    }

    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        let bit = 1u64 << (v % 64);
        if pending {
            self.pba[v / 64] |= bit;
        } else {
            self.pba[v / 64] &= !bit;
        }
    }

    fn deliver_if_pending(&mut self, vector: u16, sink: &dyn MsiSink) {
        if self.pending(vector) && !self.masked(vector) {
            self.set_pending(vector, false);
            log_send_error(vector, sink.trigger(vector));
        }
    }

    /// Raise `vector`: sent, latched as pending, or refused because MSI-X is off.
    pub fn trigger(&mut self, vector: u16, sink: &dyn MsiSink) -> Result<Delivery, MsixError> {
        if vector >= self.size() {
            return Err(MsixError::VectorOutOfRange {
                vector,
                size: self.size(),
            });
        }
        if !self.enabled {
            return Ok(Delivery::Disabled);
        }
        if self.masked(vector) {
            self.set_pending(vector, true);
            return Ok(Delivery::Pending);
        }
        log_send_error(vector, sink.trigger(vector));
        Ok(Delivery::Sent)
    }

    /// Guest read of the table at byte `offset` in its BAR region.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, field)) = self.table_field(offset, data.len()) else {
            return;
        };
        let e = self.entries[index];
        let fields = [e.addr_lo, e.addr_hi, e.data, e.control];
        let value = if data.len() == 8 {
            u64::from(fields[field]) | u64::from(fields[field + 1]) << 32
        } else {
            u64::from(fields[field])
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    /// Guest write of the table; reprograms the sink and delivers a pending interrupt when an
    /// entry becomes unmasked.
    pub fn table_write(&mut self, offset: u64, data: &[u8], sink: &dyn MsiSink) {
        let Some((index, field)) = self.table_field(offset, data.len()) else {
            return;
        };
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(raw);
        let before = self.entries[index];
        let e = &mut self.entries[index];
        let mut set = |f: usize, v: u32| match f {
            0 => e.addr_lo = v,
            1 => e.addr_hi = v,
            2 => e.data = v,
            _ => e.control = v & VECTOR_CONTROL_MASKED,
        };
        set(field, value as u32);
        if data.len() == 8 {
            set(field + 1, (value >> 32) as u32);
        }
        if self.entries[index] != before {
            let vector = index as u16;
            sink.program(vector, self.message(vector));
            self.deliver_if_pending(vector, sink);
        }
    }

    /// (entry index, first field index) for a dword access, or a qword access at field 0/2.
    fn table_field(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let aligned = match len {
            4 => offset % 4 == 0,
            8 => offset % 8 == 0,
            _ => false,
        };
        let index = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        if !aligned || index >= self.entries.len() {
            tracing::warn!(
                offset,
                len,
                "MSI-X table access misaligned or out of range; ignored"
            );
            return None;
        }
        Some((index, ((offset % MSIX_ENTRY_SIZE) / 4) as usize))
    }

    /// Guest read of the PBA at byte `offset` in its BAR region (dword or qword).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let aligned = matches!(data.len(), 4 | 8) && offset % data.len() as u64 == 0;
        let word = usize::try_from(offset / 8)
            .ok()
            .and_then(|w| self.pba.get(w));
        match (aligned, word) {
            (true, Some(word)) => {
                let bytes = word.to_le_bytes();
                let start = (offset % 8) as usize;
                data.copy_from_slice(&bytes[start..start + data.len()]);
            }
            _ => tracing::warn!(offset, len = data.len(), "bad MSI-X PBA read; returns 0"),
        }
    }

    /// The table's snapshot state.
    pub fn save_state(&self) -> MsixState {
        MsixState {
            entries: self.entries.clone(),
            pba: self.pba.clone(),
        }
    }

    /// Take over a saved table and the capability's `control` word, then program every
    /// vector into `sink` (a restored VMM has no routes yet) and deliver unmasked pending
    /// vectors. Refuses a state of another table size, which a guest could not have made.
    pub fn restore_state(
        &mut self,
        state: &MsixState,
        control: u16,
        sink: &dyn MsiSink,
    ) -> Result<(), MsixError> {
        if state.entries.len() != self.entries.len() || state.pba.len() != self.pba.len() {
            return Err(MsixError::StateSize {
                entries: state.entries.len(),
                pba_words: state.pba.len(),
                size: self.size(),
            });
        }
        self.entries.clone_from(&state.entries);
        for e in &mut self.entries {
            e.control &= VECTOR_CONTROL_MASKED;
        }
        self.pba.clone_from(&state.pba);
        let bits = self.entries.len() % 64;
        if let (Some(last), true) = (self.pba.last_mut(), bits != 0) {
            *last &= (1 << bits) - 1;
        }
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for vector in 0..self.size() {
            sink.program(vector, self.message(vector));
            self.deliver_if_pending(vector, sink);
        }
        Ok(())
    }

    /// The PBA is read-only for the guest.
    pub fn pba_write(&self, offset: u64, data: &[u8]) {
        tracing::warn!(
            offset,
            len = data.len(),
            "guest wrote the read-only MSI-X PBA; ignored"
        );
    }
}

fn log_send_error(vector: u16, result: io::Result<()>) {
    if let Err(e) = result {
        tracing::error!(vector, error = %e, "MSI-X delivery to the VMM failed");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every sink call for assertions.
    #[derive(Default)]
    pub(crate) struct RecordingSink {
        pub programmed: Mutex<Vec<(u16, MsixMessage)>>,
        pub triggered: Mutex<Vec<u16>>,
    }

    impl MsiSink for RecordingSink {
        fn program(&self, vector: u16, msg: MsixMessage) {
            self.programmed.lock().unwrap().push((vector, msg));
        }
        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.triggered.lock().unwrap().push(vector);
            Ok(())
        }
    }

    fn write32(t: &mut MsixTable, off: u64, v: u32, sink: &RecordingSink) {
        t.table_write(off, &v.to_le_bytes(), sink);
    }

    fn programmed_table(sink: &RecordingSink) -> MsixTable {
        let mut t = MsixTable::new(3);
        write32(&mut t, 16, 0xfee0_0000, sink);
        write32(&mut t, 24, 0x41, sink);
        write32(&mut t, 28, 0, sink); // unmask vector 1
        t.set_control(CONTROL_ENABLE, sink);
        t
    }

    #[test]
    fn unmasked_vector_is_sent() {
        let sink = RecordingSink::default();
        let mut t = programmed_table(&sink);
        assert_eq!(t.trigger(1, &sink), Ok(Delivery::Sent));
        assert_eq!(*sink.triggered.lock().unwrap(), vec![1]);
        let last = *sink.programmed.lock().unwrap().last().unwrap();
        assert_eq!(last.0, 2); // set_control reprograms every vector
        assert_eq!(
            t.message(1),
            MsixMessage {
                addr: 0xfee0_0000,
                data: 0x41,
                masked: false
            }
        );
    }

    #[test]
    fn masked_vector_latches_pending_and_fires_on_unmask() {
        let sink = RecordingSink::default();
        let mut t = programmed_table(&sink);
        write32(&mut t, 28, 1, &sink);
        assert_eq!(t.trigger(1, &sink), Ok(Delivery::Pending));
        assert!(t.pending(1));
        let mut pba = [0u8; 8];
        t.pba_read(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        assert!(sink.triggered.lock().unwrap().is_empty());
        write32(&mut t, 28, 0, &sink);
        assert!(!t.pending(1));
        assert_eq!(*sink.triggered.lock().unwrap(), vec![1]);
    }

    #[test]
    fn function_mask_defers_until_cleared() {
        let sink = RecordingSink::default();
        let mut t = programmed_table(&sink);
        t.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK, &sink);
        assert_eq!(t.trigger(1, &sink), Ok(Delivery::Pending));
        t.set_control(CONTROL_ENABLE, &sink);
        assert_eq!(*sink.triggered.lock().unwrap(), vec![1]);
    }

    #[test]
    fn disabled_and_out_of_range() {
        let sink = RecordingSink::default();
        let mut t = MsixTable::new(2);
        assert_eq!(t.trigger(0, &sink), Ok(Delivery::Disabled));
        assert_eq!(
            t.trigger(7, &sink),
            Err(MsixError::VectorOutOfRange { vector: 7, size: 2 })
        );
    }

    #[test]
    fn odd_accesses_ignored() {
        let sink = RecordingSink::default();
        let mut t = MsixTable::new(2);
        t.table_write(2, &[1, 2, 3, 4], &sink);
        t.table_write(0, &[1, 2], &sink);
        t.table_write(4, &[1; 8], &sink);
        t.table_write(32, &[1; 4], &sink);
        t.table_write(u64::MAX - 3, &[1; 4], &sink);
        assert!(sink.programmed.lock().unwrap().is_empty());
        let mut d = [0xffu8; 4];
        t.table_read(33, &mut d);
        assert_eq!(d, [0; 4]);
        t.pba_write(0, &[0xff; 8]);
        t.pba_read(0, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn qword_entry_access() {
        let sink = RecordingSink::default();
        let mut t = MsixTable::new(1);
        t.table_write(0, &0x1_fee0_1000u64.to_le_bytes(), &sink);
        let mut d = [0u8; 8];
        t.table_read(0, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0x1_fee0_1000);
        t.table_read(8, &mut d);
        assert_eq!(u64::from_le_bytes(d), 1 << 32); // data 0, control masked
    }

    #[test]
    fn capability_layout() {
        let t = MsixTable::new(5);
        let (body, writable) = t.capability(2, 0, 2, 0x800);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 4);
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 2);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x802);
        assert_eq!(writable, [0, 0xc0]);
    }
}
