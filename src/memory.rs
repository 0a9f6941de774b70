//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps what the daemon frees in its arenas for the next
//! allocation. A registry build (1,000 manifests parsed and checked), an
//! OpenAPI document of 1,000 operations or a large answer frees tens of MiB
//! at once, and the daemon's resident size would stay at that peak. `trim`
//! asks glibc to hand free pages back (`malloc_trim`, which walks every arena
//! and releases whole free pages with `madvise`): after each sync, and every
//! `PERIOD` while the daemon runs. A no-op on other C libraries.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often freed memory is handed back while the daemon runs.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Hands the allocator's free pages back to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganizes the allocator's own free lists;
    // it is thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls `trim` every `PERIOD` until `shutdown`, off the async threads.
pub async fn trim_every(shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    }
}
