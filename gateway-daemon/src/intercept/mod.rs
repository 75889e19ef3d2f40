//! The kernel side, seen from the daemon: loads and attaches the eBPF programs, keeps the
//! selector maps in step with the config, and hands each accepted connection its
//! interception record.
//!
//! Links and maps are pinned under `<bpffs>/mcp-gateway/<instance>/` so that a killed daemon
//! leaves the redirection in place (agents are refused, never let around it) and a restarted
//! one takes over the very same maps.

pub mod bpffs;
pub mod cgroup;
pub mod record;

use std::collections::HashSet;
use std::fs::File;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, SockOps};
use aya::{Ebpf, EbpfLoader, Pod};
use gateway_ebpf::{GwConfig, GwRecord, GwTuple};

use crate::config::Resolved;

pub use record::Redirected;

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("no cgroup2 hierarchy is mounted (none in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bpffs at {path}: {message}")]
    Bpffs { path: PathBuf, message: String },
    #[error("reading {what}: {message}")]
    Procfs { what: String, message: String },
    #[error("loading the eBPF object failed: {message}. The daemon needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and a kernel >= 5.10 with BTF (/sys/kernel/btf/vmlinux)")]
    Load { message: String },
    #[error("eBPF program {name}: {message}")]
    Program { name: String, message: String },
    #[error("eBPF map {name}: {message}")]
    Map { name: String, message: String },
    #[error("pin {path}: {message}")]
    Pin { path: PathBuf, message: String },
}

/// Full error chain of an aya error: its Display alone drops the verifier log's cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// cgroup bpf links refuse attach flags (EINVAL) and always attach as BPF_F_ALLOW_MULTI,
/// so they coexist with systemd's and other daemons' programs; `Single` means "no flags".
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Every program the daemon attaches, for `status`.
pub const PROGRAMS: [&str; 7] = [
    SOCK_ADDR_PROGS[0],
    SOCK_ADDR_PROGS[1],
    SOCK_ADDR_PROGS[2],
    SOCK_ADDR_PROGS[3],
    SOCK_ADDR_PROGS[4],
    SOCK_ADDR_PROGS[5],
    gateway_ebpf::PROG_SOCKOPS,
];

const SOCK_ADDR_PROGS: [&str; 6] = [
    gateway_ebpf::PROG_CONNECT4,
    gateway_ebpf::PROG_CONNECT6,
    gateway_ebpf::PROG_GETPEERNAME4,
    gateway_ebpf::PROG_GETPEERNAME6,
    gateway_ebpf::PROG_SENDMSG4,
    gateway_ebpf::PROG_SENDMSG6,
];

/// Facts about the attached programs, for logs and status.
#[derive(Debug, Clone)]
pub struct Attached {
    pub cgroup2: PathBuf,
    pub attach_cgroup: PathBuf,
    pub pin_dir: PathBuf,
    pub agent_cgroups: Vec<(String, u64)>,
    /// Pinned links of an earlier daemon that this one replaced.
    pub replaced_links: usize,
}

pub struct Interceptor {
    // Keeps the loaded programs and map fds alive for the daemon's lifetime.
    _ebpf: Ebpf,
    conns: Mutex<HashMap<MapData, GwTuple, GwRecord>>,
    agent_cgroup_map: Mutex<HashMap<MapData, u64, u8>>,
    /// Configured agent cgroups and the ids they resolve to now.
    agent_cgroup_ids: Mutex<Vec<(String, u64)>>,
    config_map: Mutex<Array<MapData, GwConfig>>,
    links: Vec<PinnedLink>,
    pin_dir: PathBuf,
    pub attached: Attached,
}

impl Interceptor {
    /// Loads, configures and attaches everything; replaces the links a previous daemon
    /// of the same instance left pinned, without a moment in which agents are unmediated.
    pub fn start(resolved: &Resolved) -> Result<Self, InterceptError> {
        let cfg = &resolved.config;
        let bpffs = &cfg.intercept.bpffs;
        bpffs::ensure_mounted(bpffs)?;
        let pin_dir = bpffs.join("mcp-gateway").join(&cfg.intercept.instance);
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(dir).map_err(|e| InterceptError::Bpffs {
                path: dir.clone(),
                message: e.to_string(),
            })?;
        }

        let cgroup2 = cgroup::cgroup2_mount()?;
        let attach_path = cgroup::path_of(&cgroup2, &cfg.intercept.attach_cgroup);
        let mut agent_cgroups = Vec::new();
        for rel in &cfg.agents.cgroups {
            agent_cgroups.push((rel.clone(), cgroup::ensure(&cgroup2, rel)?));
        }

        let cap = cfg.intercept.selector_capacity;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(gateway_ebpf::MAP_CONNS, cfg.intercept.max_connections)
            .map_max_entries(gateway_ebpf::MAP_AGENT_CGROUPS, cap)
            .map_max_entries(gateway_ebpf::MAP_AGENT_UIDS, cap)
            .map_max_entries(gateway_ebpf::MAP_SCOPE_PORTS, cap)
            .load(gateway_ebpf::REDIRECT_OBJ)
            .map_err(|e| InterceptError::Load { message: chain(&e) })?;

        // Selectors first, `enabled` last: a program never sees a half-written config.
        sync_set(
            &mut ebpf,
            gateway_ebpf::MAP_AGENT_CGROUPS,
            agent_cgroups.iter().map(|(_, id)| *id).collect(),
        )?;
        sync_set(
            &mut ebpf,
            gateway_ebpf::MAP_AGENT_UIDS,
            resolved.agent_uids.iter().copied().collect(),
        )?;
        sync_set(
            &mut ebpf,
            gateway_ebpf::MAP_SCOPE_PORTS,
            cfg.scope.ports.iter().copied().collect(),
        )?;
        let mut config_map: Array<MapData, GwConfig> =
            take_map(&mut ebpf, gateway_ebpf::MAP_CONFIG)?;
        let gw_config = GwConfig {
            listen4: match cfg.listener.ipv4.ip() {
                IpAddr::V4(v4) => v4.octets(),
                IpAddr::V6(_) => unreachable!("validated as IPv4"),
            },
            listen6: record::addr_bytes(cfg.listener.ipv6.ip()),
            listen4_port: cfg.listener.ipv4.port(),
            listen6_port: cfg.listener.ipv6.port(),
            daemon_tgid: std::process::id(),
            mark: cfg.intercept.mark,
            enabled: 1,
            all_tcp: cfg.scope.all_tcp as u8,
            _pad: 0,
        };
        config_map
            .set(0, gw_config, 0)
            .map_err(|e| map_err(gateway_ebpf::MAP_CONFIG, &e))?;
        let conns = take_map(&mut ebpf, gateway_ebpf::MAP_CONNS)?;
        let agent_cgroup_map = take_map(&mut ebpf, gateway_ebpf::MAP_AGENT_CGROUPS)?;

        let old_links = pinned_links(&links_dir)?;
        let cgroup_file = File::open(&attach_path).map_err(|source| InterceptError::Cgroup {
            path: attach_path.clone(),
            source,
        })?;
        // bpffs refuses names with a dot.
        let tag = format!("{}_{}", std::process::id(), boot_ns());
        // The two program types share no attach trait in aya; the steps are the same.
        macro_rules! attach_pinned {
            ($ty:ty, $name:expr) => {{
                let name = $name;
                let prog: &mut $ty = program(&mut ebpf, name)?;
                prog.load().map_err(|e| prog_err(name, &e))?;
                let id = prog
                    .attach(&cgroup_file, LINK_MODE)
                    .map_err(|e| prog_err(name, &e))?;
                let link: FdLink = prog
                    .take_link(id)
                    .map_err(|e| prog_err(name, &e))?
                    .try_into()
                    .map_err(|e: LinkError| prog_err(name, &e))?;
                pin(link, &links_dir.join(format!("{name}_{tag}")))?
            }};
        }
        let mut links = Vec::new();
        for name in SOCK_ADDR_PROGS {
            links.push(attach_pinned!(CgroupSockAddr, name));
        }
        links.push(attach_pinned!(SockOps, gateway_ebpf::PROG_SOCKOPS));

        // The new programs are attached and share the pinned maps: only now let go of
        // the old ones.
        let replaced_links = old_links.len();
        for old in old_links {
            let path = old.0.clone();
            drop(old.1.unpin().map_err(|e| InterceptError::Pin {
                path,
                message: e.to_string(),
            })?);
        }

        Ok(Self {
            _ebpf: ebpf,
            conns: Mutex::new(conns),
            agent_cgroup_map: Mutex::new(agent_cgroup_map),
            agent_cgroup_ids: Mutex::new(agent_cgroups.clone()),
            config_map: Mutex::new(config_map),
            links,
            pin_dir: pin_dir.clone(),
            attached: Attached {
                cgroup2,
                attach_cgroup: attach_path,
                pin_dir,
                agent_cgroups,
                replaced_links,
            },
        })
    }

    /// Re-resolves the configured agent cgroups. A cgroup removed and created again (systemd
    /// does so when a slice is stopped and started) gets a new id: until the map holds it,
    /// agents there would connect unmediated. Returns the cgroups whose id changed.
    pub fn resync_agent_cgroups(&self) -> Result<Vec<(String, u64)>, InterceptError> {
        let mut known = self
            .agent_cgroup_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        for (rel, id) in known.iter_mut() {
            let now = cgroup::ensure(&self.attached.cgroup2, rel)?;
            if now != *id {
                let mut map = self
                    .agent_cgroup_map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                map.insert(now, 1, 0)
                    .map_err(|e| map_err(gateway_ebpf::MAP_AGENT_CGROUPS, &e))?;
                // The old id names a cgroup that no longer exists; nothing can be in it.
                let _ = map.remove(id);
                *id = now;
                changed.push((rel.clone(), now));
            }
        }
        Ok(changed)
    }

    /// Takes (reads and deletes) the record of an accepted connection.
    pub fn take(&self, client: SocketAddr, listener: SocketAddr) -> Option<GwRecord> {
        let key = record::tuple_key(client, listener);
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let rec = conns.get(&key, 0).ok()?;
        if let Err(e) = conns.remove(&key) {
            tracing::warn!(error = %e, "could not delete a connection record");
        }
        Some(rec)
    }

    /// Stops redirecting and removes every pin of this instance.
    pub fn detach(self) -> Result<(), InterceptError> {
        let mut cfg = self.config_map.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(mut c) = cfg.get(&0, 0) {
            c.enabled = 0;
            let _ = cfg.set(0, c, 0);
        }
        drop(cfg);
        for link in self.links {
            drop(link.unpin().map_err(|e| InterceptError::Pin {
                path: self.pin_dir.clone(),
                message: e.to_string(),
            })?);
        }
        std::fs::remove_dir_all(&self.pin_dir).map_err(|e| InterceptError::Pin {
            path: self.pin_dir.clone(),
            message: e.to_string(),
        })?;
        Ok(())
    }

    /// Leaves links and maps pinned: agents are refused until a daemon is back.
    pub fn keep_attached(self) {
        drop(self);
    }
}

fn boot_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, InterceptError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| InterceptError::Program {
            name: name.into(),
            message: "missing from the embedded object".into(),
        })?
        .try_into()
        .map_err(|e| prog_err(name, &e))
}

fn prog_err(name: &str, e: &dyn std::error::Error) -> InterceptError {
    InterceptError::Program {
        name: name.into(),
        message: chain(e),
    }
}

fn map_err(name: &str, e: &dyn std::error::Error) -> InterceptError {
    InterceptError::Map {
        name: name.into(),
        message: chain(e),
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, InterceptError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| InterceptError::Map {
        name: name.into(),
        message: "missing from the embedded object".into(),
    })?;
    T::try_from(map).map_err(|e| map_err(name, &e))
}

/// Makes a pinned hash map used as a set hold exactly `want` (it may hold an earlier
/// daemon's selectors).
fn sync_set<K: Pod + Eq + Hash>(
    ebpf: &mut Ebpf,
    name: &str,
    want: HashSet<K>,
) -> Result<(), InterceptError> {
    let map = ebpf.map_mut(name).ok_or_else(|| InterceptError::Map {
        name: name.into(),
        message: "missing from the embedded object".into(),
    })?;
    let mut set: HashMap<&mut MapData, K, u8> =
        HashMap::try_from(map).map_err(|e| map_err(name, &e))?;
    let stale: Vec<K> = set
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains(k))
        .collect();
    for k in stale {
        set.remove(&k).map_err(|e| map_err(name, &e))?;
    }
    for k in want {
        set.insert(k, 1, 0).map_err(|e| map_err(name, &e))?;
    }
    Ok(())
}

fn pin(link: FdLink, path: &Path) -> Result<PinnedLink, InterceptError> {
    link.pin(path).map_err(|e| InterceptError::Pin {
        path: path.to_owned(),
        message: chain(&e),
    })
}

fn pinned_links(dir: &Path) -> Result<Vec<(PathBuf, PinnedLink)>, InterceptError> {
    let entries = std::fs::read_dir(dir).map_err(|e| InterceptError::Pin {
        path: dir.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let link = PinnedLink::from_pin(&path).map_err(|e| InterceptError::Pin {
            path: path.clone(),
            message: chain(&e),
        })?;
        out.push((path, link));
    }
    Ok(out)
}
