//! Kicking a vCPU thread out of KVM_RUN: a real-time signal whose handler sets the thread's
//! `immediate_exit` flag, so a kick that lands just before KVM_RUN is not lost.

use std::cell::Cell;
use std::sync::Once;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let flag = IMMEDIATE_EXIT.with(|c| c.get());
    if !flag.is_null() {
        // SAFETY: the pointer targets this thread's mapped kvm_run, set by `bind` and cleared
        // before the VcpuFd is dropped.
        unsafe { std::ptr::write_volatile(flag, 1) };
    }
}

/// Install the handler once per process.
pub fn install_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Ties the calling thread's kick handling to `vcpu` until dropped.
pub struct KickBinding;

impl KickBinding {
    /// Bind the current thread to `vcpu`'s immediate_exit flag.
    pub fn bind(vcpu: &mut VcpuFd) -> Self {
        let flag: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
        IMMEDIATE_EXIT.with(|c| c.set(flag));
        KickBinding
    }
}

impl Drop for KickBinding {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// Send the kick signal to `thread`.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: pthread_kill with a valid, live thread handle (the VM joins threads only after
    // the last kick) and a signal whose handler is installed.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
