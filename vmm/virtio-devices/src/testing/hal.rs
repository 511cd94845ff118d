//! A virtio-drivers [`Hal`] whose DMA memory is the test guest memory: physical addresses the
//! driver puts in descriptors are guest physical addresses our devices resolve through
//! `vm-memory`, exactly as in a VM.
//!
//! One process-wide guest memory ([`test_memory`]) backs every harness, so drivers may move
//! between threads (see [`run_with_timeout`](super::run_with_timeout)). Buffers the driver
//! shares (`Hal::share`) are bounced through guest memory and copied back on `unshare`.

use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::GuestMemory;

/// Size of the shared test guest memory (mapped lazily: untouched pages cost nothing).
pub const TEST_MEMORY_SIZE: u64 = 512 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

struct Pool {
    mem: GuestMemory,
    /// Free page runs: first page -> number of pages. Page 0 stays reserved (paddr 0 means
    /// "allocation failed" to virtio-drivers).
    free: BTreeMap<u64, u64>,
    /// Bounce buffers handed out by `share`: paddr -> pages.
    shared: HashMap<u64, u64>,
}

fn pool() -> MutexGuard<'static, Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), TEST_MEMORY_SIZE as usize)])
            .expect("mapping the 512 MiB test guest memory failed (address space limit?)");
        let pages = TEST_MEMORY_SIZE / PAGE;
        Mutex::new(Pool {
            mem,
            free: BTreeMap::from([(1, pages - 1)]),
            shared: HashMap::new(),
        })
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

/// The guest memory every harness and [`TestHal`] share.
pub fn test_memory() -> GuestMemory {
    pool().mem.clone()
}

impl Pool {
    fn alloc(&mut self, pages: u64) -> Option<u64> {
        let pages = pages.max(1);
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= pages)?;
        self.free.remove(&start);
        if len > pages {
            self.free.insert(start + pages, len - pages);
        }
        let paddr = start * PAGE;
        let zeros = vec![0u8; (pages * PAGE) as usize];
        self.mem.write_slice(&zeros, GuestAddress(paddr)).ok()?;
        Some(paddr)
    }

    fn free(&mut self, paddr: u64, pages: u64) {
        let mut start = paddr / PAGE;
        let mut len = pages.max(1);
        if let Some((&prev, &plen)) = self.free.range(..start).next_back() {
            if prev + plen == start {
                self.free.remove(&prev);
                start = prev;
                len += plen;
            }
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
    }

    fn host_ptr(&self, paddr: u64) -> Option<NonNull<u8>> {
        NonNull::new(self.mem.get_host_address(GuestAddress(paddr)).ok()?)
    }
}

/// Allocate `pages` zeroed, contiguous pages of test guest memory; returns the guest physical
/// address (for hand-built rings in hostile-input tests). Free with [`free_pages`].
pub fn alloc_pages(pages: u64) -> Option<u64> {
    pool().alloc(pages)
}

/// Return pages from [`alloc_pages`].
pub fn free_pages(paddr: u64, pages: u64) {
    pool().free(paddr, pages)
}

/// The [`Hal`] for tier-1 tests: `VirtIOBlk::<TestHal, _>::new(transport)`.
pub struct TestHal;

// SAFETY: dma_alloc returns zeroed, page-aligned, contiguous memory owned by the pool until
// dma_dealloc; the host pointer stays valid for the life of the process (the test memory is
// never unmapped). share() returns a bounce buffer that stays allocated until unshare().
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let mut pool = pool();
        match pool.alloc(pages as u64) {
            Some(paddr) => match pool.host_ptr(paddr) {
                Some(ptr) => (paddr, ptr),
                None => (0, NonNull::dangling()),
            },
            None => {
                tracing::error!(pages, "test guest memory exhausted");
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        pool().free(paddr, pages as u64);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        pool()
            .host_ptr(paddr)
            .unwrap_or_else(|| panic!("MMIO address {paddr:#x} is not in test guest memory"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let len = buffer.len() as u64;
        let pages = len.div_ceil(PAGE).max(1);
        let mut pool = pool();
        let paddr = pool
            .alloc(pages)
            .expect("test guest memory exhausted while sharing a driver buffer");
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: virtio-drivers passes a buffer valid for reads for its length.
            let src = unsafe { buffer.as_ref() };
            pool.mem
                .write_slice(src, GuestAddress(paddr))
                .expect("bounce buffer lies inside test memory");
        }
        pool.shared.insert(paddr, pages);
        paddr
    }

    unsafe fn unshare(paddr: PhysAddr, mut buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mut pool = pool();
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: for device-writable buffers virtio-drivers passes a buffer valid for
            // writes for its length, not aliased while unshared.
            let dst = unsafe { buffer.as_mut() };
            pool.mem
                .read_slice(dst, GuestAddress(paddr))
                .expect("bounce buffer lies inside test memory");
        }
        if let Some(pages) = pool.shared.remove(&paddr) {
            pool.free(paddr, pages);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesces_and_zeroes() {
        let a = alloc_pages(3).unwrap();
        let b = alloc_pages(2).unwrap();
        assert_ne!(a, b);
        assert_eq!(a % PAGE, 0);
        test_memory().write_obj(0xabu8, GuestAddress(b)).unwrap();
        free_pages(b, 2);
        free_pages(a, 3);
        let c = alloc_pages(5).unwrap();
        let byte: u8 = test_memory().read_obj(GuestAddress(c + 3 * PAGE)).unwrap();
        assert_eq!(byte, 0);
        free_pages(c, 5);
    }

    #[test]
    fn share_bounces_both_ways() {
        let mut data = [1u8, 2, 3, 4];
        let ptr = NonNull::from(&mut data[..]);
        // SAFETY: `data` outlives the share/unshare pair.
        let paddr = unsafe { TestHal::share(ptr, BufferDirection::Both) };
        let mem = test_memory();
        let mut seen = [0u8; 4];
        mem.read_slice(&mut seen, GuestAddress(paddr)).unwrap();
        assert_eq!(seen, [1, 2, 3, 4]);
        mem.write_slice(&[9, 8, 7, 6], GuestAddress(paddr)).unwrap();
        // SAFETY: as above.
        unsafe { TestHal::unshare(paddr, ptr, BufferDirection::Both) };
        assert_eq!(data, [9, 8, 7, 6]);
    }
}
