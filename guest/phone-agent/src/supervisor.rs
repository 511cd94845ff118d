//! When the agent is started as PID 1 (`exec /bin/phone-agent` from an init script), it must
//! reap orphans (shell commands' background children) and must never exit (the kernel panics
//! when PID 1 dies). Then the process forks: the parent only reaps and restarts the agent child.

use std::time::Duration;

/// Delay before restarting an agent that exited, so a crash loop cannot spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Returns in the process that should run the agent. As PID 1 this forks; the parent never
/// returns. Must be called before any thread is started.
pub fn become_child_if_pid1() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        return;
    }
    loop {
        // SAFETY: single-threaded at this point (called first in main), so fork is safe.
        let child = unsafe { libc::fork() };
        if child == 0 {
            return;
        }
        if child < 0 {
            eprintln!(
                "phone-agent (pid 1): fork failed: {}; running without a reaper",
                std::io::Error::last_os_error()
            );
            return;
        }
        reap_until(child);
        eprintln!(
            "phone-agent (pid 1): agent process {child} exited; restarting in {RESTART_DELAY:?}"
        );
        std::thread::sleep(RESTART_DELAY);
    }
}

/// Reaps every child until `agent` itself has exited.
fn reap_until(agent: libc::pid_t) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into the local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == agent
            || (pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
        {
            return;
        }
    }
}
