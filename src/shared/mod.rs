//! State that replicas share, in PostgreSQL: `--state postgres://...` (or
//! `DYNAPI_STATE`). Without it nothing here is made and every replica keeps its
//! own state as before (SQLite in `.git/dynapi`, memory).
//!
//! This module is the low layer: the connection pool, the schema and its
//! migrations (`schema.rs`), and the notifications replicas send each other
//! (`Event`, over one `LISTEN` connection that reconnects by itself). What is
//! kept in the tables belongs to the modules that own it (the OAuth store, the
//! jobs, the webhook deliveries, GitHub's pacing, the owner-token guesses);
//! each of them has its PostgreSQL side next to its in-process one and asks
//! this module only for a connection.

mod schema;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};

/// The channel replicas notify each other on.
const CHANNEL: &str = "dynapi";
/// Connections kept at most by one replica.
const POOL_SIZE: usize = 16;
/// How long a request waits for a connection, or for one to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one replica tells the others (and itself: every replica listens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The repository moved (a webhook reached one replica): fetch now.
    Sync,
    /// `DELETE /jobs/{id}` reached a replica that does not run the job.
    Cancel(String),
    /// The listening connection was lost and is back: notifications sent in
    /// between were missed, so act as if each had come.
    Reconnected,
}

impl Event {
    fn payload(&self) -> String {
        match self {
            Event::Sync | Event::Reconnected => "sync".into(),
            Event::Cancel(id) => format!("cancel:{id}"),
        }
    }

    fn parse(payload: &str) -> Option<Event> {
        match payload.split_once(':') {
            None if payload == "sync" => Some(Event::Sync),
            Some(("cancel", id)) => Some(Event::Cancel(id.to_string())),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("the shared state's database URL: {0}")]
    Url(String),
    #[error("the shared state's database: {0}")]
    Database(String),
}

impl From<tokio_postgres::Error> for SharedError {
    fn from(e: tokio_postgres::Error) -> SharedError {
        SharedError::Database(crate::error_chain(&e))
    }
}

impl From<deadpool_postgres::PoolError> for SharedError {
    fn from(e: deadpool_postgres::PoolError) -> SharedError {
        SharedError::Database(crate::error_chain(&e))
    }
}

/// The shared state's connections, and the notifications heard on them.
pub struct Shared {
    pool: Pool,
    /// This process among the replicas: a random id, written on the jobs it
    /// runs so that others know whom to ask.
    pub replica: String,
    events: broadcast::Sender<Event>,
}

impl Shared {
    /// Connects to `url` (refused when it carries a password and did not
    /// come from the environment), applies the schema's migrations (one
    /// replica at a time) and starts listening.
    pub async fn connect(url: &str) -> Result<Arc<Shared>, SharedError> {
        password_only_from_the_environment(url)?;
        crate::install_tls();
        let prepared =
            crate::sql::tls::prepare(url).map_err(|e| SharedError::Url(e.to_string()))?;
        let mut config: tokio_postgres::Config = prepared
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| SharedError::Url(e.to_string()))?;
        // A connection a NAT dropped in silence is found within a minute
        // (the LISTEN one above all, which only ever reads).
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match prepared.tls.clone() {
            Some(tls) => Manager::from_config(config.clone(), tls, manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| SharedError::Url(e.to_string()))?;
        let mut client = pool.get().await?;
        schema::migrate(&mut client).await?;
        drop(client);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            pool,
            replica: new_replica_id(),
            events,
        });
        let sender = shared.events.clone();
        match prepared.tls {
            Some(tls) => tokio::spawn(listen(config, tls, sender)),
            None => tokio::spawn(listen(config, NoTls, sender)),
        };
        Ok(shared)
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<Object, SharedError> {
        Ok(self.pool.get().await?)
    }

    /// Tells every replica (this one too) of `event`.
    pub async fn notify(&self, event: &Event) -> Result<(), SharedError> {
        self.client()
            .await?
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &event.payload()])
            .await?;
        Ok(())
    }

    /// The events heard from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// The state's URL may carry a password only when it came from the
/// environment (`DYNAPI_STATE`): a command line is readable by every process
/// of the machine, scripts included (`/proc/<pid>/cmdline`).
fn password_only_from_the_environment(url: &str) -> Result<(), SharedError> {
    let from_environment = std::env::var("DYNAPI_STATE").is_ok_and(|v| v == url);
    let has_password = url::Url::parse(url).is_ok_and(|u| u.password().is_some());
    if has_password && !from_environment {
        return Err(SharedError::Url(
            "it has a password, and a command line is readable by every process (scripts too): \
             set DYNAPI_STATE in the environment instead of passing --state"
                .into(),
        ));
    }
    Ok(())
}

fn new_replica_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

/// Listens on `CHANNEL` for as long as the process lives, on a connection of
/// its own (a pooled one would be handed to others), reconnecting with a
/// backoff when it drops.
async fn listen<T>(config: tokio_postgres::Config, tls: T, events: broadcast::Sender<Event>)
where
    T: MakeTlsConnect<Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<Socket>>::Future: Send,
{
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                // The LISTEN goes out while `messages` drives the connection.
                let statement = format!("LISTEN {CHANNEL}");
                let listening = client.batch_execute(&statement);
                tokio::pin!(listening);
                let mut listened = false;
                loop {
                    tokio::select! {
                        done = &mut listening, if !listened => {
                            listened = true;
                            if done.is_err() { break; }
                            backoff = Duration::from_millis(250);
                            if !first {
                                let _ = events.send(Event::Reconnected);
                            }
                            first = false;
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                if let Some(event) = Event::parse(n.payload()) {
                                    let _ = events.send(event);
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!("the shared state's notifications: {}", crate::error_chain(&e));
                                break;
                            }
                            None => break,
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "the shared state's notifications: cannot connect: {}",
                    crate::error_chain(&e)
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_comes_from_the_environment_only() {
        let with = "postgres://dynapi:s3cret@db.example/dynapi";
        assert!(password_only_from_the_environment(with).is_err());
        assert!(password_only_from_the_environment("postgres://dynapi@db.example/dynapi").is_ok());
    }

    #[test]
    fn events_read_back_as_sent() {
        for event in [Event::Sync, Event::Cancel("job_12".into())] {
            assert_eq!(Event::parse(&event.payload()), Some(event));
        }
        assert_eq!(Event::parse("reload"), None);
        assert_eq!(Event::parse("cancel:"), Some(Event::Cancel(String::new())));
    }
}
