//! Signs of life while an endpoint's script runs under an MCP tool call
//! (`http::mcp`): `notifications/progress` with the lines the script printed
//! since the last one, to a client that sent a `progressToken`, and the
//! script's stderr lines as `notifications/message` to a client that asked for
//! `info` or more (`logging/setLevel`, or the request's level in 2026-07-28).

#![allow(deprecated)] // MCP's logging, which the issue asks for, is deprecated by SEP-2577.

use std::time::{Duration, Instant};

use rmcp::model::{
    LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
};
use rmcp::{Peer, RoleServer};
use serde_json::Value;

use crate::jobs::Job;

/// How often a running call says how it goes.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long a cancelled call waits for its processes to be gone.
pub const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// Characters of output one progress message carries (the newest kept).
const MAX_MESSAGE: usize = 4_000;
/// Log messages one tick may send: a script that floods stderr is summed up.
const MAX_LOG_LINES: usize = 50;

/// What has been told of one run.
pub struct Watch {
    token: Option<ProgressToken>,
    logs: bool,
    started: Instant,
    last_progress: f64,
    timeout: f64,
    logger: String,
    /// Bytes of stdout and of stderr already told.
    told: [usize; 2],
}

impl Watch {
    pub fn new(token: Option<ProgressToken>, level: Option<LoggingLevel>, job: &Job) -> Watch {
        Watch {
            token,
            logs: matches!(level, Some(LoggingLevel::Debug | LoggingLevel::Info)),
            started: Instant::now(),
            last_progress: 0.0,
            timeout: job.timeout.as_secs_f64(),
            logger: job.endpoint.clone(),
            told: [0, 0],
        }
    }

    /// Tells what the run printed since the last time (its whole lines; all
    /// of it once the run ended), if anyone asked.
    pub async fn send(&mut self, peer: &Peer<RoleServer>, job: &Job) {
        if self.token.is_none() && !self.logs {
            return;
        }
        let ended = job.end().is_some();
        let (out, err) = job.live().read(|o| {
            (
                new_lines(&o.streams[0], self.told[0], ended),
                new_lines(&o.streams[1], self.told[1], ended),
            )
        });
        self.told[0] += out.len();
        self.told[1] += err.len();
        if let Some(token) = self.token.clone() {
            let elapsed = self.started.elapsed().as_secs_f64();
            // Progress only ever grows, even between two ticks in one second.
            let progress = elapsed.max(self.last_progress + 0.001);
            self.last_progress = progress;
            let text = String::from_utf8_lossy(&out);
            let message = if text.is_empty() {
                format!("running for {:.0} s", elapsed)
            } else {
                newest(text.trim_end(), MAX_MESSAGE)
            };
            let param = ProgressNotificationParam::new(token, progress)
                .with_total(self.timeout)
                .with_message(message);
            if let Err(e) = peer.notify_progress(param).await {
                tracing::debug!(error = %e, "a client did not take its progress");
            }
        }
        if self.logs {
            let text = String::from_utf8_lossy(&err);
            let lines: Vec<&str> = text.lines().collect();
            let skipped = lines.len().saturating_sub(MAX_LOG_LINES);
            let mut messages: Vec<String> =
                lines[skipped..].iter().map(|l| l.to_string()).collect();
            if skipped > 0 {
                messages.insert(0, format!("({skipped} stderr lines left out)"));
            }
            for line in messages {
                let param =
                    LoggingMessageNotificationParam::new(LoggingLevel::Info, Value::String(line))
                        .with_logger(self.logger.clone());
                if let Err(e) = peer.notify_logging_message(param).await {
                    tracing::debug!(error = %e, "a client did not take a log message");
                    break;
                }
            }
        }
    }
}

/// The bytes of `stream` after `told` up to its last newline, or to its end
/// when `all`.
fn new_lines(stream: &[u8], told: usize, all: bool) -> Vec<u8> {
    let rest = stream.get(told..).unwrap_or_default();
    let end = if all {
        rest.len()
    } else {
        rest.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
    };
    rest[..end].to_vec()
}

/// The last `max` characters of `text`.
fn newest(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let cut: String = text.chars().skip(count - max).collect();
    format!("…{cut}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_lines_are_told_until_the_end() {
        assert_eq!(new_lines(b"a\nb\nc", 0, false), b"a\nb\n");
        assert_eq!(new_lines(b"a\nb\nc", 2, false), b"b\n");
        assert_eq!(new_lines(b"a\nb\nc", 4, false), b"");
        assert_eq!(new_lines(b"a\nb\nc", 4, true), b"c");
        assert_eq!(new_lines(b"a", 9, true), b"");
        assert_eq!(newest("abcdef", 3), "…def");
        assert_eq!(newest("ab", 3), "ab");
    }
}
