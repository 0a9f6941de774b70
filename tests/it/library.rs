//! Libraries (issue 25): endpoints a project includes from another
//! repository, pinned by `ref` in `dynapi.yaml`. Each test uses a real library
//! repository (a bare one on disk, or one the GitHub emulator serves over
//! smart HTTP) and the real daemon.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::github::{check_pull, replica, BRANCH};
use crate::support::github::GitHub;
use crate::support::{git, template_repo, Daemon};

/// A library: a working repository whose commits are pushed to a bare one,
/// which projects include.
struct Lib {
    work: tempfile::TempDir,
    bare: PathBuf,
    _bare_dir: tempfile::TempDir,
}

impl Lib {
    fn new() -> Lib {
        let work = tempfile::tempdir().unwrap();
        let bare_dir = tempfile::tempdir().unwrap();
        let bare = bare_dir.path().join("library.git");
        git(work.path(), &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        Lib {
            work,
            bare,
            _bare_dir: bare_dir,
        }
    }

    /// Commits `files` (path, text; scripts under `scripts/` executable) on
    /// main and pushes it; returns the commit.
    fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, text) in files {
            let file = self.work.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, text).unwrap();
            git(self.work.path(), &["add", path]);
            if path.starts_with("scripts/") {
                git(self.work.path(), &["update-index", "--chmod=+x", path]);
            }
        }
        git(self.work.path(), &["commit", "-q", "-m", message]);
        self.push();
        git(self.work.path(), &["rev-parse", "HEAD"])
            .trim()
            .to_string()
    }

    fn tag(&self, name: &str) {
        git(self.work.path(), &["tag", name]);
        self.push();
    }

    fn push(&self) {
        let to = self.bare.to_str().unwrap();
        git(
            self.work.path(),
            &["push", "-q", "-f", to, "main", "--tags"],
        );
    }

    fn url(&self) -> String {
        self.bare.to_str().unwrap().to_string()
    }
}

/// The library's `greet` endpoint at version `version`: files to commit.
fn greet(version: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "manifests/greet.yaml",
            "name: greet\ndescription: Greet from the library.\nmethod: GET\npath: /greet\nscript: scripts/greet.sh\nsandbox:\n  writable: []\n".to_string(),
        ),
        ("scripts/greet.sh", format!("#!/bin/sh\necho \"greet {version}\"\n")),
    ]
}

fn files<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(p, t)| (*p, t.as_str())).collect()
}

/// A `dynapi.yaml` including `repository` at `git_ref`, with `extra` lines
/// of the entry (indented four spaces).
fn include(repository: &str, git_ref: &str, extra: &str) -> String {
    format!("include:\n  - repository: {repository}\n    ref: {git_ref}\n{extra}")
}

/// Commits `dynapi.yaml` as a human would, without waiting for it to be served.
fn commit_settings_unserved(d: &Daemon, yaml: &str) -> String {
    std::fs::write(d.workspace.join("dynapi.yaml"), yaml).unwrap();
    d.git(&["commit", "-q", "-am", "Change the includes"]);
    d.git(&["rev-parse", "HEAD"]).trim().to_string()
}

/// Waits until `/status` reports problems for `commit`; returns them.
async fn problems_of(d: &Daemon, commit: &str) -> Vec<Value> {
    for _ in 0..250 {
        let status = d.get("/status").await.json;
        if status["last_error"]["commit"] == json!(commit) {
            return status["last_error"]["problems"]
                .as_array()
                .cloned()
                .unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no problems reported for {commit}");
}

#[tokio::test]
async fn two_projects_include_one_library_at_different_tags_and_each_serves_its_own() {
    let lib = Lib::new();
    let v1 = lib.commit(&files(&greet("v1")), "greet v1");
    lib.tag("v1");
    let v2 = lib.commit(&files(&greet("v2")), "greet v2");
    lib.tag("v2");

    let a = Daemon::start().await;
    a.commit_settings(&include(&lib.url(), "v1", "    prefix: lib\n"))
        .await;
    let b = Daemon::start().await;
    b.commit_settings(&include(&lib.url(), "v2", "")).await;

    let answer = a.get("/lib/greet").await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["output"], json!("greet v1\n"));
    assert_eq!(a.get("/greet").await.status, 404, "the prefix moved it");
    assert_eq!(b.get("/greet").await.json["output"], json!("greet v2\n"));
    let called = a.post("/call/lib-greet", json!({})).await;
    assert_eq!(
        called.json["output"],
        json!("greet v1\n"),
        "{}",
        called.json
    );

    // Where each endpoint comes from: /endpoints, /status, OpenAPI, MCP's list.
    let listed = a.get("/endpoints").await.json;
    let find = |name: &str| {
        listed["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == json!(name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} is listed: {listed}"))
    };
    assert_eq!(
        find("lib-greet")["source"],
        json!({"kind": "library", "repository": lib.url(), "ref": "v1", "commit": v1})
    );
    assert_eq!(find("hello")["source"], json!({"kind": "project"}));
    let status = b.get("/status").await.json;
    assert_eq!(
        status["libraries"],
        json!([{"repository": lib.url(), "ref": "v2", "commit": v2, "endpoints": ["greet"]}])
    );
    let doc = a.request("GET", "/openapi.json", None, None).await.json;
    assert_eq!(
        doc["paths"]["/lib/greet"]["get"]["x-dynapi-source"]["commit"],
        json!(v1)
    );
    // The MCP tool carries it in `_meta` (a stateless 2026-07-28 call).
    let tools = a
        .client
        .post(format!("{}/mcp", a.url))
        .bearer_auth(crate::support::TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }}}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let json_text = tools
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&tools);
    let listed_tools: Value = serde_json::from_str(json_text).unwrap_or(Value::Null);
    let tool = listed_tools["result"]["tools"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == json!("lib-greet")).cloned())
        .unwrap_or_else(|| panic!("lib-greet is a tool: {tools}"));
    assert_eq!(
        tool["_meta"]["dynapi/source"]["commit"],
        json!(v1),
        "{tool}"
    );

    // The audit log names the library commit that ran.
    let audit = std::fs::read_to_string(a.workspace.join(".git/dynapi/audit.log")).unwrap();
    let line = audit
        .lines()
        .find(|l| l.contains("\"target\":\"lib-greet\""))
        .expect("the run is in the audit log");
    let entry: Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["library"], json!(format!("{}@{v1}", lib.url())));

    // A library's endpoint is changed in the library, not through the project.
    let refused = a.delete("/endpoints/lib-greet").await;
    assert_eq!(refused.status, 409, "{}", refused.json);
    assert_eq!(refused.json["error"]["code"], json!("library_endpoint"));
    let refused = a
        .post(
            "/endpoints",
            json!({"manifest": "name: lib-greet\ndescription: Mine.\npath: /mine\nscript: scripts/hello.sh\n"}),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.json);

    // The checkout scripts ran from is read-only, at the resolved commit.
    let checkout = a.workspace.join(".git/dynapi-libraries").join(&v1);
    let script = std::fs::metadata(checkout.join("scripts/greet.sh")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(script.permissions().mode() & 0o777, 0o555);
}

#[tokio::test]
async fn a_bad_library_commit_never_replaces_the_good_one() {
    let lib = Lib::new();
    lib.commit(&files(&greet("good")), "greet");
    let d = Daemon::start().await;
    d.commit_settings(&include(&lib.url(), "main", "")).await;
    assert_eq!(d.get("/greet").await.json["output"], json!("greet good\n"));
    let served = d.served();

    // The library's branch moves to a commit whose manifest is wrong.
    lib.commit(
        &[(
            "manifests/greet.yaml",
            "name: greet\ndescription: Broken.\nmethod: GET\npath: /greet\nscript: scripts/greet.sh\nbogus: 1\n",
        ), ("scripts/greet.sh", "#!/bin/sh\necho \"greet bad\"\n")],
        "Break greet",
    );
    let report = d.post("/sync", json!({})).await.json;
    assert_eq!(report["outcome"], json!("invalid"), "{report}");
    let problem = &report["problems"][0];
    assert_eq!(
        problem["file"],
        json!(format!("{}@main:manifests/greet.yaml", lib.url())),
        "{report}"
    );
    assert_eq!(problem["line"], json!(6), "{report}");
    assert_eq!(d.get("/greet").await.json["output"], json!("greet good\n"));
    assert_eq!(d.served(), served);
    let status = d.get("/status").await.json;
    assert!(
        status["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("still serving the last good commit"),
        "{status}"
    );

    // A missing library (or ref) is a problem at the include, too.
    let gone = commit_settings_unserved(&d, &include(&lib.url(), "v9", ""));
    let problems = problems_of(&d, &gone).await;
    assert_eq!(problems[0]["file"], json!("dynapi.yaml"));
    assert_eq!(problems[0]["line"], json!(2));
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("no tag or branch `v9`"),
        "{problems:?}"
    );
    assert_eq!(d.get("/greet").await.json["output"], json!("greet good\n"));

    // Fixed: the next sync serves it.
    lib.commit(&files(&greet("fixed")), "Fix greet");
    commit_settings_unserved(&d, &include(&lib.url(), "main", ""));
    assert!(d
        .eventually(Duration::from_secs(5), |d| d.served()
            == d.git(&["rev-parse", "HEAD"]).trim())
        .await
        .is_some());
    assert_eq!(d.get("/greet").await.json["output"], json!("greet fixed\n"));
}

#[tokio::test]
async fn a_name_or_route_conflict_is_a_problem_located_at_the_include() {
    let lib = Lib::new();
    // The template's own `hello` is GET /hello too.
    lib.commit(
        &[
            (
                "manifests/hello.yaml",
                "name: hello\ndescription: The library's hello.\nmethod: GET\npath: /hello\nscript: scripts/hello.sh\nsandbox:\n  writable: []\n",
            ),
            ("scripts/hello.sh", "#!/bin/sh\necho library hello\n"),
        ],
        "hello",
    );
    let d = Daemon::start().await;
    let served = d.served();
    let bad = commit_settings_unserved(
        &d,
        &format!("# libraries\n{}", include(&lib.url(), "main", "")),
    );
    let problems = problems_of(&d, &bad).await;
    let messages: Vec<String> = problems
        .iter()
        .map(|p| {
            assert_eq!(p["file"], json!("dynapi.yaml"), "{p}");
            assert_eq!(p["line"], json!(3), "{p}");
            p["message"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("the name `hello` is already used by manifests/hello.yaml")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("the route GET /hello conflicts")),
        "{messages:?}"
    );
    assert_eq!(d.served(), served);
    assert_eq!(
        d.get("/hello").await.json["output"],
        json!("Hello, world!\n")
    );

    // `endpoints:` naming what the library lacks is located the same way.
    let missing =
        commit_settings_unserved(&d, &include(&lib.url(), "main", "    endpoints: [nope]\n"));
    let problems = problems_of(&d, &missing).await;
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("has no endpoint `nope`"),
        "{problems:?}"
    );

    // A prefix resolves it: both are served.
    d.commit_settings(&include(&lib.url(), "main", "    prefix: shared\n"))
        .await;
    assert_eq!(
        d.get("/hello").await.json["output"],
        json!("Hello, world!\n")
    );
    assert_eq!(
        d.get("/shared/hello").await.json["output"],
        json!("library hello\n")
    );
}

#[tokio::test]
async fn includes_are_checked_where_they_are_written() {
    let d = Daemon::start().await;
    let bad = commit_settings_unserved(
        &d,
        "include:\n  - repository: https://user:secret@example.com/lib.git\n    ref: main\n    prefix: ../up\n    endpoints: [../x]\n  - repository: /srv/lib.git\n    ref: --upload-pack=x\n    prefix: files\n  - repository: ssh://example.com/lib\n    ref: v1\n    sandbox:\n      writable: [../up]\n  - repository: http://example.com/lib.git\n    ref: v1\n",
    );
    let problems = problems_of(&d, &bad).await;
    let at: Vec<(u64, String)> = problems
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |line: u64, text: &str| at.iter().any(|(l, m)| *l == line && m.contains(text));
    assert!(has(2, "no credentials"), "{at:?}");
    assert!(has(4, "`../up` is not a prefix"), "{at:?}");
    assert!(has(5, "`../x` is not an endpoint name"), "{at:?}");
    assert!(has(7, "is not a tag, branch or commit"), "{at:?}");
    assert!(has(8, "belongs to the daemon's own routes"), "{at:?}");
    assert!(has(9, "is not a repository the daemon fetches"), "{at:?}");
    assert!(has(13, "write `https://`"), "{at:?}");
    assert!(has(12, "must be a path inside the workspace"), "{at:?}");
}

#[tokio::test]
async fn a_library_script_cannot_write_outside_what_the_including_project_allows() {
    let lib = Lib::new();
    // The library asks for the network and the whole workspace; the project
    // grants only `out`.
    let greedy = "name: writer\ndescription: Write things.\npath: /writer\nscript: scripts/writer.sh\nsandbox:\n  network: true\n  writable: [\".\"]\n";
    let script = "#!/bin/sh\n\
        (echo made > out/made.txt) 2>/dev/null && echo 'out: written' || echo 'out: refused'\n\
        (echo x > notes.txt) 2>/dev/null && echo 'root: written' || echo 'root: refused'\n\
        (echo x >> \"$0\") 2>/dev/null && echo 'self: written' || echo 'self: refused'\n\
        (echo x > \"$(dirname \"$0\")/new.txt\") 2>/dev/null && echo 'checkout: written' || echo 'checkout: refused'\n\
        (echo x > .git/dynapi-libraries/planted) 2>/dev/null && echo 'libraries: written' || echo 'libraries: refused'\n";
    lib.commit(
        &[
            ("manifests/writer.yaml", greedy),
            ("scripts/writer.sh", script),
        ],
        "writer",
    );
    let d = Daemon::start().await;
    let grant = "    sandbox:\n      writable: [out]\n";
    let bad = commit_settings_unserved(&d, &include(&lib.url(), "main", grant));
    let problems = problems_of(&d, &bad).await;
    let messages: Vec<&str> = problems
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{messages:?}");
    assert!(problems
        .iter()
        .all(|p| p["file"] == json!("dynapi.yaml") && p["line"] == json!(2)));
    assert!(messages[0].contains("asks for the network"), "{messages:?}");
    assert!(
        messages[1].contains("asks to write `.`; this include grants only `out`"),
        "{messages:?}"
    );

    // Within the grant it is served, and writes only there: not the
    // workspace's root, not its own checkout, not beside it.
    lib.commit(
        &[(
            "manifests/writer.yaml",
            &greedy
                .replace("  network: true\n", "")
                .replace("[\".\"]", "[out]"),
        )],
        "writer asks for out only",
    );
    // A symlink in the library is never checked out.
    std::os::unix::fs::symlink("/etc", lib.work.path().join("scripts/escape")).unwrap();
    git(lib.work.path(), &["add", "scripts/escape"]);
    lib.commit(&[], "a symlink");
    // The project did not change; the sync reads the library again.
    let report = d.post("/sync", json!({})).await.json;
    assert_eq!(report["outcome"], json!("served"), "{report}");
    let answer = d.post("/writer", json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        answer.json["output"],
        json!(
            "out: written\nroot: refused\nself: refused\ncheckout: refused\nlibraries: refused\n"
        ),
        "{}",
        answer.json
    );
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("out/made.txt")).unwrap(),
        "made\n"
    );
    assert!(!d.workspace.join("notes.txt").exists());
    let lib_commit = d.get("/endpoints").await.json["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == json!("writer"))
        .unwrap()["source"]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let checkout = d.workspace.join(".git/dynapi-libraries").join(lib_commit);
    assert!(checkout.join("scripts/writer.sh").is_file());
    assert!(std::fs::symlink_metadata(checkout.join("scripts/escape")).is_err());
    assert!(!checkout.join("scripts/new.txt").exists());
}

fn github_yaml(url: &str, git_ref: &str) -> String {
    include(url, git_ref, "")
}

/// An emulated GitHub serving a project and, beside it, `lib` (its git
/// requests need the token, which the daemon sends only to its own host);
/// the project includes the library at `git_ref`. The emulator, the
/// library's URL there, and a daemon serving the project.
async fn on_github(lib: &Lib, git_ref: &str) -> (GitHub, String, Daemon) {
    let seed = template_repo(BRANCH, &[]);
    let gh = GitHub::start(seed.path(), BRANCH).await;
    let url = gh.add_repository("dynapi-library", lib.work.path());
    let settings = github_yaml(&url, git_ref);
    gh.push(BRANCH, &[("dynapi.yaml", &settings)], "Include the library");
    let d = replica(&gh, Duration::from_millis(300)).await;
    (gh, url, d)
}

#[tokio::test]
async fn a_library_through_github_is_pinned_by_tag_and_a_bump_by_pull_request_is_served_after_the_merge(
) {
    let lib = Lib::new();
    lib.commit(&files(&greet("v1")), "greet v1");
    lib.tag("v1");
    lib.commit(&files(&greet("v2")), "greet v2");
    lib.tag("v2");

    // Two projects on two emulated GitHubs, each with the library beside it.
    let (gh, url, d) = on_github(&lib, "v1").await;
    assert_eq!(d.get("/greet").await.json["output"], json!("greet v1\n"));
    let (_other, _, e) = on_github(&lib, "v2").await;
    assert_eq!(e.get("/greet").await.json["output"], json!("greet v2\n"));
    assert_eq!(d.get("/greet").await.json["output"], json!("greet v1\n"));

    // No credentials on disk: not in the cache's files, not in the workspace.
    let cache = d.workspace.join(".git/dynapi/libraries");
    assert!(cache.is_dir());
    let found = Command::new("grep")
        .args(["-r", "-l", crate::support::github::TOKEN])
        .arg(&d.workspace)
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );

    // A bump to a tag that does not exist fails its status; one to v2 passes.
    let head = gh.head(BRANCH);
    let wrong = gh.commit_on(
        &head,
        &[("dynapi.yaml", &github_yaml(&url, "v9"))],
        "Bump to v9",
    );
    let number = gh.open_pull("someone:bump-wrong", &wrong, BRANCH);
    let status = check_pull(&gh, &d, "opened", number, &wrong).await;
    assert_eq!(status.state, "failure");
    assert!(
        status.description.contains("dynapi.yaml:2:5"),
        "{}",
        status.description
    );

    // Nor may a pull request make the daemon read a repository on its disk.
    let local = gh.commit_on(
        &head,
        &[("dynapi.yaml", &github_yaml(&lib.url(), "v2"))],
        "Include from the daemon's disk",
    );
    let number = gh.open_pull("someone:local", &local, BRANCH);
    let status = check_pull(&gh, &d, "opened", number, &local).await;
    assert_eq!(status.state, "failure");
    assert!(
        status.description.contains("dynapi.yaml:2:5"),
        "{}",
        status.description
    );

    let bump = gh.commit_on(
        &head,
        &[("dynapi.yaml", &github_yaml(&url, "v2"))],
        "Bump to v2",
    );
    let number = gh.open_pull("someone:bump", &bump, BRANCH);
    let status = check_pull(&gh, &d, "opened", number, &bump).await;
    assert_eq!(status.state, "success", "{}", status.description);
    assert_eq!(
        d.get("/greet").await.json["output"],
        json!("greet v1\n"),
        "not before the merge"
    );

    let merged = gh.merge_pull(number);
    assert!(d
        .eventually(Duration::from_secs(10), |d| d.served() == merged)
        .await
        .is_some());
    assert_eq!(d.get("/greet").await.json["output"], json!("greet v2\n"));
}

const BIN: &str = env!("CARGO_BIN_EXE_dynapi");

/// Runs `dynapi ARGS DIR` and asserts it succeeded; its output.
fn dynapi_ok(args: &[&str], dir: &Path) -> std::process::Output {
    let out = Command::new(BIN).args(args).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "dynapi {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A project as `dynapi init` writes it, with `settings` as its `dynapi.yaml`.
fn project_with(settings: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    dynapi_ok(&["init"], dir.path());
    std::fs::write(dir.path().join("dynapi.yaml"), settings).unwrap();
    dir
}

// Multi-threaded: the emulator answers while the test waits on the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_resolves_includes_and_offline_reads_the_cache_and_says_so() {
    let lib = Lib::new();
    let v1 = lib.commit(&files(&greet("v1")), "greet v1");
    lib.tag("v1");
    let seed = template_repo(BRANCH, &[]);
    let gh = GitHub::start(seed.path(), BRANCH).await;
    let url = gh.add_repository("dynapi-library", lib.work.path());
    let project = project_with(&github_yaml(&url, "v1"));
    let check = |dir: &Path, offline: bool| {
        let mut command = Command::new(BIN);
        command
            .arg("check")
            .env("GITHUB_SERVER_URL", &gh.base)
            .env("GITHUB_TOKEN", crate::support::github::TOKEN);
        if offline {
            command.arg("--offline");
        }
        let out = command.arg(dir).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = check(project.path(), false);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("library {url}@v1: commit {v1}")),
        "{stderr}"
    );

    gh.set_down(true);
    let (code, stdout, stderr) = check(project.path(), false);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("read from the cache"), "{stderr}");
    let (code, _, stderr) = check(project.path(), true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("offline"), "{stderr}");

    // Nothing cached: the include is the problem, located.
    let fresh = project_with(&github_yaml(&url, "v1"));
    let (code, stdout, _) = check(fresh.path(), true);
    assert_eq!(code, Some(1));
    assert!(stdout.starts_with("dynapi.yaml:2:5: "), "{stdout}");
    assert!(stdout.contains("not in the cache"), "{stdout}");
}

#[test]
fn init_library_makes_a_library_a_project_includes_by_tag() {
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("library");
    dynapi_ok(&["init", "--library"], &library);
    assert!(library.join("manifests/word-count.yaml").is_file());
    assert!(!library.join("dynapi.yaml").exists());
    git(&library, &["tag", "v1.0.0"]);
    let project = project_with(&include(
        library.to_str().unwrap(),
        "v1.0.0",
        "    prefix: lib\n",
    ));
    dynapi_ok(&["check"], project.path());
    let out = dynapi_ok(&["openapi"], project.path());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["paths"]["/lib/word-count"]["get"]["x-dynapi-source"]["ref"],
        json!("v1.0.0")
    );
}

// ---- Review of issue 25 (attacks) ----

/// Peak resident memory of this test process, in MiB (the daemon runs in it).
fn peak_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// Runs git in `dir` with `input` on stdin; its trimmed output.
fn git_in(dir: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "A")
        .env("GIT_AUTHOR_EMAIL", "a@example.com")
        .env("GIT_COMMITTER_NAME", "A")
        .env("GIT_COMMITTER_EMAIL", "a@example.com")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A commit on the library's main whose tree adds `bomb/`: 10 entries that are
/// the same tree, 7 levels deep (10^7 paths from 8 tiny tree objects).
fn commit_tree_bomb(lib: &Lib) {
    let w = lib.work.path();
    let blob = git_in(w, &["hash-object", "-w", "--stdin"], "x");
    let mut tree = git_in(w, &["mktree"], &format!("100644 blob {blob}\tf\n"));
    for _ in 0..7 {
        let listing: String = (0..10)
            .map(|i| format!("040000 tree {tree}\td{i}\n"))
            .collect();
        tree = git_in(w, &["mktree"], &listing);
    }
    let mut top = git(w, &["ls-tree", "HEAD"]);
    top.push_str(&format!("040000 tree {tree}\tbomb\n"));
    let root = git_in(w, &["mktree"], &top);
    let commit = git_in(w, &["commit-tree", &root, "-p", "HEAD", "-m", "bomb"], "");
    git(w, &["update-ref", "refs/heads/main", &commit]);
    lib.push();
}

#[tokio::test]
async fn a_tree_bomb_is_refused_without_walking_it_whole() {
    let lib = Lib::new();
    lib.commit(&files(&greet("v1")), "greet v1");
    commit_tree_bomb(&lib);
    let d = Daemon::start().await;
    let bad = commit_settings_unserved(&d, &include(&lib.url(), "main", ""));
    let before = peak_mib();
    let started = std::time::Instant::now();
    let report = d.post("/sync", json!({})).await.json;
    let took = started.elapsed();
    let grown = peak_mib().saturating_sub(before);
    eprintln!("sync of {bad}: {took:?}, {grown} MiB more at peak: {report}");
    assert!(
        report.to_string().contains("more than 20000 files"),
        "{report}"
    );
    assert!(
        grown < 100,
        "walking the library's tree took {took:?} and {grown} MiB for a few hundred bytes of objects"
    );
}

#[tokio::test]
async fn a_pull_request_s_library_cannot_make_the_daemon_inflate_a_huge_object() {
    let lib = Lib::new();
    lib.commit(&files(&greet("v1")), "greet v1");
    lib.tag("v1");
    let (gh, _url, d) = on_github(&lib, "v1").await;
    // A second library: one blob of 768 MiB of zeros, under a megabyte packed.
    let bomb = tempfile::tempdir().unwrap();
    git(bomb.path(), &["init", "-q", "-b", "main"]);
    let big = bomb.path().join("zeros");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(768 << 20).unwrap();
    drop(file);
    git(bomb.path(), &["add", "zeros"]);
    git(bomb.path(), &["commit", "-q", "-m", "zeros"]);
    std::fs::remove_file(&big).unwrap();
    let bomb_url = gh.add_repository("bomb", bomb.path());

    let head = gh.head(BRANCH);
    let pr = gh.commit_on(
        &head,
        &[("dynapi.yaml", &github_yaml(&bomb_url, "main"))],
        "Include a library",
    );
    let number = gh.open_pull("someone:bomb", &pr, BRANCH);
    let before = peak_mib();
    let mut event: Value =
        serde_json::from_slice(&crate::github::fixture("pull_request.opened.0")).unwrap();
    event["number"] = json!(number);
    event["pull_request"]["number"] = json!(number);
    event["pull_request"]["head"]["sha"] = json!(pr);
    event["pull_request"]["base"]["ref"] = json!(BRANCH);
    let body = serde_json::to_vec(&event).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(crate::github::webhook(&d, "pull_request", &body).await, 202);
    let posted = d
        .eventually(Duration::from_secs(300), |_| {
            gh.statuses().iter().any(|s| s.sha == pr)
        })
        .await;
    assert!(posted.is_some(), "no status on {pr}");
    let status = gh.statuses().into_iter().find(|s| s.sha == pr).unwrap();
    let grown = peak_mib().saturating_sub(before);
    eprintln!(
        "status after {:?}: {} {}; {grown} MiB more at peak",
        started.elapsed(),
        status.state,
        status.description
    );
    assert!(
        grown < 256,
        "a pull request's include made the daemon allocate {grown} MiB (status: {} {})",
        status.state,
        status.description
    );
}

#[tokio::test]
async fn plain_http_to_a_name_that_only_starts_with_127_is_refused() {
    let d = Daemon::start().await;
    // `127.0.0.1.nip.io` (or any name of the attacker's) resolves wherever
    // its owner says: 10.0.0.5, 169.254.169.254, ...
    let bad = commit_settings_unserved(
        &d,
        &include("http://127.0.0.1.nip.io.invalid/acme/lib.git", "v1", ""),
    );
    let report = d.post("/sync", json!({})).await.json;
    assert_eq!(report["commit"], json!(bad));
    assert!(
        report
            .to_string()
            .contains("plain http reaches only this machine"),
        "fetched rather than refused: {report}"
    );
}

#[tokio::test]
async fn a_library_script_the_checkout_leaves_out_is_refused_before_it_is_served() {
    let lib = Lib::new();
    lib.commit(
        &[
            (
                "manifests/hidden.yaml",
                "name: hidden\ndescription: Runs a script under .Git.\npath: /hidden\nscript: .Git/run.sh\nsandbox:\n  writable: []\n",
            ),
            ("scripts/unused.sh", "#!/bin/sh\n"),
        ],
        "hidden",
    );
    // git will not add `.Git/run.sh`, but a tree may hold it (mktree, or any
    // other git writer).
    let w = lib.work.path();
    let blob = git_in(w, &["hash-object", "-w", "--stdin"], "#!/bin/sh\necho hi\n");
    let sub = git_in(w, &["mktree"], &format!("100755 blob {blob}\trun.sh\n"));
    let mut top = git(w, &["ls-tree", "HEAD"]);
    top.push_str(&format!("040000 tree {sub}\t.Git\n"));
    let root = git_in(w, &["mktree"], &top);
    let commit = git_in(
        w,
        &["commit-tree", &root, "-p", "HEAD", "-m", "the script"],
        "",
    );
    git(w, &["update-ref", "refs/heads/main", &commit]);
    lib.push();
    let d = Daemon::start().await;
    commit_settings_unserved(&d, &include(&lib.url(), "main", ""));
    let report = d.post("/sync", json!({})).await.json;
    let answer = d.post("/hidden", json!({})).await;
    assert!(
        report["outcome"] != json!("served") || answer.status == 200,
        "served, then the run answers {}: {} (sync: {report})",
        answer.status,
        answer.json
    );
}
