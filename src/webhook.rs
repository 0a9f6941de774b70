//! GitHub webhooks, without HTTP: the signature check (HMAC-SHA256 over the raw
//! body, compared in constant time), the bounded memory of deliveries that makes
//! a replay do nothing (shared by replicas with `--state`), and the events the
//! daemon acts on.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::shared::{Shared, SharedError};

/// Whether `header` (`sha256=<hex>`, from `X-Hub-Signature-256`) signs `body` with
/// `secret`. The comparison is constant-time (`Mac::verify_slice`).
pub fn signature_is_valid(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_digest) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The `X-Hub-Signature-256` header for `body`: what GitHub sends (and tests).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How many delivery ids are remembered.
const REMEMBERED: usize = 4_096;

/// How long replicas remember a delivery id in the shared state.
const REMEMBERED_SHARED: &str = "7 days";

/// The delivery ids seen lately: in memory, oldest forgotten first, or in the
/// shared state (`--state`), so that a delivery sent again to another replica
/// is a replay there too.
#[derive(Default)]
pub struct Deliveries {
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    shared: Option<Arc<Shared>>,
}

impl Deliveries {
    pub fn shared(shared: Option<Arc<Shared>>) -> Deliveries {
        Deliveries {
            seen: Mutex::default(),
            shared,
        }
    }

    /// Records `id`; false when it was seen before (a replay). When the shared
    /// state cannot be reached, this replica's memory answers: acting on a
    /// replay twice only syncs twice.
    pub async fn first_time(&self, id: &str) -> bool {
        if let Some(shared) = &self.shared {
            match first_time_shared(shared, id).await {
                Ok(first) => return first,
                Err(e) => tracing::warn!("webhook deliveries: {e}; this replica's memory answers"),
            }
        }
        self.first_time_here(id)
    }

    fn first_time_here(&self, id: &str) -> bool {
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(id.to_string()) {
            return false;
        }
        order.push_back(id.to_string());
        if order.len() > REMEMBERED {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

async fn first_time_shared(shared: &Shared, id: &str) -> Result<bool, SharedError> {
    let db = shared.client().await?;
    let added = db
        .execute(
            "INSERT INTO dynapi_deliveries (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[&id],
        )
        .await?;
    if added == 1 && rand_below(64) == 0 {
        db.execute(
            &format!(
                "DELETE FROM dynapi_deliveries WHERE received < now() - interval '{REMEMBERED_SHARED}'"
            ),
            &[],
        )
        .await?;
    }
    Ok(added == 1)
}

/// A number below `n`, for the occasional clean-up.
fn rand_below(n: u8) -> u8 {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    byte[0] % n
}

/// The parts of the events the daemon acts on.
#[derive(Debug, Deserialize)]
pub struct Push {
    #[serde(rename = "ref")]
    pub reference: String,
    pub after: String,
    #[serde(default)]
    pub deleted: bool,
    pub repository: Repository,
}

#[derive(Debug, Deserialize)]
pub struct PullRequestEvent {
    pub action: String,
    pub number: u64,
    pub pull_request: PullRequest,
    pub repository: Repository,
}

#[derive(Debug, Deserialize)]
pub struct PullRequest {
    pub head: GitRef,
    pub base: GitRef,
}

#[derive(Debug, Deserialize)]
pub struct GitRef {
    #[serde(rename = "ref")]
    pub reference: String,
    pub sha: String,
}

#[derive(Debug, Deserialize)]
pub struct Repository {
    pub full_name: String,
}

/// The repository any event is about (`ping` of an organization has none).
#[derive(Debug, Deserialize)]
pub struct EventRepository {
    pub repository: Option<Repository>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_the_exact_bytes() {
        let body = br#"{"zen": "Keep it logically awesome."}"#;
        let header = sign(b"s3cret", body);
        assert!(signature_is_valid(b"s3cret", body, &header));
        assert!(!signature_is_valid(b"other", body, &header));
        assert!(!signature_is_valid(
            b"s3cret",
            b"{\"zen\":\"Keep it logically awesome.\"}",
            &header
        ));
        assert!(!signature_is_valid(b"s3cret", body, "sha1=abc"));
        assert!(!signature_is_valid(b"s3cret", body, "sha256=zz"));
        assert!(!signature_is_valid(b"s3cret", body, ""));
    }

    #[test]
    fn deliveries_are_remembered_and_bounded() {
        let d = Deliveries::default();
        assert!(d.first_time_here("a"));
        assert!(!d.first_time_here("a"));
        for i in 0..REMEMBERED {
            d.first_time_here(&i.to_string());
        }
        assert!(d.first_time_here("a"), "the oldest ids are forgotten");
    }
}
