//! The sandbox and the limits, each shown for real: scripts that try to write
//! where they may not, read the daemon's secrets, connect out, outlive their
//! timeout, start hundreds of processes; callers beyond a limit; and the daemon
//! run as a non-root user the way the Docker image runs it.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{self, Daemon};

/// Sets `sandbox:` in dynapi.yaml, through the API, as an admin.
async fn set_mode(d: &Daemon, mode: &str) {
    let settings = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();
    let content = format!("{settings}\nsandbox: {mode}\n");
    let a = d
        .put("/files/dynapi.yaml", json!({ "content": content }))
        .await;
    assert!(a.status < 300, "{}", a.json);
}

/// The lines a probe printed, as `what yes|no` pairs.
fn verdicts(answer: &Value) -> Vec<(String, String)> {
    answer["output"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Tries each command in its own shell and prints whether it worked.
const PROBE: &str = r##"#!/bin/sh
daemon=$PPID
try() { if sh -c "$2" >/dev/null 2>&1; then echo "$1 yes"; else echo "$1 no"; fi; }
try read 'cat manifests/hello.yaml'
try out 'echo a > out/a.txt'
try data 'echo a > data/probe.txt'
try tmp 'echo t > "$TMPDIR/t" && test "$HOME" = "$TMPDIR"'
try devnull 'echo x > /dev/null'
try manifest 'echo "# x" >> manifests/hello.yaml'
try settings 'echo "# x" >> dynapi.yaml'
try top 'echo c > new-top.txt'
try parent 'echo b > ../escaped.txt'
try systmp 'echo f > /tmp/dynapi-escaped-$$'
try git 'echo e >> .git/config'
try token 'cat .git/dynapi/token'
try environ "cat /proc/$daemon/environ"
try signal "kill -0 $daemon"
"##;

fn expect(answer: &Value, wanted: &[(&str, &str)]) {
    let got = verdicts(answer);
    let wanted: Vec<(String, String)> = wanted
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, wanted, "{answer}");
}

#[tokio::test]
async fn a_script_writes_only_its_writable_paths_and_cannot_reach_the_daemons_secrets() {
    let d = Daemon::start().await;
    d.add_endpoint("narrow", "sandbox:\n  writable: [out]\n", PROBE)
        .await;
    d.add_endpoint("wide", "", PROBE).await;

    let narrow = d.post("/narrow", json!({})).await;
    assert_eq!(narrow.status, 200, "{}", narrow.json);
    expect(
        &narrow.json,
        &[
            ("read", "yes"),
            ("out", "yes"),
            ("data", "no"),
            ("tmp", "yes"),
            ("devnull", "yes"),
            ("manifest", "no"),
            ("settings", "no"),
            ("top", "no"),
            ("parent", "no"),
            ("systmp", "no"),
            ("git", "no"),
            ("token", "no"),
            ("environ", "no"),
            ("signal", "no"),
        ],
    );
    // The default, `writable: ["."]`: the workspace's files, never `.git`, and no
    // new top-level entries.
    let wide = d.post("/wide", json!({})).await;
    expect(
        &wide.json,
        &[
            ("read", "yes"),
            ("out", "yes"),
            ("data", "yes"),
            ("tmp", "yes"),
            ("devnull", "yes"),
            ("manifest", "yes"),
            ("settings", "no"),
            ("top", "no"),
            ("parent", "no"),
            ("systmp", "no"),
            ("git", "no"),
            ("token", "no"),
            ("environ", "no"),
            ("signal", "no"),
        ],
    );
    assert!(d.workspace.join("out/a.txt").is_file());
    assert!(!d.workspace.join("../escaped.txt").exists());
    assert!(!d.workspace.join("new-top.txt").exists());

    // The status says what is enforced; `sandbox: off` turns it all off.
    let status = d.get("/status").await.json;
    assert_eq!(status["sandbox"]["mode"], json!("auto"), "{status}");
    assert_eq!(status["sandbox"]["enforced"]["filesystem"], json!(true));
    assert_eq!(status["sandbox"]["enforced"]["network"], json!(true));
    set_mode(&d, "off").await;
    let off = d.post("/narrow", json!({})).await;
    let got = verdicts(&off.json);
    assert!(got.contains(&("top".into(), "yes".into())), "{}", off.json);
    assert!(got.contains(&("git".into(), "yes".into())), "{}", off.json);
    assert_eq!(d.get("/status").await.json["sandbox"]["mode"], json!("off"));
}

#[tokio::test]
async fn a_script_cannot_connect_over_tcp_unless_its_manifest_allows_the_network() {
    let d = Daemon::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = "#!/bin/bash\nif (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; then echo connected; else echo refused; fi\n";
    let params = "args: [\"{port}\"]\nparams:\n  port: {type: integer, required: true}\n";
    d.add_endpoint("offline", params, script).await;
    d.add_endpoint(
        "online",
        &format!("{params}sandbox:\n  network: true\n"),
        script,
    )
    .await;

    let a = d.post("/offline", json!({"port": port})).await;
    assert_eq!(a.json["output"], json!("refused\n"), "{}", a.json);
    assert!(
        listener.accept().is_err(),
        "the listener saw a connection from a script without network"
    );
    let a = d.post("/online", json!({"port": port})).await;
    assert_eq!(a.json["output"], json!("connected\n"), "{}", a.json);
    assert!(listener.accept().is_ok());
}

#[tokio::test]
async fn a_script_is_killed_with_all_its_children_at_its_timeout() {
    let d = Daemon::start().await;
    d.add_endpoint(
        "linger",
        "timeout: 1s\n",
        "#!/bin/sh\n(sleep 3; echo late > data/late.txt) &\nsleep 30 &\nsleep 60\n",
    )
    .await;
    let started = Instant::now();
    let a = d.post("/linger", json!({})).await;
    assert_eq!(a.status, 504, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        !d.workspace.join("data/late.txt").exists(),
        "a child outlived the script's timeout"
    );
}

#[tokio::test]
async fn an_endpoint_beyond_its_own_limit_gets_429_while_others_run() {
    let d = Daemon::start_with(|c| c.limits.queue_wait = Duration::from_millis(100)).await;
    d.add_endpoint(
        "single",
        "concurrency: 1\n",
        "#!/bin/sh\nsleep 1\necho done\n",
    )
    .await;
    let first = d.post("/single", json!({}));
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::join!(d.post("/single", json!({})), d.get("/hello"))
    };
    let (first, (second, hello)) = tokio::join!(first, others);
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(second.status, 429, "{}", second.json);
    assert_eq!(second.headers["retry-after"], "1");
    assert_eq!(second.json["error"]["code"], json!("busy"));
    let message = second.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("`single`"), "{message}");
    assert_eq!(hello.status, 200, "{}", hello.json);
}

#[tokio::test]
async fn required_runs_scripts_only_when_everything_is_enforced() {
    let d = Daemon::start().await;
    set_mode(&d, "required").await;
    let status = d.get("/status").await.json;
    let missing = status["sandbox"]["missing"].as_array().unwrap().clone();
    let a = d.get("/hello").await;
    if missing.is_empty() {
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(status["sandbox"]["scripts_run"], json!(true));
    } else {
        // Tests running as root land here: the kernel exempts root from the
        // process limit, so `required` cannot be met.
        assert_eq!(a.status, 503, "{}", a.json);
        assert_eq!(a.json["error"]["code"], json!("sandbox_unavailable"));
        let message = a.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(missing[0].as_str().unwrap()), "{message}");
        assert_eq!(status["sandbox"]["scripts_run"], json!(false));
    }
}

/// The user the Docker image runs as has its own uid; here, nobody's.
const NOBODY: u32 = 65534;

/// The daemon as the Docker image runs it: the binary in a bin folder, a home
/// folder holding `workspace`, a user that is not root. A script that starts
/// processes until it cannot is held to `--script-processes`, the daemon keeps
/// answering, and the timeout takes them all.
#[tokio::test]
async fn as_a_non_root_user_a_script_cannot_start_processes_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, home) = (dir.path().join("bin"), dir.path().join("home"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_dynapi"), bin.join("dynapi")).unwrap();
    let status = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let mut command = Command::new(bin.join("dynapi"));
    command
        .current_dir(&home)
        .env_clear()
        .env("HOME", &home)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .uid(NOBODY)
        .gid(NOBODY);
    let (mut child, url, token) = support::serve(command, &["--script-processes", "40"]);
    assert!(!token.is_empty(), "the daemon printed no token");
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        client
            .request(method, format!("{url}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    let status: Value = call(reqwest::Method::GET, "/status", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["sandbox"]["enforced"]["processes"],
        json!(true),
        "{status}"
    );
    assert!(home.join("workspace/.git").is_dir());

    let script = r#"#!/usr/bin/env python3
import os, sys, time
started = 0
for _ in range(400):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    started += 1
print(started, flush=True)
time.sleep(60)
"#;
    let manifest = "name: spawn\ndescription: Starts processes until it cannot.\npath: /spawn\nscript: scripts/spawn.py\ntimeout: 3s\n";
    let a = call(
        reqwest::Method::POST,
        "/endpoints",
        json!({"manifest": manifest, "script": {"path": "scripts/spawn.py", "content": script}}),
    )
    .await
    .unwrap();
    assert_eq!(a.status(), 201, "{}", a.text().await.unwrap());

    let spawn = call(reqwest::Method::POST, "/spawn", json!({}));
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        call(reqwest::Method::GET, "/hello", json!({}))
            .await
            .unwrap()
    };
    let (spawned, hello) = tokio::join!(spawn, meanwhile);
    let spawned: Value = spawned.unwrap().json().await.unwrap();
    assert_eq!(hello.status(), 200, "the daemon stopped answering");
    assert_eq!(spawned["error"]["code"], json!("timeout"), "{spawned}");
    let started: u32 = spawned["error"]["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (1..=40).contains(&started),
        "{started} processes started under a limit of 40"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        processes_of(NOBODY, "python3"),
        0,
        "processes outlived the timeout"
    );

    // SAFETY: kill sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// Live processes (not zombies waiting for init to reap them) owned by `uid`
/// whose command name is `name`.
fn processes_of(uid: u32, name: &str) -> usize {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
            e.metadata().is_ok_and(|m| m.uid() == uid)
                && stat.contains(&format!("({name})"))
                && state.is_some_and(|s| s != "Z")
        })
        .count()
}
