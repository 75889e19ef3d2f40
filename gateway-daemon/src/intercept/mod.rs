//! The kernel side, seen from the daemon: loads and attaches the eBPF programs, keeps the
//! selector maps in step with the config, and hands each accepted connection its
//! interception record.
//!
//! Links and maps are pinned under `<bpffs>/mcp-gateway/<instance>/` so that a killed daemon
//! leaves the redirection in place (agents are refused, never let around it) and a restarted
//! one takes over the very same maps.

pub mod bpffs;
pub mod cgroup;
pub mod exec_notes;
pub mod mark;
pub mod record;
pub mod selection;
mod take;
pub mod watch;

use std::fs::File;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{Array, HashMap, MapData, SockMap};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, SkLookup, SockOps,
};
use aya::{Btf, Ebpf, EbpfLoader, Pod};
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

/// Where the instance's maps and links are pinned.
pub fn pin_dir(cfg: &crate::config::Config) -> PathBuf {
    cfg.intercept
        .bpffs
        .join("mcp-gateway")
        .join(&cfg.intercept.instance)
}

/// cgroup bpf links refuse attach flags (EINVAL) and always attach as BPF_F_ALLOW_MULTI,
/// so they coexist with systemd's and other daemons' programs; `Single` means "no flags".
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The programs that note what each process's exec loaded (`GwRecord::exe_flags`), and
/// their tracepoints.
const EXEC_TRACEPOINTS: [(&str, &str); 3] = [
    (gateway_ebpf::PROG_EXEC_SEEN, "sched_process_exec"),
    (gateway_ebpf::PROG_FORK_SEEN, "sched_process_fork"),
    (gateway_ebpf::PROG_EXIT_SEEN, "sched_process_exit"),
];

/// Every program the daemon attaches, for `status`.
pub const PROGRAMS: [&str; 14] = [
    SOCK_ADDR_PROGS[0],
    SOCK_ADDR_PROGS[1],
    SOCK_ADDR_PROGS[2],
    SOCK_ADDR_PROGS[3],
    SOCK_ADDR_PROGS[4],
    SOCK_ADDR_PROGS[5],
    SOCK_ADDR_PROGS[6],
    SOCK_ADDR_PROGS[7],
    gateway_ebpf::PROG_SOCK_CREATE,
    gateway_ebpf::PROG_SOCKOPS,
    gateway_ebpf::PROG_SK_LOOKUP,
    EXEC_TRACEPOINTS[0].0,
    EXEC_TRACEPOINTS[1].0,
    EXEC_TRACEPOINTS[2].0,
];

const SOCK_ADDR_PROGS: [&str; 8] = [
    gateway_ebpf::PROG_CONNECT4,
    gateway_ebpf::PROG_CONNECT6,
    gateway_ebpf::PROG_GETPEERNAME4,
    gateway_ebpf::PROG_GETPEERNAME6,
    gateway_ebpf::PROG_SENDMSG4,
    gateway_ebpf::PROG_SENDMSG6,
    gateway_ebpf::PROG_BIND4,
    gateway_ebpf::PROG_BIND6,
];

/// The network namespace whose incoming connections sk_lookup steers: the daemon's own.
const NETNS: &str = "/proc/self/ns/net";

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
    cgroup_map: Mutex<HashMap<MapData, u64, u8>>,
    /// Configured agent cgroups (relative paths).
    agent_cgroups: Vec<String>,
    /// What `cgroup_map` holds now.
    selection: Mutex<selection::Selection>,
    config_map: Mutex<Array<MapData, GwConfig>>,
    links: Vec<PinnedLink>,
    pin_dir: PathBuf,
    pub attached: Attached,
}

impl Interceptor {
    /// Loads, configures and attaches everything; replaces the links a previous daemon
    /// of the same instance left pinned, without a moment in which agents are unmediated.
    /// `listeners` (IPv4, IPv6) become the only sockets redirected connections reach.
    pub fn start(
        resolved: &Resolved,
        listeners: [&impl AsRawFd; 2],
    ) -> Result<Self, InterceptError> {
        let cfg = &resolved.config;
        let bpffs = &cfg.intercept.bpffs;
        bpffs::ensure_mounted(bpffs)?;
        let pin_dir = pin_dir(cfg);
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
        // Created at start so `exec` and services find them; later removals are watched,
        // never undone (systemd creates a slice again itself).
        for rel in &cfg.agents.cgroups {
            cgroup::ensure(&cgroup2, rel)?;
        }
        let selected = selection::resolve(&cgroup2, &cfg.agents.cgroups)?;
        for w in &selected.widened {
            tracing::warn!(
                cgroup = w.cgroup,
                subtree = %w.to.display(),
                owner = w.owner,
                "agent cgroup lies in a subtree delegated to a user, who can move processes \
                 anywhere in it: the whole subtree is mediated as agents (select agents by \
                 user instead, or keep agent cgroups out of delegated subtrees)"
            );
        }

        let notes_dropped = drop_stale_pins(&maps_dir)?;
        let cap = cfg.intercept.selector_capacity;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(gateway_ebpf::MAP_CONNS, cfg.intercept.max_connections)
            .map_max_entries(gateway_ebpf::MAP_CGROUPS, cap)
            .map_max_entries(gateway_ebpf::MAP_AGENT_UIDS, cap)
            .map_max_entries(gateway_ebpf::MAP_SCOPE_PORTS, cap)
            .map_max_entries(gateway_ebpf::MAP_EXEC_FILES, cfg.intercept.max_processes)
            .load(gateway_ebpf::REDIRECT_OBJ)
            .map_err(|e| InterceptError::Load { message: chain(&e) })?;

        // Selectors first, `enabled` last: a program never sees a half-written config.
        sync_map(
            &mut ebpf,
            gateway_ebpf::MAP_CGROUPS,
            selected.classes.clone(),
        )?;
        sync_map(
            &mut ebpf,
            gateway_ebpf::MAP_AGENT_UIDS,
            resolved.agent_uids.iter().map(|u| (*u, 1u8)).collect(),
        )?;
        sync_map(
            &mut ebpf,
            gateway_ebpf::MAP_SCOPE_PORTS,
            cfg.scope.ports.iter().map(|p| (*p, 1u8)).collect(),
        )?;
        // The listeners before the programs: a connection sk_lookup steers finds them.
        let mut sockets: SockMap<MapData> = take_map(&mut ebpf, gateway_ebpf::MAP_LISTENERS)?;
        for (slot, listener) in [gateway_ebpf::LISTENER_V4, gateway_ebpf::LISTENER_V6]
            .into_iter()
            .zip(listeners)
        {
            sockets
                .set(slot, listener, 0)
                .map_err(|e| map_err(gateway_ebpf::MAP_LISTENERS, &e))?;
        }
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
            _reserved: 0,
            mark: cfg.intercept.mark,
            enabled: 1,
            all_tcp: cfg.scope.all_tcp as u8,
            _pad: 0,
        };
        config_map
            .set(0, gw_config, 0)
            .map_err(|e| map_err(gateway_ebpf::MAP_CONFIG, &e))?;
        // Kept until the programs are loaded: they were relocated against its descriptor.
        let _lost = match notes_dropped {
            true => {
                let mut lost: Array<MapData, u64> =
                    take_map(&mut ebpf, gateway_ebpf::MAP_EXEC_LOST)?;
                let was = lost.get(&0, 0).unwrap_or(0);
                lost.set(0, was + 1, 0)
                    .map_err(|e| map_err(gateway_ebpf::MAP_EXEC_LOST, &e))?;
                Some(lost)
            }
            false => None,
        };
        let conns = take_map(&mut ebpf, gateway_ebpf::MAP_CONNS)?;
        let cgroup_map = take_map(&mut ebpf, gateway_ebpf::MAP_CGROUPS)?;

        let old_links = pinned_links(&links_dir)?;
        let cgroup_file = File::open(&attach_path).map_err(|source| InterceptError::Cgroup {
            path: attach_path.clone(),
            source,
        })?;
        // bpffs refuses names with a dot.
        let tag = format!("{}_{}", std::process::id(), boot_ns());
        // The cgroup program types share no attach trait in aya; the steps are the same.
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
        // The exec notes first: an exec between the redirection and them would go unnoted.
        let btf = Btf::from_sys_fs().map_err(|e| prog_err("the kernel's BTF", &e))?;
        for (name, tracepoint) in EXEC_TRACEPOINTS {
            let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
            prog.load(tracepoint, &btf)
                .map_err(|e| prog_err(name, &e))?;
            let id = prog.attach().map_err(|e| prog_err(name, &e))?;
            let link: FdLink = prog.take_link(id).map_err(|e| prog_err(name, &e))?.into();
            links.push(pin(link, &links_dir.join(format!("{name}_{tag}")))?);
        }

        for name in SOCK_ADDR_PROGS {
            links.push(attach_pinned!(CgroupSockAddr, name));
        }
        links.push(attach_pinned!(CgroupSock, gateway_ebpf::PROG_SOCK_CREATE));
        links.push(attach_pinned!(SockOps, gateway_ebpf::PROG_SOCKOPS));
        {
            let name = gateway_ebpf::PROG_SK_LOOKUP;
            let netns = File::open(NETNS).map_err(|e| prog_err(name, &e))?;
            let prog: &mut SkLookup = program(&mut ebpf, name)?;
            prog.load().map_err(|e| prog_err(name, &e))?;
            let id = prog.attach(&netns).map_err(|e| prog_err(name, &e))?;
            let link: FdLink = prog.take_link(id).map_err(|e| prog_err(name, &e))?.into();
            links.push(pin(link, &links_dir.join(format!("{name}_{tag}")))?);
        }
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
            cgroup_map: Mutex::new(cgroup_map),
            agent_cgroups: cfg.agents.cgroups.clone(),
            config_map: Mutex::new(config_map),
            links,
            pin_dir: pin_dir.clone(),
            attached: Attached {
                cgroup2,
                attach_cgroup: attach_path,
                pin_dir,
                agent_cgroups: selected.agents.clone(),
                replaced_links,
            },
            selection: Mutex::new(selected),
        })
    }

    /// Reads the agent cgroups, their ancestors and the ancestors' children again and puts
    /// the difference in force. A cgroup removed and created again (systemd does so when a
    /// slice is stopped and started) has a new id: until it is resolved here the programs
    /// treat it as an agent's. Returns the agent cgroups whose id changed (or that appeared
    /// or vanished) and the directories to watch now.
    pub fn resync_agent_cgroups(&self) -> Result<Resync, InterceptError> {
        let new = selection::resolve(&self.attached.cgroup2, &self.agent_cgroups)?;
        let mut current = self.selection.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.cgroup_map.lock().unwrap_or_else(|p| p.into_inner());
        // New entries first: a moment with an entry too many is a moment of a stale id
        // nothing can be in; one too few would be a resolved cgroup read as unknown.
        for (id, class) in &new.classes {
            if current.classes.get(id) != Some(class) {
                map.insert(id, class, 0)
                    .map_err(|e| map_err(gateway_ebpf::MAP_CGROUPS, &e))?;
            }
        }
        for id in current.classes.keys() {
            if !new.classes.contains_key(id) {
                // The cgroup is gone; a failed removal only leaves a dead id behind.
                let _ = map.remove(id);
            }
        }
        let changed = new
            .agents
            .iter()
            .filter(|a| !current.agents.contains(a))
            .cloned()
            .collect();
        let watched = new.watched.clone();
        *current = new;
        Ok(Resync { changed, watched })
    }

    /// Takes (reads and deletes) the record of an accepted connection.
    pub fn take(&self, client: SocketAddr, listener: SocketAddr) -> Option<GwRecord> {
        let key = record::tuple_key(client, listener);
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        take::take(&mut conns, &key)
    }

    /// Stops redirecting and removes every pin of this instance.
    pub fn detach(self) -> Result<(), InterceptError> {
        disable(&mut self.config_map.lock().unwrap_or_else(|p| p.into_inner()))?;
        let links = self.links.into_iter().map(|l| (self.pin_dir.clone(), l));
        unpin_all(links.collect(), &self.pin_dir)
    }

    /// Leaves links and maps pinned: agents are refused until a daemon is back.
    pub fn keep_attached(self) {
        drop(self);
    }
}

/// What a re-resolution of the agent cgroups found.
#[derive(Debug)]
pub struct Resync {
    /// Agent cgroups with an id not seen before (created again, or created at last).
    pub changed: Vec<(String, u64)>,
    /// The directories whose new children must be resolved at once.
    pub watched: Vec<PathBuf>,
}

/// Pinned record maps an older version made with another record layout: this version's
/// programs could not use them, so they are unpinned and the loader makes them anew. The
/// records of connections in flight across the upgrade are lost with them: those
/// connections are refused, never let through. The exec notes alike: with them go the
/// notes of running processes, so the return says they went (then counted as lost: a
/// process that changed its program before would otherwise be noted anew with it).
fn drop_stale_pins(maps_dir: &Path) -> Result<bool, InterceptError> {
    let mut notes_dropped = false;
    let record = std::mem::size_of::<gateway_ebpf::GwRecord>() as u32;
    let note = std::mem::size_of::<gateway_ebpf::GwExecFile>() as u32;
    for (name, want) in [
        (gateway_ebpf::MAP_CONNS, record),
        (gateway_ebpf::MAP_PENDING, record),
        (gateway_ebpf::MAP_EXEC_FILES, note),
    ] {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) if info.value_size() == want => {}
            Ok(info) => {
                tracing::warn!(
                    map = name,
                    pinned = info.value_size(),
                    now = want,
                    "pinned map has an older record layout: made anew"
                );
                std::fs::remove_file(&path).map_err(|e| InterceptError::Pin {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                notes_dropped |= name == gateway_ebpf::MAP_EXEC_FILES;
            }
            Err(e) => {
                tracing::warn!(map = name, error = %e, "reading a pinned map's layout failed")
            }
        }
    }
    Ok(notes_dropped)
}

/// `mcp-gateway detach`: lets agents connect directly again, on purpose, after the daemon
/// of `cfg`'s instance stopped and left its programs attached (as it does by default, so
/// that a restart or an upgrade never opens a window). Returns the number of links removed;
/// 0 when nothing of the instance is pinned.
pub fn detach_pinned(cfg: &crate::config::Config) -> Result<usize, InterceptError> {
    let pin_dir = cfg
        .intercept
        .bpffs
        .join("mcp-gateway")
        .join(&cfg.intercept.instance);
    if !pin_dir.exists() {
        return Ok(0);
    }
    let config_pin = pin_dir.join("maps").join(gateway_ebpf::MAP_CONFIG);
    if config_pin.exists() {
        let data =
            MapData::from_pin(&config_pin).map_err(|e| map_err(gateway_ebpf::MAP_CONFIG, &e))?;
        let mut map: Array<MapData, GwConfig> = Array::try_from(aya::maps::Map::Array(data))
            .map_err(|e| map_err(gateway_ebpf::MAP_CONFIG, &e))?;
        disable(&mut map)?;
    }
    let links = pinned_links(&pin_dir.join("links"))?;
    let count = links.len();
    unpin_all(links, &pin_dir)?;
    Ok(count)
}

/// Programs still attached (a link held open elsewhere) pass everything once disabled.
fn disable(map: &mut Array<MapData, GwConfig>) -> Result<(), InterceptError> {
    let mut c = map
        .get(&0, 0)
        .map_err(|e| map_err(gateway_ebpf::MAP_CONFIG, &e))?;
    c.enabled = 0;
    map.set(0, c, 0)
        .map_err(|e| map_err(gateway_ebpf::MAP_CONFIG, &e))
}

fn unpin_all(links: Vec<(PathBuf, PinnedLink)>, pin_dir: &Path) -> Result<(), InterceptError> {
    for (path, link) in links {
        drop(link.unpin().map_err(|e| InterceptError::Pin {
            path,
            message: e.to_string(),
        })?);
    }
    std::fs::remove_dir_all(pin_dir).map_err(|e| InterceptError::Pin {
        path: pin_dir.to_owned(),
        message: e.to_string(),
    })
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

/// Makes a pinned hash map hold exactly `want` (it may hold an earlier daemon's selectors).
fn sync_map<K: Pod + Eq + Hash, V: Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    want: std::collections::HashMap<K, V>,
) -> Result<(), InterceptError> {
    let map = ebpf.map_mut(name).ok_or_else(|| InterceptError::Map {
        name: name.into(),
        message: "missing from the embedded object".into(),
    })?;
    let mut set: HashMap<&mut MapData, K, V> =
        HashMap::try_from(map).map_err(|e| map_err(name, &e))?;
    let stale: Vec<K> = set
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in stale {
        set.remove(&k).map_err(|e| map_err(name, &e))?;
    }
    for (k, v) in want {
        set.insert(k, v, 0).map_err(|e| map_err(name, &e))?;
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
