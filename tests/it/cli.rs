//! The binary itself: `check`, `init`, `token new`, and serve with graceful shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{self, git};

const BIN: &str = env!("CARGO_BIN_EXE_dynapi");

#[test]
fn init_writes_a_repository_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("project");
    let out = Command::new(BIN).arg("init").arg(&repo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(repo.join(".github/workflows/dynapi-check.yml").exists());
    assert_eq!(git(&repo, &["rev-list", "--count", "HEAD"]).trim(), "1");
    assert_eq!(git(&repo, &["status", "--porcelain"]).trim(), "");
    let workflow =
        std::fs::read_to_string(repo.join(".github/workflows/dynapi-check.yml")).unwrap();
    assert!(workflow.contains("pull_request") && workflow.contains("dynapi check --format github"));
    // Fast: the binary is cached under the pinned commit, built only on a miss;
    // and no address is made up (where dynapi comes from is the user's setting).
    assert!(workflow.contains("actions/cache@") && workflow.contains("cache-hit != 'true'"));
    assert!(workflow.contains("--rev \"$DYNAPI_REV\""));
    assert!(
        !workflow.contains("://"),
        "no address in a generated file: {workflow}"
    );
    let out = Command::new(BIN).arg("check").arg(&repo).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_prints_file_line_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    std::fs::write(dir.path().join("manifests/x.yaml"), "name: x\ndescription: d\nscript: scripts/x.sh\nmethod: get\nparams:\n  n: {type: integer, minimum: 5, maximum: 1}\n").unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("manifests/x.yaml:3:9: `scripts/x.sh` does not exist")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("manifests/x.yaml:6:31:") && l.contains("minimum")),
        "{stdout}"
    );
}

/// A manifest with five problems: an unknown key, a bad name, a missing script,
/// a timeout over the limit and a bad parameter type. Each used to hide behind
/// the unknown key.
pub const FIVE_PROBLEMS: &str = "name: Bad_Name\ndescription: Five problems at once.\nscript: scripts/missing.sh\ntimeout: 11m\ncolour: blue\nparams:\n  n: {type: strin}\n";

/// Each problem of `FIVE_PROBLEMS`: line, column (of the value; of the key for
/// the unknown key) and a part of its message.
pub const FIVE_AT: [(usize, usize, &str); 5] = [
    (1, 7, "`Bad_Name` is not a valid name"),
    (3, 9, "`scripts/missing.sh` does not exist"),
    (4, 10, "`11m` is longer than the limit of 10m"),
    (5, 1, "`colour` is not a key of a manifest"),
    (7, 13, "`strin` is not a parameter type"),
];

fn check_five(format: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    std::fs::write(dir.path().join("manifests/x.yaml"), FIVE_PROBLEMS).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .args(format)
        .arg(dir.path())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_reports_every_problem_at_once_each_at_its_value() {
    let (code, stdout) = check_five(&[]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), FIVE_AT.len(), "{stdout}");
    for (line, (l, c, message)) in lines.iter().zip(FIVE_AT) {
        let prefix = format!("manifests/x.yaml:{l}:{c}: ");
        assert!(
            line.starts_with(&prefix) && line.contains(message),
            "{line:?} is not {prefix}...{message}..."
        );
    }
}

#[test]
fn check_speaks_githubs_workflow_commands() {
    let (code, stdout) = check_five(&["--format", "github"]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), FIVE_AT.len(), "{stdout}");
    for (line, (l, c, message)) in lines.iter().zip(FIVE_AT) {
        let prefix = format!("::error file=manifests/x.yaml,line={l},col={c}::");
        assert!(
            line.starts_with(&prefix) && line.contains(message),
            "{line:?} is not {prefix}...{message}..."
        );
    }
    // A message keeps its `,` and `:` (only properties escape them).
    assert_eq!(
        lines[2],
        "::error file=manifests/x.yaml,line=4,col=10::`11m` is longer than the limit of 10m; write `10m` or less"
    );
    let (code, stdout) = check_five(&["--format", "xml"]);
    assert_eq!(
        code,
        Some(2),
        "an unknown format is a usage error: {stdout}"
    );
}

#[test]
fn token_new_prints_a_token_and_its_hash_line() {
    let out = Command::new(BIN)
        .args(["token", "new", "--scopes", "read,run", "--name", "gpt"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let token = stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("token: ")
        .unwrap();
    let hash = hex::encode(dynapi::auth::hash_token(token));
    assert!(stdout.contains(&format!("sha256: {hash}")));
    assert!(stdout.contains("scopes: [read, run]"));
    let bad = Command::new(BIN)
        .args(["token", "new", "--scopes", "root"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn what_token_new_prints_is_accepted_by_dynapi_yaml_and_bad_names_are_refused() {
    // What the command prints below its "Add this" line is pasted into
    // dynapi.yaml as it is; `dynapi check` must accept that file.
    let out = Command::new(BIN)
        .args(["token", "new", "--scopes", "read", "--name", "ci-reader-2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (_, yaml) = stdout.split_once("dynapi.yaml").unwrap();
    let yaml = yaml.split_once('\n').unwrap().1;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dynapi.yaml"), yaml).unwrap();
    let check = Command::new(BIN)
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{yaml}\n{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // A name dynapi.yaml would refuse is refused here, before any token is made.
    for name in ["t_read", "Reader", "", "a b", &"x".repeat(65)] {
        let bad = Command::new(BIN)
            .args(["token", "new", "--name", name])
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(2), "{name}");
        assert!(bad.stdout.is_empty(), "no token is printed for `{name}`");
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(
            stderr.contains("lowercase letters, digits and dashes"),
            "{stderr}"
        );
    }
}

/// Starts `dynapi serve` on a free port in `dir`; returns the child and its URL and token.
fn spawn_serve(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String, String) {
    let mut command = Command::new(BIN);
    command.current_dir(dir);
    support::serve(command, extra)
}

#[tokio::test]
async fn serve_makes_the_workspace_prints_a_token_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url, token) = spawn_serve(dir.path(), &["--shutdown-grace", "5s"]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(token.starts_with("dynapi_"), "a generated token is printed");
    let kept = std::fs::read_to_string(dir.path().join("workspace/.git/dynapi/token")).unwrap();
    assert_eq!(kept.trim(), token, "the token is kept outside git");
    let ws = dir.path().join("workspace");
    assert_eq!(
        git(
            &ws,
            &["ls-files", "scripts/sample_script.sh", "scripts/run_sql.sh"]
        )
        .lines()
        .count(),
        2
    );

    let client = crate::support::client();
    let add = client
        .post(format!("{url}/endpoints"))
        .bearer_auth(&token)
        .json(&crate::support::endpoint_body(
            "drain",
            "#!/bin/sh\nsleep 1\necho drained\n",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), 201);
    let slow = tokio::spawn({
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            client
                .post(format!("{url}/drain"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let answer = slow.await.unwrap();
    assert_eq!(
        answer["output"],
        serde_json::json!("drained\n"),
        "the running request finished"
    );
    let status = wait_exit(child, Duration::from_secs(10));
    assert_eq!(status, Some(0));

    // A second start keeps the workspace and the token, and prints no new token.
    let (mut child, _, again) = spawn_serve(dir.path(), &[]);
    assert!(again.is_empty(), "the token is printed only once");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn shutdown_kills_scripts_still_running_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url, token) = spawn_serve(dir.path(), &["--shutdown-grace", "300ms"]);
    let client = crate::support::client();
    let add = client
        .post(format!("{url}/endpoints"))
        .bearer_auth(&token)
        .json(&crate::support::endpoint_body(
            "forever",
            "#!/bin/sh\nsleep 60\n",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), 201);
    let slow = tokio::spawn({
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            client
                .post(format!("{url}/forever"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(child, Duration::from_secs(10));
    assert_eq!(status, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The killed run answered (with the signal) or its connection closed; it did not hang.
    let _ = tokio::time::timeout(Duration::from_secs(2), slow)
        .await
        .expect("the request did not hang");
}

/// A job no request waits for gets the grace period like a request, then
/// its script is killed, with what it left behind; the daemon exits only once
/// the run is over and recorded in the audit log.
#[tokio::test]
async fn shutdown_kills_a_jobs_script_and_its_leftovers_and_records_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url, token) = spawn_serve(dir.path(), &["--shutdown-grace", "300ms"]);
    let client = crate::support::client();
    // The numbers mark these processes in /proc (no other test sleeps them).
    let script = "#!/bin/sh\nsetsid sleep 117 &\nexec sleep 118\n";
    let add = client
        .post(format!("{url}/endpoints"))
        .bearer_auth(&token)
        .json(&crate::support::endpoint_body("long-job", script))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), 201);
    let started = client
        .post(format!("{url}/call/long-job?async=true"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    // Live (not zombie) processes whose command line is `sleep <n>`.
    let sleeping = |n: &str| -> Vec<i32> {
        let want = format!("sleep\0{n}\0");
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while (sleeping("117").is_empty() || sleeping("118").is_empty()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (main, left) = (sleeping("118"), sleeping("117"));
    assert_eq!((main.len(), left.len()), (1, 1), "the job's script runs");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(child, Duration::from_secs(10));
    assert_eq!(status, Some(0));
    assert!(
        sleeping("118").is_empty(),
        "the job's script outlived the daemon"
    );
    assert!(
        sleeping("117").is_empty(),
        "what the job's script left behind outlived the daemon"
    );
    let audit = std::fs::read_to_string(dir.path().join("workspace/.git/dynapi/audit.log"))
        .unwrap_or_default();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"run\"") && l.contains("long-job")),
        "the killed run is in the audit log: {audit}"
    );
}

fn wait_exit(mut child: std::process::Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}
