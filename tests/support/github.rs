//! A GitHub emulator for the tests: the REST endpoints the daemon calls, with
//! the request and answer shapes of GitHub's documentation (docs.github.com,
//! "Git database", "Commit statuses", "Pulls"), backed by a real bare git
//! repository that it also serves over git's smart HTTP (`git http-backend`), so
//! the daemon clones and fetches it with gix as it would github.com.
//!
//! The API lives under `/api/v3` (GitHub Enterprise's layout: pass
//! `api_url()` as `--github-api-url`); the repository is `/{owner}/{repo}.git`.
//! It records statuses and pull requests, and can be told to fail the next
//! requests (5xx, rate limits). Like a private repository on github.com, git's
//! smart HTTP answers 401 unless the request carries `TOKEN` the way GitHub takes
//! it (Basic, user `x-access-token`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use warp::http::{Response, StatusCode};
use warp::Filter;

/// The repository of octokit's example payloads, so they apply as they are.
pub const OWNER: &str = "Codertocat";
pub const REPO: &str = "Hello-World";

/// The token the emulator's git side accepts; daemons get it as their GitHub token.
pub const TOKEN: &str = "ghp_emulated0123456789";

/// The `Authorization` header git must send: GitHub's form for a token over HTTP.
pub fn git_authorization() -> String {
    use base64::Engine as _;
    let pair = format!("x-access-token:{TOKEN}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `git -c` this before a command that clones or fetches from the emulator.
pub fn git_auth_config() -> String {
    format!("http.extraHeader=Authorization: {}", git_authorization())
}

/// A commit status as the daemon posted it.
#[derive(Debug, Clone)]
pub struct Status {
    pub sha: String,
    pub state: String,
    pub context: String,
    pub description: String,
}

/// A way to fail the next API request.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// 502 Bad Gateway.
    ServerError,
    /// 403 with `X-RateLimit-Remaining: 0` and `Retry-After`.
    RateLimited { retry_after: u64 },
}

#[derive(Default)]
struct State {
    statuses: Vec<Status>,
    pulls: Vec<Value>,
    failures: VecDeque<Failure>,
    /// When each API request came, and `METHOD /path`.
    requests: Vec<(std::time::Instant, String)>,
    /// Every request (git and API) answers 503 while set.
    down: bool,
    /// git's smart HTTP requests get no answer while set (a hung connection).
    git_hangs: bool,
}

pub struct GitHub {
    /// Where the emulator listens: `http://127.0.0.1:PORT`.
    pub base: String,
    pub bare: PathBuf,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for GitHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl GitHub {
    /// Starts an emulator whose repository holds `seed`'s branch `branch`
    /// (`seed` is a git repository, e.g. one `dynapi init` wrote).
    pub async fn start(seed: &Path, branch: &str) -> GitHub {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("git");
        let bare = root.join(OWNER).join(format!("{REPO}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        super::git(&bare, &["init", "-q", "--bare", "-b", branch]);
        super::git(
            seed,
            &[
                "push",
                "-q",
                bare.to_str().unwrap(),
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        let state = Arc::new(Mutex::new(State::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let routes = {
            let (state, bare, root) = (state.clone(), bare.clone(), root.clone());
            let base = base.clone();
            warp::method()
                .and(warp::path::full())
                .and(warp::query::raw().or(warp::any().map(String::new)).unify())
                .and(warp::header::headers_cloned())
                .and(warp::body::bytes())
                .then(
                    move |method: warp::http::Method,
                          path: warp::path::FullPath,
                          query: String,
                          headers: warp::http::HeaderMap,
                          body: Bytes| {
                        let request = Request {
                            method: method.as_str().to_string(),
                            path: path.as_str().to_string(),
                            query,
                            headers,
                            body,
                        };
                        let (state, bare, root, base) =
                            (state.clone(), bare.clone(), root.clone(), base.clone());
                        async move {
                            let hangs = state.lock().unwrap().git_hangs
                                && request.path.starts_with(&format!("/{OWNER}/{REPO}.git/"));
                            if hangs {
                                tokio::time::sleep(std::time::Duration::from_secs(300)).await;
                            }
                            handle(&request, &state, &bare, &root, &base)
                        }
                    },
                )
        };
        let stop = shutdown.clone();
        tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move { stop.cancelled().await })
                .run(),
        );
        GitHub {
            base,
            bare,
            state,
            shutdown,
            _dir: dir,
        }
    }

    /// Adds repository `name` of the same owner, holding every branch and
    /// tag of `seed`, served over git's smart HTTP like the first (and, like
    /// it, only to requests with the token). Returns its git URL.
    pub fn add_repository(&self, name: &str, seed: &Path) -> String {
        let bare = self.bare.parent().unwrap().join(format!("{name}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        super::git(&bare, &["init", "-q", "--bare"]);
        let to = bare.to_str().unwrap();
        super::git(seed, &["push", "-q", to, "--all"]);
        super::git(seed, &["push", "-q", to, "--tags"]);
        format!("{}/{OWNER}/{name}.git", self.base)
    }

    /// What `--remote` takes.
    pub fn remote(&self) -> String {
        format!("{}/{OWNER}/{REPO}", self.base)
    }

    /// What `--github-api-url` takes.
    pub fn api_url(&self) -> String {
        format!("{}/api/v3", self.base)
    }

    /// The commit `branch` points at.
    pub fn head(&self, branch: &str) -> String {
        bare_git(
            &self.bare,
            &["rev-parse", &format!("refs/heads/{branch}")],
            None,
        )
        .trim()
        .to_string()
    }

    /// Commits `files` (path, contents) on `branch` as a human's push would.
    pub fn push(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        let changes: Vec<(&str, Option<&str>)> =
            files.iter().map(|(p, c)| (*p, Some(*c))).collect();
        self.push_changes(branch, &changes, message)
    }

    /// Commits `changes` (path, contents; `None` removes the path) on `branch`
    /// as a human's push would.
    pub fn push_changes(
        &self,
        branch: &str,
        changes: &[(&str, Option<&str>)],
        message: &str,
    ) -> String {
        let parent = self.head(branch);
        let entries: Vec<TreeEdit> = changes
            .iter()
            .map(|(path, contents)| TreeEdit {
                mode: "100644".into(),
                path: path.to_string(),
                sha: contents.map(|c| hash_blob(&self.bare, c.as_bytes())),
            })
            .collect();
        let tree = write_tree(&self.bare, Some(&parent), &entries);
        let args = ["commit-tree", &tree, "-p", &parent, "-m", message];
        let commit = bare_git(&self.bare, &args, None).trim().to_string();
        let name = format!("refs/heads/{branch}");
        bare_git(&self.bare, &["update-ref", &name, &commit, &parent], None);
        // Pull requests from this branch follow it, as on GitHub.
        for pull in &mut self.state.lock().unwrap().pulls {
            if pull["head"]["ref"] == json!(branch) {
                let number = pull["number"].as_u64().unwrap();
                bare_git(
                    &self.bare,
                    &["update-ref", &pull_ref(number), &commit],
                    None,
                );
                pull["head"]["sha"] = json!(commit);
            }
        }
        commit
    }

    /// A commit of `files` on top of `parent`, on no branch (as a fork's is).
    pub fn commit_on(&self, parent: &str, files: &[(&str, &str)], message: &str) -> String {
        let entries: Vec<TreeEdit> = files
            .iter()
            .map(|(path, contents)| TreeEdit {
                mode: "100644".into(),
                path: path.to_string(),
                sha: Some(hash_blob(&self.bare, contents.as_bytes())),
            })
            .collect();
        let tree = write_tree(&self.bare, Some(parent), &entries);
        let args = ["commit-tree", &tree, "-p", parent, "-m", message];
        bare_git(&self.bare, &args, None).trim().to_string()
    }

    /// Opens a pull request into `base` as a human would on github.com, from a
    /// branch of this repository or from a fork (`head` is then `owner:branch`);
    /// GitHub keeps its head at `refs/pull/N/head` either way.
    pub fn open_pull(&self, head: &str, sha: &str, base: &str) -> u64 {
        let mut s = self.state.lock().unwrap();
        let number = s.pulls.len() as u64 + 1;
        bare_git(&self.bare, &["update-ref", &pull_ref(number), sha], None);
        s.pulls.push(json!({
            "number": number,
            "state": "open",
            "head": {"ref": head, "sha": sha},
            "base": {"ref": base},
        }));
        number
    }

    /// Merges pull request `number` with a merge commit, as GitHub's merge
    /// button does, when its base has not moved since the branch was made (the
    /// merge's tree is the head's): the base branch moves to the merge, the
    /// pull request is closed. Returns the merge commit.
    pub fn merge_pull(&self, number: u64) -> String {
        let mut s = self.state.lock().unwrap();
        let pull = s
            .pulls
            .iter_mut()
            .find(|p| p["number"] == json!(number))
            .expect("the pull request is open");
        let head = pull["head"]["sha"].as_str().unwrap().to_string();
        let base = pull["base"]["ref"].as_str().unwrap().to_string();
        let parent = bare_git(
            &self.bare,
            &["rev-parse", &format!("refs/heads/{base}")],
            None,
        )
        .trim()
        .to_string();
        let merge_base = bare_git(&self.bare, &["merge-base", &parent, &head], None);
        assert_eq!(
            merge_base.trim(),
            parent,
            "the base moved: merge it by hand"
        );
        let message = format!("Merge pull request #{number}");
        let tree = format!("{head}^{{tree}}");
        let args = [
            "commit-tree",
            &tree,
            "-p",
            &parent,
            "-p",
            &head,
            "-m",
            &message,
        ];
        let merge = bare_git(&self.bare, &args, None).trim().to_string();
        let name = format!("refs/heads/{base}");
        bare_git(&self.bare, &["update-ref", &name, &merge, &parent], None);
        pull["state"] = json!("closed");
        pull["merged"] = json!(true);
        merge
    }

    /// The file at `path` in commit `rev`, as GitHub has it.
    pub fn show(&self, rev: &str, path: &str) -> String {
        bare_git(&self.bare, &["show", &format!("{rev}:{path}")], None)
    }

    /// The statuses posted so far, oldest first.
    pub fn statuses(&self) -> Vec<Status> {
        self.state.lock().unwrap().statuses.clone()
    }

    /// The pull requests opened so far.
    pub fn pulls(&self) -> Vec<Value> {
        self.state.lock().unwrap().pulls.clone()
    }

    /// The API requests seen so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// The API requests seen so far with when they came.
    pub fn timed_requests(&self) -> Vec<(std::time::Instant, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Makes git's smart HTTP hang (the API still answers), or answer again.
    pub fn set_git_hangs(&self, hangs: bool) {
        self.state.lock().unwrap().git_hangs = hangs;
    }

    /// Takes the whole emulator down (503 to everything), or back up.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Fails the next API requests, one failure each.
    pub fn fail_next(&self, failures: &[Failure]) {
        self.state.lock().unwrap().failures.extend(failures);
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: warp::http::HeaderMap,
    body: Bytes,
}

fn answer(status: u16, body: Value) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-ratelimit-limit", "5000")
        .header("x-ratelimit-remaining", "4999")
        .body(Bytes::from(body.to_string()))
        .unwrap()
}

fn not_found() -> Response<Bytes> {
    answer(
        404,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn handle(
    req: &Request,
    state: &Mutex<State>,
    bare: &Path,
    root: &Path,
    base: &str,
) -> Response<Bytes> {
    if state.lock().unwrap().down {
        return answer(503, json!({"message": "Service Unavailable"}));
    }
    // Any repository of the owner (`add_repository`), the served one included.
    let is_git = req
        .path
        .strip_prefix(&format!("/{OWNER}/"))
        .and_then(|rest| rest.split_once(".git/"))
        .is_some_and(|(name, _)| !name.is_empty() && !name.contains(['/', '.']));
    if is_git {
        let authorized = req
            .headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == git_authorization().as_bytes());
        if !authorized {
            return Response::builder()
                .status(401)
                .header("www-authenticate", "Basic realm=\"GitHub\"")
                .body(Bytes::from_static(b"Authentication failed\n"))
                .unwrap();
        }
        return smart_http(req, root);
    }
    let api = format!("/api/v3/repos/{OWNER}/{REPO}/");
    let Some(rest) = req.path.strip_prefix(&api) else {
        return not_found();
    };
    {
        let mut s = state.lock().unwrap();
        let seen = (
            std::time::Instant::now(),
            format!("{} {}", req.method, req.path),
        );
        s.requests.push(seen);
        if let Some(failure) = s.failures.pop_front() {
            return match failure {
                Failure::ServerError => answer(502, json!({"message": "Server Error"})),
                Failure::RateLimited { retry_after } => Response::builder()
                    .status(403)
                    .header("content-type", "application/json")
                    .header("x-ratelimit-remaining", "0")
                    .header("retry-after", retry_after.to_string())
                    .body(Bytes::from(
                        json!({"message": "API rate limit exceeded", "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"}).to_string(),
                    ))
                    .unwrap(),
            };
        }
    }
    if !req.headers.contains_key("authorization") {
        return answer(401, json!({"message": "Requires authentication"}));
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let url = |p: &str| format!("{base}/api/v3/repos/{OWNER}/{REPO}/{p}");
    match (req.method.as_str(), rest) {
        ("GET", r) if r.starts_with("git/ref/") => {
            let name = &r["git/ref/".len()..];
            let sha = bare_git_try(bare, &["rev-parse", "--verify", &format!("refs/{name}")]);
            match sha {
                Some(sha) => answer(200, ref_object(name, &sha, &url)),
                None => not_found(),
            }
        }
        ("POST", "git/blobs") => {
            let content = body["content"].as_str().unwrap_or_default();
            let bytes = match body["encoding"].as_str() {
                Some("base64") => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(content.replace('\n', ""))
                        .unwrap_or_default()
                }
                _ => content.as_bytes().to_vec(),
            };
            let sha = hash_blob(bare, &bytes);
            answer(
                201,
                json!({"sha": sha, "url": url(&format!("git/blobs/{sha}"))}),
            )
        }
        ("POST", "git/trees") => {
            let mut entries = Vec::new();
            for entry in body["tree"].as_array().cloned().unwrap_or_default() {
                let path = entry["path"].as_str().unwrap_or_default().to_string();
                let mode = entry["mode"].as_str().unwrap_or("100644").to_string();
                let sha = match (&entry["sha"], entry["content"].as_str()) {
                    (Value::String(_), Some(_)) => {
                        return answer(
                            422,
                            json!({"message": "Must supply either tree.sha or tree.content, not both"}),
                        );
                    }
                    (Value::String(sha), _) => Some(sha.clone()),
                    (_, Some(content)) => Some(hash_blob(bare, content.as_bytes())),
                    _ => None,
                };
                entries.push(TreeEdit { mode, path, sha });
            }
            let tree = write_tree(bare, body["base_tree"].as_str(), &entries);
            answer(
                201,
                json!({"sha": tree, "url": url(&format!("git/trees/{tree}")), "tree": [], "truncated": false}),
            )
        }
        ("POST", "git/commits") => {
            let tree = body["tree"].as_str().unwrap_or_default();
            let mut args = vec!["commit-tree".to_string(), tree.to_string()];
            for p in body["parents"].as_array().cloned().unwrap_or_default() {
                args.push("-p".into());
                args.push(p.as_str().unwrap_or_default().to_string());
            }
            args.push("-m".into());
            args.push(body["message"].as_str().unwrap_or_default().to_string());
            let author = &body["author"];
            let name = author["name"].as_str().unwrap_or("dynapi").to_string();
            let email = author["email"]
                .as_str()
                .unwrap_or("dynapi@localhost")
                .to_string();
            let env = [
                ("GIT_AUTHOR_NAME", name.as_str()),
                ("GIT_AUTHOR_EMAIL", email.as_str()),
                ("GIT_COMMITTER_NAME", "GitHub"),
                ("GIT_COMMITTER_EMAIL", "noreply@github.com"),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let sha = bare_git_env(bare, &args, None, &env);
            let sha = sha.trim();
            answer(
                201,
                json!({"sha": sha, "url": url(&format!("git/commits/{sha}")), "tree": {"sha": tree},
                       "message": body["message"], "parents": body["parents"].as_array().cloned().unwrap_or_default().iter().map(|p| json!({"sha": p})).collect::<Vec<_>>()}),
            )
        }
        ("PATCH", r) if r.starts_with("git/refs/") => {
            let name = &r["git/refs/".len()..];
            let full = format!("refs/{name}");
            let sha = body["sha"].as_str().unwrap_or_default();
            let Some(current) = bare_git_try(bare, &["rev-parse", "--verify", &full]) else {
                return answer(422, json!({"message": "Reference does not exist"}));
            };
            let force = body["force"].as_bool().unwrap_or(false);
            let fast_forward =
                bare_git_try(bare, &["merge-base", "--is-ancestor", &current, sha]).is_some();
            if !force && !fast_forward {
                return answer(
                    422,
                    json!({"message": "Update is not a fast forward", "documentation_url": "https://docs.github.com/rest/git/refs#update-a-reference"}),
                );
            }
            match bare_git_try(bare, &["update-ref", &full, sha, &current]) {
                Some(_) => answer(200, ref_object(name, sha, &url)),
                None => answer(422, json!({"message": "Update is not a fast forward"})),
            }
        }
        ("POST", "git/refs") => {
            let full = body["ref"].as_str().unwrap_or_default();
            let sha = body["sha"].as_str().unwrap_or_default();
            if bare_git_try(bare, &["rev-parse", "--verify", full]).is_some() {
                return answer(422, json!({"message": "Reference already exists"}));
            }
            bare_git(bare, &["update-ref", full, sha, ""], None);
            answer(201, ref_object(full.trim_start_matches("refs/"), sha, &url))
        }
        ("POST", r) if r.starts_with("statuses/") => {
            let sha = &r["statuses/".len()..];
            let status = Status {
                sha: sha.to_string(),
                state: body["state"].as_str().unwrap_or_default().to_string(),
                context: body["context"].as_str().unwrap_or("default").to_string(),
                description: body["description"].as_str().unwrap_or_default().to_string(),
            };
            let reply = json!({"state": status.state, "context": status.context, "description": status.description, "id": 1});
            state.lock().unwrap().statuses.push(status);
            answer(201, reply)
        }
        ("GET", r) if r.starts_with("commits/") && r.ends_with("/statuses") => {
            let sha = &r["commits/".len()..r.len() - "/statuses".len()];
            let list: Vec<Value> = state
                .lock()
                .unwrap()
                .statuses
                .iter()
                .rev()
                .filter(|s| s.sha == sha)
                .map(|s| json!({"state": s.state, "context": s.context, "description": s.description}))
                .collect();
            answer(200, Value::Array(list))
        }
        ("POST", "pulls") => {
            let mut s = state.lock().unwrap();
            let number = s.pulls.len() as u64 + 1;
            let head = body["head"].as_str().unwrap_or_default();
            let Some(sha) = bare_git_try(bare, &["rev-parse", &format!("refs/heads/{head}")])
            else {
                return answer(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}]}),
                );
            };
            bare_git(bare, &["update-ref", &pull_ref(number), &sha], None);
            let pull = json!({
                "number": number,
                "state": "open",
                "title": body["title"],
                "body": body["body"],
                "html_url": format!("{base}/{OWNER}/{REPO}/pull/{number}"),
                "url": url(&format!("pulls/{number}")),
                "head": {"ref": head, "sha": sha},
                "base": {"ref": body["base"]},
            });
            s.pulls.push(pull.clone());
            answer(201, pull)
        }
        _ => not_found(),
    }
}

fn ref_object(name: &str, sha: &str, url: &dyn Fn(&str) -> String) -> Value {
    json!({
        "ref": format!("refs/{name}"),
        "node_id": "REF_emulated",
        "url": url(&format!("git/refs/{name}")),
        "object": {"sha": sha, "type": "commit", "url": url(&format!("git/commits/{sha}"))},
    })
}

/// One path of a tree being written: a blob (`mode`, `sha`) or, without a
/// sha, the path removed.
struct TreeEdit {
    mode: String,
    path: String,
    sha: Option<String>,
}

/// Stores `bytes` as a blob; its id.
fn hash_blob(bare: &Path, bytes: &[u8]) -> String {
    let sha = bare_git(bare, &["hash-object", "-w", "--stdin"], Some(bytes));
    sha.trim().to_string()
}

/// A tree: `base` (a tree or commit; none: empty) with `entries` applied, made
/// in a throwaway index as GitHub's create-a-tree does; its id.
fn write_tree(bare: &Path, base: Option<&str>, entries: &[TreeEdit]) -> String {
    let index = bare.join(format!("dynapi-emulator-index-{}", rand_suffix()));
    let env = [("GIT_INDEX_FILE", index.to_str().unwrap())];
    match base {
        Some(base) => bare_git_env(bare, &["read-tree", base], None, &env),
        None => bare_git_env(bare, &["read-tree", "--empty"], None, &env),
    };
    for entry in entries {
        let path = &entry.path;
        match &entry.sha {
            Some(sha) => {
                let info = format!("{},{sha},{path}", entry.mode);
                bare_git_env(
                    bare,
                    &["update-index", "--add", "--cacheinfo", &info],
                    None,
                    &env,
                )
            }
            // `--force-remove` wants a work tree; a zero mode removes the entry.
            None => bare_git_env(
                bare,
                &["update-index", "--index-info"],
                Some(format!("0 {}\t{path}\n", "0".repeat(40)).as_bytes()),
                &env,
            ),
        };
    }
    let tree = bare_git_env(bare, &["write-tree"], None, &env);
    let _ = std::fs::remove_file(&index);
    tree.trim().to_string()
}

/// Where GitHub keeps a pull request's head, for forks too.
fn pull_ref(number: u64) -> String {
    format!("refs/pull/{number}/head")
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// git's smart HTTP, through `git http-backend` as a CGI program.
fn smart_http(req: &Request, root: &Path) -> Response<Bytes> {
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("REQUEST_METHOD", &req.method)
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (header, var) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(v) = req.headers.get(header).and_then(|v| v.to_str().ok()) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&req.body);
    }
    let out = child.wait_with_output().unwrap();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let Some((at, len)) = split else {
        return answer(
            500,
            json!({"message": String::from_utf8_lossy(&out.stderr)}),
        );
    };
    let head = String::from_utf8_lossy(&out.stdout[..at]).into_owned();
    let mut response = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                let code: u16 = v
                    .trim()
                    .split(' ')
                    .next()
                    .unwrap_or("200")
                    .parse()
                    .unwrap_or(200);
                response = response.status(code);
            } else {
                response = response.header(k.trim(), v.trim());
            }
        }
    }
    response
        .body(Bytes::copy_from_slice(&out.stdout[at + len..]))
        .unwrap()
}

fn bare_git(bare: &Path, args: &[&str], stdin: Option<&[u8]>) -> String {
    bare_git_env(bare, args, stdin, &[])
}

fn bare_git_env(bare: &Path, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &str)]) -> String {
    run_git(bare, args, stdin, env).unwrap_or_else(|e| panic!("git {args:?}: {e}"))
}

fn bare_git_try(bare: &Path, args: &[&str]) -> Option<String> {
    run_git(bare, args, None, &[])
        .ok()
        .map(|s| s.trim().to_string())
}

fn run_git(
    bare: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(bare)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Human")
        .env("GIT_AUTHOR_EMAIL", "human@example.com")
        .env("GIT_COMMITTER_NAME", "Human")
        .env("GIT_COMMITTER_EMAIL", "human@example.com")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input).map_err(|e| e.to_string())?;
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
