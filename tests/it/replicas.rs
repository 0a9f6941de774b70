//! Replicas that act as one (`--state postgres://...`): three daemons on one
//! GitHub emulator and one throwaway PostgreSQL database, started at the same
//! moment (their migrations race), and every request sent round-robin, as a
//! load balancer without session affinity would.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::github::{deliver_as, fixture, BRANCH, SECRET};
use crate::support::github::GitHub;
use crate::support::{postgres_database, template_repo, Daemon, TOKEN};

/// The address every replica is reached at behind the load balancer: OAuth's
/// resource identifiers name it, so it is the same for all.
const PUBLIC: &str = "http://replicas.test";
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const LEASE: Duration = Duration::from_secs(2);

/// `n` replicas of one repository on one shared state, started at once.
async fn replicas(gh: &GitHub, state: &str, n: usize, write_interval: Duration) -> Vec<Daemon> {
    let starts = (0..n).map(|_| {
        let (remote, api, state) = (gh.remote(), gh.api_url(), state.to_string());
        Daemon::start_with(move |c| {
            c.branch = BRANCH.into();
            c.webhook_secret = Some(SECRET.into());
            c.public_url = Some(PUBLIC.into());
            c.state = Some(state);
            c.job_lease = LEASE;
            c.remote = Some(dynapi::config::Remote {
                url: remote,
                api_url: api,
                token: Some(crate::support::github::TOKEN.into()),
                poll: Duration::from_secs(600),
                write_interval,
            });
        })
    });
    futures_util::future::join_all(starts).await
}

async fn three() -> (GitHub, String, Vec<Daemon>) {
    let seed = template_repo(BRANCH, &[]);
    let gh = GitHub::start(seed.path(), BRANCH).await;
    let state = postgres_database().await;
    let all = replicas(&gh, &state, 3, Duration::from_millis(10)).await;
    (gh, state, all)
}

/// A client that follows no redirects (each step of the sign-in is looked at).
fn browser() -> reqwest::Client {
    crate::support::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn form(
    http: &reqwest::Client,
    d: &Daemon,
    path: &str,
    fields: &[(&str, &str)],
) -> (u16, Value, String) {
    let res = http
        .post(format!("{}{path}", d.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(fields).unwrap())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let location = res
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        location,
    )
}

async fn status_with(d: &Daemon, token: &str) -> u16 {
    d.client
        .get(format!("{}/status", d.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_oauth_sign_in_goes_through_three_replicas() {
    let (_gh, _state, r) = three().await;
    let http = browser();
    // Registration on the first.
    let reg = http
        .post(format!("{}/oauth/register", r[0].url))
        .json(
            &json!({"redirect_uris": [REDIRECT], "client_name": "Spread",
            "token_endpoint_auth_method": "none"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), 201);
    let client_id = reg.json::<Value>().await.unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Consent on the second.
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    let (status, _, location) = form(
        &http,
        &r[1],
        "/oauth/authorize",
        &[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", REDIRECT),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", "s"),
            ("scope", "read"),
            ("resource", PUBLIC),
            ("owner_token", TOKEN),
            ("grant", "read"),
            ("decision", "approve"),
        ],
    )
    .await;
    assert_eq!(status, 303, "the owner approves on the second replica");
    let query = location.split_once('?').unwrap().1;
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
    let code = params.iter().find(|(k, _)| k == "code").unwrap().1.clone();
    // The code redeemed on the third.
    let redeem = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("client_id", &client_id),
        ("code_verifier", &verifier),
        ("resource", PUBLIC),
    ];
    let (status, tokens, _) = form(&http, &r[2], "/oauth/token", &redeem).await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    for d in &r {
        assert_eq!(
            status_with(d, &access).await,
            200,
            "the token works on {}",
            d.url
        );
    }
    // MCP's stateless revision, through another replica than the one that
    // issued the token: a tool call needs no session.
    let called: Value = http
        .post(format!("{}/mcp", r[1].url))
        .bearer_auth(&access)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "readFile")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "readFile", "arguments": {"path": "dynapi.yaml"},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "replicas", "version": "1"}}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(called["result"]["isError"], json!(false), "{called}");
    // Refresh on the first; the new access token works on the second.
    let (status, renewed, _) = form(
        &http,
        &r[0],
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, 200, "{renewed}");
    let new_access = renewed["access_token"].as_str().unwrap();
    assert_eq!(status_with(&r[1], new_access).await, 200);
    // Revoked on the third: refused by all.
    let (status, _, _) = form(
        &http,
        &r[2],
        "/oauth/revoke",
        &[("token", new_access), ("client_id", &client_id)],
    )
    .await;
    assert_eq!(status, 200);
    for d in &r {
        assert_eq!(
            status_with(d, new_access).await,
            401,
            "revoked on {}",
            d.url
        );
    }
    // The first code again, on the first replica: it was redeemed (on the
    // third), so it is refused here too.
    let (again, answer, _) = form(&http, &r[0], "/oauth/token", &redeem).await;
    assert_eq!(
        (again, answer["error"].clone()),
        (400, json!("invalid_grant"))
    );
}

const SLOW: &str = "#!/bin/sh\necho \"pid $$\"\nexec sleep 30\n";

/// Adds the `slow` endpoint through the first replica and waits until every
/// replica serves it (GitHub's push webhook, to the second).
async fn add_slow(gh: &GitHub, r: &[Daemon]) {
    let a = r[0]
        .post("/endpoints", crate::support::endpoint_body("slow", SLOW))
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let (status, _) = deliver_as(&r[1], "push", "add-slow", &fixture("push.4")).await;
    assert_eq!(status, 202);
    let head = gh.head(BRANCH);
    for d in r {
        assert!(
            d.eventually(Duration::from_secs(5), |d| d.served() == head)
                .await
                .is_some(),
            "{} serves the new endpoint",
            d.url
        );
    }
}

fn pid_of(output: &str) -> i32 {
    output
        .trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the script printed its pid: {output:?}"))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// Reads job `id` on `d` until `done` says so (or 5 s passed).
async fn read_job(d: &Daemon, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = d.get(&format!("/jobs/{id}")).await;
        assert_eq!(a.status, 200, "{}", a.json);
        if done(&a.json) || Instant::now() > deadline {
            return a.json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_job_started_on_one_replica_is_read_on_a_second_and_cancelled_on_a_third() {
    let (gh, _state, r) = three().await;
    add_slow(&gh, &r).await;
    let started = r[0].post("/call/slow?async=true", json!({})).await;
    assert_eq!(started.status, 202, "{}", started.json);
    let id = started.json["job_id"].as_str().unwrap().to_string();

    let seen = read_job(&r[1], &id, |j| {
        j["output"].as_str().unwrap_or("").contains("pid")
    })
    .await;
    assert_eq!(seen["state"], json!("running"), "{seen}");
    assert_eq!(seen["endpoint"], json!("slow"));
    let pid = pid_of(seen["output"].as_str().unwrap());
    assert!(alive(pid), "the script runs");

    let cancelled = r[2].delete(&format!("/jobs/{id}")).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.json);
    assert_eq!(
        cancelled.json["state"],
        json!("cancelled"),
        "{}",
        cancelled.json
    );
    assert!(!alive(pid), "the process is gone once DELETE answered");
    // Everyone reads the same end.
    for d in &r {
        let j = d.get(&format!("/jobs/{id}")).await;
        assert_eq!(j.json["state"], json!("cancelled"), "{} {}", d.url, j.json);
    }
    // A job nobody started is 404 everywhere.
    assert_eq!(
        r[1].get("/jobs/job_00000000000000000000000000000000")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn a_push_webhook_to_one_replica_is_served_by_all_three_and_its_replay_by_none() {
    let (gh, _state, r) = three().await;
    let pushed = gh.push(
        BRANCH,
        &[(
            "manifests/late.yaml",
            "name: late\ndescription: Added on GitHub.\nscript: scripts/sample_script.sh\n",
        )],
        "Add late",
    );
    let (status, answer) = deliver_as(&r[0], "push", "delivery-1", &fixture("push.4")).await;
    assert_eq!((status, answer["sync"].clone()), (202, json!("started")));
    let sent = Instant::now();
    for d in &r {
        assert!(
            d.eventually(Duration::from_secs(1), |d| d.served() == pushed)
                .await
                .is_some(),
            "{} serves the push within a second",
            d.url
        );
    }
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    for d in &r {
        assert_eq!(d.post("/call/late", json!({})).await.status, 200);
    }
    // GitHub's redelivery of the same id, to another replica.
    let (status, answer) = deliver_as(&r[2], "push", "delivery-1", &fixture("push.4")).await;
    assert_eq!(status, 200);
    assert_eq!(answer["duplicate"], json!(true), "{answer}");
}

#[tokio::test]
async fn writes_spread_over_replicas_reach_github_one_interval_apart() {
    let seed = template_repo(BRANCH, &[]);
    let gh = GitHub::start(seed.path(), BRANCH).await;
    let state = postgres_database().await;
    let interval = Duration::from_millis(150);
    let r = replicas(&gh, &state, 3, interval).await;
    let writes = (0..12).map(|i| {
        let d = &r[i % 3];
        async move {
            // A write that lost the race for the branch every time is
            // answered 503 with Retry-After, nothing written: retried as a
            // client would.
            loop {
                let a = d
                    .put(&format!("/files/spread/{i}.txt"), json!({"content": "x\n"}))
                    .await;
                if a.status != 503 {
                    return a;
                }
                assert_eq!(a.json["error"]["code"], json!("branch_busy"), "{}", a.json);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    for a in futures_util::future::join_all(writes).await {
        assert_eq!(a.status, 201, "{}", a.json);
    }
    let creating = crate::github::paced(&gh, interval);
    // Replicas that lose the race for the branch make their commit again
    // on the new head: more ref updates than writes, all of them paced.
    let refs = creating
        .iter()
        .filter(|(_, r)| r.contains("/git/refs"))
        .count();
    assert!(refs >= 12, "{creating:?}");
    for i in 0..12 {
        assert_eq!(gh.show(BRANCH, &format!("spread/{i}.txt")), "x\n");
    }
}

/// A fourth replica, the real binary (started with `extra` flags besides
/// the others'), that a test stops; with its workspace's folder, its URL and
/// its token.
async fn binary_replica(
    gh: &GitHub,
    state: &str,
    extra: &[&str],
) -> (std::process::Child, tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("workspace");
    let mut command = Command::new(env!("CARGO_BIN_EXE_dynapi"));
    command
        .env("GITHUB_TOKEN", crate::support::github::TOKEN)
        .env_remove("DYNAPI_STATE");
    let mut flags: Vec<String> = [
        "--workspace",
        workspace.to_str().unwrap(),
        "--remote",
        &gh.remote(),
        "--github-api-url",
        &gh.api_url(),
        "--branch",
        BRANCH,
        "--state",
        state,
        "--job-lease",
        &format!("{}s", LEASE.as_secs()),
        "--public-url",
        PUBLIC,
    ]
    .map(String::from)
    .into();
    flags.extend(extra.iter().map(|f| f.to_string()));
    // It clones from the emulator, which this thread's runtime serves: the
    // wait for its first lines goes on another thread.
    let (child, url, token) = tokio::task::spawn_blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        crate::support::serve(command, &flags)
    })
    .await
    .unwrap();
    assert!(!url.is_empty(), "the binary started");
    (child, dir, url, token)
}

/// Starts `slow` as a job on the replica at `url`; its id, and its script's
/// pid once `seen_on` (another replica) reads it running.
async fn start_slow(url: &str, token: &str, seen_on: &Daemon) -> (String, i32) {
    let started: Value = crate::support::client()
        .post(format!("{url}/call/slow?async=true"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["job_id"].as_str().expect("a job id").to_string();
    let running = read_job(seen_on, &id, |j| {
        j["output"].as_str().unwrap_or("").contains("pid")
    })
    .await;
    assert_eq!(running["state"], json!("running"), "{running}");
    let pid = pid_of(running["output"].as_str().unwrap());
    (id, pid)
}

#[tokio::test]
async fn a_replica_killed_mid_job_leaves_it_lost_within_the_lease() {
    let (gh, state, r) = three().await;
    add_slow(&gh, &r).await;
    let (mut child, _dir, url, token) = binary_replica(&gh, &state, &[]).await;
    let (id, pid) = start_slow(&url, &token, &r[0]).await;

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = Instant::now();
    let lost = read_job(&r[1], &id, |j| j["state"] == json!("lost")).await;
    assert_eq!(lost["state"], json!("lost"), "{lost}");
    assert!(
        killed.elapsed() <= LEASE + Duration::from_secs(2),
        "lost {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(lost["more"], json!(false), "nothing more will come");
    // The script of a killed replica is its own business (it may live on,
    // orphaned); stop it so the test leaves nothing behind.
    if alive(pid) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A replica stopped as a rolling update stops it (SIGTERM) in the middle of
/// a job kills the script once its grace period is over, and writes how the
/// job ended to the shared state before it exits: the others report the
/// end at once, not `lost` a lease later (a reviewer's finding: the task
/// that writes it was cancelled with the runtime).
#[tokio::test]
async fn a_replica_stopped_mid_job_records_its_end_for_the_others() {
    let (gh, state, r) = three().await;
    add_slow(&gh, &r).await;
    let (mut child, _dir, url, token) =
        binary_replica(&gh, &state, &["--shutdown-grace", "1s"]).await;
    let (id, pid) = start_slow(&url, &token, &r[0]).await;
    // SAFETY: kill sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!alive(pid), "the script outlived its replica");
    // Read at once: a lease has not passed, so this is what the replica wrote.
    let ended = r[1].get(&format!("/jobs/{id}")).await;
    assert_eq!(ended.json["state"], json!("failed"), "{}", ended.json);
    assert_eq!(ended.json["signal"], json!(9), "{}", ended.json);
}

// What shared state must not open: found by an attack review.

async fn sql(d: &Daemon, token: &str, body: Value) -> (u16, Value) {
    let res = d
        .client
        .post(format!("{}/sql", d.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

const SQL_WRITER: &str = "sql-writer-token";
const READER: &str = "reader-token";

/// A `databases:` entry naming the shared state's database (by URL, or as
/// `${DYNAPI_STATE}`) hands the state to `POST /sql`: a `read` token reads
/// every owner's job output and NOTIFYs the replicas, a `sql-write` token
/// mints itself an `admin` OAuth access token.
#[tokio::test]
async fn sql_cannot_reach_the_shared_state() {
    let state = postgres_database().await;
    let s = state.clone();
    let d = Daemon::start_with(move |c| c.state = Some(s)).await;
    let hash = |t: &str| hex::encode(dynapi::auth::hash_token(t));
    d.commit_settings(&format!(
        "databases:\n  app:\n    url: \"{state}\"\ntokens:\n  - name: writer\n    sha256: {}\n    scopes: [read, sql-write]\n  - name: reader\n    sha256: {}\n    scopes: [read]\n",
        hash(SQL_WRITER),
        hash(READER)
    ))
    .await;

    // A `read` token: the jobs table (every owner's output) and NOTIFY.
    let (status, answer) = sql(
        &d,
        READER,
        json!({"database": "app", "query": "SELECT id, owner, stdout FROM dynapi_jobs"}),
    )
    .await;
    let reader_reads_jobs = status == 200;
    let (status, _) = sql(
        &d,
        READER,
        json!({"database": "app", "query": "SELECT pg_notify('dynapi', 'sync')"}),
    )
    .await;
    let reader_notifies = status == 200;

    // A `sql-write` token (no admin) forges an admin OAuth access token.
    let forged = "dynapi_at_forged-by-sql-write";
    for q in [
        "INSERT INTO dynapi_oauth_clients (id, name, kind, redirect_uris, created) VALUES ('c_forged', 'forged', 'owner', '[]', 0)",
        "INSERT INTO dynapi_oauth_grants (id, client_id, scope, audience, approved_by, created, refresh_hash, refresh_expires) VALUES ('g_forged', 'c_forged', 'read write run sql-write admin', 'api', 'nobody', 0, '\\x00', 0)",
        &format!("INSERT INTO dynapi_oauth_access (hash, grant_id, scope, expires) VALUES (sha256('{forged}'::bytea), 'g_forged', 'read write run sql-write admin', 4102444800)"),
    ] {
        let _ = sql(&d, SQL_WRITER, json!({"database": "app", "query": q})).await;
    }
    let sync_as = |token: &str| {
        d.client
            .post(format!("{}/sync", d.url))
            .bearer_auth(token)
            .send()
    };
    let sync_as_writer = sync_as(SQL_WRITER).await.unwrap().status().as_u16();
    let sync_as_forged = sync_as(forged).await.unwrap().status().as_u16();
    eprintln!(
        "reader reads dynapi_jobs: {reader_reads_jobs} ({answer}); reader NOTIFYs: {reader_notifies}; \
         POST /sync as sql-write: {sync_as_writer}; as the forged OAuth token: {sync_as_forged}"
    );
    assert_eq!(sync_as_writer, 403, "the sql-write token alone is no admin");
    assert!(
        !reader_reads_jobs && !reader_notifies,
        "a `read` token reached the shared state through POST /sql"
    );
    assert_ne!(
        sync_as_forged, 200,
        "sql-write minted an admin token through the shared state"
    );
}

/// `--state postgres://user:password@...` is a flag: the password is in the
/// daemon's command line, which every process of the machine (a script
/// too) reads in /proc. config.rs: secrets are read from the environment
/// only, "so they do not show in `ps`".

#[tokio::test]
async fn the_shared_jobs_keep_no_more_output_than_the_memory_budget() {
    let state = postgres_database().await;
    let s = state.clone();
    let d = Daemon::start_with(move |c| c.state = Some(s)).await;
    // 2 MiB a job (1 MiB on each stream: the cap), incompressible.
    d.add_endpoint(
        "big",
        "",
        "#!/bin/sh\nhead -c 1048576 /dev/urandom\nhead -c 1048576 /dev/urandom >&2\n",
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let a = d.post("/call/big?async=true", json!({})).await;
        assert_eq!(a.status, 202, "{}", a.json);
        ids.push(a.json["job_id"].as_str().unwrap().to_string());
    }
    let db = pg(&state).await;
    let mut total = 0i64;
    for _ in 0..100 {
        let row = db
            .query_one(
                "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL),
                        coalesce(sum(octet_length(stdout) + octet_length(stderr)), 0)::bigint
                 FROM dynapi_jobs",
                &[],
            )
            .await
            .unwrap();
        let finished: i64 = row.get(0);
        total = row.get(1);
        if finished == ids.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("dynapi_jobs holds {} MiB of output", total >> 20);
    assert!(
        total <= 64 << 20,
        "the shared jobs hold {} MiB, past the 64 MiB the memory keeps",
        total >> 20
    );
}

/// A running job that printed once and then only waits: its row should not
/// grow, yet every second `stdout = stdout || ''` writes its output anew.

#[tokio::test]
async fn the_state_gone_answers_json_errors_quickly() {
    let state = postgres_database().await;
    let s = state.clone();
    let d = Daemon::start_with(move |c| {
        c.state = Some(s);
        c.webhook_secret = Some("webhook-secret".into());
    })
    .await;
    let name = state.rsplit_once('/').unwrap().1.to_string();
    let admin = pg(&crate::support::postgres_url()).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';"
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (url, http) = (&d.url, &d.client);
    let requests = [
        ("GET /jobs/x", http.get(format!("{url}/jobs/job_00000000000000000000000000000000")).bearer_auth(TOKEN)),
        ("OAuth bearer", http.get(format!("{url}/status")).bearer_auth("dynapi_at_whatever")),
        (
            "POST /oauth/token",
            http.post(format!("{url}/oauth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=refresh_token&refresh_token=x&client_id=dyn_x"),
        ),
        (
            "POST /oauth/register",
            http.post(format!("{url}/oauth/register")).json(
                &json!({"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"}),
            ),
        ),
        ("GET /status (static token)", http.get(format!("{url}/status")).bearer_auth(TOKEN)),
    ];
    let mut report = Vec::new();
    for (label, request) in requests {
        let t = std::time::Instant::now();
        let res = request.send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        report.push(format!("{label}: {status} {body} in {:?}", t.elapsed()));
    }
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    for line in &report {
        eprintln!("{line}");
    }
    // What needs a shared row says the state is away (503), in the JSON
    // shape, without naming the database; what does not, answers.
    assert!(report[0].starts_with("GET /jobs/x: 503"), "{report:#?}");
    assert!(!report[0].contains(&name), "{report:#?}");
    assert!(report[1].starts_with("OAuth bearer: 503"), "{report:#?}");
    assert!(
        report[2].starts_with("POST /oauth/token: 503"),
        "{report:#?}"
    );
    assert!(report[2].contains("temporarily_unavailable"), "{report:#?}");
    assert!(
        report[3].starts_with("POST /oauth/register: 503"),
        "{report:#?}"
    );
    assert!(
        report[4].starts_with("GET /status (static token): 200"),
        "{report:#?}"
    );
}
