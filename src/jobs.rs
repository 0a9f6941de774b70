//! Jobs: endpoint runs that outlive their request. A call made with `?async=true`
//! (or to a manifest with `async: true`) answers at once with a job id, and a call
//! still running after `Config::job_after` answers the same way instead of being
//! cut (GPT Actions give up after 45 seconds). The script runs on; `GET /jobs/{id}`
//! reads its state and output, `DELETE /jobs/{id}` kills its process group.
//!
//! Jobs live in memory (a restart forgets them, and shutdown kills their scripts
//! like any other); with shared state they are published there too, for the
//! other replicas (`shared.rs`). A finished job is kept for `keep`, and the finished jobs
//! together keep at most `budget` bytes of output (and 1 KiB each for themselves,
//! so that the budget bounds their number too): past it, the oldest go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

mod shared;

use crate::exec::{ExecError, Exit, Finished, Live, Output, Running};
use crate::registry::Endpoint;
use crate::shared::{Event, Shared, SharedError};
use shared::SharedJobs;
use tokio_util::task::TaskTracker;

/// How a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// Ran past its timeout; its process group was killed.
    TimedOut,
    /// Stopped by `DELETE /jobs/{id}`.
    Cancelled,
    /// Shared state only: the replica running it stopped renewing its lease
    /// (it died); nobody will finish it.
    Lost,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
            State::Lost => "lost",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "running" => State::Running,
            "succeeded" => State::Succeeded,
            "timed_out" => State::TimedOut,
            "cancelled" => State::Cancelled,
            "lost" => State::Lost,
            _ => State::Failed,
        }
    }
}

/// The error a caller waiting for a run that ended would have got, as its
/// code and message (the HTTP layer knows them); `None` when it succeeded.
pub type Describe = fn(&Job, &End) -> Option<(String, String)>;

/// A job as it stands, whichever replica runs it: what `GET /jobs/{id}` shows.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub endpoint: String,
    /// Who holds the token that started it (`Holder::key`).
    pub owner: String,
    pub json_output: bool,
    pub state: State,
    pub started_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    pub duration_ms: u64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Its output so far, or all of it.
    pub output: Output,
    /// Set when it ended (not cancelled) in what a waiting caller would have
    /// got as an error.
    pub error: Option<(String, String)>,
}

/// The end of a job's run.
#[derive(Debug)]
pub struct End {
    pub at: SystemTime,
    pub result: Result<Finished, ExecError>,
}

/// One run of an endpoint, from its start on, whether or not anyone waits for it.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// The endpoint says `output: json`.
    pub json_output: bool,
    /// The endpoint's time limit.
    pub timeout: Duration,
    /// Who holds the token that started it (`Holder::key`): only they (or an
    /// admin) may see it.
    pub owner: String,
    pub started_at: SystemTime,
    live: Arc<Live>,
    end: watch::Receiver<Option<Arc<End>>>,
}

impl Job {
    /// Follows `running` to its end in a task of its own.
    pub fn follow(endpoint: &Endpoint, owner: &str, running: Running) -> Arc<Job> {
        let (tx, rx) = watch::channel(None);
        let live = running.live().clone();
        tokio::spawn(async move {
            let result = running.wait().await;
            let _ = tx.send(Some(Arc::new(End {
                at: SystemTime::now(),
                result,
            })));
        });
        Arc::new(Job {
            id: new_id(),
            endpoint: endpoint.name.clone(),
            json_output: endpoint.output == crate::registry::Output::Json,
            timeout: endpoint.timeout,
            owner: owner.to_string(),
            started_at: SystemTime::now(),
            live,
            end: rx,
        })
    }

    /// The end, if the run is over.
    pub fn end(&self) -> Option<Arc<End>> {
        self.end.borrow().clone()
    }

    /// Waits at most `time` for the end.
    pub async fn wait(&self, time: Duration) -> Option<Arc<End>> {
        let mut end = self.end.clone();
        let ended = tokio::time::timeout(time, end.wait_for(Option::is_some)).await;
        match ended {
            Ok(Ok(end)) => end.clone(),
            _ => self.end(),
        }
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    pub fn state(&self) -> State {
        match self.end() {
            None => State::Running,
            Some(end) => match &end.result {
                Err(_) => State::Failed,
                Ok(f) if self.live.cancelled() && f.exit != Exit::Code(0) => State::Cancelled,
                Ok(f) => match f.exit {
                    Exit::Code(0) => State::Succeeded,
                    Exit::TimedOut => State::TimedOut,
                    Exit::Code(_) | Exit::Signal(_) => State::Failed,
                },
            },
        }
    }

    /// The job as it stands now.
    pub fn seen(&self, describe: Describe) -> Seen {
        let end = self.end();
        let state = self.state();
        let finished = end.as_ref().and_then(|e| e.result.as_ref().ok());
        let output = match finished {
            Some(f) => Output {
                streams: [f.stdout.clone(), f.stderr.clone()],
                truncated: [f.stdout_truncated, f.stderr_truncated],
            },
            None => self.live.read(Output::clone),
        };
        let (exit_code, signal) = match finished.map(|f| f.exit) {
            Some(Exit::Code(c)) => (Some(c), None),
            Some(Exit::Signal(s)) => (None, Some(s)),
            _ => (None, None),
        };
        let error = match &end {
            Some(end) if state != State::Cancelled => describe(self, end),
            _ => None,
        };
        Seen {
            id: self.id.clone(),
            endpoint: self.endpoint.clone(),
            owner: self.owner.clone(),
            json_output: self.json_output,
            state,
            started_at: self.started_at,
            finished_at: end.as_ref().map(|e| e.at),
            duration_ms: elapsed_ms(self, end.as_deref()),
            exit_code,
            signal,
            output,
            error,
        }
    }

    /// Bytes the job holds: its output, and `OVERHEAD` for itself, so that
    /// the budget bounds how many finished jobs are kept even when they
    /// printed nothing.
    fn size(&self) -> usize {
        OVERHEAD + self.output_size()
    }

    fn output_size(&self) -> usize {
        match self.end() {
            Some(end) => end
                .result
                .as_ref()
                .map(|f| f.stdout.len() + f.stderr.len())
                .unwrap_or(0),
            None => self.live.read(|o| o.streams[0].len() + o.streams[1].len()),
        }
    }
}

/// What a job costs besides its output, counted against the budget.
const OVERHEAD: usize = 1024;

fn new_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    format!("job_{}", hex::encode(bytes))
}

/// The jobs known to this daemon.
pub struct Jobs {
    table: Mutex<HashMap<String, Arc<Job>>>,
    keep: Duration,
    budget: usize,
    shared: Option<Arc<SharedJobs>>,
}

impl Jobs {
    pub fn new(keep: Duration, budget: usize) -> Jobs {
        Jobs {
            table: Mutex::default(),
            keep,
            budget,
            shared: None,
        }
    }

    /// Jobs published in the shared state too, where other replicas read them;
    /// `lease`: how long one stays running there without this replica.
    pub fn shared(mut self, shared: Option<Arc<Shared>>, lease: Duration) -> Jobs {
        self.shared = shared.map(|shared| {
            Arc::new(SharedJobs {
                shared,
                lease,
                keep: self.keep,
                budget: self.budget,
                writers: TaskTracker::new(),
            })
        });
        self
    }

    /// Waits until the end of every job this replica published is written to
    /// the shared state (or given up on), so that other replicas report how
    /// it ended rather than `lost` once its lease runs out. Called at
    /// shutdown, after every run ended.
    pub async fn written(&self) {
        if let Some(shared) = &self.shared {
            shared.writers.close();
            shared.writers.wait().await;
        }
    }

    /// Keeps `job` (and publishes it, with shared state); `describe` names
    /// the error its end would have been to a waiting caller.
    pub async fn insert(&self, job: Arc<Job>, describe: Describe) {
        {
            let mut table = self.lock();
            table.insert(job.id.clone(), job.clone());
            self.prune(&mut table);
        }
        if let Some(shared) = &self.shared {
            // Counted from before the first write, so that `written` also
            // waits for a job being published as shutdown begins.
            let _writing = shared.writers.token();
            shared.publish(job, describe).await;
        }
    }

    /// Forgets a job whose end its caller already answered (an MCP tool
    /// call that followed its run to the end): nobody will ask for it.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
        if let Some(shared) = &self.shared {
            shared.remove(id);
        }
    }

    /// A job another replica runs (or ran), from the shared state; `None`
    /// without one.
    pub async fn elsewhere(&self, id: &str) -> Result<Option<Seen>, SharedError> {
        match &self.shared {
            Some(shared) => shared.read(id).await,
            None => Ok(None),
        }
    }

    /// Asks the replica running job `id` to stop it.
    pub async fn cancel_elsewhere(&self, id: &str) -> Result<(), SharedError> {
        match &self.shared {
            Some(shared) => shared.shared.notify(&Event::Cancel(id.to_string())).await,
            None => Ok(()),
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let mut table = self.lock();
        self.prune(&mut table);
        table.get(id).cloned()
    }

    /// Jobs still running.
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|j| j.state() == State::Running)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        match self.table.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Drops finished jobs older than `keep`, then the oldest finished ones while
    /// the finished jobs' output is over the budget.
    fn prune(&self, table: &mut HashMap<String, Arc<Job>>) {
        let now = SystemTime::now();
        let mut finished: Vec<(SystemTime, String, usize)> = Vec::new();
        table.retain(|id, job| match job.end() {
            None => true,
            Some(end) => {
                let age = now.duration_since(end.at).unwrap_or_default();
                let keep = age < self.keep;
                if keep {
                    finished.push((end.at, id.clone(), job.size()));
                }
                keep
            }
        });
        let mut total: usize = finished.iter().map(|f| f.2).sum();
        finished.sort();
        for (_, id, size) in finished {
            if total <= self.budget {
                break;
            }
            table.remove(&id);
            total -= size;
        }
    }
}

/// Milliseconds a job has run (so far, or in all).
pub fn elapsed_ms(job: &Job, end: Option<&End>) -> u64 {
    match end {
        Some(End { result: Ok(f), .. }) => f.duration.as_millis() as u64,
        Some(end) => end
            .at
            .duration_since(job.started_at)
            .unwrap_or_default()
            .as_millis() as u64,
        None => SystemTime::now()
            .duration_since(job.started_at)
            .unwrap_or_default()
            .as_millis() as u64,
    }
}
