//! Threads that carry a script's seccomp filter, so that scripts inherit it
//! instead of each loading its own.
//!
//! Loading a filter is the costliest step of entering the sandbox: the kernel
//! checks and converts the program, JIT-compiles it into executable memory,
//! runs it once per system call number to learn what it always allows, and
//! frees all of it again when the script ends. A filter belongs to a thread
//! and is inherited by whatever that thread clones, so each filter (there are
//! two: with and without `network`) gets a blocking pool of its own, the
//! blocking pool of a tokio runtime that is never driven: each of its threads
//! loads the filter once, as it starts (`on_thread_start`), and every run
//! placed there starts its script under it (`run_blocking` checks with
//! `Filtered::holds`). Runs are placed there instead of on the main runtime's
//! blocking pool, so no hand-off is added: a dedicated spawner thread was
//! tried first and cost more in hand-offs, and in runs queued behind one
//! another, than the filter it saved.
//!
//! Such a thread is under the filter, and under `no_new_privs`, for its whole
//! life, inside a runtime that is never driven (a `tokio::spawn` there would
//! never run; there is no timer). Only a run's own work goes there
//! (`run_blocking` and the observer told of its end: metrics in memory, an
//! append to the audit log): what the filter refuses (namespaces, ptrace,
//! bpf, io_uring, and without `network` every socket but TCP, unix and
//! netlink) is nothing a run does. Nothing waits for these threads when the
//! daemon exits: `Exec::finished` does, before `serve` returns.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};

use crate::sandbox::Filter;

thread_local! {
    /// The filter this thread is under, by address (`Filter` lives as long
    /// as its pool's runtime, which owns this thread).
    static UNDER: Cell<usize> = const { Cell::new(0) };
}

/// How long an idle thread of a pool stays (as tokio's own blocking pool).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The pools of one `Exec`, each made on the first run under its filter
/// (`None`: it could not be, and those scripts load the filter themselves).
pub struct Filtered {
    pools: Mutex<Vec<(Arc<Filter>, Option<Pool>)>>,
    /// Threads per pool at most: the daemon's limit of runs at once.
    threads: usize,
}

/// A runtime used only for its blocking pool; shut down without waiting
/// when the `Exec` goes (`Exec::finished` is what waits for its runs).
struct Pool(Option<Runtime>);

impl Pool {
    /// A pool whose threads load `filter` as they start; `None` when no
    /// runtime could be made (said in the log).
    fn under(filter: &Arc<Filter>, threads: usize) -> Option<Pool> {
        let on_thread = filter.clone();
        let built = tokio::runtime::Builder::new_current_thread()
            .thread_name("dynapi-script")
            .max_blocking_threads(threads)
            .thread_keep_alive(KEEP_ALIVE)
            .on_thread_start(move || match on_thread.enter() {
                Ok(()) => UNDER.set(Arc::as_ptr(&on_thread) as usize),
                Err(e) => tracing::warn!(
                    "a script thread could not load the seccomp filter ({e}): its scripts load it themselves"
                ),
            })
            .build();
        match built {
            Ok(runtime) => Some(Pool(Some(runtime))),
            Err(e) => {
                tracing::warn!("no thread pool for the seccomp filter ({e}): each script loads it");
                None
            }
        }
    }

    fn handle(&self) -> Option<Handle> {
        self.0.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Filtered {
    pub fn new(threads: usize) -> Filtered {
        Filtered {
            pools: Mutex::new(Vec::new()),
            threads: threads.max(1),
        }
    }

    /// Where to run a script under `filter`: the handle of its pool (made
    /// on its first use), or `None` when there is no pool for it.
    pub fn pool(&self, filter: &Arc<Filter>) -> Option<Handle> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let at = match pools.iter().position(|(f, _)| Arc::ptr_eq(f, filter)) {
            Some(at) => at,
            None => {
                pools.push((filter.clone(), Pool::under(filter, self.threads)));
                pools.len() - 1
            }
        };
        pools[at].1.as_ref().and_then(Pool::handle)
    }

    /// Whether the calling thread is under `filter` (a thread of its pool
    /// that loaded it), so that the scripts it starts inherit it.
    pub fn holds(filter: &Arc<Filter>) -> bool {
        UNDER.get() == Arc::as_ptr(filter) as usize
    }
}
