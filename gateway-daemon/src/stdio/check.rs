//! The kernel's check of what an exec really ran (`gateway-ebpf/src/bpf/exec_check.bpf.c`):
//! before an exec goes on, the daemon says which file will run with which arguments; at
//! `sched_process_exec`, before the new program runs, a process that runs anything else
//! is killed. This closes the race a seccomp supervisor has on its own: another thread, or
//! a symbolic link swapped, changing the path or arguments after the daemon read them.
//!
//! Loaded when stdio servers are configured; where the kernel refuses it, mediation goes on
//! without it, and `status` and the log say so.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use gateway_ebpf::GwExecExpect;

pub struct ExecCheck {
    _ebpf: Ebpf,
    expect: Mutex<HashMap<MapData, u32, GwExecExpect>>,
    counts: Array<MapData, u64>,
}

/// What an exec will run, as the check compares it.
pub struct Expected {
    /// The file the kernel will load (a script's interpreter).
    pub file: std::path::PathBuf,
    /// The arguments the new program gets.
    pub argv: Vec<Vec<u8>>,
}

/// The device of a file as the kernel encodes it (what `s_dev` holds).
fn kernel_dev(st_dev: u64) -> u64 {
    let (major, minor) = (libc::major(st_dev) as u64, libc::minor(st_dev) as u64);
    (major << 20) | minor
}

/// FNV-1a over the argument area as the kernel lays it out: each argument NUL-terminated.
fn hash(argv: &[Vec<u8>]) -> (u32, usize) {
    let mut h = gateway_ebpf::FNV_OFFSET;
    let mut len = 0;
    for a in argv {
        for b in a.iter().chain(std::iter::once(&0u8)) {
            h ^= *b as u32;
            h = h.wrapping_mul(gateway_ebpf::FNV_PRIME);
        }
        len += a.len() + 1;
    }
    (h, len)
}

/// Field 22 of a task's stat (its start, in clock ticks since boot).
fn start_ticks(stat_path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

impl ExecCheck {
    pub fn load() -> Result<Self, String> {
        let mut ebpf = EbpfLoader::new()
            .load(gateway_ebpf::EXEC_CHECK_OBJ)
            .map_err(|e| format!("loading the exec check: {e}"))?;
        let btf = Btf::from_sys_fs().map_err(|e| format!("reading the kernel's BTF: {e}"))?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(gateway_ebpf::PROG_EXEC_CHECK)
            .ok_or("the exec check program is missing from its object")?
            .try_into()
            .map_err(|e| format!("the exec check program: {e}"))?;
        prog.load("sched_process_exec", &btf)
            .map_err(|e| format!("loading tp_btf/sched_process_exec: {e}"))?;
        prog.attach()
            .map_err(|e| format!("attaching tp_btf/sched_process_exec: {e}"))?;
        let expect = HashMap::try_from(
            ebpf.take_map(gateway_ebpf::MAP_EXEC_EXPECT)
                .ok_or("the exec check's map is missing")?,
        )
        .map_err(|e| format!("the exec check's map: {e}"))?;
        let counts = Array::try_from(
            ebpf.take_map(gateway_ebpf::MAP_EXEC_COUNTS)
                .ok_or("the exec check's counters are missing")?,
        )
        .map_err(|e| format!("the exec check's counters: {e}"))?;
        Ok(Self {
            _ebpf: ebpf,
            expect: Mutex::new(expect),
            counts,
        })
    }

    /// Execs checked and execs killed so far.
    pub fn counts(&self) -> (u64, u64) {
        let get = |i| self.counts.get(&i, 0).unwrap_or(0);
        (get(0), get(1))
    }

    /// Says what thread `tid` of process `tgid` will run when its exec goes on (`None`: a
    /// file that did not exist, so any program it runs after all is killed). An exec whose
    /// expectation cannot be set must not go on (Err).
    pub fn expect(&self, tgid: u32, tid: u32, what: Option<&Expected>) -> Result<(), String> {
        let start = start_ticks(&format!("/proc/{tgid}/task/{tid}/stat"))
            .ok_or_else(|| format!("cannot read the start of task {tid}"))?;
        let leader = start_ticks(&format!("/proc/{tgid}/stat")).unwrap_or(start);
        let mut e = GwExecExpect {
            start_ticks: start,
            leader_start_ticks: leader,
            ..Default::default()
        };
        if let Some(w) = what {
            let meta =
                std::fs::metadata(&w.file).map_err(|err| format!("{}: {err}", w.file.display()))?;
            let (h, len) = hash(&w.argv);
            if len > gateway_ebpf::EXEC_ARGV_MAX {
                return Err("arguments longer than the exec check reads".into());
            }
            e.dev = kernel_dev(meta.dev());
            e.ino = meta.ino();
            e.argv_len = len as u32;
            e.argv_hash = h;
        }
        let mut map = self.expect.lock().unwrap_or_else(|p| p.into_inner());
        if map.insert(tid, e, 0).is_ok() {
            return Ok(());
        }
        // Full of entries threads left when their exec failed and they went on or exited:
        // those of tasks gone are dropped, and it is tried once more.
        let gone: Vec<u32> = map
            .keys()
            .flatten()
            .filter(|t| !Path::new(&format!("/proc/{t}")).exists())
            .collect();
        for t in gone {
            let _ = map.remove(&t);
        }
        map.insert(tid, e, 0)
            .map_err(|err| format!("the exec check's map is full: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_each_argument_and_its_terminator() {
        let (a, la) = hash(&[b"python3".to_vec(), b"s.py".to_vec()]);
        let (b, lb) = hash(&[b"python3s".to_vec(), b".py".to_vec()]);
        assert_eq!((la, lb), (13, 13));
        assert_ne!(a, b, "a split moved between arguments is another argv");
        // FNV-1a of "a\0": the kernel side computes the same bytes.
        let (h, _) = hash(&[b"a".to_vec()]);
        let mut want = gateway_ebpf::FNV_OFFSET;
        for byte in [b'a', 0] {
            want ^= byte as u32;
            want = want.wrapping_mul(gateway_ebpf::FNV_PRIME);
        }
        assert_eq!(h, want);
        assert_eq!(kernel_dev(libc::makedev(8, 3)), (8 << 20) | 3);
    }
}
