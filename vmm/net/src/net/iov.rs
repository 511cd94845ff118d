//! A tx frame as a gather list over guest memory, so it goes to the backend in one `writev`
//! straight from the guest's buffers instead of being copied through a bounce buffer first.

use std::marker::PhantomData;

use cloudphone_virtio::{Chain, GuestMemory};
use vm_memory::GuestMemoryBackend;

/// Most iovecs one `writev` takes (Linux UIO_MAXIOV); a frame needing more is dropped.
pub(crate) const MAX_IOVECS: usize = 1024;

/// Reusable storage for one frame's iovecs, kept by the worker so sending a frame allocates
/// nothing. It only holds addresses between [`GuestFrame::gather`] and the send that follows.
#[derive(Default)]
pub(crate) struct IovScratch(Vec<libc::iovec>);

impl IovScratch {
    /// The emptied storage, to fill with one frame's iovecs.
    pub(crate) fn start(&mut self) -> &mut Vec<libc::iovec> {
        self.0.clear();
        &mut self.0
    }
}

// SAFETY: the iovecs are plain addresses into guest memory. They are only dereferenced (by the
// kernel) through a `GuestFrame`, which borrows both this scratch space and the guest memory
// mapping, on the thread that built it.
unsafe impl Send for IovScratch {}

/// One frame's bytes (vnet header included) as iovecs over guest memory. Only
/// [`GuestFrame::gather`] builds one, from slices of the guest memory it borrows, so every
/// entry stays valid for reads while the frame lives.
pub struct GuestFrame<'a> {
    iov: &'a [libc::iovec],
    len: usize,
    _mem: PhantomData<&'a GuestMemory>,
}

/// What a tx chain holds.
pub(crate) enum Gathered<'a> {
    /// A frame ready to send.
    Frame(GuestFrame<'a>),
    /// A chain whose total length is outside `min..=max` bytes (or needs too many iovecs).
    BadLength(usize),
}

impl<'a> GuestFrame<'a> {
    /// The device-readable buffers of `chain` as one frame of `min..=max` bytes. Errors (a
    /// descriptor outside guest memory) mean the driver is broken or hostile.
    pub(crate) fn gather(
        mem: &'a GuestMemory,
        chain: &Chain,
        scratch: &'a mut IovScratch,
        min: usize,
        max: usize,
    ) -> Result<Gathered<'a>, String> {
        let head = chain.head();
        let iov = scratch.start();
        let mut len = 0usize;
        for desc in chain.readable() {
            let desc_len = desc.len() as usize;
            len = len.saturating_add(desc_len);
            for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), desc_len) {
                let slice =
                    slice.map_err(|e| format!("tx buffer {head} is outside guest memory: {e}"))?;
                if iov.len() < MAX_IOVECS {
                    iov.push(libc::iovec {
                        iov_base: slice.ptr_guard().as_ptr() as *mut libc::c_void,
                        iov_len: slice.len(),
                    });
                } else {
                    len = usize::MAX;
                }
            }
        }
        if !(min..=max).contains(&len) {
            iov.clear();
            return Ok(Gathered::BadLength(len));
        }
        Ok(Gathered::Frame(GuestFrame {
            iov,
            len,
            _mem: PhantomData,
        }))
    }

    /// The iovecs, valid for reads of their lengths while `self` lives.
    pub fn iovecs(&self) -> &[libc::iovec] {
        self.iov
    }

    /// Total bytes in the frame.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame has no bytes (never true for a frame `gather` accepted with min > 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Write the frame to `fd` with one `writev`; a short write is an error.
    pub fn write_to(&self, fd: std::os::fd::RawFd) -> std::io::Result<()> {
        // SAFETY: every iovec points into guest memory that `self` borrows, valid for reads of
        // its length (see `gather`); `iov.len()` is at most MAX_IOVECS, so it fits a c_int.
        let written = unsafe { libc::writev(fd, self.iov.as_ptr(), self.iov.len() as libc::c_int) };
        match usize::try_from(written) {
            Err(_) => Err(std::io::Error::last_os_error()),
            Ok(n) if n != self.len => Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write of a frame: {n} of {} bytes", self.len),
            )),
            Ok(_) => Ok(()),
        }
    }
}
