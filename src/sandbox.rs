//! The sandbox a script runs in (DESIGN.md section 6, invariant 6): Linux Landlock
//! for the filesystem, TCP and signals, resource limits, `no_new_privs`, and no
//! capabilities.
//!
//! Everything that can fail or allocate happens in the daemon before the
//! clone (`Sandbox::prepare`): the Landlock ruleset is built with the `landlock`
//! crate from descriptors opened once, beneath the workspace, never through a
//! symlink (the path checked is the folder granted: no second lookup a rename
//! could redirect), and kept as a file descriptor; the seccomp programs are
//! assembled once; the limits are computed. Between clone and exec the child
//! only makes async-signal-safe system calls (`Prepared::apply`): setrlimit,
//! prctl, capset, landlock_restrict_self, seccomp and close_range. The seccomp
//! filter is usually inherited instead: a `Filter` is loaded once on each
//! thread that starts scripts under it (`exec::filtered`), and the child of
//! such a thread only checks that it is under a filter.
//!
//! A ruleset and the run's temporary folder it grants form a `Slot`, kept
//! after the run (the folder emptied) for the next run of the same endpoint,
//! commit and `writable` paths. A kept slot is used again only when a fresh
//! look at the disk shows what it was built from (`Slot::fits`): the same
//! root and `.git`, unchanged since they were listed, the same inode behind
//! each `writable` descriptor opened for this run. Otherwise a new one is
//! built: a stale cache could only grant a folder that is no longer there.
//!
//! What a script may do when the kernel offers it all:
//! - read and execute the system (`/usr`, `/etc`, ...) and the workspace, except
//!   `.git/dynapi`, where the daemon keeps its token, audit log and grants (names
//!   there can be listed, contents not);
//! - write its manifest's `writable` paths (`.` is every top-level entry of the
//!   workspace but `.git` and `dynapi.yaml`; none may create top-level entries), its own temporary
//!   folder (`TMPDIR` and `HOME`, removed after the run) and `/dev/null`;
//! - open no TCP connection and bind no TCP port unless `network: true`;
//! - create no UDP, raw or packet socket unless `network: true`, and (seccomp)
//!   never make namespaces, mount, ptrace, load kernel code or use keyrings,
//!   bpf, perf, userfaultfd or io_uring (`syscall_filter`);
//! - signal and connect to abstract sockets only inside its own sandbox;
//! - hold no descriptor of the daemon's but 0, 1 and 2 (all others are
//!   close-on-exec);
//! - use at most `memory` bytes of data per process and `address_space(memory)`
//!   of address space (which counts shared mappings), write files of at most
//!   `file_size` bytes, and start at most `processes` processes and threads
//!   (the kernel counts them per user and exempts root: as root, only the other
//!   limits hold, and the report says so).
//!
//! This module never decides what a request may ask for; it enforces what the
//! manifest says, resolved by the caller.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope, ABI,
};
use rustix::fs::{Mode as FileMode, OFlags};
use serde::Serialize;

use crate::layout::{PRIVATE, SETTINGS_FILE};

mod user;
pub use user::RunAs;

/// What `dynapi.yaml`'s `sandbox:` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Scripts run only when every part of the sandbox can be enforced.
    Required,
    /// Enforce what the kernel offers; say what is missing.
    #[default]
    Auto,
    /// No Landlock, no limits beyond the time limit and output cap.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "required" => Ok(Mode::Required),
            "auto" => Ok(Mode::Auto),
            "off" => Ok(Mode::Off),
            _ => Err(format!(
                "`{s}` is not a sandbox mode; write `required`, `auto` or `off`"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Required => "required",
            Mode::Auto => "auto",
            Mode::Off => "off",
        })
    }
}

/// Resource limits for each script (per process, except `processes`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of data (heap and private mappings) per process; the address
    /// space, which also counts shared mappings, gets `address_space(memory)`.
    pub memory: u64,
    /// Largest file a script may write, in bytes.
    pub file_size: u64,
    /// Processes and threads a run may add to what the script user has.
    pub processes: u64,
    /// Who scripts run as when the daemon is root (`--script-user`: a name,
    /// `uid` or `uid:gid`); `nobody` when unset. See `RunAs::choose`.
    pub user: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 1 << 30,
            file_size: 1 << 30,
            processes: 256,
            user: None,
        }
    }
}

/// What one run may do: from its manifest, paths already resolved.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: Mode,
    /// What in the workspace the script may write.
    pub writable: Vec<Writable>,
    pub network: bool,
}

#[derive(Debug, Clone)]
pub enum Writable {
    /// `.`: every top-level entry of the workspace but `.git`.
    Workspace,
    /// A folder or file inside the workspace, and the `O_PATH` descriptor the
    /// caller opened it as, beneath the workspace and through no symlink
    /// (`Workspace::open_path`). The rule is made from the descriptor, so what
    /// is granted is what was checked, whatever is renamed meanwhile.
    Path(PathBuf, Arc<OwnedFd>),
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Auto,
            writable: vec![Writable::Workspace],
            network: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("dynapi.yaml says `sandbox: required`, but {0}; scripts do not run until it can be enforced (or the setting is changed)")]
    Unavailable(String),
    #[error("could not set up the sandbox: {0}")]
    Setup(String),
    /// The script user may not enter the workspace.
    #[error("{0}")]
    Closed(String),
}

/// What the kernel and the daemon's user offer, probed once at start-up.
#[derive(Debug, Clone, Serialize)]
pub struct Support {
    /// Landlock's ABI version; 0 when the kernel has none.
    pub landlock_abi: i32,
    /// Filesystem rules (ABI 1).
    pub filesystem: bool,
    /// TCP bind and connect rules (ABI 4, Linux 6.7).
    pub network: bool,
    /// Signals and abstract UNIX sockets confined to the sandbox (ABI 6, Linux 6.12).
    pub scopes: bool,
    /// Whether the process limit binds: the kernel exempts root from it.
    pub processes: bool,
    /// The user scripts run as (see `user.rs`).
    pub user: RunAs,
    /// The seccomp filter (`syscall_filter`): UDP, raw and packet sockets,
    /// namespaces, ptrace and the kernel's other doors. Needs seccomp filters
    /// (Linux 3.5+, `CONFIG_SECCOMP_FILTER`) on x86_64 or aarch64.
    pub syscalls: bool,
    /// What is missing, in words, for `/status` and the log.
    pub missing: Vec<String>,
}

/// The sandbox: what is supported and the limits every script gets.
pub struct Sandbox {
    support: Support,
    limits: Limits,
    /// Tasks of the script user, counted at most once a second (see `nproc`).
    tasks: Mutex<Option<(Instant, u64, u64)>>,
    /// The seccomp filter without and with `network: true`, built once.
    filters: [Option<Arc<Filter>>; 2],
    /// Rulesets kept for the next run of the same endpoint and commit.
    cache: Cache,
    /// Where the runs' temporary folders are made; dropped after `cache`.
    runs: RunsFolder,
}

/// The ABI this code knows the rights of; newer kernels are used at this level.
const KNOWN_ABI: ABI = ABI::V6;

/// System folders every script may read and execute.
const SYSTEM: &[&str] = &[
    "/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/sys",
];
/// Devices scripts may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

impl Sandbox {
    pub fn new(limits: Limits) -> Sandbox {
        let abi = landlock_abi();
        let (user, note) = RunAs::choose(limits.user.as_deref());
        let mut missing = Vec::new();
        if abi < 1 {
            missing.push("the kernel has no Landlock (Linux 5.13+ with `lsm=landlock`): scripts can write anywhere the daemon can".to_string());
        }
        if abi < 4 {
            missing.push(
                "the kernel's Landlock has no TCP rules (Linux 6.7+): scripts can connect out"
                    .to_string(),
            );
        }
        if abi < 6 {
            missing.push(
                "the kernel's Landlock has no scopes (Linux 6.12+): scripts can signal the daemon"
                    .to_string(),
            );
        }
        // Built once here; a filter that could not be assembled means none,
        // said as missing (never reported as enforced while absent).
        let filters = [false, true].map(|network| {
            seccomp_available()
                .then(|| syscall_filter(network, abi >= 4))
                .flatten()
                .map(|program| Arc::new(Filter(program.into())))
        });
        let syscalls = filters.iter().all(Option::is_some);
        if !syscalls {
            missing.push("no seccomp filters here (or an architecture this build has no filter for): scripts can send UDP and make namespaces".to_string());
        }
        missing.extend(note);
        Sandbox {
            support: Support {
                landlock_abi: abi,
                filesystem: abi >= 1,
                network: abi >= 4,
                scopes: abi >= 6,
                processes: user.uid != 0,
                user,
                syscalls,
                missing,
            },
            limits,
            tasks: Mutex::new(None),
            filters,
            cache: Cache::default(),
            runs: RunsFolder::new(),
        }
    }

    pub fn support(&self) -> &Support {
        &self.support
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Refuses a run in `mode` when the mode is `required` and something is missing.
    pub fn check(&self, mode: Mode) -> Result<(), SandboxError> {
        if mode == Mode::Required && !self.support.missing.is_empty() {
            return Err(SandboxError::Unavailable(self.support.missing.join("; ")));
        }
        Ok(())
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        let s = &self.support;
        let mut enforced = vec![
            "no_new_privs",
            "rlimits (data, address space, file size)",
            "descriptors",
        ];
        if s.filesystem {
            enforced.push("filesystem");
        }
        if s.network {
            enforced.push("tcp");
        }
        if s.scopes {
            enforced.push("signals");
        }
        if s.processes {
            enforced.push("processes");
        }
        if s.syscalls {
            enforced.push("syscalls");
        }
        let mut line = format!(
            "scripts run as {} (uid {}); Landlock ABI {}; enforced: {}",
            s.user.name,
            s.user.uid,
            s.landlock_abi,
            enforced.join(", ")
        );
        if !s.missing.is_empty() {
            line.push_str("; missing: ");
            line.push_str(&s.missing.join("; "));
        }
        line
    }

    /// Builds what the child needs for `policy` in `workspace` (nothing for
    /// `sandbox: off`): a ruleset and a temporary folder of the run's own,
    /// taken from the cache of `run`'s endpoint and commit when one is there
    /// and still true to the disk (`Slot::fits`), else built now; the seccomp
    /// program (built once, in `new`); the limits. Fails with `Unavailable`
    /// when the mode is `required` and something is missing. Give the result
    /// back with `finish` once the run and its sweep are over.
    pub fn prepare(
        &self,
        policy: &Policy,
        workspace: &Path,
        run: &RunKey,
        timeout: Duration,
    ) -> Result<Prepared, SandboxError> {
        if policy.mode == Mode::Off {
            return Ok(Prepared::none());
        }
        self.check(policy.mode)?;
        let key = CacheKey {
            endpoint: run.endpoint.clone(),
            commit: run.commit.clone(),
            workspace: workspace.to_path_buf(),
            writable: policy
                .writable
                .iter()
                .map(|w| match w {
                    Writable::Workspace => None,
                    Writable::Path(path, _) => Some(path.clone()),
                })
                .collect(),
            network: policy.network,
        };
        let now = Stamps::of(workspace, policy);
        let cached = self.cache.take(&key, now.as_ref());
        let slot = match cached {
            Some(slot) => slot,
            None => self.slot(policy, workspace, key)?,
        };
        let cpu = timeout.as_secs().saturating_add(2);
        let mut limits = vec![
            (libc::RLIMIT_DATA, self.limits.memory),
            (libc::RLIMIT_AS, address_space(self.limits.memory)),
            (libc::RLIMIT_FSIZE, self.limits.file_size),
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_CPU, cpu),
        ];
        if self.support.processes {
            limits.push((libc::RLIMIT_NPROC, self.nproc()));
        }
        // No limit above the daemon's own hard one: raising it needs
        // CAP_SYS_RESOURCE, which a container may not grant (the child's
        // setrlimit failed with EPERM, and the run with it).
        for (resource, value) in &mut limits {
            *value = (*value).min(hard_limit(*resource));
        }
        let user = &self.support.user;
        Ok(Prepared {
            slot: Some(slot),
            limits,
            user: user.switch.then_some((user.uid, user.gid)),
            no_new_privs: true,
            seccomp: self.filter_for(policy),
            seccomp_inherited: false,
        })
    }

    /// Takes back what `prepare` gave once the run is over and swept: its
    /// temporary folder emptied and its ruleset kept for the endpoint's next
    /// run, or both dropped (the folder removed) when they may not be kept.
    pub fn finish(&self, prepared: Prepared, swept: bool) {
        if let Some(slot) = prepared.slot {
            // A process of the run still alive could write into the folder
            // the next run (perhaps another caller's) gets: never kept then.
            if swept && slot.cacheable && slot.tmp.empty_out() {
                self.cache.put(slot);
            }
        }
    }

    /// The seccomp filter a run under `policy` gets, if any.
    pub fn filter_for(&self, policy: &Policy) -> Option<Arc<Filter>> {
        if policy.mode == Mode::Off {
            return None;
        }
        self.filters[usize::from(policy.network)].clone()
    }

    /// A new ruleset and temporary folder for `key`, the disk as it is now.
    fn slot(&self, policy: &Policy, workspace: &Path, key: CacheKey) -> Result<Slot, SandboxError> {
        let setup = |e: io::Error| SandboxError::Setup(format!("the run's temporary folder: {e}"));
        // The folders the rules list were listed after this moment; a change
        // made later gives them a later change time (see `Stamps`).
        let started = std::time::SystemTime::now();
        let stamps = Stamps::of(workspace, policy);
        let user = &self.support.user;
        if user.switch {
            self.hand_over(policy, workspace)?;
        }
        let tmp = TempDir::new(&self.runs.0, user).map_err(setup)?;
        let ruleset = if self.support.filesystem {
            Some(self.ruleset(policy, workspace, &tmp.path)?)
        } else {
            None
        };
        let cacheable = stamps.as_ref().is_some_and(|s| s.settled_before(started));
        Ok(Slot {
            key,
            stamps,
            ruleset,
            tmp,
            cacheable,
        })
    }

    /// The first folder above `workspace` the script user may not pass, in
    /// words for `/status` and the log (`None` when every one lets it by, or
    /// scripts run as the daemon's own user). Runs still work there: a script
    /// starts in the workspace (entered as root) and reaches it by relative
    /// paths; a program that resolves an absolute path does not.
    pub fn closed_above(&self, workspace: &Path) -> Option<String> {
        let user = &self.support.user;
        if !user.switch {
            return None;
        }
        let real = std::fs::canonicalize(workspace).ok()?;
        for dir in real.ancestors().skip(1) {
            let st = rustix::fs::stat(dir).ok()?;
            if !user.may_enter(&st) {
                return Some(format!(
                    "scripts run as {} (uid {}), who may not pass {} (mode {:o}) above the workspace: scripts start in the workspace and reach it by relative paths, but programs that resolve absolute paths (SQLite among them) fail; put the workspace where that user may pass, `chmod o+x {}`, or choose --script-user",
                    user.name,
                    user.uid,
                    dir.display(),
                    st.st_mode & 0o7777,
                    dir.display(),
                ));
            }
        }
        None
    }

    /// Before a run as another user (`RunAs::switch`): refuses when that user
    /// may not enter the workspace (the script's working folder), and hands
    /// the user what the daemon owns in the run's `writable` paths.
    fn hand_over(&self, policy: &Policy, workspace: &Path) -> Result<(), SandboxError> {
        let user = &self.support.user;
        let root = rustix::fs::open(
            workspace,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            FileMode::empty(),
        )
        .map_err(|e| SandboxError::Setup(format!("{}: {e}", workspace.display())))?;
        let st = rustix::fs::fstat(&root)
            .map_err(|e| SandboxError::Setup(format!("{}: {e}", workspace.display())))?;
        if !user.may_enter(&st) {
            return Err(SandboxError::Closed(format!(
                "scripts run as {} (uid {}), who may not enter the workspace {} (mode {:o}, owner uid {}): let them in (chmod o+x), or choose the user with --script-user",
                user.name,
                user.uid,
                workspace.display(),
                st.st_mode & 0o7777,
                st.st_uid,
            )));
        }
        let mut budget = user::HAND_OVER_BUDGET;
        for w in &policy.writable {
            match w {
                Writable::Path(_, fd) => user.hand_over(fd.as_fd(), &mut budget),
                Writable::Workspace => {
                    for (name, fd) in entries(&root) {
                        if name != ".git" && name != SETTINGS_FILE {
                            user.hand_over(fd.as_fd(), &mut budget);
                        }
                    }
                }
            }
        }
        if budget == 0 {
            tracing::warn!(
                "the writable paths hold more than {} entries: only that many were handed to {}",
                user::HAND_OVER_BUDGET,
                user.name
            );
        }
        Ok(())
    }

    /// The process limit for a run: the tasks the script user has now, plus
    /// `processes`. Counted from /proc at most once a second; every run that
    /// starts within that second gets its share on top of the shares already
    /// handed out in it, so runs started together do not split one share,
    /// and the total stays within `max_running * processes` of the user's own.
    fn nproc(&self) -> u64 {
        let mut cached = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (at, count, handed) = match cached.take() {
            Some((at, n, handed)) if now.duration_since(at) < Duration::from_secs(1) => {
                (at, n, handed)
            }
            _ => (now, count_tasks(self.support.user.uid), 0),
        };
        let handed = handed + self.limits.processes;
        *cached = Some((at, count, handed));
        count + handed
    }

    fn ruleset(
        &self,
        policy: &Policy,
        workspace: &Path,
        tmp: &Path,
    ) -> Result<OwnedFd, SandboxError> {
        let abi = ABI::from(self.support.landlock_abi.min(KNOWN_ABI as i32));
        let setup = |e: &dyn std::fmt::Display| SandboxError::Setup(e.to_string());
        let all = AccessFs::from_all(abi);
        let read = AccessFs::from_read(abi);
        let file = AccessFs::from_file(abi);
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(all)
            .map_err(|e| setup(&e))?;
        if !policy.network && self.support.network {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(abi))
                .map_err(|e| setup(&e))?;
        }
        if self.support.scopes {
            ruleset = ruleset.scope(Scope::from_all(abi)).map_err(|e| setup(&e))?;
        }
        let mut rules: Vec<(OwnedFd, BitFlags<AccessFs>)> = Vec::new();
        // System paths and the run's own folder are the daemon's to trust: opened
        // by path (`/bin` may well be a link to `/usr/bin`). Paths that do not
        // exist (a system without /lib32) grant nothing.
        let by_path = |path: &Path| {
            rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, FileMode::empty()).ok()
        };
        for p in SYSTEM {
            rules.extend(by_path(Path::new(p)).map(|fd| (fd, read)));
        }
        for p in DEVICES {
            rules.extend(by_path(Path::new(p)).map(|fd| (fd, file & !AccessFs::Execute)));
        }
        let tmp = by_path(tmp).ok_or_else(|| setup(&"the run's temporary folder is gone"))?;
        rules.push((tmp, all));
        // The workspace: listing everywhere, reading all but `.git/dynapi`. Its
        // entries are opened from a descriptor of the root, never through a
        // symlink: a symlink a script left at the top (`up -> ..`) grants nothing.
        let root = rustix::fs::open(
            workspace,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            FileMode::empty(),
        )
        .map_err(|e| setup(&format!("{}: {e}", workspace.display())))?;
        let git = entries(&root)
            .into_iter()
            .find(|(name, _)| name == ".git")
            .map(|(_, fd)| fd);
        for (name, fd) in entries(&root) {
            let access = if name == ".git" {
                // Listed through the root's rule; read below, but `dynapi`.
                continue;
            } else if policy
                .writable
                .iter()
                .any(|w| matches!(w, Writable::Workspace))
                && name != SETTINGS_FILE
            {
                // Only an admin token may change dynapi.yaml; scripts never.
                all
            } else {
                read
            };
            rules.push((fd, access));
        }
        if let Some(git) = &git {
            for (name, fd) in entries(git) {
                if name != PRIVATE {
                    rules.push((fd, read));
                }
            }
        }
        rules.push((root, AccessFs::ReadDir.into()));
        for w in &policy.writable {
            if let Writable::Path(_, fd) = w {
                let fd = rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 0)
                    .map_err(|e| setup(&format!("{e}")))?;
                rules.push((fd, all));
            }
        }
        let mut created = ruleset.create().map_err(|e| setup(&e))?;
        for (fd, access) in rules {
            let is_dir = rustix::fs::fstat(&fd)
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir());
            let access = if is_dir { access } else { access & file };
            if access.is_empty() {
                continue;
            }
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| setup(&e))?;
        }
        let fd: Option<OwnedFd> = created.into();
        fd.ok_or_else(|| SandboxError::Setup("Landlock made no ruleset".into()))
    }
}

/// What the child enters between clone and exec: the run's slot (ruleset and
/// temporary folder), its limits, the seccomp program. It must outlive the
/// spawn: the child uses the ruleset's descriptor by number.
#[derive(Debug)]
pub struct Prepared {
    slot: Option<Slot>,
    limits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// The uid and gid to switch to (`RunAs::switch`).
    user: Option<(u32, u32)>,
    no_new_privs: bool,
    seccomp: Option<Arc<Filter>>,
    /// The child starts from a thread already under `seccomp` (`filter_inherited`).
    seccomp_inherited: bool,
}

impl Prepared {
    fn none() -> Prepared {
        Prepared {
            slot: None,
            limits: Vec::new(),
            user: None,
            no_new_privs: false,
            seccomp: None,
            seccomp_inherited: false,
        }
    }

    /// The seccomp filter the script must run under, if any.
    pub fn filter(&self) -> Option<&Arc<Filter>> {
        self.seccomp.as_ref()
    }

    /// Says that the child starts from a thread already under `filter()`
    /// (whose children inherit it, `exec::filtered`): `apply` then checks
    /// that it is under a filter instead of loading it.
    pub fn filter_inherited(&mut self) {
        self.seccomp_inherited = true;
    }

    /// The run's own temporary folder (`TMPDIR` and `HOME`); none without a sandbox.
    pub fn tmp(&self) -> Option<&Path> {
        self.slot.as_ref().map(|s| s.tmp.path.as_path())
    }

    /// Runs in the child between clone and exec, on memory it shares with the
    /// daemon: system calls only, no allocation, no locks, nothing dropped.
    /// An error is the errno of the step that failed.
    pub fn apply(&self) -> Result<(), i32> {
        if self.slot.is_none() {
            close_inherited();
            return Ok(());
        }
        for (resource, value) in &self.limits {
            let limit = libc::rlimit {
                rlim_cur: *value,
                rlim_max: *value,
            };
            // SAFETY: setrlimit reads the struct we pass and nothing else.
            if unsafe { libc::setrlimit(*resource, &limit) } != 0 {
                return Err(errno());
            }
        }
        if let Some((uid, gid)) = self.user {
            // Raw system calls: glibc's wrappers would also change the
            // credentials of every thread of the daemon, whose memory this
            // child shares.
            // SAFETY: system calls with integer arguments and a null list.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                    || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                {
                    return Err(errno());
                }
            }
        }
        // Whatever the daemon was started with (ambient capabilities, a
        // securebit that keeps them across the uid change), none is left.
        drop_capabilities()?;
        // What the script leaves behind (a double fork, `setsid ... &`) is
        // adopted by the script itself while it runs, so it stays in the run's
        // tree; when the script ends, the daemon (a subreaper too) adopts it
        // and kills it (`exec::sweep`). The filter below keeps the script from
        // turning this off.
        // SAFETY: prctl with integer arguments; kept across execve.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(errno());
        }
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(errno());
            }
        }
        if let Some(fd) = self.slot.as_ref().and_then(|s| s.ruleset.as_ref()) {
            // SAFETY: the descriptor is the parent's ruleset, inherited by the child.
            if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) } != 0
            {
                return Err(errno());
            }
        }
        if let Some(filter) = &self.seccomp {
            if self.seccomp_inherited {
                // Started from a thread that carries it (`exec::filtered`,
                // whose `Filtered::holds` knows which filter). This only
                // checks that some filter is there: a lost one fails the run.
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) }
                    != libc::SECCOMP_MODE_FILTER as i32
                {
                    return Err(libc::EPERM);
                }
            } else {
                filter.load()?;
            }
        }
        close_inherited();
        Ok(())
    }
}

/// No capability is left, now or after any exec, whoever the script runs as:
/// the ambient set is cleared, and `capset` empties the permitted, effective
/// and inheritable sets (dropping needs no privilege). For root (a daemon
/// that is root with `sandbox` on but cannot switch users never happens;
/// this is the second lock) the securebits, where they can be set, also stop
/// execve from giving root the full set (`SECBIT_NOROOT`) and ambient
/// capabilities from being raised. File capabilities add nothing under
/// `no_new_privs` (set after this). `capget` then checks: any capability
/// still held fails the run. Async-signal-safe: system calls only.
fn drop_capabilities() -> Result<(), i32> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // SAFETY: prctl with integer arguments; it changes only this process.
    // Without CAP_SETPCAP the securebits fail (EPERM), which is fine here.
    unsafe {
        libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0);
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let none = Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    };
    let mut now = [none; 2];
    // SAFETY: capset reads the header and the two data structs we pass;
    // capget writes two data structs into `now`. (The ambient set is held
    // within the permitted one: empty with it.)
    unsafe {
        if libc::syscall(
            libc::SYS_capset,
            &header as *const Header,
            [none; 2].as_ptr(),
        ) != 0
        {
            return Err(errno());
        }
        if libc::syscall(libc::SYS_capget, &header as *const Header, now.as_mut_ptr()) != 0 {
            return Err(errno());
        }
    }
    if now
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err(libc::EPERM);
    }
    Ok(())
}

/// The daemon's hard limit of `resource` (the most a child may be given
/// without CAP_SYS_RESOURCE), read once: a process's hard limits only go down.
fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    use std::sync::OnceLock;
    static HARD: OnceLock<Vec<(libc::__rlimit_resource_t, u64)>> = OnceLock::new();
    let table = HARD.get_or_init(|| {
        [
            libc::RLIMIT_DATA,
            libc::RLIMIT_AS,
            libc::RLIMIT_FSIZE,
            libc::RLIMIT_CORE,
            libc::RLIMIT_CPU,
            libc::RLIMIT_NPROC,
        ]
        .into_iter()
        .map(|r| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes the struct we pass.
            let ok = unsafe { libc::getrlimit(r, &mut limit) } == 0;
            (
                r,
                if ok {
                    limit.rlim_max
                } else {
                    libc::RLIM_INFINITY
                },
            )
        })
        .collect()
    });
    table
        .iter()
        .find(|(r, _)| *r == resource)
        .map_or(libc::RLIM_INFINITY, |(_, hard)| *hard)
}

fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Which run asks: the cache keeps rulesets per endpoint and served commit.
#[derive(Debug, Clone, Default)]
pub struct RunKey {
    pub endpoint: String,
    pub commit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    endpoint: String,
    commit: String,
    workspace: PathBuf,
    /// Each `writable` entry: `None` for `.`, else the path.
    writable: Vec<Option<PathBuf>>,
    network: bool,
}

/// A ruleset and the temporary folder it grants, for one run at a time.
#[derive(Debug)]
struct Slot {
    key: CacheKey,
    /// The disk the ruleset was made from; `None` when it could not be read
    /// (never kept then).
    stamps: Option<Stamps>,
    ruleset: Option<OwnedFd>,
    tmp: TempDir,
    /// Whether the stamps are sure to change with any change the listing
    /// missed (`Stamps::settled_before`).
    cacheable: bool,
}

impl Slot {
    /// Whether this slot's ruleset grants exactly what one built now would:
    /// the same folders (device and inode of the root, `.git` and each
    /// `writable` descriptor opened for this run), listed when they were as
    /// they are (the root's and `.git`'s change times), and its
    /// temporary folder still the one it made, private and empty.
    fn fits(&self, now: Option<&Stamps>) -> bool {
        self.cacheable && now.is_some() && self.stamps.as_ref() == now && self.tmp.intact()
    }
}

/// What a ruleset was made from, cheap to compare: a `stat` of the root and
/// of `.git` (whose entries are each a rule), an `fstat` of each `writable`
/// descriptor. A folder's change time moves whenever an entry is
/// added, removed or renamed in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamps {
    root: Stamp,
    git: Option<Stamp>,
    writable: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    /// The inode's change time: it moves with every entry added, removed or
    /// renamed in the folder, and unlike the modification time no process
    /// can set it back (`utimensat` sets only the other two).
    ctime: (i64, i64),
}

impl Stamp {
    fn of(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

impl Stamps {
    fn of(workspace: &Path, policy: &Policy) -> Option<Stamps> {
        let root = rustix::fs::stat(workspace).ok()?;
        let git = rustix::fs::lstat(workspace.join(".git")).ok();
        let mut writable = Vec::new();
        for w in &policy.writable {
            if let Writable::Path(_, fd) = w {
                let st = rustix::fs::fstat(fd.as_fd()).ok()?;
                writable.push((st.st_dev, st.st_ino));
            }
        }
        Some(Stamps {
            root: Stamp::of(&root),
            git: git.as_ref().map(Stamp::of),
            writable,
        })
    }

    /// Whether the listed folders last changed well before `started`. File
    /// times come from a clock that ticks every few milliseconds: a change
    /// in the same tick as the one stamped would leave the time as it was.
    /// A folder changed before `started - SETTLE` and listed after
    /// `started` cannot change again without a later time.
    fn settled_before(&self, started: std::time::SystemTime) -> bool {
        const SETTLE: Duration = Duration::from_millis(100);
        let Ok(since) = started.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let limit = since.saturating_sub(SETTLE);
        let old = |s: &Stamp| {
            let at = Duration::new(
                s.ctime.0.max(0) as u64,
                s.ctime.1.clamp(0, 999_999_999) as u32,
            );
            at < limit
        };
        old(&self.root) && self.git.as_ref().is_none_or(old)
    }
}

/// Slots waiting for their endpoint's next run. Entries of an endpoint's
/// older commits go when a run of a newer one asks; the whole cache goes when
/// it holds too many.
#[derive(Debug, Default)]
struct Cache {
    slots: Mutex<HashMap<CacheKey, Vec<Slot>>>,
}

/// Keys kept at most, and slots per key (runs at once of one endpoint).
const CACHE_KEYS: usize = 256;
const CACHE_SLOTS: usize = 64;
/// Slots kept at most in all: each holds a ruleset descriptor, and the
/// daemon's descriptors are counted (1,024 by default).
const CACHE_TOTAL: usize = 128;

impl Cache {
    /// A kept slot for `key` that still fits the disk; slots that do not are
    /// dropped (their folders removed).
    fn take(&self, key: &CacheKey, now: Option<&Stamps>) -> Option<Slot> {
        let mut stale = Vec::new();
        let found = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if !slots.contains_key(key) {
                let old: Vec<CacheKey> = slots
                    .keys()
                    .filter(|k| k.endpoint == key.endpoint)
                    .cloned()
                    .collect();
                for k in old {
                    stale.extend(slots.remove(&k).unwrap_or_default());
                }
                if slots.len() >= CACHE_KEYS {
                    stale.extend(slots.drain().flat_map(|(_, v)| v));
                }
                slots.insert(key.clone(), Vec::new());
            }
            let list = slots.get_mut(key)?;
            let mut found = None;
            while let Some(slot) = list.pop() {
                if slot.fits(now) {
                    found = Some(slot);
                    break;
                }
                stale.push(slot);
            }
            found
        };
        // Folders are removed outside the lock.
        drop(stale);
        found
    }

    fn put(&self, slot: Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Each kept slot holds a descriptor (its ruleset): at most
        // `CACHE_TOTAL` of them, whatever the endpoints and commits.
        let kept: usize = slots.values().map(Vec::len).sum();
        if kept >= CACHE_TOTAL {
            return;
        }
        if let Some(list) = slots.get_mut(&slot.key) {
            if list.len() < CACHE_SLOTS {
                list.push(slot);
            }
        }
    }
}

/// A run's own temporary folder (mode 0700), removed with everything in it
/// when dropped; between two runs of a cached slot, emptied.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Its owner: the script user.
    uid: u32,
}

impl TempDir {
    /// A new folder in `parent`, owned by `user`.
    fn new(parent: &Path, user: &RunAs) -> io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        let path = parent.join(format!("dynapi-run-{}", hex::encode(bytes)));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let mut made = TempDir {
            path,
            dev: 0,
            ino: 0,
            uid: user.uid,
        };
        if user.switch {
            std::os::unix::fs::lchown(&made.path, Some(user.uid), Some(user.gid))?;
        }
        let st = rustix::fs::lstat(&made.path)?;
        (made.dev, made.ino) = (st.st_dev, st.st_ino);
        Ok(made)
    }

    /// Still the folder made here (not a symlink, nor another folder by
    /// that name), ours, and private.
    fn intact(&self) -> bool {
        rustix::fs::lstat(&self.path).is_ok_and(|st| {
            st.st_dev == self.dev
                && st.st_ino == self.ino
                && rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir()
                && st.st_uid == self.uid
                && st.st_mode & 0o7777 == 0o700
        })
    }

    /// Makes the folder private again (a script may have changed its mode)
    /// and removes everything in it; false if that failed.
    fn empty_out(&self) -> bool {
        if !self.intact() {
            use std::os::unix::fs::PermissionsExt;
            let fixed = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_dir())
                && std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))
                    .is_ok();
            if !fixed || !self.intact() {
                return false;
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return false;
        };
        for entry in entries {
            let Ok(entry) = entry else { return false };
            let path = entry.path();
            // Neither call follows a symlink.
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                Ok(_) => std::fs::remove_file(&path),
                Err(e) => Err(e),
            };
            if removed.is_err() {
                return false;
            }
        }
        true
    }
}

/// The daemon's folder for the runs' temporary folders, in the system's
/// temporary folder: mode 0711 and the daemon's own, so the script user, who
/// owns each run's folder, can enter it but neither list nor rename what is
/// in it (in `/tmp` itself, sticky, an owner may rename its own entries).
/// The paths the daemon empties and removes as root thus lead where they did
/// when it made them. Removed when the sandbox is dropped; `/tmp` itself when
/// it cannot be made.
#[derive(Debug)]
struct RunsFolder(PathBuf, bool);

impl RunsFolder {
    fn new() -> RunsFolder {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mut bytes = [0u8; 8];
        let made = getrandom::fill(&mut bytes).ok().and_then(|()| {
            let path = std::env::temp_dir().join(format!("dynapi-{}", hex::encode(bytes)));
            std::fs::DirBuilder::new().mode(0o711).create(&path).ok()?;
            // Whatever the umask took away.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o711)).ok()?;
            Some(path)
        });
        match made {
            Some(path) => RunsFolder(path, true),
            None => RunsFolder(std::env::temp_dir(), false),
        }
    }
}

impl Drop for RunsFolder {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Every descriptor but 0, 1 and 2 becomes close-on-exec: whatever the daemon
/// inherited or opened without `O_CLOEXEC` never reaches a script. Marked, not
/// closed, so that std's own close-on-exec pipe still reports a failed exec.
/// Async-signal-safe: system calls only.
fn close_inherited() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with integer arguments (Linux 5.11+).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return;
    }
    // Older kernels: each possible descriptor, up to the soft limit.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 20) as i32
    } else {
        1024
    };
    for fd in 3..max {
        // SAFETY: fcntl on a number; a closed one gives EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// The address space a script's process may map for a `memory` limit: twice
/// the limit plus 256 MiB. RLIMIT_DATA (the limit itself) does not see shared
/// mappings; RLIMIT_AS does, but it also counts what is only reserved, never
/// touched: 8 MiB of stack per thread, glibc's 64 MiB malloc arena per thread,
/// language runtimes' reservations. The headroom lets ordinary programs start;
/// a shared mapping still cannot grow past about twice the limit. (Programs
/// that reserve huge ranges up front, such as WebAssembly engines, need a
/// larger `--script-memory`.)
pub fn address_space(memory: u64) -> u64 {
    memory.saturating_mul(2).saturating_add(256 << 20)
}

/// The entries of the folder `dir` (a descriptor), each opened `O_PATH` from it
/// without following a symlink; symlinks are left out.
fn entries(dir: &OwnedFd) -> Vec<(std::ffi::OsString, OwnedFd)> {
    let Ok(listing) = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        FileMode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(names) = rustix::fs::Dir::read_from(&listing) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in names.flatten() {
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
        let Ok(fd) = rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            FileMode::empty(),
        ) else {
            continue;
        };
        let symlink = rustix::fs::fstat(&fd).map_or(true, |st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
        });
        if !symlink {
            found.push((name.to_os_string(), fd));
        }
    }
    found
}

/// One classic BPF instruction, laid out as the kernel's `struct sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// A seccomp program, assembled once (`syscall_filter`).
#[derive(Debug)]
pub struct Filter(Box<[Insn]>);

impl Filter {
    /// Puts the calling thread under the filter, and under `no_new_privs`
    /// (which a filter needs without CAP_SYS_ADMIN), for the rest of its life;
    /// every process it starts afterwards inherits both (`exec::filtered`).
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.load().map_err(io::Error::from_raw_os_error)
    }

    /// Loads the filter on the calling thread (`no_new_privs` already set).
    /// Async-signal-safe: one system call.
    fn load(&self) -> Result<(), i32> {
        let fprog = Fprog {
            len: self.0.len() as u16,
            filter: self.0.as_ptr(),
        };
        // SAFETY: `fprog` points at the program, alive for the call; the
        // kernel copies it.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const Fprog,
                0,
                0,
            )
        };
        if r != 0 {
            return Err(errno());
        }
        Ok(())
    }
}

/// The kernel's `struct sock_fprog`.
#[repr(C)]
struct Fprog {
    len: u16,
    filter: *const Insn,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_003E);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xC000_00B7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

/// Whether this kernel takes seccomp filters returning errors, and this build
/// has a filter for the architecture.
fn seccomp_available() -> bool {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    let action: u32 = RET_ERRNO;
    // SAFETY: the call reads the u32 we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &action as *const u32,
        )
    };
    AUDIT_ARCH.is_some() && r == 0
}

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

/// System calls no script needs that open doors the rest of the sandbox
/// assumes shut: namespaces and mounts (a new user namespace hands out every
/// capability inside it), other processes' memory, the kernel's keyrings,
/// bpf, perf, userfaultfd, io_uring (which makes sockets and opens files
/// outside these checks), modules and kexec, handles that skip path lookup.
const DENIED: &[libc::c_long] = &[
    libc::SYS_setns,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_open_by_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
];

/// Every namespace flag of clone and unshare. `CLONE_NEWTIME` (0x80) is only a
/// flag for unshare: in clone's first argument that bit is the exit signal.
const NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
const CLONE_NEWTIME: u32 = 0x80;

/// A small assembler for the filter: jumps name labels, resolved at the end.
struct Asm {
    code: Vec<(u16, Target, Target, u32)>,
    labels: Vec<(Target, usize)>,
    /// Labels made by `fresh` so far.
    fresh: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Next,
    To(&'static str),
    /// A label made by `Asm::fresh`.
    At(usize),
}

impl Asm {
    const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const AND: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const JSET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K

    fn op(&mut self, code: u16, k: u32) {
        self.code.push((code, Target::Next, Target::Next, k));
    }
    fn jump(&mut self, code: u16, k: u32, yes: Target, no: Target) {
        self.code.push((code, yes, no, k));
    }
    fn label(&mut self, name: &'static str) {
        self.place(Target::To(name));
    }
    fn place(&mut self, label: Target) {
        self.labels.push((label, self.code.len()));
    }
    fn fresh(&mut self) -> Target {
        self.fresh += 1;
        Target::At(self.fresh)
    }
    /// Jumps to the target of the range holding the value in the
    /// accumulator, or to `otherwise`: a binary search over `ranges` (sorted,
    /// disjoint, inclusive), a few comparisons for any value. The kernel runs
    /// the filter once per system call number when it is installed, to learn
    /// which calls it always allows, so a short path for each number is what
    /// makes installing it cheap, on every run.
    fn search(&mut self, ranges: &[(u32, u32, Target)], otherwise: Target) {
        match ranges {
            [] => self.jump(Self::JGE, 0, otherwise, otherwise),
            [(lo, hi, to)] if lo == hi => self.jump(Self::JEQ, *lo, *to, otherwise),
            [(lo, hi, to)] => {
                self.jump(Self::JGE, *lo, Target::Next, otherwise);
                self.jump(Self::JGE, hi.saturating_add(1), otherwise, *to);
            }
            _ => {
                let mid = ranges.len() / 2;
                let upper = self.fresh();
                self.jump(Self::JGE, ranges[mid].0, upper, Target::Next);
                self.search(&ranges[..mid], otherwise);
                self.place(upper);
                self.search(&ranges[mid..], otherwise);
            }
        }
    }
    /// Loads the low 32 bits of argument `i` (both architectures are little-endian).
    fn arg(&mut self, i: u32) {
        self.op(Self::LD_ABS, 16 + 8 * i);
    }
    fn finish(self) -> Option<Vec<Insn>> {
        let at = |i: usize, t: Target| -> Option<u8> {
            match t {
                Target::Next => Some(0),
                label => {
                    let (_, to) = self.labels.iter().find(|(n, _)| *n == label)?;
                    u8::try_from(to.checked_sub(i + 1)?).ok()
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, &(code, jt, jf, k))| {
                Some(Insn {
                    code,
                    jt: at(i, jt)?,
                    jf: at(i, jf)?,
                    k,
                })
            })
            .collect()
    }
}

/// The seccomp program every sandboxed script gets: `DENIED` calls fail with
/// EPERM; clone and unshare with a namespace flag fail with EPERM; clone3
/// fails with ENOSYS (its flags sit in memory a filter cannot read, and libc
/// falls back to clone); prctl may not unset the child subreaper. Unless
/// `network`, sockets of AF_INET and AF_INET6 other than TCP (UDP, raw, SCTP,
/// MPTCP...) and AF_PACKET fail with EACCES; TCP too when Landlock has no TCP
/// rules (`!tcp_by_landlock`), so `network: false` holds on older kernels. A
/// system call of another architecture (i386 through `int 0x80`, x32) kills
/// the process or fails.
fn syscall_filter(network: bool, tcp_by_landlock: bool) -> Option<Vec<Insn>> {
    use Target::{Next, To};
    let errno = |e: i32| RET_ERRNO | (e as u32 & 0xffff);
    let nr = |n: libc::c_long| n as u32;
    let mut a = Asm {
        code: Vec::new(),
        labels: Vec::new(),
        fresh: 0,
    };
    a.op(Asm::LD_ABS, 4); // arch
    a.jump(Asm::JEQ, AUDIT_ARCH?, To("arch_ok"), Next);
    a.op(Asm::RET, RET_KILL_PROCESS);
    a.label("arch_ok");
    a.op(Asm::LD_ABS, 0); // nr
    if cfg!(target_arch = "x86_64") {
        // x32 system calls carry bit 30.
        a.jump(Asm::JGE, 0x4000_0000, To("enosys"), Next);
    }
    let mut cases: Vec<(u32, Target)> = DENIED.iter().map(|&n| (nr(n), To("eperm"))).collect();
    cases.extend([
        (nr(libc::SYS_clone3), To("enosys")),
        (nr(libc::SYS_clone), To("clone")),
        (nr(libc::SYS_unshare), To("unshare")),
        (nr(libc::SYS_prctl), To("prctl")),
    ]);
    if !network {
        cases.push((nr(libc::SYS_socket), To("socket")));
    }
    a.search(&ranges(cases), To("allow"));

    // clone(flags, ...) on x86_64 and aarch64: flags first.
    a.label("clone");
    a.arg(0);
    // CLONE_PARENT too: its child would be the daemon's, outside the run's
    // subreaper, and outlive the run.
    a.jump(
        Asm::JSET,
        NAMESPACES | libc::CLONE_PARENT as u32,
        To("eperm"),
        To("allow"),
    );
    a.label("unshare");
    a.arg(0);
    a.jump(
        Asm::JSET,
        NAMESPACES | CLONE_NEWTIME,
        To("eperm"),
        To("allow"),
    );
    // prctl(PR_SET_CHILD_SUBREAPER, 0) only: the child sets it to 1 under
    // this filter (inherited from `exec::filtered`). A script's descendant
    // that sets it too only keeps orphans lower in the run's tree, which
    // `exec::sweep` walks.
    a.label("prctl");
    a.arg(0);
    a.jump(
        Asm::JEQ,
        libc::PR_SET_CHILD_SUBREAPER as u32,
        Next,
        To("allow"),
    );
    a.arg(1);
    a.jump(Asm::JEQ, 0, To("eperm"), To("allow"));
    if !network {
        a.label("socket");
        a.arg(0);
        a.jump(Asm::JEQ, libc::AF_PACKET as u32, To("eacces"), Next);
        let inet = if tcp_by_landlock {
            To("inet")
        } else {
            To("eacces")
        };
        a.jump(Asm::JEQ, libc::AF_INET as u32, inet, Next);
        a.jump(Asm::JEQ, libc::AF_INET6 as u32, inet, Next);
        // Of the other families, only local ones: unix sockets, and netlink
        // (a program asking for its interfaces). AF_SMC, RDS, TIPC, VSOCK,
        // AF_ALG and the like could carry traffic Landlock does not see.
        a.jump(Asm::JEQ, libc::AF_UNIX as u32, To("allow"), Next);
        a.jump(Asm::JEQ, libc::AF_NETLINK as u32, To("allow"), To("eacces"));
        if tcp_by_landlock {
            // TCP is Landlock's to allow or refuse; anything else is not.
            a.label("inet");
            a.arg(1);
            a.op(Asm::AND, 0xf); // SOCK_TYPE_MASK: drops SOCK_NONBLOCK, SOCK_CLOEXEC
            a.jump(Asm::JEQ, libc::SOCK_STREAM as u32, Next, To("eacces"));
            a.arg(2);
            a.jump(Asm::JEQ, 0, To("allow"), Next);
            a.jump(
                Asm::JEQ,
                libc::IPPROTO_TCP as u32,
                To("allow"),
                To("eacces"),
            );
        }
        a.label("eacces");
        a.op(Asm::RET, errno(libc::EACCES));
    }
    a.label("allow");
    a.op(Asm::RET, RET_ALLOW);
    a.label("eperm");
    a.op(Asm::RET, errno(libc::EPERM));
    a.label("enosys");
    a.op(Asm::RET, errno(libc::ENOSYS));
    a.finish()
}

/// System call numbers and where each goes, as sorted ranges: neighbours
/// going to the same place are one range.
fn ranges(mut cases: Vec<(u32, Target)>) -> Vec<(u32, u32, Target)> {
    cases.sort_by_key(|&(n, _)| n);
    cases.dedup_by_key(|&mut (n, _)| n);
    let mut ranges: Vec<(u32, u32, Target)> = Vec::new();
    for (n, to) in cases {
        match ranges.last_mut() {
            Some((_, hi, last)) if *last == to && hi.checked_add(1) == Some(n) => *hi = n,
            _ => ranges.push((n, n, to)),
        }
    }
    ranges
}

/// The kernel's Landlock ABI version, 0 without Landlock.
fn landlock_abi() -> i32 {
    const VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the VERSION flag the call only
    // returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// Tasks (processes and threads) whose owner is `uid`, from /proc: each
/// process's `task` folder has one entry per thread (its link count is that plus 2).
fn count_tasks(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(entry.path().join("task")) else {
            continue;
        };
        if meta.uid() == uid {
            total += meta.nlink().saturating_sub(2).max(1);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_explain_mistakes() {
        assert_eq!("required".parse::<Mode>(), Ok(Mode::Required));
        assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
        assert!("strict".parse::<Mode>().unwrap_err().contains("`required`"));
    }

    #[test]
    fn the_syscall_filter_assembles_for_every_policy() {
        if AUDIT_ARCH.is_none() {
            return;
        }
        for network in [false, true] {
            for tcp in [false, true] {
                let program = syscall_filter(network, tcp).expect("every jump resolves");
                assert!(program.len() < 200, "{}", program.len());
                assert_eq!(program.last().unwrap().code, Asm::RET);
            }
        }
    }

    /// Runs `program` on one system call as the kernel would: `nr`, the
    /// architecture, the low halves of the arguments.
    fn run(program: &[Insn], nr: u32, arch: u32, args: [u32; 3]) -> u32 {
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                Asm::LD_ABS => {
                    acc = match i.k {
                        0 => nr,
                        4 => arch,
                        k => args[((k - 16) / 8) as usize],
                    }
                }
                Asm::AND => acc &= i.k,
                Asm::JEQ => pc += jump(acc == i.k),
                Asm::JGE => pc += jump(acc >= i.k),
                Asm::JSET => pc += jump(acc & i.k != 0),
                Asm::RET => return i.k,
                code => panic!("unexpected instruction {code:#x}"),
            }
        }
    }

    #[test]
    fn the_syscall_filter_decides_every_call_as_the_policy_says() {
        let Some(arch) = AUDIT_ARCH else { return };
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        let eacces = RET_ERRNO | libc::EACCES as u32;
        let nr = |n: libc::c_long| n as u32;
        for network in [false, true] {
            for tcp in [false, true] {
                let program = syscall_filter(network, tcp).unwrap();
                assert_eq!(run(&program, 0, 0x4000_0003, [0; 3]), RET_KILL_PROCESS);
                for n in (0..1024).chain([0x4000_0000, 0x4000_0001, u32::MAX]) {
                    let got = run(&program, n, arch, [0; 3]);
                    let want = if DENIED.iter().any(|&d| nr(d) == n) {
                        eperm
                    } else if n == nr(libc::SYS_clone3)
                        || (cfg!(target_arch = "x86_64") && n >= 0x4000_0000)
                    {
                        enosys
                    } else if n == nr(libc::SYS_socket) && !network {
                        // Family 0 (AF_UNSPEC) is no local family.
                        eacces
                    } else {
                        // clone, unshare and prctl with zero arguments
                        // included: nothing the filter refuses.
                        RET_ALLOW
                    };
                    assert_eq!(got, want, "system call {n}, network {network}, tcp {tcp}");
                }
                let clone = |flags: u32| run(&program, nr(libc::SYS_clone), arch, [flags, 0, 0]);
                assert_eq!(clone(libc::SIGCHLD as u32), RET_ALLOW);
                assert_eq!(clone(libc::CLONE_NEWUSER as u32), eperm);
                assert_eq!(clone((libc::CLONE_PARENT | libc::SIGCHLD) as u32), eperm);
                let unshare =
                    |flags: u32| run(&program, nr(libc::SYS_unshare), arch, [flags, 0, 0]);
                assert_eq!(unshare(libc::CLONE_FILES as u32), RET_ALLOW);
                assert_eq!(unshare(CLONE_NEWTIME), eperm);
                let prctl =
                    |op: u32, value: u32| run(&program, nr(libc::SYS_prctl), arch, [op, value, 0]);
                let subreaper = libc::PR_SET_CHILD_SUBREAPER as u32;
                assert_eq!(prctl(subreaper, 0), eperm);
                assert_eq!(prctl(subreaper, 1), RET_ALLOW);
                assert_eq!(prctl(libc::PR_SET_NAME as u32, 0), RET_ALLOW);
                let socket = |family: i32, kind: i32, proto: i32| {
                    run(
                        &program,
                        nr(libc::SYS_socket),
                        arch,
                        [family as u32, kind as u32, proto as u32],
                    )
                };
                let refused = if network { RET_ALLOW } else { eacces };
                assert_eq!(socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0), RET_ALLOW);
                assert_eq!(socket(libc::AF_INET, libc::SOCK_DGRAM, 0), refused);
                assert_eq!(socket(libc::AF_INET6, libc::SOCK_RAW, 0), refused);
                assert_eq!(socket(libc::AF_PACKET, libc::SOCK_RAW, 0), refused);
                assert_eq!(socket(libc::AF_NETLINK, libc::SOCK_RAW, 0), RET_ALLOW);
                for other in [
                    libc::AF_ALG,
                    libc::AF_VSOCK,
                    libc::AF_TIPC,
                    libc::AF_RDS,
                    43,
                ] {
                    assert_eq!(
                        socket(other, libc::SOCK_STREAM, 0),
                        refused,
                        "family {other}"
                    );
                }
                let stream = socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                let tcp_refused = if network || tcp { RET_ALLOW } else { eacces };
                assert_eq!(stream, tcp_refused);
            }
        }
    }
}
