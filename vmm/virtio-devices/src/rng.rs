//! virtio-rng (entropy device, virtio spec 5.4): fills the guest's buffers from the host's
//! `getrandom(2)`, so `/dev/hwrng` in the guest seeds its pool.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;

use crate::{
    ActivateError, Activation, DeviceQueue, GuestMemory, VirtioCommon, VirtioDevice,
    VirtioInterrupt, WorkerContext, WorkerHandler,
};

/// Virtio device type of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 256;
/// At most this many bytes per request: a guest asking for gigabytes must not make the host
/// spend seconds in getrandom or allocate to match (the guest simply asks again).
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The entropy device.
pub struct Rng {
    common: VirtioCommon,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new entropy device (one request queue).
    pub fn new() -> Self {
        // No device features; EVENT_IDX because the device queue honours it.
        Self {
            common: VirtioCommon::new(VIRTIO_ID_RNG, &[QUEUE_SIZE], 1 << VIRTIO_RING_F_EVENT_IDX),
        }
    }
}

impl VirtioDevice for Rng {
    crate::virtio_common!(common);

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // The entropy device has no configuration space.
        data.fill(0);
    }

    fn worker_name(&self) -> &str {
        "virtio-rng"
    }

    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let [queue] = Activation::queue_array(a.queues)?;
        Ok(Box::new(RngHandler {
            mem: a.mem,
            interrupt: a.interrupt,
            queue,
            buf: vec![0; MAX_BYTES_PER_REQUEST],
        }))
    }
}

struct RngHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: DeviceQueue,
    buf: Vec<u8>,
}

impl WorkerHandler for RngHandler {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        self.queue.watch(ctx, 0)
    }

    fn handle(
        &mut self,
        _ctx: &WorkerContext,
        _token: u64,
        _events: EventSet,
    ) -> Result<(), String> {
        self.queue.ack_notify();
        let buf = &mut self.buf;
        let mem = &self.mem;
        self.queue.drain(mem, self.interrupt.as_ref(), |chain| {
            let head = chain.head();
            let mut budget = MAX_BYTES_PER_REQUEST;
            let mut written = 0u32;
            for d in chain.descriptors() {
                if !d.is_write_only() {
                    return Err(format!("rng request {head} has a device-readable buffer"));
                }
                let len = (d.len() as usize).min(budget);
                if len == 0 {
                    continue;
                }
                fill_random(&mut buf[..len])?;
                mem.write_slice(&buf[..len], d.addr()).map_err(|e| {
                    format!(
                        "rng request {head}: writing {len} bytes at {:#x}: {e}",
                        d.addr().0
                    )
                })?;
                budget -= len;
                written += len as u32;
            }
            Ok(written)
        })
    }
}

/// Fill `buf` from the kernel's CSPRNG.
fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a valid writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("host getrandom failed: {err}"));
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run_with_timeout, TestHal, TestHarness};
    use std::time::Duration;
    use virtio_drivers::device::rng::VirtIORng;

    #[test]
    fn guest_reads_random_bytes_through_pci_transport() {
        let h = TestHarness::new(Box::new(Rng::new())).unwrap();
        let transport = h.transport();
        let (a, b) = run_with_timeout(Duration::from_secs(10), move || {
            let mut rng = VirtIORng::<TestHal, _>::new(transport).unwrap();
            let mut a = [0u8; 4096];
            let mut b = [0u8; 4096];
            let na = rng.request_entropy(&mut a).unwrap();
            let nb = rng.request_entropy(&mut b).unwrap();
            assert_eq!((na, nb), (4096, 4096));
            (a, b)
        });
        assert_ne!(a, b, "two 4 KiB draws must differ");
        assert!(a.iter().any(|&x| x != 0));
        assert!(h.pci().is_activated());
        assert!(!h.needs_reset());
        assert!(h.msi().count(TestHarness::queue_vector(0)) >= 1);
    }

    #[test]
    fn driver_continues_after_snapshot_restore() {
        let h = TestHarness::new(Box::new(Rng::new())).unwrap();
        let transport = h.transport();
        let draw = |mut rng: VirtIORng<TestHal, crate::testing::TestTransport>| {
            run_with_timeout(Duration::from_secs(10), move || {
                let mut buf = [0u8; 512];
                let n = rng.request_entropy(&mut buf).unwrap();
                assert!(n == 512 && buf.iter().any(|&x| x != 0));
                rng
            })
        };
        let rng = draw(VirtIORng::<TestHal, _>::new(transport).unwrap());
        let rng = draw(rng);
        let before = h.msi().count(TestHarness::queue_vector(0));
        let state = h.snapshot_restore(|| Box::new(Rng::new())).unwrap();
        assert_eq!(state.device.common.queues[0].next_used, 2);
        assert!(
            h.pci().is_activated(),
            "DRIVER_OK state restarts the device"
        );
        // The same driver, with its ring indices, against the restored function.
        let rng = draw(rng);
        draw(rng);
        assert!(h.msi().count(TestHarness::queue_vector(0)) >= before + 2);
        assert!(!h.needs_reset());
        let again = h.pci().save_state().unwrap();
        assert_eq!(again.device.common.queues[0].next_used, 4);
        assert_eq!((again.bars, again.msix), (state.bars, state.msix));
    }

    #[test]
    fn huge_request_is_capped() {
        let h = TestHarness::new(Box::new(Rng::new())).unwrap();
        let transport = h.transport();
        let n = run_with_timeout(Duration::from_secs(10), move || {
            let mut rng = VirtIORng::<TestHal, _>::new(transport).unwrap();
            let mut big = vec![0u8; 1 << 20];
            rng.request_entropy(&mut big).unwrap()
        });
        assert_eq!(n, MAX_BYTES_PER_REQUEST);
    }

    #[test]
    fn reset_and_reinit_works() {
        let h = TestHarness::new(Box::new(Rng::new())).unwrap();
        for _ in 0..3 {
            let transport = h.transport();
            let n = run_with_timeout(Duration::from_secs(10), move || {
                let mut rng = VirtIORng::<TestHal, _>::new(transport).unwrap();
                let mut a = [0u8; 64];
                rng.request_entropy(&mut a).unwrap()
            });
            assert_eq!(n, 64);
        }
    }

    #[test]
    fn fuzz_rng_hostile_rings() {
        let mut rng = Rng::new();
        crate::testing::hostile::fuzz_worker("rng_chains", 2000, 1, |a| rng.worker(a).unwrap());
    }

    fn handler_for(
        ring: &crate::testing::hostile::HostileRing,
    ) -> (Box<dyn WorkerHandler>, GuestMemory) {
        use crate::testing::hostile::{device_queue, memory_with, RecordingInterrupt};
        let mem = memory_with(ring);
        let activation = Activation {
            mem: mem.clone(),
            interrupt: Arc::new(RecordingInterrupt::default()),
            queues: vec![device_queue(0, false)],
        };
        (Rng::new().worker(activation).unwrap(), mem)
    }

    #[test]
    fn wrong_direction_fails_and_zero_length_is_fine() {
        use crate::testing::hostile::{used_idx, HostileRing, RawDesc, DATA};
        let ctx = WorkerContext::new().unwrap();
        let desc = |len, flags| RawDesc {
            addr: DATA,
            len,
            flags,
            next: 0,
        };
        let ring = |d| HostileRing {
            descs: vec![d],
            heads: vec![0],
            avail_idx: 1,
        };
        let (mut h, _) = handler_for(&ring(desc(16, 0)));
        let err = h.handle(&ctx, 0, EventSet::IN).unwrap_err();
        assert!(err.contains("device-readable"), "{err}");
        let (mut h, mem) = handler_for(&ring(desc(0, 2)));
        h.handle(&ctx, 0, EventSet::IN).unwrap();
        assert_eq!(used_idx(&mem), 1);
    }
}
