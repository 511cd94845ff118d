//! The balloon's queue worker: inflate (release pages), deflate, stats, free page reporting.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use cloudphone_virtio::{
    Chain, DeviceQueue, GuestMemory, VirtioInterrupt, WorkerContext, WorkerHandler,
};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

use crate::discard::{discard, pfn_runs, PAGE_SIZE};
use crate::handle::Shared;
use crate::stats::{BalloonStats, MAX_STATS, STAT_LEN};

/// PFNs accepted per inflate/deflate buffer (Linux sends at most 256).
pub const MAX_PFNS_PER_BUFFER: usize = 1024;
/// Epoll token of the stats-request eventfd (queue tokens are their position).
const STATS_REQUEST_TOKEN: u64 = cloudphone_virtio::worker::FIRST_RESERVED_TOKEN - 1;

/// What a queue is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// An activated queue with its role.
pub struct RoleQueue {
    pub role: QueueRole,
    pub queue: DeviceQueue,
}

/// Worker state for one activation.
pub struct BalloonWorker {
    mem: GuestMemory,
    queues: Vec<RoleQueue>,
    shared: Arc<Shared>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Copy the device-readable part of a chain, refusing more than `cap` bytes.
fn readable_bytes(mem: &GuestMemory, chain: &Chain, cap: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let total = chain.gather(mem, cap, &mut out)?;
    if total > cap as u64 {
        return Err(format!("{total}-byte buffer exceeds the {cap}-byte cap"));
    }
    Ok(out)
}

/// Parse a buffer of little-endian u32 page frame numbers.
fn parse_pfns(bytes: &[u8]) -> Result<Vec<u32>, String> {
    if bytes.len() % 4 != 0 {
        return Err(format!(
            "PFN buffer of {} bytes is not a multiple of 4",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Release guest ranges (page runs or reported ranges); bad ones are logged and skipped
/// (the guest only hurts itself).
fn release(
    mem: &GuestMemory,
    shared: &Shared,
    ranges: impl Iterator<Item = (u64, u64)>,
    what: &str,
) {
    let mut released = 0;
    for (addr, len) in ranges {
        match discard(mem, GuestAddress(addr), len) {
            Ok(()) => released += len,
            Err(e) => tracing::warn!(error = %e, "balloon: {what}: range skipped"),
        }
    }
    shared.lock().released_bytes += released;
}

/// Handle one chain of an inflate / deflate / reporting queue.
fn page_chain(mem: &GuestMemory, shared: &Shared, role: QueueRole, chain: &Chain) {
    match role {
        QueueRole::Inflate | QueueRole::Deflate => {
            let pfns = match readable_bytes(mem, chain, MAX_PFNS_PER_BUFFER * 4)
                .and_then(|b| parse_pfns(&b))
            {
                Ok(p) => p,
                Err(e) => return tracing::warn!(error = %e, ?role, "balloon: PFN buffer ignored"),
            };
            if role == QueueRole::Inflate {
                let runs = pfn_runs(&pfns)
                    .into_iter()
                    .map(|(pfn, n)| (pfn * PAGE_SIZE, n * PAGE_SIZE));
                release(mem, shared, runs, "inflate");
            }
            // Deflated pages need nothing: they fault back in (as zeros) when touched.
        }
        QueueRole::Reporting => {
            release(
                mem,
                shared,
                chain
                    .descriptors()
                    .iter()
                    .map(|d| (d.addr().0, u64::from(d.len()))),
                "free page report",
            );
        }
        QueueRole::Stats => tracing::error!("balloon: stats chain routed to the page handler"),
    }
}

impl BalloonWorker {
    pub fn new(
        mem: GuestMemory,
        queues: Vec<RoleQueue>,
        shared: Arc<Shared>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Self {
        Self {
            mem,
            queues,
            shared,
            interrupt,
        }
    }

    /// New stats buffers: parse and hold them (returning any older one).
    fn stats_queue(&mut self, pos: usize) -> Result<(), String> {
        let mem = self.mem.clone();
        while let Some(chain) = self.queues[pos].queue.pop(&mem)? {
            let head = chain.head();
            match readable_bytes(&mem, &chain, MAX_STATS * STAT_LEN)
                .and_then(|b| BalloonStats::parse(&b).map_err(|e| e.to_string()))
            {
                Ok(stats) => self.shared.publish_stats(stats),
                Err(e) => tracing::warn!(error = %e, "balloon: stats buffer ignored"),
            }
            let old = self.shared.lock().held_stats.replace(head);
            if let Some(old) = old {
                self.return_stats(pos, old)?;
            }
        }
        Ok(())
    }

    /// Give a held stats buffer back to the driver, which answers with fresh stats.
    fn return_stats(&mut self, pos: usize, head: u16) -> Result<(), String> {
        self.queues[pos]
            .queue
            .complete(&self.mem, self.interrupt.as_ref(), head, 0)?;
        Ok(())
    }

    fn stats_position(&self) -> Option<usize> {
        self.queues.iter().position(|q| q.role == QueueRole::Stats)
    }

    fn queue_event(&mut self, pos: usize) -> Result<(), String> {
        self.queues[pos].queue.ack_notify();
        let role = self.queues[pos].role;
        if role == QueueRole::Stats {
            return self.stats_queue(pos);
        }
        let (mem, shared) = (&self.mem, &self.shared);
        let q = &mut self.queues[pos];
        q.queue.drain(mem, self.interrupt.as_ref(), |chain| {
            page_chain(mem, shared, role, chain);
            Ok(0)
        })
    }
}

impl WorkerHandler for BalloonWorker {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        for (pos, q) in self.queues.iter().enumerate() {
            q.queue.watch(ctx, pos as u64)?;
        }
        if self.stats_position().is_some() {
            ctx.add(
                self.shared.stats_request.as_raw_fd(),
                EventSet::IN,
                STATS_REQUEST_TOKEN,
            )?;
        }
        Ok(())
    }

    fn handle(
        &mut self,
        _ctx: &WorkerContext,
        token: u64,
        _events: EventSet,
    ) -> Result<(), String> {
        if token == STATS_REQUEST_TOKEN {
            let _ = self.shared.stats_request.read();
            let held = self.shared.lock().held_stats.take();
            return match (self.stats_position(), held) {
                (Some(pos), Some(head)) => self.return_stats(pos, head),
                _ => Ok(()),
            };
        }
        let pos = usize::try_from(token)
            .ok()
            .filter(|&p| p < self.queues.len())
            .ok_or("unknown epoll token")?;
        self.queue_event(pos)
    }
}
