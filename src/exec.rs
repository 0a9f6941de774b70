//! Running scripts: the only module that starts processes.
//!
//! A script is started by `spawn` (`clone(CLONE_VM | CLONE_VFORK)`, then
//! `execve`), never through a shell: the program and its argv come from a
//! checked `Invocation`. Each run gets a scrubbed environment, the workspace as
//! its working directory, its own session and process group (so a timeout
//! kills the script and every child it started; a session leader cannot leave
//! its group), the sandbox (`sandbox.rs`, entered between the
//! clone and exec, with a temporary folder of its own as `TMPDIR` and `HOME`,
//! emptied after the run), stdout and stderr each capped, and a slot from a
//! global limit and from its endpoint's; callers that find no free slot within
//! a short wait are told to come back later instead of queueing without bound.
//!
//! The waiting is blocking (poll and waitpid), so it runs on a blocking pool,
//! never on the async runtime's threads: a sandboxed run on the pool of
//! threads that carry its seccomp filter (`filtered.rs`), so that its script
//! inherits the filter, any other on tokio's own. What a script has printed so far is
//! kept in its `Live` record, readable while it runs (jobs page through it) and
//! cancellable (its process group is killed).
//!
//! No process outlives its run. The process group goes first; what left it
//! (`setsid`, a double fork) is caught by two subreapers: the script's main
//! process adopts its orphans while it runs (set in the sandbox), and the daemon
//! adopts them when it ends (`Exec::new`). At each run's end, `sweep` kills
//! every process the daemon adopted from a sandboxed script, with all its
//! descendants, and reaps exactly those pids (never `waitpid(-1)`, which would
//! steal the status of children others wait for).

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::sandbox::{self, Sandbox, SandboxError};

mod filtered;
mod spawn;

use filtered::Filtered;

/// PATH given to scripts: the system's, never the daemon's own.
const SCRIPT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// After a script's main process ends, how long its output pipes may stay open
/// (held by something that escaped its process group) before we stop reading.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Limits {
    /// Scripts running at once, over all endpoints.
    pub max_running: usize,
    /// How long a caller waits for a free slot before being told to retry.
    pub queue_wait: Duration,
    /// Bytes kept of stdout, and of stderr, per run.
    pub output_cap: usize,
    /// Memory, file size and process limits of the sandbox.
    pub sandbox: sandbox::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_running: 16,
            queue_wait: Duration::from_secs(2),
            output_cap: 1 << 20,
            sandbox: sandbox::Limits::default(),
        }
    }
}

/// Who ran what, for the audit log and the metrics.
#[derive(Debug, Clone, Default)]
pub struct Tag {
    /// The token's name.
    pub token: String,
    /// The endpoint, or `scripts/<name>` for a script run without one.
    pub name: String,
    /// The commit served when it started.
    pub commit: String,
    /// A library endpoint's run: `repository@commit` of the library.
    pub library: Option<String>,
}

/// Told of every run's end, on the run's thread: for sandboxed runs one
/// under the seccomp filter, in a runtime that is never driven
/// (`filtered.rs`), so no tokio task, no timer, no datagram socket.
pub type Observer = Arc<dyn Fn(&Tag, &Result<Finished, ExecError>) + Send + Sync>;

/// One script to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub tag: Tag,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub cwd: PathBuf,
    pub timeout: Duration,
    /// What the sandbox lets the script do.
    pub sandbox: sandbox::Policy,
    /// The endpoint's own limit on runs at once: its name and the limit.
    pub concurrency: Option<(String, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

#[derive(Debug)]
pub struct Finished {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration: Duration,
}

/// A script that was started: its live output, and its end.
pub struct Running {
    live: Arc<Live>,
    task: tokio::task::JoinHandle<Result<Finished, ExecError>>,
}

impl Running {
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Waits for the end of the run (exit, signal, timeout).
    pub async fn wait(self) -> Result<Finished, ExecError> {
        self.task.await.map_err(|e| ExecError::Spawn {
            program: String::new(),
            source: io::Error::other(e.to_string()),
        })?
    }
}

/// What a running script has printed so far (each stream capped), and a way to
/// stop it. `run_blocking` writes it; anyone holding the `Arc` may read it.
#[derive(Debug)]
pub struct Live {
    cap: usize,
    output: Mutex<Output>,
    /// The script's process group; 0 until it started.
    pgid: AtomicI32,
    cancelled: AtomicBool,
}

/// The captured streams: `[stdout, stderr]`, and whether each was cut at the cap.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub streams: [Vec<u8>; 2],
    pub truncated: [bool; 2],
}

impl Live {
    fn new(cap: usize) -> Live {
        Live {
            cap,
            output: Mutex::default(),
            pgid: AtomicI32::new(0),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Reads the output so far under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Output) -> T) -> T {
        match self.output.lock() {
            Ok(output) => f(&output),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Kills the script's process group; its run ends as `Exit::Signal(9)`.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let pgid = self.pgid.load(Ordering::SeqCst);
        if pgid > 0 {
            kill_group(pgid);
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn append(&self, stream: usize, bytes: &[u8]) {
        let mut output = match self.output.lock() {
            Ok(output) => output,
            Err(poisoned) => poisoned.into_inner(),
        };
        let room = self.cap.saturating_sub(output.streams[stream].len());
        output.streams[stream].extend_from_slice(&bytes[..bytes.len().min(room)]);
        output.truncated[stream] |= bytes.len() > room;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("all {0} script slots are busy")]
    Busy(usize),
    #[error("`{name}` already runs {limit} times at once, its limit")]
    EndpointBusy { name: String, limit: usize },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("could not start `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
}

/// One endpoint's slots, and the limit they were made for.
type EndpointSlots = (usize, Arc<Semaphore>);

/// Starts scripts within the limits and remembers their process groups, so that
/// shutdown can kill what is still running.
#[derive(Clone)]
pub struct Exec {
    limits: Limits,
    slots: Arc<Semaphore>,
    /// Each endpoint's slots, by name, with the limit they were made for.
    endpoint_slots: Arc<Mutex<HashMap<String, EndpointSlots>>>,
    running: Arc<Mutex<HashSet<i32>>>,
    sandbox: Arc<Sandbox>,
    /// Threads that carry the sandbox's seccomp filters (`filtered.rs`).
    filtered: Arc<Filtered>,
    /// Every run started and not yet over (its sweep and observer included).
    runs: TaskTracker,
    observer: Option<Observer>,
}

impl Exec {
    pub fn new(limits: Limits) -> Exec {
        // Orphans of scripts come to the daemon rather than to PID 1, so that
        // `sweep` can find them, kill them and reap them.
        // SAFETY: prctl with integer arguments; it only marks this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        Exec {
            slots: Arc::new(Semaphore::new(limits.max_running)),
            sandbox: Arc::new(Sandbox::new(limits.sandbox.clone())),
            filtered: Arc::new(Filtered::new(limits.max_running)),
            runs: TaskTracker::new(),
            limits,
            endpoint_slots: Arc::default(),
            running: Arc::default(),
            observer: None,
        }
    }

    /// The same, telling `observer` of every run's end.
    pub fn observed(mut self, observer: Observer) -> Exec {
        self.observer = Some(observer);
        self
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Scripts running right now.
    pub fn running(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Runs `job` to completion (or its timeout). Waits at most `queue_wait` for a
    /// slot; `ExecError::Busy` means the caller should answer 429.
    pub async fn run(&self, job: Job) -> Result<Finished, ExecError> {
        self.start(job).await?.wait().await
    }

    /// Starts `job` once a slot is free (waiting at most `queue_wait`) and returns
    /// at once; the script runs on even if the `Running` is dropped.
    pub async fn start(&self, job: Job) -> Result<Running, ExecError> {
        self.sandbox.check(job.sandbox.mode)?;
        // Counted before it waits for a slot, so that `finished` cannot miss
        // a run granted its slot as shutdown began.
        let run = self.runs.token();
        if self.runs.is_closed() {
            return Err(ExecError::ShuttingDown);
        }
        let endpoint_permit = match &job.concurrency {
            Some((name, limit)) => Some(self.endpoint_slot(name, *limit).await?),
            None => None,
        };
        let permit = self
            .slot(&self.slots)
            .await?
            .ok_or(ExecError::Busy(self.limits.max_running))?;
        let running = self.running.clone();
        let sandbox = self.sandbox.clone();
        let live = Arc::new(Live::new(self.limits.output_cap));
        let task_live = live.clone();
        let observer = self.observer.clone();
        // A sandboxed run goes to the threads that carry its seccomp filter,
        // so that its script inherits the filter (`filtered.rs`).
        let pool = self
            .sandbox
            .filter_for(&job.sandbox)
            .and_then(|filter| self.filtered.pool(&filter));
        let work = move || {
            let _run = run;
            let tag = job.tag.clone();
            let result = run_blocking(job, &sandbox, &task_live, &running);
            drop((permit, endpoint_permit));
            if let Some(observer) = observer {
                observer(&tag, &result);
            }
            result
        };
        let task = match pool {
            Some(pool) => pool.spawn_blocking(work),
            None => tokio::task::spawn_blocking(work),
        };
        Ok(Running { live, task })
    }

    /// A slot of `slots` within `queue_wait`; `None` when none came free.
    async fn slot(
        &self,
        slots: &Arc<Semaphore>,
    ) -> Result<Option<OwnedSemaphorePermit>, ExecError> {
        match tokio::time::timeout(self.limits.queue_wait, slots.clone().acquire_owned()).await {
            Err(_) => Ok(None),
            Ok(Ok(permit)) => Ok(Some(permit)),
            Ok(Err(_)) => Err(ExecError::ShuttingDown),
        }
    }

    async fn endpoint_slot(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<OwnedSemaphorePermit, ExecError> {
        let slots = {
            let mut all = self
                .endpoint_slots
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let entry = all
                .entry(name.to_string())
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
            if entry.0 != limit {
                // The manifest changed its limit: runs under the old one finish on it.
                *entry = (limit, Arc::new(Semaphore::new(limit)));
            }
            entry.1.clone()
        };
        self.slot(&slots)
            .await?
            .ok_or_else(|| ExecError::EndpointBusy {
                name: name.to_string(),
                limit,
            })
    }

    /// Refuses new runs; those waiting for a slot get `ShuttingDown`.
    pub fn close(&self) {
        self.slots.close();
    }

    /// Waits until every run started is over: its script ended or killed,
    /// swept, its temporary folder emptied, its end told to the observer.
    /// The daemon waits for this before it exits: the threads of the
    /// filtered pools (`filtered.rs`) are not waited for by anything else,
    /// and a process that exits under them would leave their scripts running.
    /// (An `Exec` dropped without this cancels the runs still queued for a
    /// filtered pool: they end as a spawn error, unobserved.)
    pub async fn finished(&self) {
        self.runs.close();
        self.runs.wait().await;
    }

    /// Kills the process group of every script still running.
    pub fn kill_all(&self) {
        let groups: Vec<i32> = self
            .running
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        for pgid in groups {
            kill_group(pgid);
        }
        let _ = sweep(None);
    }
}

/// The scripts' main processes this process started and has not reaped yet,
/// each pid with a count, over every `Exec` (tests run several daemons in one
/// process): the kernel's parent-child relation is per process, so this record
/// is too. A spawn holds the lock until its pid is in, and `sweep` holds it
/// while it looks, so a script just started is never taken for an orphan.
static SPAWNED: Mutex<Option<HashMap<i32, usize>>> = Mutex::new(None);

fn spawned() -> std::sync::MutexGuard<'static, Option<HashMap<i32, usize>>> {
    SPAWNED.lock().unwrap_or_else(|p| p.into_inner())
}

fn forget_spawned(pid: i32) {
    let mut spawned = spawned();
    if let Some(map) = spawned.as_mut() {
        if let Some(n) = map.get_mut(&pid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&pid);
            }
        }
    }
}

/// What the kernel says of a process in `/proc/<pid>/status` that marks it as
/// a sandboxed script's: `no_new_privs` and the number of seccomp filters,
/// which only grow. The daemon's own values are the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Marks {
    no_new_privs: bool,
    filters: u32,
}

fn marks(pid: &str) -> Option<Marks> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    Some(Marks {
        no_new_privs: field("NoNewPrivs:")? == 1,
        filters: field("Seccomp_filters:").unwrap_or(0),
    })
}

/// Whether `pid` was started inside a script's sandbox (and not, like the
/// daemon, outside one).
fn sandboxed(pid: &str) -> bool {
    static OWN: OnceLock<Option<Marks>> = OnceLock::new();
    let Some(own) = *OWN.get_or_init(|| marks("self")) else {
        return false;
    };
    marks(pid).is_some_and(|m| m.filters > own.filters || (m.no_new_privs && !own.no_new_privs))
}

/// `(pid, parent, process group)` of every process, from `/proc/<pid>/stat`.
fn processes() -> Vec<(i32, i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| process(e.file_name().to_str()?.parse().ok()?))
        .collect()
}

fn process(pid: i32) -> Option<(i32, i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold anything: state, ppid, pgrp.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(1);
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((pid, ppid, pgrp))
}

/// The children of this process's main thread, from its `children` file
/// (`CONFIG_PROC_CHILDREN`); `None` where the kernel has no such file. An
/// orphan goes to the first live thread of its subreaper (the kernel's
/// `find_new_reaper`), which is the main thread while the daemon runs, so
/// everything adopted is listed there; scripts are children of the blocking
/// threads that started them and are not. One small file per run, where each
/// thread's took one read each.
fn adopted_children() -> Option<Vec<i32>> {
    let me = std::process::id();
    let list = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).ok()?;
    Some(
        list.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .collect(),
    )
}

/// Kills every process this daemon adopted from a script (sandboxed, or in
/// `ended_group`, the process group of a run that just ended) and all their
/// descendants, and reaps the adopted ones, until none is left. Scripts still
/// running keep theirs: their main process is a subreaper, so their orphans are
/// its children, not the daemon's. Answers whether none is left.
fn sweep(ended_group: Option<i32>) -> bool {
    // The common case, nothing adopted: one small file, no lock, no more of /proc.
    if adopted_children().is_some_and(|children| children.is_empty()) {
        return true;
    }
    let me = std::process::id() as i32;
    let spawned = spawned();
    let ours = |pid: i32| spawned.as_ref().is_some_and(|m| m.contains_key(&pid));
    let adopted = |&(pid, ppid, pgrp): &(i32, i32, i32)| {
        ppid == me && !ours(pid) && (Some(pgrp) == ended_group || sandboxed(&pid.to_string()))
    };
    // Children of the main thread that are not scripts' (a test's own), without
    // reading all of /proc.
    if let Some(children) = adopted_children() {
        if !children
            .into_iter()
            .filter(|&pid| !ours(pid))
            .filter_map(process)
            .any(|p| adopted(&p))
        {
            return true;
        }
    }
    for _ in 0..100 {
        let all = processes();
        let adopted: Vec<i32> = all
            .iter()
            .filter(|p| adopted(p))
            .map(|&(pid, _, _)| pid)
            .collect();
        if adopted.is_empty() {
            return true;
        }
        let mut tree = adopted.clone();
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
            i += 1;
        }
        for &pid in &tree {
            // SAFETY: kill sends a signal; a process already gone gives ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for &pid in &adopted {
            // SAFETY: waits for one child of ours, by pid, that nobody else
            // waits for (it was adopted, never spawned by this process).
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
    }
    false
}

fn kill_group(pgid: i32) {
    // SAFETY: killpg only sends a signal; a group that is already gone gives ESRCH,
    // which is what we want to ignore.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// The environment a script starts with; `tmp` is its own temporary folder
/// (sandboxed runs), else `HOME` is the workspace and `TMPDIR` the system's.
fn base_env(job: &Job, tmp: Option<&Path>) -> Vec<(String, String)> {
    let (home, tmp) = match tmp {
        Some(tmp) => (tmp.to_path_buf(), tmp.to_path_buf()),
        None => (job.cwd.clone(), std::env::temp_dir()),
    };
    let tmp = tmp.to_string_lossy().into_owned();
    let mut env = vec![
        ("PATH".to_string(), SCRIPT_PATH.to_string()),
        ("HOME".to_string(), home.to_string_lossy().into_owned()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("TMPDIR".to_string(), tmp),
        (
            "DYNAPI_WORKSPACE".to_string(),
            job.cwd.to_string_lossy().into_owned(),
        ),
    ];
    env.extend(job.env.iter().cloned());
    env
}

fn run_blocking(
    job: Job,
    sandbox: &Sandbox,
    live: &Live,
    running: &Mutex<HashSet<i32>>,
) -> Result<Finished, ExecError> {
    let started = Instant::now();
    let deadline = started + job.timeout;
    let spawn_error = |source: io::Error| ExecError::Spawn {
        program: job.program.to_string_lossy().into_owned(),
        source,
    };
    // Sandboxed runs get a temporary folder of their own (the only place
    // outside the workspace they may write), with their ruleset.
    let run = sandbox::RunKey {
        endpoint: job.tag.name.clone(),
        commit: job.tag.commit.clone(),
    };
    let mut prepared = sandbox.prepare(&job.sandbox, &job.cwd, &run, job.timeout)?;
    if prepared.filter().is_some_and(Filtered::holds) {
        prepared.filter_inherited();
    }
    // Started by its path from the working folder, which the child enters
    // before it leaves root (`sandbox::RunAs`): the folders above need not
    // let the script user through.
    let program = match job.program.strip_prefix(&job.cwd) {
        Ok(inside) => Path::new(".").join(inside),
        Err(_) => job.program.clone(),
    };
    let command = spawn::Command::new(
        &program,
        &job.args,
        &base_env(&job, prepared.tmp()),
        &job.cwd,
        SCRIPT_PATH,
    )
    .map_err(spawn_error)?;
    let (out_read, out_write) = os_pipe::pipe().map_err(spawn_error)?;
    let (err_read, err_write) = os_pipe::pipe().map_err(spawn_error)?;
    let (stdin_read, mut stdin_write) = os_pipe::pipe().map_err(spawn_error)?;
    let small = job.stdin.len() <= PREFILL_STDIN;
    if small {
        // Small input goes into the pipe before the child starts: no writer thread.
        stdin_write.write_all(&job.stdin).map_err(spawn_error)?;
    }
    let mut child = {
        let mut spawned = spawned();
        let child = command
            .spawn(
                [stdin_read.as_fd(), out_write.as_fd(), err_write.as_fd()],
                &prepared,
            )
            .map_err(spawn_error)?;
        *spawned
            .get_or_insert_with(HashMap::new)
            .entry(child.pid())
            .or_insert(0) += 1;
        child
    };
    // Only the child holds the write ends now, so we see EOF when it is done.
    drop((stdin_read, out_write, err_write));
    if small {
        drop(stdin_write);
    } else {
        let stdin = job.stdin;
        // Ends when all is written or the reader is gone (killed with its group).
        std::thread::spawn(move || {
            let _ = stdin_write.write_all(&stdin);
        });
    }
    let pgid = child.pid();
    if let Ok(mut r) = running.lock() {
        r.insert(pgid);
    }
    live.pgid.store(pgid, Ordering::SeqCst);
    if live.cancelled() {
        kill_group(pgid);
    }

    let mut outputs = [
        Capture::new(out_read, 0, live),
        Capture::new(err_read, 1, live),
    ];
    let timed_out = pump(&mut outputs, &mut child, deadline);
    let status = match timed_out {
        true => None,
        false => child.wait_deadline(deadline).ok().flatten(),
    };
    let exit = match status.map(spawn::decode) {
        Some(Ok(code)) => Exit::Code(code),
        Some(Err(signal)) => Exit::Signal(signal),
        None => {
            kill_group(pgid);
            child.kill();
            let _ = child.wait();
            Exit::TimedOut
        }
    };
    // Children the script left behind in its group go with it, and so does
    // what left the group.
    kill_group(pgid);
    forget_spawned(pgid);
    let swept = sweep(Some(pgid));
    if let Ok(mut r) = running.lock() {
        r.remove(&pgid);
    }
    // Nothing of the run is left to write in its temporary folder.
    sandbox.finish(prepared, swept);
    let Output {
        streams: [stdout, stderr],
        truncated,
    } = live.read(Output::clone);
    Ok(Finished {
        exit,
        stdout_truncated: truncated[0],
        stderr_truncated: truncated[1],
        stdout,
        stderr,
        duration: started.elapsed(),
    })
}

/// Stdin up to this size is written into the pipe before the child starts (it fits
/// in the kernel's pipe buffer); larger input gets a writer thread.
const PREFILL_STDIN: usize = 32 * 1024;
/// How often the reading loop looks whether the script's main process has exited.
const EXIT_CHECK: Duration = Duration::from_millis(50);

/// One output pipe being read without blocking into its stream of `Live` (which
/// keeps the first `cap` bytes and discards the rest, so the writer never blocks
/// on a full pipe).
struct Capture<'a> {
    pipe: os_pipe::PipeReader,
    stream: usize,
    live: &'a Live,
    eof: bool,
}

impl Capture<'_> {
    fn new(pipe: os_pipe::PipeReader, stream: usize, live: &Live) -> Capture<'_> {
        // SAFETY: fcntl on a descriptor we own; O_NONBLOCK only changes how reads wait.
        unsafe {
            let fd = pipe.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Capture {
            pipe,
            stream,
            live,
            eof: false,
        }
    }

    /// Reads what is available now.
    fn drain(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.pipe.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return;
                }
                Ok(n) => self.live.append(self.stream, &chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }
}

/// Reads stdout and stderr on this thread with poll(2) until both are closed, the
/// deadline passes (returns true), or the main process has exited and the pipes
/// stayed open for a grace period (held by something that escaped the group).
fn pump(outputs: &mut [Capture<'_>; 2], child: &mut spawn::Child, deadline: Instant) -> bool {
    let mut exited_at: Option<Instant> = None;
    loop {
        let open: Vec<usize> = (0..outputs.len()).filter(|i| !outputs[*i].eof).collect();
        if open.is_empty() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        if exited_at.is_some_and(|t| now.duration_since(t) > DRAIN_GRACE) {
            return false;
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|i| libc::pollfd {
                fd: outputs[*i].pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait = deadline
            .duration_since(now)
            .min(EXIT_CHECK)
            .as_millis()
            .max(1) as libc::c_int;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
        if ready > 0 {
            for (fd, i) in fds.iter().zip(&open) {
                if fd.revents != 0 {
                    outputs[*i].drain();
                }
            }
        }
        // Checked whether or not output came: a background child that keeps
        // writing must not hide that the script itself has ended.
        if exited_at.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
            exited_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(script: &str, timeout: Duration) -> Job {
        Job {
            tag: Tag::default(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hi".into())],
            stdin: b"{\"a\":1}".to_vec(),
            cwd: std::env::temp_dir(),
            timeout,
            // These tests are about processes; the sandbox has its own.
            sandbox: sandbox::Policy {
                mode: sandbox::Mode::Off,
                ..sandbox::Policy::default()
            },
            concurrency: None,
        }
    }

    #[tokio::test]
    async fn captures_output_env_and_stdin_with_a_scrubbed_environment() {
        std::env::set_var("DYNAPI_TEST_SECRET", "leak");
        let exec = Exec::new(Limits::default());
        let f = exec
            .run(job(
                "echo $GREETING; cat; echo; echo \"[$DYNAPI_TEST_SECRET]\" >&2; exit 3",
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
        assert_eq!(f.exit, Exit::Code(3));
        assert_eq!(String::from_utf8_lossy(&f.stdout), "hi\n{\"a\":1}\n");
        assert_eq!(String::from_utf8_lossy(&f.stderr), "[]\n");
    }

    #[tokio::test]
    async fn caps_output_and_kills_the_whole_group_on_timeout() {
        let exec = Exec::new(Limits {
            output_cap: 1000,
            ..Limits::default()
        });
        let f = exec
            .run(job("head -c 100000 /dev/zero", Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!((f.stdout.len(), f.stdout_truncated), (1000, true));

        let marker = std::env::temp_dir().join(format!("dynapi-exec-{}", std::process::id()));
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let f = exec
            .run(job(&script, Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(f.exit, Exit::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            !marker.exists(),
            "the background child survived the timeout"
        );
    }
}
