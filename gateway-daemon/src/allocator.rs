//! The daemon's memory allocator: jemalloc. A call on the hot path makes some 80 small
//! allocations; glibc's malloc spent about 15k instructions a call on them, jemalloc about
//! half (`cargo xtask bench --instructions`, design 7.6).
//!
//! What it keeps: jemalloc holds freed pages for reuse and lets them go over
//! `dirty_decay_ms`, but only when the arena is used again: a daemon gone idle after a burst
//! of large bodies would stay at its peak. [`return_freed_memory`] runs that decay once a
//! second instead. What it starts with: loading the eBPF programs parses the kernel's BTF
//! (megabytes, all freed again); [`release_startup_memory`] gives it back once the daemon
//! is up.

use std::ffi::c_char;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation. `muzzy_decay_ms:0`: pages it lets go
/// of are unmapped at once (MADV_DONTNEED), not left to count in the RSS until reclaimed.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static c_char> =
    Some(conf(b"dirty_decay_ms:1000,muzzy_decay_ms:0\0"));

const fn conf(s: &'static [u8]) -> &'static c_char {
    // SAFETY: u8 and c_char have the same size and alignment; the string ends in NUL.
    unsafe { &*(s.as_ptr() as *const c_char) }
}

/// Hands every page jemalloc holds but no allocation uses back to the system.
pub fn release_startup_memory() {
    // `MALLCTL_ARENAS_ALL` (4096): every arena.
    mallctl_void(b"arena.4096.purge\0");
}

/// Once a second, hands back the freed pages whose decay time has passed.
pub async fn return_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        mallctl_void(b"arena.4096.decay\0");
    }
}

/// A jemalloc control that reads and writes nothing.
fn mallctl_void(name: &'static [u8]) {
    // SAFETY: a valid NUL-terminated name; the control reads and writes nothing.
    let r = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr() as *const c_char,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if r != 0 {
        tracing::debug!(errno = r, control = ?name, "jemalloc control failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt_ssize(name: &'static [u8]) -> isize {
        let mut value: isize = 0;
        let mut len = std::mem::size_of::<isize>();
        // SAFETY: a valid NUL-terminated name of an `ssize_t` option, read into one.
        let r = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr() as *const c_char,
                &mut value as *mut isize as *mut std::ffi::c_void,
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(r, 0, "mallctl {name:?}");
        value
    }

    /// The options are jemalloc's only if the symbol it reads them from has its prefixed
    /// name: with a wrong one, freed memory would wait ten seconds and nothing would say so.
    #[test]
    fn jemalloc_reads_the_daemons_options() {
        let _ = Box::new(1u8);
        assert_eq!(opt_ssize(b"opt.dirty_decay_ms\0"), 1000);
        assert_eq!(opt_ssize(b"opt.muzzy_decay_ms\0"), 0);
        release_startup_memory();
    }
}
