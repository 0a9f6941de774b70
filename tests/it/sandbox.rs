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
    let client = crate::support::client();
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

/// Issue 18, 1: a `writable` path that is, or passes through, a symlink grants
/// nothing; the run is refused with an error that says why, and neither the
/// top of the workspace, `dynapi.yaml` nor `.git` was reached.
#[tokio::test]
async fn a_symlinked_writable_path_is_refused_and_grants_nothing() {
    let d = Daemon::start().await;
    d.add_endpoint(
        "linker",
        "sandbox:\n  writable: [reports]\n",
        "#!/bin/sh\nln -sfn .. reports/up && echo linked\n",
    )
    .await;
    let climb = "#!/bin/sh\n\
        echo top > reports/up/top.txt\n\
        echo '# mine' >> reports/up/dynapi.yaml\n\
        mkdir -p reports/up/.git/hooks && echo 'touch /tmp/owned' > reports/up/.git/hooks/post-commit\n\
        cat reports/up/.git/dynapi/audit.log && echo read-audit\n\
        exit 0\n";
    d.add_endpoint("climber", "sandbox:\n  writable: [reports/up]\n", climb)
        .await;
    d.add_endpoint("deeper", "sandbox:\n  writable: [reports/up/data]\n", climb)
        .await;
    let settings = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();

    let a = d.post("/linker", json!({})).await;
    assert_eq!(a.json["output"], json!("linked\n"), "{}", a.json);
    for name in ["/climber", "/deeper"] {
        let a = d.post(name, json!({})).await;
        assert_eq!(a.status, 409, "{name}: {}", a.json);
        assert_eq!(a.json["error"]["code"], json!("writable_refused"));
        let message = a.json["error"]["message"].as_str().unwrap();
        assert!(message.contains("symlink"), "{message}");
    }
    assert!(!d.workspace.join("top.txt").exists());
    assert!(!d.workspace.join(".git/hooks/post-commit").exists());
    assert!(!d.workspace.join("data/reports").exists());
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap(),
        settings
    );
}

/// Issue 18, 2: a folder swapped for a symlink to an outside folder, in a loop
/// (`renameat2(RENAME_EXCHANGE)`, here from a thread of the test), while the
/// endpoint that may write it runs hundreds of times: nothing is ever written
/// outside.
#[tokio::test]
async fn a_writable_folder_swapped_for_a_symlink_never_grants_the_outside() {
    let d = Daemon::start().await;
    let outside = tempfile::tempdir().unwrap();
    d.add_endpoint(
        "wbox",
        "sandbox:\n  writable: [scripts/wbox]\n",
        "#!/bin/sh\necho x > scripts/wbox/f.txt 2>/dev/null && echo wrote || echo refused\n",
    )
    .await;
    let scripts = d.workspace.join("scripts");
    std::fs::create_dir_all(scripts.join("wbox")).unwrap();
    std::os::unix::fs::symlink(outside.path(), scripts.join("wlink")).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (a, b) = (
            path_c(&scripts.join("wbox")),
            path_c(&scripts.join("wlink")),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: renameat2 reads two NUL-terminated paths we own.
                unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                swaps += 1;
            }
            swaps
        })
    };
    let (mut ran, mut refused) = (0, 0);
    for _ in 0..300 {
        let a = d.post("/wbox", json!({})).await;
        match a.status {
            200 => ran += 1,
            // Refused at the check (`resolve` saw the link lead outside) or
            // at the open (`openat2` met the symlink).
            400 | 409 => refused += 1,
            _ => panic!("{}", a.json),
        }
        let escaped: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
        assert!(escaped.is_empty(), "a script wrote outside: {escaped:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 300, "only {swaps} swaps");
    assert!(ran > 0 && refused > 0, "ran {ran}, refused {refused}");
}

fn path_c(path: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap()
}

/// Issue 18, 3: a descriptor the daemon holds without close-on-exec (as one it
/// inherited would be) never reaches a script: it has 0, 1 and 2, and the one
/// `ls` opens to list them.
#[tokio::test]
async fn a_script_holds_no_descriptor_of_the_daemons() {
    let d = Daemon::start().await;
    // SAFETY: open and fcntl on a path and a descriptor we own; F_DUPFD makes
    // a copy without FD_CLOEXEC at the lowest free number from 900.
    let leaked = unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        let high = libc::fcntl(fd, libc::F_DUPFD, 900);
        libc::close(fd);
        high
    };
    assert!(leaked >= 900);
    d.add_endpoint("fds", "", "#!/bin/sh\nls /proc/self/fd\n")
        .await;
    let a = d.post("/fds", json!({})).await;
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(leaked) };
    let fds: Vec<&str> = a.json["output"].as_str().unwrap().lines().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "{}", a.json);
}

/// Live processes (not zombies) whose command line is `argv`.
fn processes_running(argv: &[&str]) -> usize {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted)
                && state.is_some_and(|s| s != "Z")
        })
        .count()
}

/// Issue 18, 4: what a script starts in a new session or through a double fork
/// is gone when its run ends, normally or at its timeout.
#[tokio::test]
async fn no_process_outlives_its_run_even_in_a_new_session() {
    let d = Daemon::start().await;
    d.add_endpoint(
        "detach",
        "",
        "#!/bin/sh\nsetsid sleep 317 &\n(sleep 318 &)\nsleep 0.2\necho started\n",
    )
    .await;
    d.add_endpoint(
        "detach-slow",
        "timeout: 1s\n",
        "#!/bin/sh\nsetsid sleep 319 &\n(setsid sleep 320 &)\nsleep 30\n",
    )
    .await;
    let a = d.post("/detach", json!({})).await;
    assert_eq!(a.json["output"], json!("started\n"), "{}", a.json);
    assert_eq!(
        processes_running(&["sleep", "317"]),
        0,
        "setsid outlived its run"
    );
    assert_eq!(
        processes_running(&["sleep", "318"]),
        0,
        "a double fork outlived its run"
    );
    let a = d.post("/detach-slow", json!({})).await;
    assert_eq!(a.status, 504, "{}", a.json);
    assert_eq!(
        processes_running(&["sleep", "319"]),
        0,
        "setsid outlived the timeout"
    );
    assert_eq!(
        processes_running(&["sleep", "320"]),
        0,
        "a double fork outlived the timeout"
    );
}

/// A script that moves its main process into another process group (one its
/// child made) leaves its own group empty: a kill of that group alone reached
/// nothing, the run outlived its time limit and a cancel, and shutdown waited
/// for it forever (a reviewer's finding). Scripts lead a session of their
/// own, which a session leader cannot leave, and the main process is killed
/// by its pid as well.
#[tokio::test]
async fn a_script_that_leaves_its_process_group_is_still_killed_at_its_timeout_and_on_cancel() {
    let d = Daemon::start().await;
    let script = |n: u32| {
        format!(
            r#"#!/usr/bin/python3
import os, sys, time
k = os.fork()
if k == 0:
    os.setpgid(0, 0)
    os.execv("/bin/sleep", ["sleep", "{child}"])
time.sleep(0.2)
try:
    os.setpgid(0, k)
    print("left its group")
except OSError as e:
    print("stayed:", e.errno)
sys.stdout.flush()
os.execv("/bin/sleep", ["sleep", "{main}"])
"#,
            child = n,
            main = n + 1
        )
    };
    d.add_endpoint("wander", "timeout: 1s\n", &script(343))
        .await;
    d.add_endpoint("wander-job", "async: true\n", &script(345))
        .await;
    let bounded = Duration::from_secs(20);
    let a = tokio::time::timeout(bounded, d.post("/wander", json!({})))
        .await
        .expect("the run outlived its time limit");
    assert_eq!(a.status, 504, "{}", a.json);
    for n in ["343", "344"] {
        assert_eq!(
            processes_running(&["sleep", n]),
            0,
            "sleep {n} outlived the timeout"
        );
    }
    let a = d.post("/wander-job", json!({})).await;
    assert_eq!(a.status, 202, "{}", a.json);
    let url = a.json["url"].as_str().unwrap().to_string();
    for _ in 0..100 {
        if processes_running(&["sleep", "346"]) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = tokio::time::timeout(bounded, d.delete(&url))
        .await
        .expect("the cancel never ended the job");
    assert_eq!(a.json["state"], json!("cancelled"), "{}", a.json);
    for n in ["345", "346"] {
        assert_eq!(
            processes_running(&["sleep", n]),
            0,
            "sleep {n} outlived the cancel"
        );
    }
}

/// Issue 18, 5: without `network: true` no UDP datagram leaves a script (the
/// test listens on 127.0.0.1); with it, one does. Namespaces are refused to
/// every script, and so is giving up being its orphans' subreaper (scripts
/// inherit the filter from the thread that starts them, see
/// `exec/filtered.rs`: the same filter, not a weaker one).
#[tokio::test]
async fn a_script_sends_no_udp_and_makes_no_namespace_unless_allowed() {
    let d = Daemon::start().await;
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // PR_SET_CHILD_SUBREAPER is 36, PR_GET_CHILD_SUBREAPER 37: the script is
    // its orphans' subreaper and cannot stop being it (they would go to the
    // daemon while it still runs).
    let script = r#"#!/usr/bin/python3
import ctypes, socket, subprocess, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"hi", ("127.0.0.1", int(sys.argv[1])))
    print("sent")
except OSError as e:
    print("refused", e.errno)
made = subprocess.run(["unshare", "-U", "true"], stderr=subprocess.DEVNULL).returncode == 0
print("namespace", "made" if made else "refused")
libc = ctypes.CDLL(None, use_errno=True)
flag = ctypes.c_int(0)
libc.prctl(37, ctypes.byref(flag), 0, 0, 0)
unset = libc.prctl(36, 0, 0, 0, 0) == 0
print("subreaper", "unset" if unset else ("kept" if flag.value == 1 else "never set"))
"#;
    let params = "args: [\"{port}\"]\nparams:\n  port: {type: integer, required: true}\n";
    d.add_endpoint("udp-off", params, script).await;
    d.add_endpoint(
        "udp-on",
        &format!("{params}sandbox:\n  network: true\n"),
        script,
    )
    .await;

    let a = d.post("/udp-off", json!({"port": port})).await;
    assert_eq!(
        a.json["output"],
        json!(format!(
            "refused {}\nnamespace refused\nsubreaper kept\n",
            libc::EACCES
        )),
        "{}",
        a.json
    );
    let mut buf = [0u8; 16];
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        listener.recv(&mut buf).is_err(),
        "a datagram arrived from a script without network"
    );
    let a = d.post("/udp-on", json!({"port": port})).await;
    assert_eq!(
        a.json["output"],
        json!("sent\nnamespace refused\nsubreaper kept\n"),
        "{}",
        a.json
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(listener.recv(&mut buf).unwrap(), 2);
    let status = d.get("/status").await.json;
    assert_eq!(
        status["sandbox"]["enforced"]["syscalls"],
        json!(true),
        "{status}"
    );
}

/// Issue 18, 6: shared mappings count against the memory limit (through the
/// address space): four times the limit, shared and touched, fails; a small
/// one works.
#[tokio::test]
async fn shared_memory_counts_against_the_memory_limit() {
    let d = Daemon::start_with(|c| c.limits.sandbox.memory = 256 << 20).await;
    let script = r#"#!/usr/bin/python3
import mmap, sys
size = int(sys.argv[1]) << 20
try:
    m = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    for i in range(0, size, 4096):
        m[i] = 1
    print("touched")
except (OSError, MemoryError):
    print("refused")
"#;
    let params = "args: [\"{mib}\"]\nparams:\n  mib: {type: integer, required: true}\n";
    d.add_endpoint("shm", params, script).await;
    let a = d.post("/shm", json!({"mib": 1024})).await;
    assert_eq!(a.json["output"], json!("refused\n"), "{}", a.json);
    let a = d.post("/shm", json!({"mib": 64})).await;
    assert_eq!(a.json["output"], json!("touched\n"), "{}", a.json);
    let status = d.get("/status").await.json;
    assert_eq!(
        status["sandbox"]["limits"]["address_space_bytes"],
        json!((256u64 << 20) * 2 + (256 << 20)),
        "{status}"
    );
    // And it says how: per process rlimits, no cgroup.
    assert_eq!(
        status["sandbox"]["limits"]["memory_enforced_by"],
        json!("rlimit"),
        "{status}"
    );
}

#[tokio::test]
async fn a_kept_ruleset_follows_a_replaced_folder_and_each_run_finds_its_temp_folder_empty() {
    let d = Daemon::start().await;
    // Each run lists its TMPDIR (empty), leaves a file there, writes its
    // writable folder and tries where that folder used to be.
    d.add_endpoint(
        "again",
        "sandbox:\n  writable: [reports/box]\n",
        "#!/bin/sh\nls -A \"$TMPDIR\"; touch \"$TMPDIR/left\"\n\
         echo hi > reports/box/f && echo wrote\n\
         echo x > reports/old-box/g 2>/dev/null && echo escaped\nexit 0\n",
    )
    .await;
    // Past the moment the new commit's folders count as settled (`Stamps`), so
    // that runs keep their rulesets.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let a = d.post("/again", json!({})).await;
        assert_eq!(a.json["output"], json!("wrote\n"), "{}", a.json);
    }
    // The folder the kept ruleset was made for is moved away and another made
    // in its place (the root does not change): the next run may write the new
    // one, not the old one.
    let folder = d.workspace.join("reports/box");
    std::fs::rename(&folder, d.workspace.join("reports/old-box")).unwrap();
    std::fs::create_dir(&folder).unwrap();
    for _ in 0..2 {
        let a = d.post("/again", json!({})).await;
        assert_eq!(a.json["output"], json!("wrote\n"), "{}", a.json);
    }
    assert!(folder.join("f").exists());
    assert!(!d.workspace.join("reports/old-box/g").exists());
}

#[tokio::test]
async fn run_by_root_a_script_holds_no_capability_nor_gains_one_by_exec() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let d = Daemon::start().await;
    // The script's own sets, then those of a program it executes (root's
    // rule at execve would give it every capability the bounding set allows).
    d.add_endpoint(
        "caps",
        "",
        "#!/bin/sh\ngrep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status\n\
         sh -c \"grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status\"\n",
    )
    .await;
    let a = d.post("/caps", json!({})).await;
    let lines: Vec<&str> = a.json["output"].as_str().unwrap().lines().collect();
    assert_eq!(lines.len(), 8, "{}", a.json);
    for line in lines {
        assert!(line.ends_with("0000000000000000"), "{line}: {}", a.json);
    }
}

/// What a script tries that only uid 0 may do: read `/etc/shadow`, connect
/// to a socket only root may use (as the Docker daemon's is), write a file the
/// daemon wrote into its `writable` folder.
const AS_WHOM: &str = r#"#!/bin/sh
echo "uid $(id -u)"
if cat /etc/shadow >/dev/null 2>&1; then echo "shadow read"; else echo "shadow closed"; fi
if python3 -c "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])" "$1" 2>/dev/null; then echo "socket connected"; else echo "socket refused"; fi
if echo more >> data/by-daemon.txt; then echo "data written"; else echo "data refused"; fi
if chmod 600 data/by-daemon.txt 2>/dev/null; then echo "chmod done"; else echo "chmod refused"; fi
"#;

#[tokio::test]
async fn run_by_root_scripts_run_as_an_unprivileged_user_who_can_still_write_their_folders() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    let d = Daemon::start().await;
    let status = d.get("/status").await;
    let runs_as = &status.json["sandbox"]["runs_as"];
    if euid != 0 {
        // Not root: scripts run as the daemon's own user.
        assert_eq!(runs_as["uid"], json!(euid), "{}", status.json);
        return;
    }
    assert_eq!(runs_as["user"], json!("nobody"), "{}", status.json);
    assert_ne!(runs_as["uid"], json!(0));
    assert_eq!(
        status.json["sandbox"]["enforced"]["processes"],
        json!(true),
        "the process limit binds a user that is not root: {}",
        status.json
    );
    // A socket only its owner, root, may connect to.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("root-only.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The daemon (root) writes a file into the folder first, as any API write.
    let w = d
        .put(
            "/files/data/by-daemon.txt",
            json!({"content": "from the API\n"}),
        )
        .await;
    assert!(w.status < 300, "{}", w.json);
    d.add_endpoint(
        "whom",
        "args: [\"{socket}\"]\nparams:\n  socket: {type: string, required: true}\nsandbox:\n  writable: [data]\n",
        AS_WHOM,
    )
    .await;
    let a = d
        .post("/whom", json!({"socket": socket.to_str().unwrap()}))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let got = verdicts(&a.json);
    let nobody = runs_as["uid"].as_u64().unwrap().to_string();
    assert_eq!(
        got,
        [
            ("uid", nobody.as_str()),
            ("shadow", "closed"),
            ("socket", "refused"),
            ("data", "written"),
            ("chmod", "refused"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string())),
        "{}",
        a.json
    );
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("data/by-daemon.txt")).unwrap(),
        "from the API\nmore\n"
    );
    // Written through its group: the daemon still owns it, the script user's
    // group may write it.
    let meta = std::fs::metadata(d.workspace.join("data/by-daemon.txt")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), 0);
    assert_eq!(json!(meta.gid()), runs_as["gid"]);
    assert_eq!(meta.mode() & 0o7777, 0o664);

    // Scripts never run as root: `--script-user root` is refused on the
    // command line, and where it comes another way, nobody runs them.
    let d = Daemon::start_with(|c| c.limits.sandbox.user = Some("root".into())).await;
    d.add_endpoint(
        "whom",
        "args: [\"{socket}\"]\nparams:\n  socket: {type: string, required: true}\n",
        AS_WHOM,
    )
    .await;
    let a = d
        .post("/whom", json!({"socket": socket.to_str().unwrap()}))
        .await;
    assert_eq!(
        verdicts(&a.json)[0],
        ("uid".to_string(), nobody),
        "{}",
        a.json
    );
    let status = d.get("/status").await;
    let missing = status.json["sandbox"]["missing"].to_string();
    assert!(missing.contains("never run with"), "{}", status.json);
    let refused = Command::new(env!("CARGO_BIN_EXE_dynapi"))
        .args(["serve", "--script-user", "root"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("scripts never run as root"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// A root daemon started with capabilities it keeps across a change of uid
/// (an ambient set and the securebit that stops the kernel's clearing, as a
/// service manager may grant): its scripts hold none of them.
#[tokio::test]
async fn capabilities_the_daemon_was_started_with_never_reach_a_script() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("setpriv");
    command.args([
        "--securebits",
        "+no_setuid_fixup",
        "--inh-caps",
        "+dac_override,+dac_read_search",
        "--ambient-caps",
        "+dac_override,+dac_read_search",
        env!("CARGO_BIN_EXE_dynapi"),
    ]);
    let workspace = dir.path().join("workspace");
    let (mut child, url, token) =
        support::serve(command, &["--workspace", workspace.to_str().unwrap()]);
    assert!(!token.is_empty(), "the daemon printed no token");
    let client = crate::support::client();
    let script = "#!/bin/sh\ngrep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status\n\
                  if head -c1 /etc/shadow >/dev/null 2>&1; then echo 'shadow read'; else echo 'shadow closed'; fi\n";
    let manifest = "name: caps\ndescription: Capabilities.\npath: /caps\nscript: scripts/caps.sh\n";
    let added = client
        .post(format!("{url}/endpoints"))
        .bearer_auth(&token)
        .json(&json!({"manifest": manifest, "script": {"path": "scripts/caps.sh", "content": script}}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let a: Value = client
        .post(format!("{url}/caps"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    let output = a["output"].as_str().unwrap_or_default().to_string();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 5, "{a}");
    for line in &lines[..4] {
        assert!(line.ends_with("0000000000000000"), "{line}: {a}");
    }
    assert_eq!(lines[4], "shadow closed", "{a}");
}

/// A workspace the script user may not enter is a clear 503, not a script
/// that fails on every file.
#[tokio::test]
async fn a_workspace_closed_to_the_script_user_is_said_plainly() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let d = Daemon::start().await;
    d.add_endpoint("inside", "", "#!/bin/sh\necho in\n").await;
    assert_eq!(
        d.post("/inside", json!({})).await.json["output"],
        json!("in\n")
    );
    // A folder above it closed to the script user: scripts still run (by
    // relative paths), and /status says what fails there.
    let above = d.workspace.parent().unwrap();
    let missing = || async { d.get("/status").await.json["sandbox"]["missing"].to_string() };
    assert!(!missing().await.contains("may not pass"));
    std::fs::set_permissions(above, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    assert_eq!(
        d.post("/inside", json!({})).await.json["output"],
        json!("in\n")
    );
    let said = missing().await;
    assert!(
        said.contains("may not pass") && said.contains(above.to_str().unwrap()),
        "{said}"
    );
    std::fs::set_permissions(above, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        &d.workspace,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let a = d.post("/inside", json!({})).await;
    assert_eq!(a.status, 503, "{}", a.json);
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("chmod o+x"),
        "{}",
        a.json
    );
}

/// A script's `clone(CLONE_PARENT)` would make a sibling whose parent is the
/// daemon's thread that started the script: outside the run's subreaper, in a
/// new session the group kill misses, holding the run's Landlock domain and
/// so the temporary folder the endpoint's next run gets. The filter refuses
/// the flag; whatever the script tries, nothing of it outlives the run and
/// the next run starts on an empty folder.
#[tokio::test]
async fn a_sibling_made_with_clone_parent_neither_outlives_its_run_nor_reaches_the_next() {
    let d = Daemon::start().await;
    let script = format!(
        r#"#!/usr/bin/python3
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
print(sorted(os.listdir(os.environ["TMPDIR"])))
sys.stdout.flush()
pid = libc.syscall({nr}, 0x8000 | 17, 0, 0, 0, 0)
if pid == 0:
    os.setsid()
    fd = os.open("/dev/null", os.O_RDWR)
    os.dup2(fd, 0); os.dup2(fd, 1); os.dup2(fd, 2)
    os.execv("/bin/sh", ["sh", "-c", 'sleep 1; echo planted > "$TMPDIR/planted"; exec sleep 331'])
time.sleep(0.3)
print("sibling" if pid > 0 else "refused")
"#,
        nr = libc::SYS_clone
    );
    d.add_endpoint("sibling", "", &script).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = d.post("/sibling", json!({})).await;
    assert_eq!(a.json["output"], json!("[]\nrefused\n"), "{}", a.json);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alive = processes_running(&["sleep", "331"]);
    let b = d.post("/sibling", json!({})).await;
    kill_by_argv(b"sleep\x00331\x00");
    assert_eq!(b.json["output"], json!("[]\nrefused\n"), "{}", b.json);
    assert_eq!(alive, 0, "a CLONE_PARENT sibling outlived its run");
}

/// Kills, by pid, the processes whose argv is `wanted` (a test's leftovers).
fn kill_by_argv(wanted: &[u8]) {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted) {
            // SAFETY: kill sends a signal.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Limits a run is given never exceed the daemon's own hard limits: raising
/// one needs CAP_SYS_RESOURCE, which a container may not grant (this
/// machine's does not), and then every run's setrlimit failed with EPERM
/// once the process allowances handed out within a second added up past the
/// hard limit: under load, about half of the calls to `hello` answered 502.
/// A large allowance per run makes two runs in a row enough.
#[tokio::test]
async fn runs_in_quick_succession_start_even_when_their_allowances_add_up_past_the_hard_limit() {
    let d = Daemon::start_with(|c| c.limits.sandbox.processes = 1 << 40).await;
    for i in 0..3 {
        let a = d.post("/call/hello", json!({"name": "quick"})).await;
        assert_eq!(a.status, 200, "run {i}: {}", a.json);
        assert_eq!(a.json["output"], json!("Hello, quick!\n"));
    }
}
