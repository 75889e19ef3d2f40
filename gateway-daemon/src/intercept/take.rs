//! Taking an accepted connection's record out of `gw_conns` in one system call
//! (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, hash maps since Linux 5.14) instead of a lookup and
//! a delete: one of the system calls every new connection costs. It is also one step,
//! so no two takers could both read a record that only one may consume. Kernels without
//! it for hash maps answer EINVAL or ENOTSUPP once, and the two calls are used from then on.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use aya::maps::{HashMap, IterableMap, MapData};
use aya::Pod;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
/// The kernel's "not supported" (`ENOTSUPP`, not `EOPNOTSUPP`), which a BPF command the
/// map type lacks returns.
const ENOTSUPP: i32 = 524;

/// The `bpf_attr` of the element commands: map fd, key, value, flags.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Whether this kernel lacked the command (then it is not tried again).
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The record under `key`, removed from the map; `None` when there is none.
pub fn take<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, key: &K) -> Option<V> {
    if !UNSUPPORTED.load(Ordering::Relaxed) {
        match lookup_and_delete(map, key) {
            Ok(v) => return v,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(ENOTSUPP)) => {
                tracing::info!(error = %e, "this kernel takes a record in two steps (lookup, delete)");
                UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not take a connection record");
                return None;
            }
        }
    }
    let v = map.get(key, 0).ok()?;
    if let Err(e) = map.remove(key) {
        tracing::warn!(error = %e, "could not delete a connection record");
    }
    Some(v)
}

fn lookup_and_delete<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    key: &K,
) -> io::Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::uninit();
    let attr = ElemAttr {
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a key of the map's key type and room for a value of its
    // value type (aya checked both sizes against the map when it was taken); the kernel
    // reads `size_of::<ElemAttr>()` bytes of `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        // SAFETY: the kernel filled the value on success; V is Pod (any bytes are a V).
        return Ok(Some(unsafe { value.assume_init() }));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        return Ok(None);
    }
    Err(e)
}
