//! virtio-console with MULTIPORT (virtio spec 5.3): hvc0..hvcN for the phone's kernel log,
//! serial, logcat and other channels, each port backed by stdout, a file, a Unix socket or
//! nothing ([`PortBackend`]).
//!
//! Queues: port 0 uses 0 (receive) / 1 (transmit), the control queues are 2 / 3, port `p > 0`
//! uses `2 + 2p` / `3 + 2p`. A driver without MULTIPORT sees port 0 only.

mod control;
mod handler;
mod port;
mod spec;

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

pub use control::ControlMsg;
use handler::{lock_ports, ConsoleHandler};
use port::Port;
pub use port::{PortBackend, PortConfig, PortError};
pub use spec::{ports_from_specs, ConsoleSpec, SpecError, MAX_NAME_LEN};

use serde::{Deserialize, Serialize};

use crate::{
    device_part, read_config_bytes, to_device_part, ActivateError, Activation, DeviceQueue,
    DeviceStateBlob, StateError, VirtioCommon, VirtioDevice, WorkerHandler,
};

/// Virtio device type of the console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Feature: the device has several ports and control queues.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
/// Feature: the driver may write single bytes through config space (early boot output).
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;
/// Most ports one device offers (Cuttlefish uses about 20).
pub const MAX_PORTS: usize = 64;
const QUEUE_SIZE: u16 = 256;
const CONFIG_MAX_NR_PORTS: u64 = 4;
const CONFIG_EMERG_WR: u64 = 8;

/// Why a console could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No ports, or more than [`MAX_PORTS`].
    #[error("a console needs 1..={MAX_PORTS} ports, got {0}")]
    PortCount(usize),
    /// A port backend failed to open.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// The console device.
pub struct Console {
    ports: Arc<Mutex<Vec<Port>>>,
    common: VirtioCommon,
    /// Set by a restore: the next activation keeps the ports' guest state and announces
    /// their host side.
    restored: bool,
}

/// The console's own snapshot state: which ports the driver set up. Data in flight (client
/// input not yet in a guest buffer, control messages not yet read) is not saved: a restore
/// starts with new host connections anyway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleState {
    /// Per port: the driver sent PORT_READY.
    pub guest_ready: Vec<bool>,
}

impl Console {
    /// A console with `ports` (port 0 first; it is the guest's hvc0 when marked console).
    /// Files are opened and sockets bound now, so a bad path fails at VMM start.
    pub fn new(ports: &[PortConfig]) -> Result<Self, ConsoleError> {
        if ports.is_empty() || ports.len() > MAX_PORTS {
            return Err(ConsoleError::PortCount(ports.len()));
        }
        let opened = ports
            .iter()
            .enumerate()
            .map(|(i, cfg)| Port::open(i, cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_sizes = vec![QUEUE_SIZE; 2 * ports.len() + 2];
        Ok(Self {
            ports: Arc::new(Mutex::new(opened)),
            common: VirtioCommon::new(
                VIRTIO_ID_CONSOLE,
                &queue_sizes,
                VIRTIO_CONSOLE_F_MULTIPORT
                    | VIRTIO_CONSOLE_F_EMERG_WRITE
                    | 1 << VIRTIO_RING_F_EVENT_IDX,
            ),
            restored: false,
        })
    }

    fn num_ports(&self) -> usize {
        self.queue_max_sizes().len() / 2 - 1
    }

    fn acked(&self, feature: u64) -> bool {
        self.common.acked_features() & feature != 0
    }
}

impl VirtioDevice for Console {
    crate::virtio_common!(common);

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows (0: unknown), max_nr_ports, emerg_wr (write-only, reads 0).
        let mut config = [0u8; 12];
        let at = CONFIG_MAX_NR_PORTS as usize;
        config[at..at + 4].copy_from_slice(&(self.num_ports() as u32).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == CONFIG_EMERG_WR && data.len() == 4 && self.acked(VIRTIO_CONSOLE_F_EMERG_WRITE)
        {
            lock_ports(&self.ports)[0].emergency_write(data[0]);
        } else {
            crate::guest_warn!(
                offset,
                len = data.len(),
                "guest wrote read-only console config; ignored"
            );
        }
    }

    fn worker_name(&self) -> &str {
        "virtio-console"
    }

    fn reset(&mut self) {
        self.restored = false;
        self.common.reset();
    }

    fn save_state(&self) -> Result<DeviceStateBlob, StateError> {
        let state = ConsoleState {
            guest_ready: lock_ports(&self.ports)
                .iter()
                .map(|p| p.guest_ready)
                .collect(),
        };
        let part = to_device_part(VIRTIO_ID_CONSOLE, &state)?;
        Ok(self.common.save_blob(part))
    }

    /// Refuses a state for another number of ports.
    fn restore_state(&mut self, blob: &DeviceStateBlob) -> Result<(), StateError> {
        let part = self.common.restore_blob(blob)?;
        let state: ConsoleState = device_part(VIRTIO_ID_CONSOLE, part)?;
        let mut ports = lock_ports(&self.ports);
        if state.guest_ready.len() != ports.len() {
            return Err(StateError::Malformed {
                device_type: VIRTIO_ID_CONSOLE,
                reason: format!(
                    "state for {} ports, the console has {}",
                    state.guest_ready.len(),
                    ports.len()
                ),
            });
        }
        for (port, ready) in ports.iter_mut().zip(state.guest_ready) {
            port.guest_ready = ready;
        }
        self.restored = true;
        Ok(())
    }

    /// Each queue goes in the slot of its index; fails unless the queues the negotiated mode
    /// needs (port 0, plus control with MULTIPORT) are all there.
    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let multiport = self.acked(VIRTIO_CONSOLE_F_MULTIPORT);
        let needed = if multiport { 4 } else { 2 };
        let mut slots: Vec<Option<DeviceQueue>> =
            (0..self.queue_max_sizes().len()).map(|_| None).collect();
        for q in a.queues {
            if let Some(slot) = slots.get_mut(usize::from(q.index())) {
                *slot = Some(q);
            }
        }
        let got = slots.iter().take(needed).filter(|s| s.is_some()).count();
        ActivateError::check_queue_count(needed, got)?;
        let restored = std::mem::take(&mut self.restored);
        if !restored {
            for port in lock_ports(&self.ports).iter_mut() {
                port.guest_ready = false;
            }
        }
        Ok(Box::new(ConsoleHandler::new(
            a.mem,
            a.interrupt,
            slots,
            self.ports.clone(),
            multiport,
            restored,
        )))
    }
}

#[cfg(test)]
mod tests;
