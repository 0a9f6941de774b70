//! Jobs in the shared state (`--state`): any replica answers `GET /jobs/{id}`
//! for a job another one runs.
//!
//! The replica that runs a job keeps it in memory as always and publishes it in
//! `dynapi_jobs`: the row is written when the job starts, then every `RENEW`
//! the output printed since (appended: a run's output only grows) and a lease
//! (`--job-lease`) that says the replica is alive, and at the end the whole
//! result. A reader that finds a row still running whose lease ran out reads
//! it `lost`: its replica died (or lost the database) and nobody will finish it.
//! `DELETE` on another replica reaches the one running the job through
//! `Event::Cancel`; the caller then reads the row until it ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Describe, Job, Seen, State};
use crate::exec::Output;
use crate::shared::{Shared, SharedError};

/// How often a running job's output and lease are written.
const RENEW: Duration = Duration::from_secs(1);
/// How many times the end of a run is tried when the database does not answer.
const FINISH_TRIES: u32 = 10;

/// The shared side of `Jobs`.
pub(super) struct SharedJobs {
    pub shared: Arc<Shared>,
    pub lease: Duration,
    pub keep: Duration,
    /// Bytes the finished jobs of all replicas keep together.
    pub budget: usize,
    /// The tasks that keep each published job written, which shutdown waits
    /// for (`Jobs::written`).
    pub writers: tokio_util::task::TaskTracker,
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl SharedJobs {
    /// Writes `job` to the shared state (before its id is answered, so that
    /// any replica finds it at once) and keeps it written to its end, in a
    /// task of its own.
    pub async fn publish(self: &Arc<Self>, job: Arc<Job>, describe: Describe) {
        if let Err(e) = self.insert(&job).await {
            tracing::warn!(job = %job.id, "the shared state: could not add the job: {e}");
            return;
        }
        let this = self.clone();
        self.writers.spawn(async move {
            let mut sent = [0usize; 2];
            loop {
                match job.wait(RENEW).await {
                    None => {
                        if let Err(e) = this.progress(&job, &mut sent).await {
                            tracing::warn!(job = %job.id, "the shared state: could not renew the job: {e}");
                        }
                    }
                    Some(_) => {
                        let seen = job.seen(describe);
                        for attempt in 1..=FINISH_TRIES {
                            match this.finish(&seen).await {
                                Ok(()) => {
                                    if let Err(e) = this.prune().await {
                                        tracing::warn!(
                                            "the shared state: could not prune jobs: {e}"
                                        );
                                    }
                                    break;
                                }
                                Err(e) if attempt == FINISH_TRIES => {
                                    tracing::warn!(job = %job.id, "the shared state: could not record the job's end: {e}");
                                }
                                Err(_) => tokio::time::sleep(RENEW).await,
                            }
                        }
                        return;
                    }
                }
            }
        });
    }

    async fn insert(&self, job: &Job) -> Result<(), SharedError> {
        self.prune().await?;
        let db = self.shared.client().await?;
        db.execute(
            "INSERT INTO dynapi_jobs (id, endpoint, owner, json_output, replica, lease_until, started_at, state)
             VALUES ($1, $2, $3, $4, $5, now() + $6::bigint * interval '1 millisecond', $7, 'running')",
            &[
                &job.id,
                &job.endpoint,
                &job.owner,
                &job.json_output,
                &self.shared.replica,
                &millis(self.lease),
                &job.started_at,
            ],
        )
        .await?;
        Ok(())
    }

    /// Drops jobs finished longer than `keep` ago (and lost ones as long
    /// after their lease), then the oldest finished ones while all replicas'
    /// finished jobs together hold more than `budget` bytes (1 KiB each for
    /// themselves). Run when a job starts and when one ends.
    async fn prune(&self) -> Result<(), SharedError> {
        let db = self.shared.client().await?;
        db.execute(
            "DELETE FROM dynapi_jobs WHERE finished_at < now() - $1::bigint * interval '1 millisecond'
                 OR (finished_at IS NULL AND lease_until < now() - $1::bigint * interval '1 millisecond')",
            &[&millis(self.keep)],
        )
        .await?;
        db.execute(
            "DELETE FROM dynapi_jobs WHERE id IN (
                 SELECT id FROM (
                     SELECT id, sum(octet_length(stdout) + octet_length(stderr) + 1024)
                         OVER (ORDER BY finished_at DESC, id) AS kept
                     FROM dynapi_jobs WHERE finished_at IS NOT NULL) older
                 WHERE kept > $1)",
            &[&(self.budget as i64)],
        )
        .await?;
        Ok(())
    }

    /// Appends what the job printed since `sent` and renews its lease.
    async fn progress(&self, job: &Job, sent: &mut [usize; 2]) -> Result<(), SharedError> {
        let (out, err, truncated) = job.live().read(|o| {
            (
                o.streams[0][sent[0].min(o.streams[0].len())..].to_vec(),
                o.streams[1][sent[1].min(o.streams[1].len())..].to_vec(),
                o.truncated[0] || o.truncated[1],
            )
        });
        let db = self.shared.client().await?;
        if out.is_empty() && err.is_empty() {
            // Only the lease: `stdout = stdout || ''` would write the whole
            // output again (a new TOAST value) every second.
            db.execute(
                "UPDATE dynapi_jobs SET truncated = $2,
                     lease_until = now() + $3::bigint * interval '1 millisecond'
                 WHERE id = $1 AND finished_at IS NULL",
                &[&job.id, &truncated, &millis(self.lease)],
            )
            .await?;
        } else {
            db.execute(
                "UPDATE dynapi_jobs SET stdout = stdout || $2, stderr = stderr || $3, truncated = $4,
                     lease_until = now() + $5::bigint * interval '1 millisecond'
                 WHERE id = $1 AND finished_at IS NULL",
                &[&job.id, &out, &err, &truncated, &millis(self.lease)],
            )
            .await?;
        }
        sent[0] += out.len();
        sent[1] += err.len();
        Ok(())
    }

    async fn finish(&self, seen: &Seen) -> Result<(), SharedError> {
        let (code, message) = match &seen.error {
            Some((c, m)) => (Some(c.as_str()), Some(m.as_str())),
            None => (None, None),
        };
        self.shared
            .client()
            .await?
            .execute(
                "UPDATE dynapi_jobs SET state = $2, finished_at = $3, duration_ms = $4, exit_code = $5,
                     signal = $6, stdout = $7, stderr = $8, truncated = $9, error_code = $10, error_message = $11
                 WHERE id = $1",
                &[
                    &seen.id,
                    &seen.state.as_str(),
                    &seen.finished_at,
                    &(seen.duration_ms as i64),
                    &seen.exit_code,
                    &seen.signal,
                    &seen.output.streams[0],
                    &seen.output.streams[1],
                    &(seen.output.truncated[0] || seen.output.truncated[1]),
                    &code,
                    &message,
                ],
            )
            .await?;
        Ok(())
    }

    /// The job `id` as the shared state has it.
    pub async fn read(&self, id: &str) -> Result<Option<Seen>, SharedError> {
        // Kept prepared on each pooled connection: parsing the statement
        // again would be a second round trip for every read.
        let db = self.shared.client().await?;
        let statement = db
            .prepare_cached(
                "SELECT endpoint, owner, json_output, state, lease_until < now(), started_at, finished_at,
                     coalesce(duration_ms, (extract(epoch FROM now() - started_at) * 1000)::bigint),
                     exit_code, signal, stdout, stderr, truncated, error_code, error_message
                 FROM dynapi_jobs WHERE id = $1
                     AND (finished_at IS NULL OR finished_at >= now() - $2::bigint * interval '1 millisecond')",
            )
            .await?;
        let row = db.query_opt(&statement, &[&id, &millis(self.keep)]).await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let state: String = r.get(3);
        let lapsed: bool = r.get(4);
        let state = match State::parse(&state) {
            State::Running if lapsed => State::Lost,
            other => other,
        };
        let error = match (r.get::<_, Option<String>>(13), r.get(14)) {
            (Some(code), Some(message)) => Some((code, message)),
            _ => None,
        };
        let truncated: bool = r.get(12);
        Ok(Some(Seen {
            id: id.to_string(),
            endpoint: r.get(0),
            owner: r.get(1),
            json_output: r.get(2),
            state,
            started_at: r.get::<_, SystemTime>(5),
            finished_at: r.get(6),
            duration_ms: r.get::<_, i64>(7).max(0) as u64,
            exit_code: r.get(8),
            signal: r.get(9),
            output: Output {
                streams: [r.get(10), r.get(11)],
                truncated: [truncated, false],
            },
            error,
        }))
    }

    /// Forgets a job whose end was answered.
    pub fn remove(self: &Arc<Self>, id: &str) {
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let removed = async {
                this.shared
                    .client()
                    .await?
                    .execute("DELETE FROM dynapi_jobs WHERE id = $1", &[&id])
                    .await?;
                Ok::<_, SharedError>(())
            };
            if let Err(e) = removed.await {
                tracing::warn!(job = %id, "the shared state: could not remove the job: {e}");
            }
        });
    }
}
