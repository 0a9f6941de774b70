//! Starting one script without copying the daemon: `clone(CLONE_VM |
//! CLONE_VFORK)`, what glibc's `posix_spawn` does, with the sandbox entered
//! between the clone and `execve`.
//!
//! std gives up `posix_spawn` as soon as a `pre_exec` hook is set and forks the
//! whole multi-threaded daemon instead: its page tables are copied, and every
//! page any of its threads writes afterwards is copied again on the fault. Here
//! the child shares the daemon's memory and the calling thread is suspended
//! until the child has called `execve` (or died), so nothing is copied.
//!
//! The price is discipline in `child`: it runs on its own small stack, in
//! memory other daemon threads keep using, so it makes only raw,
//! async-signal-safe system calls on values prepared before the clone (C
//! strings, pointer arrays, the sandbox's `Prepared`); it never allocates,
//! locks, unwinds or drops anything. A failure is written to a word of the
//! parent's stack (shared memory, read once the parent resumes) and the child
//! leaves with `_exit(127)`. This module must not grow anything else.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::sandbox::Prepared;

/// The child's stack. It holds a few frames of system-call wrappers; 256 KiB
/// (with a guard page below) leaves a wide margin.
const STACK: usize = 256 * 1024;

/// What to start, each part converted for `execve` before the clone.
pub struct Command {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

impl Command {
    /// `program` is a path (a name without `/` is looked up in `path`, the
    /// script's PATH, here in the parent).
    pub fn new(
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        cwd: &Path,
        path: &str,
    ) -> io::Result<Command> {
        let c = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| io::Error::other("a NUL byte in an argument"))
        };
        let program = if program.as_os_str().as_bytes().contains(&b'/') {
            program.to_path_buf()
        } else {
            path.split(':')
                .map(|dir| Path::new(dir).join(program))
                .find(|p| p.is_file())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
        };
        let mut argv = vec![c(program.as_os_str().as_bytes())?];
        for a in args {
            argv.push(c(a.as_bytes())?);
        }
        let envp = env
            .iter()
            .map(|(k, v)| c(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Command {
            program: c(program.as_os_str().as_bytes())?,
            argv,
            envp,
            cwd: c(OsStr::as_bytes(cwd.as_os_str()))?,
        })
    }

    /// Starts the program in a process group of its own, with `stdio` as its
    /// descriptors 0, 1 and 2, after entering `sandbox`. Returns once the
    /// child has called `execve`; an error of any step before is returned here.
    pub fn spawn(&self, stdio: [BorrowedFd<'_>; 3], sandbox: &Prepared) -> io::Result<Child> {
        // Each of the three above 2, so that placing one never overwrites another.
        let lifted: Vec<OwnedFd> = stdio
            .iter()
            .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(io::Error::from))
            .collect::<io::Result<_>>()?;
        let pointers = |v: &[CString]| -> Vec<*const libc::c_char> {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(ptr::null()))
                .collect()
        };
        let argv = pointers(&self.argv);
        let envp = pointers(&self.envp);
        let args = ChildArgs {
            program: self.program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: self.cwd.as_ptr(),
            stdio: [
                lifted[0].as_raw_fd(),
                lifted[1].as_raw_fd(),
                lifted[2].as_raw_fd(),
            ],
            sandbox,
            error: AtomicI32::new(0),
        };
        let stack = Stack::take()?;
        // Every signal blocked across the clone: a handler of the daemon must
        // never run in the child, on memory it shares with the daemon. The
        // child resets the handlers, then unblocks just before execve.
        let mut old = empty_sigset();
        // SAFETY: sigfillset and pthread_sigmask write the sets we pass.
        unsafe {
            let mut all = empty_sigset();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        // SAFETY: `child` only makes system calls on `args`, which lives on
        // this stack frame; CLONE_VFORK suspends this thread until the child
        // called execve or exited, so `args` and the stack outlive its use.
        let pid = unsafe {
            libc::clone(
                child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &args as *const ChildArgs as *mut libc::c_void,
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
        stack.give_back();
        if pid < 0 {
            return Err(clone_error);
        }
        let mut child = Child {
            pid,
            pidfd: None,
            status: None,
        };
        match args.error.load(Ordering::SeqCst) {
            0 => Ok(child),
            errno => {
                let _ = child.wait();
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain bits; sigemptyset makes it a valid empty set.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// A pidfd of our own child, for waiting with a deadline; `None` before Linux
/// 5.3 (then waiting polls).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open with integer arguments; the child is unreaped, so its
    // pid cannot have been reused.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a new descriptor (close-on-exec by default) that we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The child's stack: anonymous memory with a guard page at its low end.
/// Kept for the next spawn (`STACKS`) rather than unmapped: unmapping memory
/// of a multi-threaded process interrupts every CPU it runs on to flush its
/// TLB, a cost paid on each run otherwise.
struct Stack(*mut libc::c_void);

// SAFETY: the mapping is plain memory owned by whoever holds the `Stack`;
// no other reference to it exists once the child has exec'd or exited.
unsafe impl Send for Stack {}

/// Stacks free for the next spawn; at most `KEPT_STACKS` (runs at once rarely
/// exceed it, and a stack more is just mapped again).
static STACKS: Mutex<Vec<Stack>> = Mutex::new(Vec::new());
const KEPT_STACKS: usize = 32;

impl Stack {
    /// A kept stack, or a new one.
    fn take() -> io::Result<Stack> {
        let kept = STACKS.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match kept {
            Some(stack) => Ok(stack),
            None => Stack::new(),
        }
    }

    /// Keeps the stack for the next spawn (its child has exec'd or exited).
    fn give_back(self) {
        let mut kept = STACKS.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_STACKS {
            kept.push(self);
        }
    }

    fn new() -> io::Result<Stack> {
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack(base);
        // SAFETY: the lowest page of our own mapping.
        if unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The high end (stacks grow down), 16-byte aligned as both ABIs want.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is page-aligned.
        unsafe { self.0.cast::<u8>().add(STACK).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used (the child has exec'd or exited).
        unsafe { libc::munmap(self.0, STACK) };
    }
}

/// Everything the child reads: pointers into the parent's suspended frame.
struct ChildArgs<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    stdio: [RawFd; 3],
    sandbox: &'a Prepared,
    error: AtomicI32,
}

fn errno() -> i32 {
    // SAFETY: reads this thread's errno (the parent's slot, which is
    // suspended; glibc's posix_spawn child does the same).
    unsafe { *libc::__errno_location() }
}

/// The child, between clone and execve: system calls only (see the module doc).
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `ChildArgs`, alive while it is suspended.
    let args = unsafe { &*(arg as *const ChildArgs<'_>) };
    // SAFETY: each call below is a system call on values prepared before the
    // clone; none allocates or takes a lock.
    unsafe {
        // Handlers of the daemon back to the default (they would run on
        // shared memory), and SIGPIPE, which Rust ignores, too: an ignored
        // signal stays ignored across execve.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, ptr::null(), &mut old) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE
                || (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
            {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, ptr::null_mut());
            }
        }
        // A session of its own, led by the script: a session leader cannot
        // move to another process group, so killing the group (the time
        // limit, a cancel, shutdown) always reaches the main process (with
        // only a group of its own, the script could join one of its
        // children's groups and outlive every kill). Nor does it keep the
        // daemon's controlling terminal.
        if libc::setsid() < 0 {
            fail(&args.error, errno());
        }
        for (target, &fd) in args.stdio.iter().enumerate() {
            if libc::dup2(fd, target as i32) < 0 {
                fail(&args.error, errno());
            }
        }
        if libc::chdir(args.cwd) != 0 {
            fail(&args.error, errno());
        }
        if let Err(e) = args.sandbox.apply() {
            fail(&args.error, e);
        }
        let empty = empty_sigset();
        libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut());
        libc::execve(args.program, args.argv, args.envp);
        fail(&args.error, errno())
    }
}

/// Tells the parent `errno` and ends the child.
fn fail(error: &AtomicI32, errno: i32) -> ! {
    error.store(errno.max(1), Ordering::SeqCst);
    // SAFETY: _exit ends the child at once, running nothing of the daemon's.
    unsafe { libc::_exit(127) }
}

/// A started script's main process, ours to wait for (and to reap: nobody
/// else calls waitpid on it).
pub struct Child {
    pid: i32,
    pidfd: Option<OwnedFd>,
    status: Option<i32>,
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The wait status once it exited, without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<i32>> {
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: waits for our own child by pid, without blocking.
            match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
                0 => {}
                -1 => return Err(io::Error::last_os_error()),
                _ => self.status = Some(status),
            }
        }
        Ok(self.status)
    }

    /// Kills the main process itself, whatever group it is in (nothing if it
    /// was reaped: the pid may be another's by then).
    pub fn kill(&self) {
        if self.status.is_none() {
            // SAFETY: kill sends a signal to our own unreaped child, whose
            // pid cannot be reused before we reap it.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// Waits for the exit.
    pub fn wait(&mut self) -> io::Result<i32> {
        while self.status.is_none() {
            let mut status = 0;
            // SAFETY: waits for our own child by pid.
            match unsafe { libc::waitpid(self.pid, &mut status, 0) } {
                -1 if errno() == libc::EINTR => continue,
                -1 => return Err(io::Error::last_os_error()),
                _ => self.status = Some(status),
            }
        }
        Ok(self.status.unwrap_or(0))
    }

    /// Waits for the exit until `deadline`; `None` when it passed first.
    pub fn wait_deadline(&mut self, deadline: Instant) -> io::Result<Option<i32>> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let left = deadline.duration_since(now).as_millis().clamp(1, 1000) as libc::c_int;
            // Opened on the first wait that has to sleep: most scripts have
            // exited by the time their output ends, and need none.
            if self.pidfd.is_none() {
                self.pidfd = pidfd_open(self.pid);
            }
            match &self.pidfd {
                Some(fd) => {
                    let mut pfd = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the call.
                    unsafe { libc::poll(&mut pfd, 1, left) };
                }
                None => std::thread::sleep(std::time::Duration::from_millis(left.min(5) as u64)),
            }
        }
    }
}

/// Turns a wait status into the exit code or the signal.
pub fn decode(status: i32) -> Result<i32, i32> {
    if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    }
}
