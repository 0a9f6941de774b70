//! Issue 17's attacks, each replayed as the attacker did it and now refused:
//! a token gains no scope, runs no code and writes no database it was not
//! granted, through any route, and the file routes never reach outside the
//! workspace while a folder is swapped for a symlink underneath them.

use serde_json::{json, Value};

use crate::support::{Daemon, TOKEN};

const WRITER: &str = "writer-secret";

/// `method path` with `body` as the `WRITER` token, whatever scopes it was granted.
async fn as_writer(d: &Daemon, method: &str, path: &str, body: Value) -> crate::support::Answer {
    d.request(method, path, Some(body), Some(WRITER)).await
}

#[tokio::test]
async fn a_write_token_cannot_commit_itself_admin_through_git_sync() {
    let d = Daemon::start().await;
    d.grant_reader(WRITER, "write").await;
    assert_eq!(
        d.request("GET", "/status", None, Some(WRITER)).await.status,
        403
    );
    // Something that can change the working tree (a human's unsaved edit, a
    // script run with the sandbox off) makes the token an admin on disk.
    let settings = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();
    let escalated = settings.replace("scopes: [write]", "scopes: [write, read, admin]");
    assert_ne!(settings, escalated);
    std::fs::write(d.workspace.join("dynapi.yaml"), &escalated).unwrap();
    std::fs::write(d.workspace.join("notes.txt"), "a note\n").unwrap();
    let commits = d.commits();

    let a = d
        .request("POST", "/git-sync", Some(json!({})), Some(WRITER))
        .await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin"));
    assert_eq!(d.commits(), commits, "the refused sync committed");
    assert!(d.post("/sync", json!({})).await.status < 300);
    assert_eq!(
        d.request("GET", "/status", None, Some(WRITER)).await.status,
        403,
        "the write token became an admin"
    );
    // The same write token commits other files as before: just not this one.
    std::fs::write(d.workspace.join("dynapi.yaml"), &settings).unwrap();
    let a = d
        .request("POST", "/git-sync", Some(json!({})), Some(WRITER))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(d.commits(), commits + 1);
    assert_eq!(
        d.git(&["show", "--name-only", "--format=", "HEAD"]).trim(),
        "notes.txt"
    );
    // An admin may commit the settings on disk.
    std::fs::write(d.workspace.join("dynapi.yaml"), &escalated).unwrap();
    let a = d.post("/git-sync", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(
        d.git(&["show", "--name-only", "--format=", "HEAD"]).trim(),
        "dynapi.yaml"
    );
}

#[tokio::test]
async fn run_script_runs_a_served_script_under_its_endpoints_rules() {
    let d = Daemon::start().await;
    d.grant_reader(WRITER, "read, run").await;
    let script = "#!/bin/sh\necho \"args: $*\"\necho x > top.txt && echo wrote-top\necho x > reports/r.txt && echo wrote-reports\n";
    d.add_endpoint(
        "adminonly",
        "scope: admin\nargs: [\"{what}\"]\nparams:\n  what: {type: string, required: true}\nsandbox:\n  writable: [reports]\n",
        script,
    )
    .await;
    let run = |token: &'static str, args: Value| {
        let d = &d;
        async move {
            d.request(
                "POST",
                "/run-script",
                Some(json!({"script_name": "adminonly.sh", "args": args})),
                Some(token),
            )
            .await
        }
    };
    // The endpoint needs admin; so does its script, by whichever route.
    assert_eq!(
        d.request("POST", "/call/adminonly", Some(json!({})), Some(WRITER))
            .await
            .status,
        403
    );
    let a = run(WRITER, json!(["--evil"])).await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin"));
    // Option injection is refused as the endpoint's parameters would refuse it.
    let a = run(TOKEN, json!(["--evil"])).await;
    assert_eq!(a.status, 400, "{}", a.json);
    // Run with its own sandbox: it writes `reports`, not the workspace's top.
    let a = run(TOKEN, json!(["fine"])).await;
    assert_eq!(a.status, 200, "{}", a.json);
    // More arguments than the manifest has parameters for are refused.
    let extra = run(TOKEN, json!(["fine", "more"])).await;
    assert_eq!(extra.status, 400, "{}", extra.json);
    let stdout = a.json["stdout"].as_str().unwrap();
    assert!(stdout.contains("args: fine"), "{stdout}");
    let sandboxed = d.get("/status").await.json["sandbox"]["enforced"]["filesystem"] == json!(true);
    if sandboxed {
        assert!(!stdout.contains("wrote-top"), "{stdout}");
        assert!(!d.workspace.join("top.txt").exists());
    }
    assert!(stdout.contains("wrote-reports"), "{stdout}");

    // A script no manifest serves runs under a manifest's defaults: the
    // workspace but never the settings, no network.
    let a = d
        .put(
            "/files/scripts/loose.sh",
            json!({"content": "#!/bin/sh\necho '# x' >> dynapi.yaml && echo wrote-settings\necho x > data/loose.txt && echo wrote-loose\n", "executable": true}),
        )
        .await;
    assert!(a.status < 300, "{}", a.json);
    let settings = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();
    let a = as_writer(
        &d,
        "POST",
        "/run-script",
        json!({"script_name": "loose.sh"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let stdout = a.json["stdout"].as_str().unwrap();
    assert!(stdout.contains("wrote-loose"), "{}", a.json);
    if sandboxed {
        assert!(!stdout.contains("wrote-settings"), "{stdout}");
        assert_eq!(
            std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap(),
            settings
        );
    }
}

#[tokio::test]
async fn running_code_always_needs_the_run_scope() {
    let d = Daemon::start().await;
    d.grant_reader(WRITER, "read, write").await;
    let manifest = "name: sneaky\ndescription: Runs with write only.\npath: /sneaky\nscope: write\nscript: scripts/sneaky.sh\n";
    let a = d
        .request(
            "POST",
            "/endpoints",
            Some(json!({"manifest": manifest, "script": {"path": "scripts/sneaky.sh", "content": "#!/bin/sh\necho ran > ran.txt\n"}})),
            Some(WRITER),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    for (method, path) in [("POST", "/sneaky"), ("POST", "/call/sneaky")] {
        let a = d.request(method, path, Some(json!({})), Some(WRITER)).await;
        assert_eq!(a.status, 403, "{method} {path}: {}", a.json);
        assert!(a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`run`"));
    }
    let a = as_writer(
        &d,
        "POST",
        "/run-script",
        json!({"script_name": "sneaky.sh"}),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert!(!d.workspace.join("ran.txt").exists());
    // With `run` as well, it runs.
    let a = d.post("/sneaky", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.json);
}

#[tokio::test]
async fn the_templates_sql_endpoint_cannot_write_without_sql_write() {
    let d = Daemon::start().await;
    d.grant_reader(WRITER, "read, run").await;
    let count = || async {
        d.post("/sql", json!({"query": "SELECT count(*) FROM todos"}))
            .await
            .json["rows"][0][0]
            .clone()
    };
    let before = count().await;
    for query in [
        "INSERT INTO todos (title) VALUES ('sneaked in')",
        "PRAGMA query_only = OFF",
        "ATTACH DATABASE 'manifests/x.yaml' AS x",
        "ATTACH DATABASE 'file:manifests/y.yaml?mode=rwc' AS y",
    ] {
        let a = d
            .request(
                "POST",
                "/run-sql",
                Some(json!({ "query": query })),
                Some(WRITER),
            )
            .await;
        // The script refuses: a failed run (`ok: false`) with SQLite's reason.
        assert_eq!(a.json["ok"], json!(false), "{query}: {}", a.json);
        let said = a.json["output"].as_str().unwrap_or_default();
        assert!(
            said.contains("readonly") || said.contains("not authorized"),
            "{query}: {said}"
        );
    }
    assert_eq!(count().await, before);
    assert!(!d.workspace.join("manifests/x.yaml").exists());
    assert!(!d.workspace.join("manifests/y.yaml").exists());
    // Reading still works.
    let a = d
        .request(
            "POST",
            "/run-sql",
            Some(json!({"query": "SELECT count(*) AS n FROM todos"})),
            Some(WRITER),
        )
        .await;
    assert_eq!(a.json["output"]["rows"][0][0], before, "{}", a.json);
}

/// Swaps the folder `ws/name` with a symlink to `target` (`renameat2` with
/// `RENAME_EXCHANGE`, as an attacker's script would) until `stop` is set.
fn swap_in_a_loop(
    ws: &std::path::Path,
    name: &str,
    target: &std::path::Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let real = CString::new(ws.join(name).as_os_str().as_bytes()).unwrap();
    let link_path = ws.join(format!(".{name}-link"));
    std::os::unix::fs::symlink(target, &link_path).unwrap();
    let link = CString::new(link_path.as_os_str().as_bytes()).unwrap();
    std::thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let done = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    real.as_ptr(),
                    libc::AT_FDCWD,
                    link.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            if done != 0 {
                break;
            }
            swaps += 1;
        }
        // Leave the real folder in place.
        if std::fs::symlink_metadata(std::path::Path::new(std::ffi::OsStr::from_bytes(
            real.as_bytes(),
        )))
        .unwrap()
        .file_type()
        .is_symlink()
        {
            unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    real.as_ptr(),
                    libc::AT_FDCWD,
                    link.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
        }
        swaps
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_swapped_for_a_symlink_never_leads_a_file_route_outside() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let d = Daemon::start().await;
    d.grant_reader(WRITER, "read").await;
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "OUTSIDE-SECRET\n").unwrap();
    std::fs::write(outside.path().join("audit.log"), "OUTSIDE-SECRET\n").unwrap();
    for (folder, file) in [("box", "secret.txt"), ("logs", "audit.log")] {
        std::fs::create_dir_all(d.workspace.join(folder)).unwrap();
        std::fs::write(d.workspace.join(folder).join(file), "inside\n").unwrap();
    }
    // `.*-link` and the boxes stay out of git, as a script's scratch would.
    std::fs::write(d.workspace.join(".git/info/exclude"), ".*-link\n").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swappers = [
        swap_in_a_loop(&d.workspace, "box", outside.path(), stop.clone()),
        swap_in_a_loop(
            &d.workspace,
            "logs",
            &d.workspace.join(".git/dynapi"),
            stop.clone(),
        ),
    ];

    let (mut inside, mut refused) = (0, 0);
    for i in 0..2000 {
        let path = if i % 2 == 0 {
            "/files/box/secret.txt"
        } else {
            "/files/logs/audit.log"
        };
        let a = d.request("GET", path, None, Some(WRITER)).await;
        let text = a.json.to_string();
        assert!(
            !text.contains("OUTSIDE-SECRET"),
            "{path} read outside: {text}"
        );
        assert!(
            !text.contains("\"token\""),
            "{path} read the audit log: {text}"
        );
        assert!(a.status < 500, "{path}: {} {text}", a.status);
        if a.status == 200 {
            inside += 1;
        } else {
            refused += 1;
        }
        let a = d
            .request(
                "GET",
                &path.replace("/files/", "/download/"),
                None,
                Some(WRITER),
            )
            .await;
        let text = a.json.to_string();
        assert!(
            !text.contains("OUTSIDE-SECRET") && !text.contains("\"token\""),
            "{path}: {text}"
        );
        assert!(a.status < 500, "{path}: {} {text}", a.status);
    }
    for i in 0..400 {
        let a = d
            .put(
                &format!("/files/box/w{i}.txt"),
                json!({"content": "written\n"}),
            )
            .await;
        assert!(a.status < 500, "PUT {i}: {} {}", a.status, a.json);
        let a = d.get("/search?q=OUTSIDE-SECRET&path=box").await;
        assert_eq!(
            a.json["matches"].as_array().map_or(0, Vec::len),
            0,
            "{}",
            a.json
        );
    }
    stop.store(true, Ordering::Relaxed);
    let swaps: u64 = swappers.into_iter().map(|s| s.join().unwrap()).sum();
    assert!(swaps > 1000, "only {swaps} swaps happened");
    let written: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written.len(), 2, "files were written outside: {written:?}");
    assert!(!d.workspace.join(".git/dynapi/w0.txt").exists());
    // Both outcomes happened: the race was real.
    assert!(
        inside > 0 && refused > 0,
        "inside {inside}, refused {refused}"
    );
}

/// Grants five tokens in dynapi.yaml, each with every scope but one; answers
/// the secret of the token lacking `scope`.
async fn grant_all_but_one(d: &Daemon) -> impl Fn(dynapi::auth::Scope) -> String {
    use dynapi::auth::Scope;
    let secret = |s: Scope| format!("lacks-{s}-secret");
    let mut yaml = String::from("tokens:\n");
    for lacking in Scope::ALL {
        let scopes: Vec<&str> = Scope::ALL
            .into_iter()
            .filter(|s| *s != lacking)
            .map(Scope::as_str)
            .collect();
        let hash = hex::encode(dynapi::auth::hash_token(&secret(lacking)));
        yaml.push_str(&format!(
            "  - name: lacks-{lacking}\n    sha256: {hash}\n    scopes: [{}]\n",
            scopes.join(", ")
        ));
    }
    d.commit_settings(&yaml).await;
    secret
}

#[tokio::test]
async fn every_documented_operation_refuses_a_token_without_its_scope() {
    let d = Daemon::start().await;
    let secret = grant_all_but_one(&d).await;
    let commits = d.commits();
    let mut checked = 0;
    for op in dynapi::http::catalog::operations() {
        let Some(scope) = op.scope else { continue };
        let path = op
            .path
            .replace("{path}", "notes/x.txt")
            .replace("{name}", "hello")
            .replace("{id}", "j_0");
        let a = d
            .request(
                op.method.as_str(),
                &path,
                Some(json!({})),
                Some(&secret(scope)),
            )
            .await;
        assert_eq!(
            a.status,
            403,
            "{} {path} without `{scope}`: {}",
            op.method.as_str(),
            a.json
        );
        assert!(
            a.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{scope}`")),
            "{path}: {}",
            a.json
        );
        checked += 1;
    }
    assert!(checked >= 25, "{checked}");
    // Endpoints: `run` and the manifest's scope, by every route.
    let a = d
        .request(
            "GET",
            "/hello",
            None,
            Some(&secret(dynapi::auth::Scope::Run)),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert_eq!(d.commits(), commits, "a refused call committed");
}
