//! Queue registers as the driver programs them, and their validation into a `virtio_queue`
//! queue at activation. Nothing the guest wrote is trusted: sizes must be powers of two not
//! above the device maximum, rings aligned and entirely inside guest memory.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::GuestMemory;

/// One queue's registers in the common configuration structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueRegs {
    pub(crate) max_size: u16,
    pub(crate) size: u16,
    pub(crate) enabled: bool,
    pub(crate) desc: u64,
    pub(crate) driver: u64,
    pub(crate) device: u64,
}

impl QueueRegs {
    /// Registers after reset: size = maximum, disabled, addresses zero.
    pub(crate) fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// Why an enabled queue cannot be used.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// Size not a power of two, zero, or above the maximum.
    #[error("queue {queue}: size {size} is invalid (power of two, 1..={max})")]
    Size { queue: u16, size: u16, max: u16 },
    /// A ring address is misaligned (desc 16, avail 2, used 4 bytes).
    #[error("queue {queue}: {ring} address {addr:#x} is misaligned")]
    Alignment {
        queue: u16,
        ring: &'static str,
        addr: u64,
    },
    /// A ring does not lie entirely inside guest memory.
    #[error("queue {queue}: rings (desc {desc:#x}, avail {avail:#x}, used {used:#x}) are not inside guest memory")]
    Memory {
        queue: u16,
        desc: u64,
        avail: u64,
        used: u64,
    },
}

/// Validate `regs` of queue `index` against `mem` and build the queue a device will use.
pub(crate) fn build_queue(
    index: u16,
    regs: &QueueRegs,
    event_idx: bool,
    mem: &GuestMemory,
) -> Result<Queue, QueueError> {
    let size_error = QueueError::Size {
        queue: index,
        size: regs.size,
        max: regs.max_size,
    };
    let mut queue = Queue::new(regs.max_size).map_err(|_| size_error.clone())?;
    queue.try_set_size(regs.size).map_err(|_| size_error)?;
    let align = |ring, addr| QueueError::Alignment {
        queue: index,
        ring,
        addr,
    };
    queue
        .try_set_desc_table_address(GuestAddress(regs.desc))
        .map_err(|_| align("descriptor table", regs.desc))?;
    queue
        .try_set_avail_ring_address(GuestAddress(regs.driver))
        .map_err(|_| align("available ring", regs.driver))?;
    queue
        .try_set_used_ring_address(GuestAddress(regs.device))
        .map_err(|_| align("used ring", regs.device))?;
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    if !queue.is_valid(mem) {
        return Err(QueueError::Memory {
            queue: index,
            desc: regs.desc,
            avail: regs.driver,
            used: regs.device,
        });
    }
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn regs(size: u16) -> QueueRegs {
        QueueRegs {
            size,
            enabled: true,
            desc: 0x1000,
            driver: 0x2000,
            device: 0x3000,
            ..QueueRegs::new(256)
        }
    }

    #[test]
    fn valid_queue_builds() {
        let q = build_queue(0, &regs(64), true, &mem()).unwrap();
        assert_eq!(q.size(), 64);
        assert!(q.event_idx_enabled());
    }

    #[test]
    fn bad_sizes_rejected() {
        for size in [0, 3, 100, 512] {
            assert!(matches!(
                build_queue(1, &regs(size), false, &mem()),
                Err(QueueError::Size { queue: 1, .. })
            ));
        }
    }

    #[test]
    fn misaligned_and_outside_rejected() {
        let r = QueueRegs {
            desc: 0x1008,
            ..regs(16)
        };
        assert!(matches!(
            build_queue(0, &r, false, &mem()),
            Err(QueueError::Alignment { .. })
        ));
        let r = QueueRegs {
            device: 0xfffc,
            ..regs(16)
        };
        assert!(matches!(
            build_queue(0, &r, false, &mem()),
            Err(QueueError::Memory { .. })
        ));
        let r = QueueRegs {
            driver: u64::MAX - 1,
            ..regs(16)
        };
        assert!(matches!(
            build_queue(0, &r, false, &mem()),
            Err(QueueError::Memory { .. })
        ));
    }
}
