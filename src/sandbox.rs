//! The sandbox a script runs in (DESIGN.md section 6, invariant 6): Linux Landlock
//! for the filesystem, TCP and signals, resource limits, `no_new_privs`, and no
//! capabilities.
//!
//! Everything that can fail or allocate happens in the daemon before the fork
//! (`Sandbox::prepare`): the Landlock ruleset is built with the `landlock` crate
//! and kept as a file descriptor; the limits are computed. Between fork and exec
//! the child only makes async-signal-safe system calls (`Prepared::enter`):
//! setrlimit, prctl and landlock_restrict_self.
//!
//! What a script may do when the kernel offers it all:
//! - read and execute the system (`/usr`, `/etc`, ...) and the workspace, except
//!   `.git/dynapi`, where the daemon keeps its token, audit log and grants (names
//!   there can be listed, contents not);
//! - write its manifest's `writable` paths (`.` is every top-level entry of the
//!   workspace but `.git` and `dynapi.yaml`; none may create top-level entries), its own temporary
//!   folder (`TMPDIR` and `HOME`, removed after the run) and `/dev/null`;
//! - open no TCP connection and bind no TCP port unless `network: true`;
//! - signal and connect to abstract sockets only inside its own sandbox;
//! - use at most `memory` bytes of data per process, write files of at most
//!   `file_size` bytes, and start at most `processes` processes and threads
//!   (the kernel counts them per user and exempts root: as root, only the other
//!   limits hold, and the report says so).
//!
//! This module never decides what a request may ask for; it enforces what the
//! manifest says, resolved by the caller.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, Scope, ABI,
};
use serde::Serialize;

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
    /// Bytes of data (heap and private mappings) per process.
    pub memory: u64,
    /// Largest file a script may write, in bytes.
    pub file_size: u64,
    /// Processes and threads a run may add to what the daemon's user has.
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 1 << 30,
            file_size: 1 << 30,
            processes: 256,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writable {
    /// `.`: every top-level entry of the workspace but `.git`.
    Workspace,
    /// A folder or file inside the workspace.
    Path(PathBuf),
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
    /// What is missing, in words, for `/status` and the log.
    pub missing: Vec<String>,
}

/// The sandbox: what is supported and the limits every script gets.
pub struct Sandbox {
    support: Support,
    limits: Limits,
    uid: u32,
    /// Tasks of the daemon's user, counted at most once a second (see `nproc`).
    tasks: Mutex<Option<(Instant, u64)>>,
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
/// The folder in the workspace's `.git` the daemon keeps to itself.
pub const PRIVATE: &str = "dynapi";

impl Sandbox {
    pub fn new(limits: Limits) -> Sandbox {
        let abi = landlock_abi();
        // SAFETY: geteuid cannot fail and touches no memory.
        let uid = unsafe { libc::geteuid() };
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
        if uid == 0 {
            missing.push("the daemon runs as root, whom the kernel exempts from the process limit: run it as another user (the Docker image does)".to_string());
        }
        Sandbox {
            support: Support {
                landlock_abi: abi,
                filesystem: abi >= 1,
                network: abi >= 4,
                scopes: abi >= 6,
                processes: uid != 0,
                missing,
            },
            limits,
            uid,
            tasks: Mutex::new(None),
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
        let mut enforced = vec!["no_new_privs", "rlimits (memory, file size)"];
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
        let mut line = format!(
            "Landlock ABI {}; enforced: {}",
            s.landlock_abi,
            enforced.join(", ")
        );
        if !s.missing.is_empty() {
            line.push_str("; missing: ");
            line.push_str(&s.missing.join("; "));
        }
        line
    }

    /// Builds what the child needs for `policy` in `workspace`, with `tmp` as the
    /// run's own temporary folder (none, or `sandbox: off`: nothing to enter).
    /// Fails with `Unavailable` when the mode is `required` and something is
    /// missing.
    pub fn prepare(
        &self,
        policy: &Policy,
        workspace: &Path,
        tmp: Option<&Path>,
        timeout: Duration,
    ) -> Result<Prepared, SandboxError> {
        let Some(tmp) = tmp.filter(|_| policy.mode != Mode::Off) else {
            return Ok(Prepared::none());
        };
        self.check(policy.mode)?;
        let ruleset = if self.support.filesystem {
            Some(self.ruleset(policy, workspace, tmp)?)
        } else {
            None
        };
        let cpu = timeout.as_secs().saturating_add(2);
        let mut limits = vec![
            (libc::RLIMIT_DATA, self.limits.memory),
            (libc::RLIMIT_FSIZE, self.limits.file_size),
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_CPU, cpu),
        ];
        if self.support.processes {
            limits.push((libc::RLIMIT_NPROC, self.nproc()));
        }
        Ok(Prepared {
            ruleset,
            limits,
            drop_capabilities: self.uid == 0,
            no_new_privs: true,
        })
    }

    /// The process limit for a run: the tasks the daemon's user has now, plus
    /// `processes`. Counted from /proc at most once a second; a run that starts
    /// while another fills its share gets its own share on top, so the total stays
    /// within `max_running * processes` of the user's own.
    fn nproc(&self) -> u64 {
        let mut cached = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let count = match *cached {
            Some((at, n)) if now.duration_since(at) < Duration::from_secs(1) => n,
            _ => {
                let n = count_tasks(self.uid);
                *cached = Some((now, n));
                n
            }
        };
        count + self.limits.processes
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
        let mut rules: Vec<(PathBuf, BitFlags<AccessFs>)> = Vec::new();
        for p in SYSTEM {
            rules.push((PathBuf::from(p), read));
        }
        for p in DEVICES {
            rules.push((PathBuf::from(p), file & !AccessFs::Execute));
        }
        rules.push((tmp.to_path_buf(), all));
        // The workspace: listing everywhere, reading all but `.git/dynapi`.
        rules.push((workspace.to_path_buf(), AccessFs::ReadDir.into()));
        let git = workspace.join(".git");
        // Only an admin token may change dynapi.yaml; scripts never.
        let settings = workspace.join(crate::registry::SETTINGS_FILE);
        for entry in children(workspace) {
            if entry != git {
                rules.push((entry, read));
            }
        }
        for entry in children(&git) {
            if entry.file_name().is_some_and(|n| n != PRIVATE) {
                rules.push((entry, read));
            }
        }
        for w in &policy.writable {
            match w {
                Writable::Workspace => {
                    for entry in children(workspace) {
                        if entry != git && entry != settings {
                            rules.push((entry, all));
                        }
                    }
                }
                Writable::Path(p) => rules.push((p.clone(), all)),
            }
        }
        let mut created = ruleset.create().map_err(|e| setup(&e))?;
        for (path, access) in rules {
            // Paths that do not exist (a system without /lib32) grant nothing.
            let Ok(fd) = PathFd::new(&path) else { continue };
            let access = if path.is_dir() { access } else { access & file };
            if access.is_empty() {
                continue;
            }
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| setup(&format!("{}: {e}", path.display())))?;
        }
        let fd: Option<OwnedFd> = created.into();
        fd.ok_or_else(|| SandboxError::Setup("Landlock made no ruleset".into()))
    }
}

/// What the child applies between fork and exec.
#[derive(Debug)]
pub struct Prepared {
    ruleset: Option<OwnedFd>,
    limits: Vec<(libc::__rlimit_resource_t, u64)>,
    drop_capabilities: bool,
    no_new_privs: bool,
}

/// The part of `Prepared` the child closure owns: plain values only.
#[derive(Debug, Clone)]
pub struct Enter {
    ruleset: Option<i32>,
    limits: Vec<(libc::__rlimit_resource_t, u64)>,
    drop_capabilities: bool,
    no_new_privs: bool,
}

impl Prepared {
    fn none() -> Prepared {
        Prepared {
            ruleset: None,
            limits: Vec::new(),
            drop_capabilities: false,
            no_new_privs: false,
        }
    }

    /// The values for the child, or `None` when there is nothing to enter
    /// (`sandbox: off`), so that the spawn needs no hook. `self` must outlive the
    /// spawn: it owns the ruleset's descriptor, which the child uses by number.
    pub fn enter(&self) -> Option<Enter> {
        let nothing = self.ruleset.is_none()
            && self.limits.is_empty()
            && !self.drop_capabilities
            && !self.no_new_privs;
        (!nothing).then(|| Enter {
            ruleset: self.ruleset.as_ref().map(|fd| fd.as_raw_fd()),
            limits: self.limits.clone(),
            drop_capabilities: self.drop_capabilities,
            no_new_privs: self.no_new_privs,
        })
    }
}

impl Enter {
    /// Runs in the child between fork and exec: system calls only, no allocation,
    /// no locks.
    pub fn apply(&self) -> io::Result<()> {
        for (resource, value) in &self.limits {
            let limit = libc::rlimit {
                rlim_cur: *value,
                rlim_max: *value,
            };
            // SAFETY: setrlimit reads the struct we pass and nothing else.
            if unsafe { libc::setrlimit(*resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if self.drop_capabilities {
            // Root keeps its uid but loses every capability at exec: it can no
            // longer override file permissions, open raw sockets or mount.
            for cap in 0..64 {
                // SAFETY: prctl with integer arguments; unknown capabilities give EINVAL.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            }
        }
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(fd) = self.ruleset {
            // SAFETY: the descriptor is the parent's ruleset, inherited by the child.
            if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
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

/// The entries of a folder, or none if it cannot be read.
fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
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
}
