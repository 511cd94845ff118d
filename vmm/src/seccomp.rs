//! The VMM's system-call filter (seccomp-bpf), installed on every thread before the guest runs.
//!
//! Everything a guest controls is handled on vCPU and device threads. Should a guest ever take
//! one over, the filter keeps it to what a VMM does: KVM ioctls, guest memory, I/O on the fds
//! the VMM holds, Unix sockets. It cannot start programs (no `execve`), fork, open network
//! sockets, map new executable memory, trace or signal other processes, or load kernel
//! code. Firecracker and Cloud Hypervisor filter the same way.
//!
//! A call outside the list stops the VMM with [`EXIT_SECCOMP`] and a message naming the call
//! (`--seccomp log` lets it through and logs it to the kernel audit log instead, to find
//! what a new code path needs; `--seccomp off` installs nothing).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit code of a VMM stopped by the filter (vmm/API.md).
pub const EXIT_SECCOMP: i32 = 35;

/// What the filter does with a call that is not on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Stop the VMM (exit [`EXIT_SECCOMP`]) with a message naming the call.
    #[default]
    Enforce,
    /// Allow it and log it to the kernel audit log (finding what a code path needs).
    Log,
    /// No filter.
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            _ => Err(format!("--seccomp {s:?}: use enforce, log or off")),
        }
    }
}

/// Installing the filter failed (the kernel refused it or lacks seccomp).
#[derive(Debug, thiserror::Error)]
#[error("installing the seccomp filter: {0} (run with --seccomp off on a kernel without seccomp)")]
pub struct SeccompError(String);

/// Groups allowed on every thread.
const EVERY_THREAD: &[ThreadKind] = &[ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Guest];
/// Groups the API threads need too (`PUT /snapshot` writes files).
const MAIN_AND_API: &[ThreadKind] = &[ThreadKind::Vmm, ThreadKind::Api];
/// Groups the device workers (started by vCPU threads) need, but not the API.
const MAIN_AND_GUEST: &[ThreadKind] = &[ThreadKind::Vmm, ThreadKind::Guest];
/// Setup only: the main thread.
const MAIN_ONLY: &[ThreadKind] = &[ThreadKind::Vmm];

/// Calls allowed with any arguments, by why a VMM makes them and on which threads.
struct Group {
    why: &'static str,
    threads: &'static [ThreadKind],
    calls: &'static [libc::c_long],
}

/// The allow list as data. vCPU threads (port I/O, MMIO, PCI config, device activation) and
/// the device workers they start when the guest activates a device (queues) run everything a
/// guest controls, so their filter holds the fewest groups; a worker inherits the filter of
/// the vCPU thread that started it. API threads get their own list. Argument rules for
/// `mmap`, `mprotect`, `socket`, `clone`, `prctl`, `tgkill` and `ioctl` are in [`rules`].
const GROUPS: &[Group] = &[
    Group {
        why: "I/O on fds the VMM holds (disks, TAP, eventfds, sockets, the framebuffer file)",
        threads: EVERY_THREAD,
        calls: &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_lseek,
            libc::SYS_close,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_fcntl,
            libc::SYS_dup,
            libc::SYS_dup3,
            libc::SYS_ftruncate,
            libc::SYS_fallocate,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_copy_file_range,
            libc::SYS_sendfile,
            libc::SYS_splice,
        ],
    },
    Group {
        why: "device setup: TUNSETIFF, TUNSETVNETHDRSZ, block-device sizes, KVM VM and vCPU \
              creation (vCPU and API threads get only the request numbers in \
              `guest_ioctls` and `api_ioctls`)",
        threads: MAIN_ONLY,
        calls: &[libc::SYS_ioctl],
    },
    Group {
        why: "files a VMM creates and removes: the exported framebuffer and Unix sockets \
              (whichever thread drops them last), boot images and disks opened again by \
              `--on-reboot restart`, `PUT /snapshot`'s directory and its state file renamed \
              into place; checked by running every tier-2 suite with the filters enforced",
        threads: MAIN_AND_API,
        calls: &[
            libc::SYS_openat,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
        ],
    },
    Group {
        why: "setup: canonicalising paths, Android images staged in memfds",
        threads: MAIN_ONLY,
        calls: &[
            libc::SYS_readlink,
            libc::SYS_readlinkat,
            libc::SYS_getdents64,
            libc::SYS_memfd_create,
        ],
    },
    Group {
        why: "memory: guest RAM, balloon, allocator, thread stacks (mmap/mprotect in `rules`)",
        threads: EVERY_THREAD,
        calls: &[
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_brk,
        ],
    },
    Group {
        why: "event loops, timers, waiting",
        threads: EVERY_THREAD,
        calls: &[
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
            libc::SYS_timerfd_create,
            libc::SYS_timerfd_settime,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_pipe2,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_sched_getaffinity,
            libc::SYS_nanosleep,
            libc::SYS_clock_nanosleep,
            libc::SYS_clock_gettime,
            libc::SYS_gettimeofday,
            libc::SYS_getrandom,
        ],
    },
    Group {
        why: "Unix sockets in use: the API and console workers accept clients, every \
              thread talks on the sockets it holds",
        threads: EVERY_THREAD,
        calls: &[
            libc::SYS_accept,
            libc::SYS_accept4,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_shutdown,
            libc::SYS_getsockopt,
            libc::SYS_setsockopt,
            libc::SYS_getsockname,
            libc::SYS_getpeername,
        ],
    },
    Group {
        why: "new Unix connections: the vsock worker connects to the host's `uds_PORT` \
              sockets when the guest opens a port (socket() with AF_UNIX only, in `rules`)",
        threads: MAIN_AND_GUEST,
        calls: &[libc::SYS_socketpair, libc::SYS_connect],
    },
    Group {
        why: "listening sockets are set up before the guest runs (API, vsock, console ports)",
        threads: MAIN_ONLY,
        calls: &[libc::SYS_bind, libc::SYS_listen],
    },
    Group {
        why: "threads and signals within this process: device workers start when the guest \
              activates a device, vCPU kicks (tgkill to our own tgid only, in `rules`)",
        threads: EVERY_THREAD,
        calls: &[
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_restart_syscall,
        ],
    },
];

/// A thread's kind, for its filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread (setup, the restart loop): the process-wide filter.
    Vmm,
    /// API threads: the process-wide filter, and on top one without setup-only calls, new
    /// connections or listening, with `ioctl` limited by request number.
    Api,
    /// vCPU threads and the device workers they start: the process-wide filter, and on top
    /// one without file calls or listening, with `ioctl` limited by request number.
    Guest,
}

/// ioctl requests a vCPU thread (or a device worker it starts) makes, with why.
fn guest_ioctls() -> [(libc::c_ulong, &'static str); 17] {
    use ioctls::*;
    [
        (KVM_RUN(), "running the guest"),
        (KVM_KVMCLOCK_CTRL(), "telling the guest it was paused"),
        (
            KVM_GET_REGS(),
            "snapshot (parked vCPUs save their own state); crash dumps",
        ),
        (KVM_GET_SREGS(), "snapshot; crash dumps"),
        (KVM_GET_MSRS(), "snapshot"),
        (KVM_GET_LAPIC(), "snapshot"),
        (KVM_GET_XSAVE2(), "snapshot"),
        (KVM_GET_XCRS(), "snapshot"),
        (KVM_GET_VCPU_EVENTS(), "snapshot"),
        (KVM_GET_MP_STATE(), "snapshot"),
        (KVM_GET_DEBUGREGS(), "snapshot"),
        (KVM_GET_CPUID2(), "snapshot"),
        (KVM_SET_GSI_ROUTING(), "the guest programs an MSI-X vector"),
        (
            KVM_IOEVENTFD(),
            "the guest moves a BAR: its queue-notify eventfds move along",
        ),
        (
            KVM_IRQFD(),
            "the guest activates a device or unmasks a vector: interrupt eventfds",
        ),
        (
            libc::TUNSETOFFLOAD,
            "the guest negotiates virtio-net offloads on activation",
        ),
        (
            libc::FIONBIO,
            "the vsock worker makes accepted host streams non-blocking",
        ),
    ]
}

/// ioctl requests an API thread makes, with why: only `PUT /snapshot` reaches KVM.
fn api_ioctls() -> [(libc::c_ulong, &'static str); 3] {
    use ioctls::*;
    [
        (KVM_GET_IRQCHIP(), "snapshot: the interrupt controllers"),
        (KVM_GET_PIT2(), "snapshot: the timer"),
        (KVM_GET_CLOCK(), "snapshot: kvmclock"),
    ]
}

/// The KVM ioctl numbers, as kvm-ioctls defines them (it does not export them).
#[allow(non_snake_case)]
mod ioctls {
    use kvm_bindings::*;
    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
    vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
    vmm_sys_util::ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
}

/// A rule on argument `arg` (an `int`: its low 32 bits; `long` arguments use `Qword`).
fn rule(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompRule {
    SeccompCondition::new(arg, len, op, value)
        .and_then(|c| SeccompRule::new(vec![c]))
        .expect("one condition on an argument below 6 makes a rule")
}

/// A rule that holds when `int` argument `arg` has none of the bits in `mask`.
fn without(arg: u8, mask: libc::c_int) -> SeccompRule {
    rule(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask as u64),
        0,
    )
}

/// A rule that holds when `int` argument `arg` equals `value`.
fn equals(arg: u8, value: libc::c_int) -> SeccompRule {
    rule(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value as u64)
}

/// The allow list of `kind`, as rules: its groups unconditionally, and the few calls whose
/// arguments decide whether they are a VMM's.
fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = GROUPS
        .iter()
        .filter(|g| g.threads.contains(&kind))
        .flat_map(|g| g.calls.iter().map(|&nr| (nr, Vec::new())))
        .collect();
    // No new executable memory: code the guest planted cannot be made runnable.
    rules.insert(libc::SYS_mmap, vec![without(2, libc::PROT_EXEC)]);
    rules.insert(libc::SYS_mprotect, vec![without(2, libc::PROT_EXEC)]);
    // Unix sockets only: a VMM has no business on the network (the TAP fd is its NIC). The
    // API threads make none.
    if kind != ThreadKind::Api {
        rules.insert(libc::SYS_socket, vec![equals(0, libc::AF_UNIX)]);
    }
    // Threads, never processes (glibc falls back to clone when clone3 says ENOSYS).
    let thread = libc::CLONE_THREAD as u64;
    let clone_thread = rule(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(thread),
        thread,
    );
    rules.insert(libc::SYS_clone, vec![clone_thread]);
    // Signals only to our own threads (vCPU kicks), never to another process.
    // SAFETY: getpid has no preconditions.
    let tgid = unsafe { libc::getpid() };
    rules.insert(libc::SYS_tgkill, vec![equals(0, tgid)]);
    // Naming threads (std does it as each thread starts).
    let mut prctl = vec![equals(0, libc::PR_SET_NAME)];
    match kind {
        ThreadKind::Vmm => {
            // Starting a vCPU thread stacks its own, stricter filter (a filter can only take
            // calls away, never give them back; no TSYNC, which would reach other threads).
            prctl.push(equals(0, libc::PR_SET_NO_NEW_PRIVS));
            let seccomp = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::SECCOMP_SET_MODE_FILTER as u64,
            )
            .and_then(|op| {
                let flags = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)?;
                SeccompRule::new(vec![op, flags])
            })
            .expect("two conditions on arguments below 6 make a rule");
            rules.insert(libc::SYS_seccomp, vec![seccomp]);
        }
        ThreadKind::Api => {
            rules.insert(libc::SYS_ioctl, ioctl_rules(&api_ioctls()));
        }
        ThreadKind::Guest => {
            rules.insert(libc::SYS_ioctl, ioctl_rules(&guest_ioctls()));
        }
    }
    rules.insert(libc::SYS_prctl, prctl);
    rules
}

/// One rule per allowed ioctl request (the kernel takes the request as an `unsigned int`).
fn ioctl_rules(requests: &[(libc::c_ulong, &str)]) -> Vec<SeccompRule> {
    requests
        .iter()
        .map(|&(request, _why)| rule(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request))
        .collect()
}

/// How many system calls `kind` may make (the table in vmm/API.md).
pub fn allowed_calls(kind: ThreadKind) -> usize {
    rules(kind).len()
}

fn mismatch_action(mode: SeccompMode) -> Option<SeccompAction> {
    match mode {
        SeccompMode::Off => None,
        SeccompMode::Log => Some(SeccompAction::Log),
        SeccompMode::Enforce => Some(SeccompAction::Trap),
    }
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(|e| SeccompError(e.to_string()))
}

/// Install the process-wide filter on every thread of the process (and so on every thread
/// they start). Called once, before the first vCPU runs.
pub fn install(mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(mismatch) = mismatch_action(mode) else {
        return Ok(());
    };
    if mode == SeccompMode::Enforce {
        install_sigsys_handler()?;
    }
    fix_malloc_arena_limit();
    let allow_list = compile(rules(ThreadKind::Vmm), mismatch, SeccompAction::Allow)?;
    // clone3's flags sit in a struct the filter cannot read: answer ENOSYS, which makes glibc
    // use clone, whose flags it can. (Of two filters the stricter answer wins.)
    let no_clone3 = compile(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    // The allow list last: installing a filter takes calls (prctl, seccomp) it refuses.
    for filter in [&no_clone3, &allow_list] {
        seccompiler::apply_filter_all_threads(filter).map_err(|e| SeccompError(e.to_string()))?;
    }
    tracing::info!(?mode, "seccomp filter installed on all threads");
    Ok(())
}

/// glibc counts the CPUs, by opening `/sys/devices/system/cpu/online`, the first time a
/// thread needs a malloc arena beyond the eighth, which can be any thread, long after the
/// filters took `openat` from vCPU threads and device workers (seen: a phone VMM killed 14 s
/// into boot when a GPU worker first freed memory). Setting the arena limit now, to glibc's
/// own default of 8 per CPU, means it never needs to count.
fn fix_malloc_arena_limit() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only sets a malloc tunable; M_ARENA_MAX takes any positive count.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
        tracing::warn!(
            arenas,
            "mallopt(M_ARENA_MAX) refused: a late thread may count CPUs under the filter"
        );
    }
}

/// The filter stacked on threads of `kind` ([`ThreadKind::Api`] or [`ThreadKind::Guest`])
/// for `mode`, compiled once on the main thread; `None` with `--seccomp off`.
pub fn thread_filter(
    kind: ThreadKind,
    mode: SeccompMode,
) -> Result<Option<BpfProgram>, SeccompError> {
    mismatch_action(mode)
        .map(|mismatch| compile(rules(kind), mismatch, SeccompAction::Allow))
        .transpose()
}

/// Stack `filter` on the calling thread: a vCPU thread about to run the guest (the device
/// workers it starts inherit it), or the API thread before it accepts (its connection
/// threads inherit it).
pub fn apply_on_this_thread(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(|e| SeccompError(e.to_string()))
}

/// The part of `siginfo_t` that SIGSYS fills in (kernel `struct siginfo`, `_sigsys`).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Format `n` in decimal into `buf`, returning the digits (no allocation: signal context).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS with SA_SIGINFO; only
    // async-signal-safe calls (write, gettid, _exit) follow.
    unsafe {
        let nr = (*info.cast::<SigsysInfo>()).syscall;
        let tid = libc::gettid();
        let (mut nr_buf, mut tid_buf) = ([0u8; 20], [0u8; 20]);
        for part in [
            &b"cloudphone-vmm: seccomp: thread "[..],
            decimal(tid as u64, &mut tid_buf),
            b" made system call ",
            decimal(nr as u64, &mut nr_buf),
            b", which this thread never needs; stopping (a VMM bug: report it, and --seccomp \
              log shows what a new code path calls)\n",
        ] {
            libc::write(2, part.as_ptr().cast(), part.len());
        }
        let main_only = GROUPS
            .iter()
            .find(|g| g.threads != EVERY_THREAD && g.calls.contains(&libc::c_long::from(nr)));
        if let Some(group) = main_only {
            for part in [
                &b"cloudphone-vmm: seccomp: only some threads make that call: "[..],
                group.why.as_bytes(),
                b"\n",
            ] {
                libc::write(2, part.as_ptr().cast(), part.len());
            }
        }
        libc::_exit(EXIT_SECCOMP);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction with a valid handler and SA_SIGINFO is well-formed.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SeccompError(format!(
            "SIGSYS handler: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Each case runs in a child process (this test binary again), since a filter cannot be
    /// removed and an enforced one ends the process.
    const CHILD_CASE: &str = "CLOUDPHONE_SECCOMP_CASE";

    fn run_case(case: &str) -> (std::process::ExitStatus, String) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CASE, case)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What a child runs under the filter; the parent judges its exit code and stderr.
    #[test]
    fn child() {
        let Ok(case) = std::env::var(CHILD_CASE) else {
            return; // run directly: nothing to do
        };
        let (mode, forbidden) = match case.as_str() {
            "allowed" => (SeccompMode::Enforce, false),
            "forbidden" => (SeccompMode::Enforce, true),
            "logged" => (SeccompMode::Log, true),
            "exec" => {
                install(SeccompMode::Enforce).unwrap();
                let status = Command::new("/bin/true").status();
                eprintln!("child done: /bin/true ran: {status:?}");
                return;
            }
            "vcpu-allowed" | "vcpu-openat" | "vcpu-ioctl" | "vcpu-exec" | "api-connect"
            | "api-kvm-run" => {
                escape_from_a_vcpu_thread(&case);
                return;
            }
            "tgkill-other" => {
                // SAFETY: getppid has no preconditions; signal 0 only checks that the
                // target exists.
                let parent = unsafe { libc::getppid() };
                install(SeccompMode::Enforce).unwrap();
                let rc = unsafe { libc::syscall(libc::SYS_tgkill, parent, parent, 0) };
                eprintln!("child done: tgkill of the parent returned {rc}");
                return;
            }
            other => panic!("unknown case {other}"),
        };
        install(mode).unwrap();
        // What VMM threads do: start threads, allocate, use eventfds, pipes and Unix sockets.
        let worker = std::thread::Builder::new()
            .name("worker".into())
            .spawn(|| {
                let v = vec![7u8; 8 << 20];
                let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                (&a).write_all(&v[..4]).unwrap();
                let mut got = [0u8; 4];
                (&b).read_exact(&mut got).unwrap();
                got[0]
            })
            .unwrap();
        assert_eq!(worker.join().unwrap(), 7);
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        efd.write(1).unwrap();
        if forbidden {
            // A network socket: not a VMM's.
            // SAFETY: plain syscall, the fd (if any) is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            eprintln!("inet socket fd {fd}");
            if fd >= 0 {
                // SAFETY: fd was just returned by socket().
                unsafe { libc::close(fd) };
            }
        }
        eprintln!("child done");
    }

    /// A child under two filters, as a vCPU (or, for `api-*` cases, an API) thread runs:
    /// what it may do, and escapes.
    fn escape_from_a_vcpu_thread(case: &str) {
        install(SeccompMode::Enforce).unwrap();
        let kind = if case.starts_with("api") {
            ThreadKind::Api
        } else {
            ThreadKind::Guest
        };
        let filter = thread_filter(kind, SeccompMode::Enforce).unwrap().unwrap();
        apply_on_this_thread(&filter).unwrap();
        let efd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        match case {
            "vcpu-allowed" => {
                // A listed request on a non-KVM fd: the kernel refuses it, the filter not.
                // SAFETY: KVM_RUN takes no argument; on an eventfd it fails with ENOTTY.
                let rc = unsafe { libc::ioctl(efd.as_raw_fd(), ioctls::KVM_RUN()) };
                assert_eq!(rc, -1);
                // What a device worker started from here does: a thread, sockets, kicks.
                let worker = std::thread::spawn(|| {
                    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                    a.set_nonblocking(true).unwrap();
                    (&a).write_all(b"k").unwrap();
                    let mut got = [0u8; 1];
                    (&b).read_exact(&mut got).unwrap();
                    got[0]
                });
                assert_eq!(worker.join().unwrap(), b'k');
                // Sixteen workers alive at once, each allocating: glibc then needs more than
                // eight malloc arenas, where it would count CPUs by opening a file
                // (`fix_malloc_arena_limit` keeps it from doing so).
                let all = std::sync::Arc::new(std::sync::Barrier::new(16));
                let workers: Vec<_> = (0..16u8)
                    .map(|i| {
                        let all = all.clone();
                        std::thread::spawn(move || {
                            let v = vec![i; 4096];
                            all.wait();
                            usize::from(v[0])
                        })
                    })
                    .collect();
                let sum: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
                assert_eq!(sum, (0..16).sum::<usize>());
                // SAFETY: signal 0 to our own thread only checks it exists.
                let rc =
                    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), 0) };
                assert_eq!(rc, 0);
            }
            "vcpu-openat" => {
                let opened = std::fs::File::open("/proc/self/status");
                eprintln!("opened: {opened:?}");
            }
            "vcpu-ioctl" => {
                let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
                // SAFETY: TCGETS writes a termios into the buffer (or fails).
                let rc = unsafe { libc::ioctl(2, libc::TCGETS, termios.as_mut_ptr()) };
                eprintln!("TCGETS returned {rc}");
            }
            "vcpu-exec" => {
                let status = Command::new("/bin/true").status();
                eprintln!("/bin/true ran: {status:?}");
            }
            "api-connect" => {
                // Another phone's API socket, say: no new connections from an API thread.
                let connected = std::os::unix::net::UnixStream::connect("/nonexistent.sock");
                eprintln!("connect: {connected:?}");
            }
            "api-kvm-run" => {
                // SAFETY: as above; only the filter's answer matters.
                let rc = unsafe { libc::ioctl(efd.as_raw_fd(), ioctls::KVM_RUN()) };
                eprintln!("KVM_RUN returned {rc}");
            }
            _ => unreachable!(),
        }
        eprintln!("child done");
    }

    /// The child stopped at the filter, naming `nr`.
    fn assert_stopped_at(case: &str, nr: libc::c_long) -> String {
        let (status, stderr) = run_case(case);
        assert_eq!(status.code(), Some(EXIT_SECCOMP), "{case}: {stderr}");
        let want = format!("made system call {nr},");
        assert!(stderr.contains(&want), "{case}: {stderr}");
        assert!(!stderr.contains("child done"), "{case}: {stderr}");
        stderr
    }

    #[test]
    fn a_vcpu_thread_may_run_the_guest_start_workers_and_kick() {
        let (status, stderr) = run_case("vcpu-allowed");
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("child done"), "{stderr}");
    }

    #[test]
    fn a_vcpu_thread_cannot_open_files_and_is_told_why() {
        let stderr = assert_stopped_at("vcpu-openat", libc::SYS_openat);
        assert!(
            stderr.contains("only some threads make that call"),
            "{stderr}"
        );
    }

    #[test]
    fn a_vcpu_thread_cannot_make_an_ioctl_off_its_list() {
        assert_stopped_at("vcpu-ioctl", libc::SYS_ioctl);
    }

    #[test]
    fn a_vcpu_thread_cannot_start_a_program() {
        use std::os::unix::process::ExitStatusExt;
        let (status, stderr) = run_case("vcpu-exec");
        assert!(
            status.code() == Some(EXIT_SECCOMP) || status.signal() == Some(libc::SIGSYS),
            "{status:?}: {stderr}"
        );
        assert!(!stderr.contains("child done"), "{stderr}");
    }

    #[test]
    fn an_api_thread_cannot_connect_anywhere_or_run_a_vcpu() {
        assert_stopped_at("api-connect", libc::SYS_socket);
        assert_stopped_at("api-kvm-run", libc::SYS_ioctl);
    }

    #[test]
    fn no_thread_may_signal_another_process() {
        assert_stopped_at("tgkill-other", libc::SYS_tgkill);
    }

    #[test]
    fn vcpu_threads_are_allowed_fewer_calls_than_the_rest() {
        let [vmm, api, vcpu] =
            [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Guest].map(allowed_calls);
        eprintln!("allowed system calls: main {vmm}, API {api}, vCPU threads and workers {vcpu}");
        assert!(vcpu + 10 < vmm && api + 5 < vmm, "{vmm} {api} {vcpu}");
    }

    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_vmm_thread_may_do_what_a_vmm_does() {
        let (status, stderr) = run_case("allowed");
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("child done"), "{stderr}");
    }

    #[test]
    fn a_forbidden_call_stops_the_process_and_names_the_call() {
        let (status, stderr) = run_case("forbidden");
        assert_eq!(status.code(), Some(EXIT_SECCOMP), "{stderr}");
        let want = format!("made system call {}", libc::SYS_socket);
        assert!(stderr.contains(&want), "{stderr}");
        assert!(!stderr.contains("child done"), "{stderr}");
    }

    /// posix_spawn blocks every signal around its clone, so the kernel delivers this SIGSYS
    /// with the default action (the process dies of it) rather than to the handler.
    #[test]
    fn starting_a_program_stops_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let (status, stderr) = run_case("exec");
        assert!(
            status.code() == Some(EXIT_SECCOMP) || status.signal() == Some(libc::SIGSYS),
            "{status:?}: {stderr}"
        );
        assert!(!stderr.contains("child done"), "{stderr}");
    }

    #[test]
    fn log_mode_lets_the_call_through() {
        let (status, stderr) = run_case("logged");
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("child done"), "{stderr}");
    }

    #[test]
    fn modes_parse_and_bad_ones_are_named() {
        assert_eq!("enforce".parse::<SeccompMode>(), Ok(SeccompMode::Enforce));
        assert_eq!("off".parse::<SeccompMode>(), Ok(SeccompMode::Off));
        let e = "strict".parse::<SeccompMode>().unwrap_err();
        assert!(e.contains("strict") && e.contains("enforce"), "{e}");
    }

    #[test]
    fn decimal_formats_like_display() {
        for n in [0u64, 7, 41, 12345, u64::MAX] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
