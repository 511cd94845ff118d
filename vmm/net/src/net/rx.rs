//! Guest rx buffers the device pops ahead of frames. When they can take any frame the backend
//! may produce, a frame is read straight into them (one `readv`, no bounce copy); otherwise a
//! frame read into the bounce buffer is copied in once enough buffers are there.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use cloudphone_virtio::{DeviceQueue, GuestMemory};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::iov::{IovScratch, MAX_IOVECS};
use super::VNET_HDR_LEN;

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Where one frame read from the backend lands: host memory (the bounce buffer) or guest rx
/// buffers. Only built from memory it borrows, so every iovec is valid for writes while it
/// lives.
pub struct RxTarget<'a> {
    iov: &'a [libc::iovec],
    _mem: PhantomData<&'a mut [u8]>,
}

impl<'a> RxTarget<'a> {
    /// A target over host memory.
    pub(crate) fn host(buf: &'a mut [u8], scratch: &'a mut IovScratch) -> Self {
        let iov = scratch.start();
        iov.push(libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        });
        RxTarget {
            iov: iov.as_slice(),
            _mem: PhantomData,
        }
    }

    /// Bytes the target can take.
    pub fn len(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }

    /// Whether the target can take no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read one datagram (a frame) from `fd` with one `readv`; returns its length.
    pub fn read_from(&self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        // SAFETY: every iovec points to memory valid for writes of its length while `self`
        // lives (host memory it borrows mutably, or guest memory checked when the buffers were
        // popped); there are at most UIO_MAXIOV of them.
        let n = unsafe { libc::readv(fd, self.iov.as_ptr(), self.iov.len() as libc::c_int) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }
}

/// One held chain: its head, capacity and how many segments it has in `RxBuffers::segments`.
struct Held {
    head: u16,
    capacity: usize,
    segments: usize,
}

/// The rx chains the device holds, in ring order.
#[derive(Default)]
pub(crate) struct RxBuffers {
    chains: VecDeque<Held>,
    /// Writable guest ranges of all held chains, in order (checked to be in guest memory).
    segments: VecDeque<(GuestAddress, usize)>,
    capacity: usize,
    iov: IovScratch,
    /// How many chains are held, shared with the device for snapshots.
    held: Arc<AtomicU16>,
}

impl RxBuffers {
    /// No chains held yet; the count of held chains is kept in `held`.
    pub fn counted(held: Arc<AtomicU16>) -> Self {
        held.store(0, Ordering::Release);
        Self {
            held,
            ..Self::default()
        }
    }

    fn publish_held(&self) {
        self.held.store(self.chains.len() as u16, Ordering::Release);
    }

    /// Total bytes the held chains can take.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes the oldest held chain can take (0 when none is held).
    pub fn first_capacity(&self) -> usize {
        self.chains.front().map_or(0, |c| c.capacity)
    }

    /// Pop chains from `queue` until the held ones can take `want` bytes or the driver has no
    /// more. A chain too small for a vnet header is returned unused at once (the driver gets
    /// it back rather than the device looping on it). Errors: a chain the queue refuses (a
    /// buffer outside guest memory, a loop, ...).
    pub fn top_up(
        &mut self,
        mem: &GuestMemory,
        queue: &mut DeviceQueue,
        want: usize,
    ) -> Result<(), String> {
        while self.capacity < want {
            let Some(chain) = queue.pop(mem)? else {
                return Ok(());
            };
            let head = chain.head();
            let mut capacity = 0usize;
            let mut segments = 0;
            for desc in chain.writable() {
                self.segments.push_back((desc.addr(), desc.len() as usize));
                capacity = capacity.saturating_add(desc.len() as usize);
                segments += 1;
            }
            if capacity < VNET_HDR_LEN {
                self.segments.truncate(self.segments.len() - segments);
                tracing::debug!(
                    head,
                    capacity,
                    "rx buffer smaller than a vnet header; returned unused"
                );
                queue.add_used(mem, head, 0)?;
                continue;
            }
            self.capacity += capacity;
            self.chains.push_back(Held {
                head,
                capacity,
                segments,
            });
            self.publish_held();
        }
        Ok(())
    }

    /// The held chains (all of them, or only the oldest) as a target to read a frame into;
    /// `None` when that would take more iovecs than one `readv` accepts.
    pub fn target(&mut self, mem: &GuestMemory, all: bool) -> Result<Option<RxTarget<'_>>, String> {
        let count = if all {
            self.segments.len()
        } else {
            self.chains.front().map_or(0, |c| c.segments)
        };
        let iov = self.iov.start();
        for &(addr, len) in self.segments.iter().take(count) {
            for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
                let slice = slice.map_err(|e| format!("rx buffer left guest memory: {e}"))?;
                if iov.len() == MAX_IOVECS {
                    return Ok(None);
                }
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Ok(Some(RxTarget {
            iov: iov.as_slice(),
            _mem: PhantomData,
        }))
    }

    /// Copy `frame` into the held chains from the oldest on (they must be able to take it).
    pub fn copy_in(&self, mem: &GuestMemory, frame: &[u8]) -> Result<(), String> {
        self.write_at(mem, 0, frame)
    }

    /// Write `data` at byte `offset` of the held chains' buffers taken as one stream.
    fn write_at(
        &self,
        mem: &GuestMemory,
        mut offset: usize,
        mut data: &[u8],
    ) -> Result<(), String> {
        for &(addr, len) in &self.segments {
            if data.is_empty() {
                break;
            }
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = (len - offset).min(data.len());
            let at = addr
                .checked_add(offset as u64)
                .ok_or("rx buffer address overflows")?;
            mem.write_slice(&data[..n], at)
                .map_err(|e| format!("writing an rx buffer: {e}"))?;
            data = &data[n..];
            offset = 0;
        }
        Ok(())
    }

    /// Hand the `len`-byte frame now at the start of the held chains to the driver: as many
    /// chains as it fills, with `num_buffers` set in its header, published all at once.
    pub fn commit(
        &mut self,
        mem: &GuestMemory,
        queue: &mut DeviceQueue,
        len: usize,
    ) -> Result<(), String> {
        let mut used = Vec::new();
        let (mut left, mut segments, mut capacity) = (len, 0, 0);
        for chain in &self.chains {
            if left == 0 {
                break;
            }
            let n = chain.capacity.min(left);
            used.push((chain.head, n as u32));
            left -= n;
            segments += chain.segments;
            capacity += chain.capacity;
        }
        if left > 0 {
            return Err(format!(
                "rx frame of {len} bytes is longer than the held buffers"
            ));
        }
        let count = u16::try_from(used.len()).map_err(|_| "too many rx buffers for one frame")?;
        // The header lies in the first chain (every held chain can take a whole header).
        self.write_at(mem, NUM_BUFFERS_OFFSET, &count.to_le_bytes())?;
        self.chains.drain(..used.len());
        self.publish_held();
        self.segments.drain(..segments);
        self.capacity -= capacity;
        Ok(queue.add_used_batch(mem, &used)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fuzz, guest_memory, Buf, TestQueue};
    use proptest::prop_assert_eq;

    const MEM_END: u64 = 16 << 20;

    #[test]
    fn fuzz_rx_chains() {
        // Random rx chains (any address up to past the end of guest memory, any length and
        // direction) and frame lengths: holding them either fails (a chain the device queue
        // refuses) or holds exactly the chains big enough for a header, and a committed
        // frame uses exactly its length of them, in ring order.
        let chain = proptest::collection::vec(
            (0u64..MEM_END + (1 << 20), 0u32..40000, proptest::bool::ANY),
            1..4,
        );
        let strategy = (proptest::collection::vec(chain, 1..16), 1usize..200_000);
        fuzz("net_rx_chain", 1024, strategy, |(chains, len)| {
            let mem = guest_memory();
            let mut tq = TestQueue::new(&mem, 0, 64);
            let mut dq = DeviceQueue::new(tq.activated(0));
            let mut usable = Vec::new();
            let mut refused = false;
            for c in &chains {
                let bufs: Vec<Buf> = c
                    .iter()
                    .map(|&(addr, len, write)| Buf { addr, len, write })
                    .collect();
                let head = tq.add(&bufs);
                if refused {
                    continue;
                }
                // The device queue refuses a chain with any buffer outside guest memory or a
                // readable buffer after a writable one.
                refused = bufs
                    .iter()
                    .any(|b| b.len > 0 && b.addr + u64::from(b.len) > MEM_END)
                    || bufs.windows(2).any(|w| w[0].write && !w[1].write);
                let capacity: usize = bufs
                    .iter()
                    .filter(|b| b.write)
                    .map(|b| b.len as usize)
                    .sum();
                if !refused && capacity >= VNET_HDR_LEN {
                    usable.push((head, capacity));
                }
            }
            let mut held = RxBuffers::default();
            let result = held.top_up(&mem, &mut dq, usize::MAX);
            prop_assert_eq!(result.is_err(), refused);
            if refused {
                return Ok(());
            }
            let total: usize = usable.iter().map(|&(_, c)| c).sum();
            prop_assert_eq!(held.capacity(), total);
            let unused = tq.wait_used_unless(0, &|| true);
            prop_assert_eq!(unused.len(), chains.len() - usable.len());
            prop_assert_eq!(unused.iter().map(|&(_, n)| n).sum::<u32>(), 0);
            let len = len.min(total);
            if len == 0 {
                return Ok(());
            }
            held.commit(&mem, &mut dq, len).unwrap();
            let used = tq.wait_used_unless(0, &|| true);
            prop_assert_eq!(used.iter().map(|&(_, n)| n as usize).sum::<usize>(), len);
            for (&(head, n), &(want_head, capacity)) in used.iter().zip(&usable) {
                prop_assert_eq!(head, want_head);
                proptest::prop_assert!(n as usize <= capacity);
            }
            prop_assert_eq!(
                held.capacity(),
                total - usable[..used.len()].iter().map(|&(_, c)| c).sum::<usize>()
            );
            Ok(())
        });
    }
}
