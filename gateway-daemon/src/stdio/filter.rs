//! The launcher's seccomp filter: every `execve`/`execveat` of the agent's process tree is
//! sent to the daemon as a user notification, so the daemon sees each program the agent
//! starts before it runs and can put itself between the agent and an MCP server.
//!
//! The filter is inherited by every descendant and cannot be removed; a second listener
//! cannot be installed below it (the kernel answers EBUSY), and a filter an agent adds
//! can only make exec stricter (the most restrictive action wins), never skip this one.

use std::os::fd::{FromRawFd, OwnedFd};

use super::StdioError;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// x86-64's x32 ABI numbers syscalls from here: its execve would not be ours.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const X32_SYSCALL_BIT: u32 = u32::MAX;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program: another architecture or the x32 ABI kills the process (its syscall numbers
/// mean other calls), execve and execveat go to the daemon, everything else is allowed.
pub fn program() -> Vec<libc::sock_filter> {
    vec![
        stmt(BPF_LD_W_ABS, ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, NR),
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        jump(BPF_JEQ_K, libc::SYS_execve as u32, 2, 0),
        jump(BPF_JEQ_K, libc::SYS_execveat as u32, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(BPF_RET_K, libc::SECCOMP_RET_USER_NOTIF),
    ]
}

/// Installs the filter on the calling thread (so on every process it starts from now on)
/// and returns the notification listener. Sets `no_new_privs` first: the kernel requires it
/// of an unprivileged filter, and a set-uid program must not run outside what the filter
/// was installed for.
pub fn install() -> Result<OwnedFd, StdioError> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(StdioError::Filter {
            step: "PR_SET_NO_NEW_PRIVS",
            source: std::io::Error::last_os_error(),
        });
    }
    let mut filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    let install = |flags: libc::c_ulong| {
        // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
        unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &prog as *const libc::sock_fprog,
            )
        }
    };
    // A process waiting for the daemon's answer can still be killed, but is not woken by
    // other signals into an exec that fails with EINTR (Linux 5.19+; older kernels lack it).
    let mut fd = install(
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    );
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        fd = install(libc::SECCOMP_FILTER_FLAG_NEW_LISTENER);
    }
    if fd < 0 {
        let source = std::io::Error::last_os_error();
        return Err(match source.raw_os_error() {
            Some(libc::EBUSY) => StdioError::AlreadyFiltered,
            _ => StdioError::Filter {
                step: "seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER)",
                source,
            },
        });
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
