//! The daemon's memory allocator: jemalloc. A call on the hot path makes some 80 small
//! allocations; glibc's malloc spent about 15k instructions a call on them, jemalloc about
//! half (`cargo xtask bench --instructions`, design 7.6).
//!
//! What it keeps: allocations of 256 KiB and more (bodies held for inspection) go back to
//! the system when freed (`tests/limits.rs`: kept without it, 34 MiB after sixty stalled
//! answers). jemalloc holds smaller freed pages for reuse and lets them go over
//! `dirty_decay_ms` as it is used; a daemon gone idle right after a burst of small ones
//! keeps a few MiB of them until it allocates again (measured: within 9 MiB of where it
//! started after 256 calls of 200 KB on 64 connections).
//!
//! What it starts with: loading the eBPF programs parses the kernel's BTF (megabytes, all
//! freed again); [`release_startup_memory`] gives it back before the daemon says it is up.

use std::ffi::{c_char, CStr};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation:
/// - `oversize_threshold:262144`: an allocation of 256 KiB or more (a body held for
///   inspection) comes from jemalloc's arena for large ones, which gives pages back the
///   moment they are freed, as glibc's own mappings for them did;
/// - `dirty_decay_ms:1000`: smaller freed pages are kept for reuse for about a second;
/// - `muzzy_decay_ms:0`: pages let go of are purged at once (MADV_DONTNEED), not left to
///   count in the RSS until the kernel reclaims them.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static c_char> = Some(conf(
    c"oversize_threshold:262144,dirty_decay_ms:1000,muzzy_decay_ms:0",
));

const fn conf(s: &'static CStr) -> &'static c_char {
    // SAFETY: the pointer is to the first byte of a string that lives for the program.
    unsafe { &*s.as_ptr() }
}

/// Hands every page jemalloc holds but no allocation uses back to the system.
pub fn release_startup_memory() {
    // `MALLCTL_ARENAS_ALL` (4096): every arena.
    mallctl_void(c"arena.4096.purge");
}

/// A jemalloc control that reads and writes nothing.
fn mallctl_void(name: &'static CStr) {
    // SAFETY: a valid NUL-terminated name; the control reads and writes nothing.
    let r = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
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

    /// A jemalloc option, read into a `T` of its C type's size.
    fn opt<T: Default>(name: &'static CStr) -> T {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: a valid NUL-terminated name; `value` has the option's type and size.
        let r = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                &mut value as *mut T as *mut std::ffi::c_void,
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
        assert_eq!(opt::<isize>(c"opt.dirty_decay_ms"), 1000);
        assert_eq!(opt::<isize>(c"opt.muzzy_decay_ms"), 0);
        assert_eq!(opt::<usize>(c"opt.oversize_threshold"), 256 << 10);
        release_startup_memory();
    }
}
