//! One thread of another process held still (ptrace), the rest of the process running: to
//! show what the daemon does while one of its threads cannot run (the ledger's syncer).

use std::time::{Duration, Instant};

/// A thread stopped by this test thread (its tracer) until dropped. ptrace ties the stop to
/// the thread that attached, so this stays on the thread that made it (not `Send`).
pub struct Frozen {
    tid: libc::pid_t,
    _tracer_thread: std::marker::PhantomData<*const ()>,
}

impl Frozen {
    /// Stops the thread of process `pid` named `comm` while it waits on a condition
    /// variable (idle: holding no lock, half way through nothing); panics if there is no
    /// such thread or it will not stop there.
    pub fn thread(pid: u32, comm: &str) -> Frozen {
        let tid = thread_named(pid, comm)
            .unwrap_or_else(|| panic!("process {pid} has no thread named {comm:?}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let frozen = Frozen::stop(tid, comm);
            if frozen.waits_on_futex() {
                return frozen;
            }
            drop(frozen);
            assert!(
                Instant::now() < deadline,
                "{comm} never stopped in a timed futex wait"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(tid: libc::pid_t, comm: &str) -> Frozen {
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: ptrace requests on a thread id with null or integer arguments; waitpid with
        // a valid status pointer.
        unsafe {
            let options = libc::PTRACE_O_TRACESYSGOOD as usize as *mut libc::c_void;
            let seized = libc::ptrace(libc::PTRACE_SEIZE, tid, none, options);
            assert_eq!(seized, 0, "PTRACE_SEIZE {comm} ({tid}): {}", errno());
            let interrupted = libc::ptrace(libc::PTRACE_INTERRUPT, tid, none, none);
            assert_eq!(interrupted, 0, "PTRACE_INTERRUPT {comm}: {}", errno());
            let mut status = 0;
            let waited = libc::waitpid(tid, &mut status, libc::__WALL);
            assert_eq!(waited, tid, "waiting for {comm} to stop: {}", errno());
            assert!(libc::WIFSTOPPED(status), "{comm} did not stop: {status:#x}");
        }
        let frozen = Frozen {
            tid,
            _tracer_thread: std::marker::PhantomData,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while frozen.state() != Some('t') {
            assert!(Instant::now() < deadline, "{comm} is not in a trace stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        frozen
    }

    /// Whether the stopped thread was in a timed futex wait (a condition variable's, with
    /// a timeout; a lock's wait has none) when it stopped.
    #[cfg(target_arch = "x86_64")]
    fn waits_on_futex(&self) -> bool {
        let regs = self.regs();
        regs.orig_rax == libc::SYS_futex as u64 && regs.r10 != 0
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn waits_on_futex(&self) -> bool {
        true
    }

    #[cfg(target_arch = "x86_64")]
    fn regs(&self) -> libc::user_regs_struct {
        // SAFETY: GETREGS of a thread in a ptrace stop of ours, into a local of the
        // kernel's layout.
        unsafe {
            let mut regs: libc::user_regs_struct = std::mem::zeroed();
            let none = std::ptr::null_mut::<libc::c_void>();
            let got = libc::ptrace(libc::PTRACE_GETREGS, self.tid, none, &mut regs);
            assert_eq!(got, 0, "PTRACE_GETREGS: {}", errno());
            regs
        }
    }

    /// Lets the thread run on until its next `fdatasync` returns, and has that call fail
    /// with `error` (an errno) instead (as a failing disk would make it), then lets it go.
    #[cfg(target_arch = "x86_64")]
    pub fn fail_next_fdatasync(self, error: i32) {
        const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut resume_with = 0;
        loop {
            assert!(Instant::now() < deadline, "no fdatasync came");
            // SAFETY: ptrace and waitpid on the thread this tracer stopped; the registers
            // are read into and written from a local of the kernel's layout.
            unsafe {
                let none = std::ptr::null_mut::<libc::c_void>();
                let resume = resume_with as usize as *mut libc::c_void;
                let r = libc::ptrace(libc::PTRACE_SYSCALL, self.tid, none, resume);
                assert_eq!(r, 0, "PTRACE_SYSCALL: {}", errno());
                let mut status = 0;
                let waited = libc::waitpid(self.tid, &mut status, libc::__WALL);
                assert_eq!(waited, self.tid, "waitpid: {}", errno());
                assert!(libc::WIFSTOPPED(status), "the thread ended: {status:#x}");
                let sig = libc::WSTOPSIG(status);
                // A signal meant for the thread goes on to it; other stops (events,
                // group stops) are only passed.
                resume_with = match (sig, status >> 16) {
                    (SYSCALL_STOP, _) | (_, 1..) => 0,
                    (sig, _) => sig,
                };
                if sig != SYSCALL_STOP {
                    continue;
                }
                let mut regs = self.regs();
                // At a syscall's entry rax holds -ENOSYS; at its exit, what it returns.
                let exit = regs.rax as i64 != -i64::from(libc::ENOSYS);
                if regs.orig_rax == libc::SYS_fdatasync as u64 && exit {
                    regs.rax = (-i64::from(error)) as u64;
                    let set = libc::ptrace(libc::PTRACE_SETREGS, self.tid, none, &regs);
                    assert_eq!(set, 0, "PTRACE_SETREGS: {}", errno());
                    return; // Drop detaches: the thread goes on with the error.
                }
            }
        }
    }

    /// The thread's state letter in /proc (`t`: stopped by its tracer).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{0}/task/{0}/stat", self.tid)).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }
}

impl Drop for Frozen {
    /// Lets the thread run on, as if it had only been slow.
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe {
            let none = std::ptr::null_mut::<libc::c_void>();
            libc::ptrace(libc::PTRACE_DETACH, self.tid, none, none);
        }
    }
}

fn thread_named(pid: u32, comm: &str) -> Option<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })?
        .file_name()
        .to_str()?
        .parse()
        .ok()
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}
