//! Jobs: endpoint runs that outlive their request. A call made with `?async=true`
//! (or to a manifest with `async: true`) answers at once with a job id, and a call
//! still running after `Config::job_after` answers the same way instead of being
//! cut (GPT Actions give up after 45 seconds). The script runs on; `GET /jobs/{id}`
//! reads its state and output, `DELETE /jobs/{id}` kills its process group.
//!
//! Jobs live in memory (a restart forgets them, and shutdown kills their scripts
//! like any other). A finished job is kept for `keep`, and the finished jobs
//! together keep at most `budget` bytes of output (and 1 KiB each for themselves,
//! so that the budget bounds their number too): past it, the oldest go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::exec::{ExecError, Exit, Finished, Live, Running};
use crate::registry::{Endpoint, Output};

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
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
        }
    }
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
    /// The name of the token that started it: only it (or an admin) may see it.
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
            json_output: endpoint.output == Output::Json,
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
}

impl Jobs {
    pub fn new(keep: Duration, budget: usize) -> Jobs {
        Jobs {
            table: Mutex::default(),
            keep,
            budget,
        }
    }

    pub fn insert(&self, job: Arc<Job>) {
        let mut table = self.lock();
        table.insert(job.id.clone(), job);
        self.prune(&mut table);
    }

    /// Forgets a job whose end its caller already answered (an MCP tool
    /// call that followed its run to the end): nobody will ask for it.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
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
