//! Test support: a real daemon on 127.0.0.1:0 over a real git workspace in a temp
//! folder, an HTTP client that speaks to it, and the git command line for playing
//! the human who commits in the workspace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use dynapi::config::Config;

pub mod github;

pub const TOKEN: &str = "test-token-with-all-scopes";

pub struct Daemon {
    pub url: String,
    pub workspace: PathBuf,
    pub client: reqwest::Client,
    pub app: Arc<dynapi::App>,
    shutdown: CancellationToken,
    config: Config,
    _dir: tempfile::TempDir,
}

/// An answer: status, headers and the body parsed as JSON (Null when empty).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Daemon {
    pub async fn start() -> Daemon {
        Daemon::start_with(|_| {}).await
    }

    /// Starts a daemon on a fresh workspace made from the template; `adjust` may
    /// change the configuration first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("workspace");
        let mut config = Config::new(workspace.clone());
        config.token = Some(TOKEN.into());
        config.shutdown_grace = Duration::from_millis(500);
        adjust(&mut config);
        let (url, app, shutdown) = launch(config.clone()).await;
        Daemon {
            url,
            workspace,
            client: client(),
            app,
            shutdown,
            config,
            _dir: dir,
        }
    }

    /// Stops the daemon and starts it again on the same workspace and
    /// configuration (at a new address), as an operator's restart would.
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (url, app, shutdown) = launch(self.config.clone()).await;
        self.url = url;
        self.app = app;
        self.shutdown = shutdown;
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("the daemon answers");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Answer {
            status,
            headers,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request("GET", path, None, Some(TOKEN)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.request("POST", path, Some(body), Some(TOKEN)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.request("DELETE", path, None, Some(TOKEN)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.request("PUT", path, Some(body), Some(TOKEN)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.request("PATCH", path, Some(body), Some(TOKEN)).await
    }

    /// Sends `method target` byte for byte (no URL normalization, unlike a client
    /// library: `..` segments stay) and answers the status and the body.
    pub async fn raw(&self, method: &str, target: &str, body: Option<&Value>) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Grants the token `secret` (named `reader`) only `scopes` in `dynapi.yaml`, as
    /// a human would: edit, commit; then waits until that commit is served.
    pub async fn grant_reader(&self, secret: &str, scopes: &str) {
        let hash = hex::encode(dynapi::auth::hash_token(secret));
        self.commit_settings(&format!(
            "tokens:\n  - name: reader\n    sha256: {hash}\n    scopes: [{scopes}]\n"
        ))
        .await;
    }

    /// Writes `dynapi.yaml` and commits it as a human would; then waits until
    /// that commit is served.
    pub async fn commit_settings(&self, yaml: &str) {
        std::fs::write(self.workspace.join("dynapi.yaml"), yaml).unwrap();
        self.git(&["commit", "-q", "-am", "Grant tokens"]);
        let head = self.git(&["rev-parse", "HEAD"]).trim().to_string();
        assert!(self
            .eventually(Duration::from_secs(2), |d| d.served() == head)
            .await
            .is_some());
    }

    /// Adds endpoint `name` at POST /name (as the all-scopes token) with
    /// `extra` manifest lines and `script` at `scripts/<name>.sh`.
    pub async fn add_endpoint(&self, name: &str, extra: &str, script: &str) {
        let manifest = format!(
            "name: {name}\ndescription: Probe {name}.\npath: /{name}\nscript: scripts/{name}.sh\n{extra}"
        );
        let a = self
            .post(
                "/endpoints",
                serde_json::json!({"manifest": manifest, "script": {"path": format!("scripts/{name}.sh"), "content": script}}),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.json);
    }

    /// Writes `files` and commits them as a human would; then waits until
    /// that commit is served, and returns it.
    pub async fn human_commit(&self, files: &[(&str, &[u8])], message: &str) -> String {
        for (path, bytes) in files {
            let file = self.workspace.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, bytes).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        let head = self.git(&["rev-parse", "HEAD"]).trim().to_string();
        assert!(self
            .eventually(Duration::from_secs(5), |d| d.served() == head)
            .await
            .is_some());
        head
    }

    /// How many commits the branch has.
    pub fn commits(&self) -> usize {
        self.git(&["rev-list", "--count", "HEAD"])
            .trim()
            .parse()
            .unwrap()
    }

    /// Runs git in the workspace as a human would, and returns its stdout.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.workspace, args)
    }

    /// The commit the daemon serves.
    pub fn served(&self) -> String {
        self.app.syncer.registry().commit.clone()
    }

    /// Waits until `check` holds, up to `limit`; returns how long it took.
    pub async fn eventually(
        &self,
        limit: Duration,
        mut check: impl FnMut(&Daemon) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check(self) {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn launch(config: Config) -> (String, Arc<dynapi::App>, CancellationToken) {
    let ip = config.listen.ip();
    let started = dynapi::App::start(config).await.expect("the daemon starts");
    // The configured address, on a free port: 127.0.0.1 unless a test asks
    // for another (0.0.0.0, to be a daemon other machines can reach).
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let mut addr = listener.local_addr().unwrap();
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}");
    let shutdown = CancellationToken::new();
    tokio::spawn(dynapi::serve(
        listener,
        started.app.clone(),
        shutdown.clone(),
    ));
    (url, started.app, shutdown)
}

/// An HTTP client for the tests; the daemon's TLS provider is installed first
/// (reqwest is built without one, see `dynapi::install_tls`).
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

pub fn client_builder() -> reqwest::ClientBuilder {
    dynapi::install_tls();
    reqwest::Client::builder()
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Human",
            "-c",
            "user.email=human@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository like `dynapi init` writes, plus `extra` files (path, text),
/// committed as one commit on `branch`: the seed of an emulated GitHub repo.
pub fn template_repo(branch: &str, extra: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let files = dynapi::workspace::template_files(true);
    let all = files
        .iter()
        .map(|f| (f.path.clone(), f.contents.clone()))
        .chain(
            extra
                .iter()
                .map(|(p, t)| (p.clone(), t.clone().into_bytes())),
        );
    for (path, contents) in all {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
    }
    git(dir.path(), &["init", "-q", "-b", branch]);
    git(dir.path(), &["add", "-A"]);
    for file in files.iter().filter(|f| f.executable) {
        git(dir.path(), &["update-index", "--chmod=+x", &file.path]);
    }
    git(dir.path(), &["commit", "-qm", "Start"]);
    dir
}

/// Runs `command` (the dynapi binary, with its folder and user) as `serve` with
/// `flags` on a free port with a generated token; returns the child, its URL and
/// the token it printed.
pub fn serve(mut command: Command, flags: &[&str]) -> (std::process::Child, String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(flags)
        .env_remove("DYNAPI_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut token) = (String::new(), String::new());
    for line in lines {
        let line = line.unwrap();
        if let (Some(i), true) = (line.find("http://"), url.is_empty()) {
            url = line[i..].to_string();
        }
        if line.trim().starts_with("dynapi_") {
            token = line.trim().to_string();
        }
        if line.starts_with("Try:") {
            break;
        }
    }
    (child, url, token)
}

/// A manifest for an endpoint `name` at POST /name running scripts/<name>.sh.
pub fn endpoint_body(name: &str, script: &str) -> Value {
    serde_json::json!({
        "manifest": format!("name: {name}\ndescription: Test endpoint {name}.\npath: /{name}\nscript: scripts/{name}.sh\nargs: [\"{{word}}\"]\nparams:\n  word: {{type: string, default: none}}\n"),
        "script": {"path": format!("scripts/{name}.sh"), "content": script},
    })
}

/// A PostgreSQL server for the tests: `DYNAPI_TEST_POSTGRES` when set (`.ci/run`
/// starts one), else a throwaway cluster in a temp folder, started once per test
/// run from Debian's packages and stopped when the run exits.
pub fn postgres_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Ok(url) = std::env::var("DYNAPI_TEST_POSTGRES") {
        return url;
    }
    URL.get_or_init(|| start_postgres(false).0).clone()
}

/// A second throwaway cluster that speaks TLS with a certificate for
/// `localhost` from a self-signed CA made here by openssl (which Debian's
/// PostgreSQL server depends on): its URL on 127.0.0.1 and the CA's file.
pub fn postgres_tls() -> (String, PathBuf) {
    static TLS: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let (url, dir) = start_postgres(true);
        (url, dir.join("ca.pem"))
    })
    .clone()
}

/// Starts a cluster in a new temp folder (with TLS when `tls`); its URL and folder.
fn start_postgres(tls: bool) -> (String, PathBuf) {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|versions| {
            versions
                .flatten()
                .map(|v| v.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .max()
        })
        .expect("PostgreSQL's server is needed for the SQL tests: apt-get install postgresql");
    let dir = tempfile::Builder::new()
        .prefix("dynapi-pg-")
        .tempdir()
        .unwrap()
        .keep();
    if tls {
        // A private CA (`ca.pem`, what a client names in `sslrootcert`) and
        // the server's certificate for `localhost`, signed by it.
        let openssl = |args: &[&str]| {
            let made = Command::new("openssl")
                .current_dir(&dir)
                .args(args)
                .output()
                .expect("openssl makes the test certificates");
            assert!(
                made.status.success(),
                "{}",
                String::from_utf8_lossy(&made.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &["-days", "2", "-subj", "/CN=dynapi test CA"],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &ec[..],
                &[
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "server.csr",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ]);
        std::fs::set_permissions(
            dir.join("key.pem"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    // PostgreSQL refuses to run as root; as root, run it as the `postgres` user.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        assert!(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success());
    }
    let run = |program: &str, args: &[&str]| {
        let mut cmd = if as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join(program));
            c
        } else {
            Command::new(bin.join(program))
        };
        let out = cmd.args(args).output().expect("PostgreSQL's tools run");
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    run(
        "initdb",
        &[
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
        dir.display()
    );
    if tls {
        options.push_str(&format!(
            " -c ssl=on -c ssl_cert_file={0}/cert.pem -c ssl_key_file={0}/key.pem",
            dir.display()
        ));
    }
    let log = dir.join("log");
    run(
        "pg_ctl",
        &[
            "-D",
            data,
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    );
    let mut stop = STOP.lock().unwrap_or_else(|p| p.into_inner());
    if stop.is_empty() {
        unsafe { libc::atexit(stop_postgres) };
    }
    stop.push((bin.join("pg_ctl"), dir.clone(), as_root));
    (
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        dir,
    )
}

/// What `stop_postgres` needs of each cluster: pg_ctl, its folder, whether as root.
static STOP: std::sync::Mutex<Vec<(PathBuf, PathBuf, bool)>> = std::sync::Mutex::new(Vec::new());

extern "C" fn stop_postgres() {
    let stop = STOP.lock().unwrap_or_else(|p| p.into_inner());
    for (pg_ctl, dir, as_root) in stop.iter() {
        let mut cmd = if *as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            Command::new(pg_ctl)
        };
        let _ = cmd
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A new, empty PostgreSQL database for one test; its URL.
pub async fn postgres_database() -> String {
    let url = postgres_url();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL answers");
    tokio::spawn(connection);
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("test_{}", hex::encode(bytes));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}
