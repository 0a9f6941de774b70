//! The audit log: one JSON line for every write, script run and SQL statement
//! (time, token name, operation, target, commit, duration, outcome), kept in the
//! workspace's `.git/dynapi/audit.log`, outside git and out of scripts' reach, and
//! rotated by size (`audit.log.1` is the newest old file).
//!
//! Never the token itself: only the name its grant gives it. A line is written
//! before the answer leaves, so an acknowledged change is always in the log. A
//! failure to write is logged and does not fail the request.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// The log's file name in the state folder.
pub const FILE: &str = "audit.log";

/// One line.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// The name of the token (`admin`, or its name in dynapi.yaml).
    pub token: &'a str,
    /// `write`, `run` or `sql`.
    pub operation: &'a str,
    /// The paths written, the endpoint or script run, or the database and statement.
    pub target: &'a str,
    /// The commit made, or the commit whose script ran.
    pub commit: Option<&'a str>,
    /// A library endpoint's run: `repository@commit` of the library whose
    /// script ran.
    pub library: Option<&'a str>,
    pub duration: Duration,
    /// `ok`, or the error code the caller was answered.
    pub outcome: &'a str,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    token: &'a str,
    operation: &'a str,
    target: &'a str,
    commit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<&'a str>,
    duration_ms: u64,
    outcome: &'a str,
}

/// The longest target kept (statements and path lists can be long).
const TARGET_CAP: usize = 2000;

pub struct Audit {
    path: PathBuf,
    file: Mutex<Option<File>>,
    /// Bytes after which the file is rotated.
    max_bytes: u64,
    /// Old files kept.
    keep: usize,
}

impl Audit {
    /// The log in `dir` (created when missing), rotated at `max_bytes`, keeping
    /// `keep` old files.
    pub fn new(dir: PathBuf, max_bytes: u64, keep: usize) -> Audit {
        Audit {
            path: dir.join(FILE),
            file: Mutex::new(None),
            max_bytes,
            keep,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends `entry` as one line.
    pub fn record(&self, entry: &Entry<'_>) {
        let mut target = entry.target;
        if target.len() > TARGET_CAP {
            let mut end = TARGET_CAP;
            while !target.is_char_boundary(end) {
                end -= 1;
            }
            target = &target[..end];
        }
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            token: entry.token,
            operation: entry.operation,
            target,
            commit: entry.commit,
            library: entry.library,
            duration_ms: entry.duration.as_millis() as u64,
            outcome: entry.outcome,
        };
        let Ok(mut text) = serde_json::to_vec(&line) else {
            return;
        };
        text.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append(&mut file, &text) {
            tracing::warn!("could not write the audit log {}: {e}", self.path.display());
            *file = None;
        }
    }

    fn append(&self, file: &mut Option<File>, text: &[u8]) -> std::io::Result<()> {
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *file = Some(open(&self.path)?);
        }
        let size = file
            .as_ref()
            .map_or(Ok(0), |f| f.metadata().map(|m| m.len()))?;
        if size > 0 && size + text.len() as u64 > self.max_bytes {
            self.rotate()?;
            *file = Some(open(&self.path)?);
        }
        match file {
            Some(f) => f.write_all(text),
            None => Ok(()),
        }
    }

    /// `audit.log.N-1` becomes `.N` (the oldest is dropped), `audit.log` becomes `.1`.
    fn rotate(&self) -> std::io::Result<()> {
        let old = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        let _ = std::fs::remove_file(old(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(old(n), old(n + 1));
        }
        std::fs::rename(&self.path, old(1))
    }
}

fn open(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_and_rotates_by_size() {
        let dir = std::env::temp_dir().join(format!("dynapi-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let audit = Audit::new(dir.clone(), 400, 2);
        for i in 0..12 {
            let target = format!("notes/{i}.md");
            audit.record(&Entry {
                token: "admin",
                operation: "write",
                target: &target,
                commit: Some("abc"),
                library: None,
                duration: Duration::from_millis(3),
                outcome: "ok",
            });
        }
        let current = std::fs::read_to_string(dir.join(FILE)).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(current.lines().last().unwrap()).unwrap();
        assert_eq!(last["target"], "notes/11.md");
        assert_eq!(last["token"], "admin");
        assert_eq!(last["duration_ms"], 3);
        assert!(current.len() <= 400);
        assert!(dir.join("audit.log.1").is_file());
        assert!(dir.join("audit.log.2").is_file());
        assert!(
            !dir.join("audit.log.3").exists(),
            "only two old files are kept"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
