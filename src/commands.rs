//! The one-shot commands: `dynapi check`, `dynapi init`, `dynapi token new` and
//! `dynapi oauth` (clients and grants, in the workspace's OAuth store, which a
//! running daemon shares).
//! They print to stdout/stderr and return an exit code; `main.rs` only dispatches.

use std::path::Path;

use crate::auth::{self, Scopes};
use crate::config::{CheckFormat, StoreAt};
use crate::manifest::Problem;
use crate::registry::{FileKind, Registry, Snapshot, MANIFEST_DIR, PROMPTS_DIR, SETTINGS_FILE};
use crate::source::library::Libraries;
use crate::source::repo::{Repo, Resolve};
use crate::workspace;

/// Validates the manifests and prompts of a checkout as they are on disk,
/// with the libraries it includes (fetched, or from the cache when
/// `offline`). Returns every problem.
pub fn check_dir(dir: &Path) -> std::io::Result<Vec<Problem>> {
    Ok(build_dir(dir, false)?.err().unwrap_or_default())
}

/// Where `dynapi check` keeps the libraries it fetched: the checkout's
/// `.git/dynapi/libraries` when it is a repository, else the user's cache.
fn library_cache(dir: &Path) -> std::path::PathBuf {
    let git = dir.join(".git");
    if git.is_dir() {
        return git
            .join(crate::layout::PRIVATE)
            .join(crate::layout::LIBRARY_CACHE);
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    home.join("dynapi").join(crate::layout::LIBRARY_CACHE)
}

/// The registry of a checkout as it is on disk, or its problems.
fn build_dir(dir: &Path, offline: bool) -> std::io::Result<Result<Registry, Vec<Problem>>> {
    let mut snapshot = Snapshot::default();
    match std::fs::read_to_string(dir.join(SETTINGS_FILE)) {
        Ok(text) => snapshot.settings = Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    snapshot.manifests = read_folder(dir, MANIFEST_DIR, &[".yaml", ".yml"])?;
    snapshot.prompts = read_folder(dir, PROMPTS_DIR, &[".md"])?;
    if let Some(text) = &snapshot.settings {
        let includes = crate::registry::includes_of(text);
        if !includes.is_empty() {
            // gix fetches https through reqwest, which needs the TLS provider.
            crate::install_tls();
            // As in GitHub Actions: GITHUB_TOKEN goes to GITHUB_SERVER_URL's
            // host only (github.com unless set).
            let server = std::env::var("GITHUB_SERVER_URL")
                .unwrap_or_else(|_| "https://github.com".to_string());
            let token = std::env::var("GITHUB_TOKEN").ok();
            let libraries = Libraries::for_check(library_cache(dir), offline)
                .with_token(&server, token.as_deref());
            snapshot.libraries = includes
                .iter()
                .map(|include| {
                    let found = libraries.resolve(include);
                    match &found {
                        Ok(lib) => eprintln!(
                            "library {}@{}: commit {}{}",
                            include.repository,
                            include.git_ref,
                            lib.commit,
                            lib.offline
                                .as_deref()
                                .map(|why| format!(" ({why})"))
                                .unwrap_or_default()
                        ),
                        Err(e) => {
                            eprintln!("library {}@{}: {e}", include.repository, include.git_ref)
                        }
                    }
                    found
                })
                .collect();
        }
    }
    let kind = |path: &str| {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::symlink_metadata(dir.join(path)) {
            Err(_) => FileKind::Missing,
            Ok(m) if !m.is_file() => FileKind::NotAFile,
            Ok(m) if m.permissions().mode() & 0o111 != 0 => FileKind::Executable,
            Ok(_) => FileKind::NotExecutable,
        }
    };
    Ok(Registry::build("", &snapshot, &kind))
}

/// The files of `dir/folder` whose names end in one of `suffixes` (not below),
/// as `(path, text)` in path order; none when the folder is missing.
fn read_folder(
    dir: &Path,
    folder: &str,
    suffixes: &[&str],
) -> std::io::Result<Vec<(String, String)>> {
    let full = dir.join(folder);
    if !full.is_dir() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = std::fs::read_dir(&full)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| suffixes.iter().any(|s| n.ends_with(s)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let text = std::fs::read_to_string(full.join(&name))?;
            Ok((format!("{folder}/{name}"), text))
        })
        .collect()
}

/// `dynapi openapi [--profile gpt] [--public-url URL] [DIR]`: prints the OpenAPI
/// document the daemon would serve for this checkout.
pub fn openapi(dir: &Path, profile: &str, public_url: &str) -> i32 {
    let Some(profile) = crate::openapi::Profile::parse(profile) else {
        eprintln!("dynapi openapi: --profile is `full` or `gpt`, not `{profile}`");
        return 2;
    };
    match build_dir(dir, false) {
        Ok(Ok(registry)) => {
            let ops = crate::http::catalog::operations();
            let doc = crate::openapi::document(&ops, &registry, profile, public_url);
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            0
        }
        Ok(Err(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("dynapi openapi: fix these first (`dynapi check`)");
            1
        }
        Err(e) => {
            eprintln!("dynapi openapi: cannot read {}: {e}", dir.display());
            2
        }
    }
}

/// `dynapi check [--format text|github] [DIR]`: 0 when valid, 1 with one line per
/// problem otherwise (2 when the checkout cannot be read).
pub fn check(dir: &Path, format: CheckFormat, offline: bool) -> i32 {
    match build_dir(dir, offline).map(|built| built.err().unwrap_or_default()) {
        Ok(problems) if problems.is_empty() => {
            println!("{}: manifests and prompts are valid", dir.display());
            0
        }
        Ok(problems) => {
            for p in &problems {
                match format {
                    CheckFormat::Text => println!("{p}"),
                    CheckFormat::Github => println!("{}", github_annotation(p)),
                }
            }
            eprintln!("{} problem(s) found", problems.len());
            1
        }
        Err(e) => {
            eprintln!("dynapi check: cannot read {}: {e}", dir.display());
            2
        }
    }
}

/// A problem as GitHub Actions' `::error` workflow command, which the pull
/// request shows on the line of its diff. The file is relative to the checkout,
/// as GitHub expects when the check runs at the repository's root. Escaped as
/// GitHub's runner does (`escapeData`, `escapeProperty`): `%`, CR and LF in the
/// message; those and `:` and `,` in a property.
fn github_annotation(p: &Problem) -> String {
    fn data(s: &str) -> String {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    }
    fn property(s: &str) -> String {
        data(s).replace(':', "%3A").replace(',', "%2C")
    }
    format!(
        "::error file={},line={},col={}::{}",
        property(&p.file),
        p.line,
        p.column,
        data(&p.message)
    )
}

/// `dynapi init [--library] [DIR]`: a new git repository from the template
/// (or the library template), with the workflow.
pub fn init(dir: &Path, library: bool) -> i32 {
    if dir.join(".git").exists() {
        eprintln!("dynapi init: {} is already a git repository", dir.display());
        return 1;
    }
    let files = if library {
        workspace::library_files()
    } else {
        workspace::template_files(true)
    };
    match Repo::init(dir, "main", &files, &crate::daemon_author()) {
        Ok(_) => {
            println!(
                "Created {} with {} files on branch main.",
                dir.display(),
                files.len()
            );
            if library {
                println!("Tag a version (git -C {} tag v1.0.0) and include it from a project's dynapi.yaml:", dir.display());
                println!("include:");
                println!("  - repository: <this repository's URL or absolute path>");
                println!("    ref: v1.0.0");
            } else {
                println!("Serve it with: dynapi serve --workspace {}", dir.display());
            }
            0
        }
        Err(e) => {
            eprintln!("dynapi init: {e}");
            1
        }
    }
}

/// `dynapi token new`: a token to hand out, and its line for `dynapi.yaml`.
pub fn token_new(scopes: &str, name: &str) -> i32 {
    let scopes = match Scopes::parse_list(scopes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dynapi token new: {e}");
            return 2;
        }
    };
    // The name goes into dynapi.yaml as printed: check it by the rule that
    // file is checked by, so what is printed is always accepted.
    if !crate::registry::is_name(name) {
        eprintln!(
            "dynapi token new: --name `{name}` is not a token name; use 1 to 64 lowercase letters, digits and dashes (dynapi.yaml accepts no other)"
        );
        return 2;
    }
    let token = auth::new_token();
    let hash = hex::encode(auth::hash_token(&token));
    println!("token: {token}");
    println!();
    println!("Add this to dynapi.yaml (only the hash goes into git):");
    println!("tokens:");
    println!("  - name: {name}");
    println!("    sha256: {hash}");
    println!("    scopes: [{}]", scopes.names().join(", "));
    0
}

/// The OAuth store `at` names: the shared state's, or the one of the
/// workspace, which must exist. The commands run its calls on a runtime of
/// their own.
fn oauth_store(
    at: &StoreAt,
    command: &str,
) -> Option<(tokio::runtime::Runtime, crate::oauth::Store)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("dynapi {command}: {e}"))
        .ok()?;
    if let Some(url) = &at.state {
        return match runtime.block_on(crate::shared::Shared::connect(url)) {
            Ok(shared) => Some((runtime, crate::oauth::Store::shared(shared))),
            Err(e) => {
                eprintln!("dynapi {command}: {e}");
                None
            }
        };
    }
    let dir = &at.workspace;
    let workspace = match workspace::Workspace::open(dir) {
        Ok(w) if dir.join(".git").is_dir() => w,
        _ => {
            eprintln!(
                "dynapi {command}: no workspace at {}; pass --workspace (or DYNAPI_WORKSPACE) as `dynapi serve` has it",
                dir.display()
            );
            return None;
        }
    };
    crate::oauth::Store::open(&workspace.state_dir())
        .map_err(|e| eprintln!("dynapi {command}: {e}"))
        .ok()
        .map(|store| (runtime, store))
}

/// `dynapi oauth client new`: a confidential client for GPT Actions' OAuth settings.
pub fn oauth_client_new(
    at: &StoreAt,
    name: &str,
    redirect_uris: Vec<String>,
    scopes: &str,
    public_url: &str,
) -> i32 {
    let command = "oauth client new";
    let scopes = match Scopes::parse_list(scopes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dynapi {command}: {e}");
            return 2;
        }
    };
    let Some((runtime, store)) = oauth_store(at, command) else {
        return 1;
    };
    let (client, secret) = match runtime.block_on(crate::oauth::add_owner_client(
        &store,
        name,
        redirect_uris,
        scopes,
    )) {
        Ok(made) => made,
        Err(e) => {
            eprintln!("dynapi {command}: {}", e.description);
            return 2;
        }
    };
    let base = public_url.trim_end_matches('/');
    println!(
        "Client \"{}\" (confidential; the secret is shown once, only its hash is kept):",
        client.name
    );
    println!();
    println!("  Client ID:          {}", client.id);
    println!("  Client Secret:      {secret}");
    println!("  Authorization URL:  {base}/oauth/authorize");
    println!("  Token URL:          {base}/oauth/token");
    println!(
        "  Scope:              {}",
        crate::oauth::scope_string(scopes)
    );
    println!("  Token exchange:     either (POST request or Basic authorization header)");
    println!();
    if client.redirect_uris.is_empty() {
        println!(
            "No redirect URI yet. Paste the above into the GPT's Actions (Authentication: OAuth),"
        );
        println!("save, copy the callback URL the GPT editor shows, then run:");
        println!(
            "  dynapi oauth client allow-redirect {} <callback URL>",
            client.id
        );
    } else {
        println!("Redirect URIs: {}", client.redirect_uris.join(" "));
    }
    0
}

/// `dynapi oauth client allow-redirect`: adds an exact redirect URI.
pub fn oauth_allow_redirect(at: &StoreAt, id: &str, uri: &str) -> i32 {
    let command = "oauth client allow-redirect";
    let Some((runtime, store)) = oauth_store(at, command) else {
        return 1;
    };
    match runtime.block_on(crate::oauth::allow_redirect(&store, id, uri)) {
        Ok(client) => {
            println!(
                "{} now redirects to: {}",
                client.id,
                client.redirect_uris.join(" ")
            );
            0
        }
        Err(e) => {
            eprintln!("dynapi {command}: {}", e.description);
            2
        }
    }
}

/// `dynapi oauth list`: every client and every grant.
pub fn oauth_list(at: &StoreAt) -> i32 {
    let command = "oauth list";
    let Some((runtime, store)) = oauth_store(at, command) else {
        return 1;
    };
    let (clients, grants) =
        match runtime.block_on(async { (store.clients().await, store.grants().await) }) {
            (Ok(c), Ok(g)) => (c, g),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("dynapi {command}: {e}");
                return 1;
            }
        };
    let when = |t: i64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64),
        )
        .to_string()
    };
    println!("Clients ({}):", clients.len());
    for c in &clients {
        println!(
            "  {}  {}  [{}{}]  created {}  redirect: {}",
            c.id,
            c.name,
            c.kind.as_str(),
            if c.secret_hash.is_some() {
                ", secret"
            } else {
                ", public"
            },
            when(c.created),
            if c.redirect_uris.is_empty() {
                "(none)".to_string()
            } else {
                c.redirect_uris.join(" ")
            }
        );
    }
    println!("Grants ({}):", grants.len());
    for g in &grants {
        println!(
            "  {}  client {} ({})  scopes: {}  for: {}  approved by {} {}  refreshed {}  refresh token until {}",
            g.id,
            g.client_id,
            g.client_name,
            g.scope,
            g.resource.as_deref().unwrap_or(g.audience.as_str()),
            g.approved_by,
            when(g.created),
            g.refreshed.map(when).unwrap_or_else(|| "never".into()),
            when(g.refresh_expires)
        );
    }
    0
}

/// `dynapi oauth revoke ID`: a grant, or a client with its grants.
pub fn oauth_revoke(at: &StoreAt, id: &str) -> i32 {
    let command = "oauth revoke";
    let Some((runtime, store)) = oauth_store(at, command) else {
        return 1;
    };
    let revoked = if id.starts_with("g_") {
        runtime
            .block_on(store.revoke_grant(id))
            .map(|found| (found, "grant"))
    } else {
        runtime
            .block_on(store.remove_client(id))
            .map(|found| (found, "client and its grants"))
    };
    match revoked {
        Ok((true, what)) => {
            println!("Revoked the {what} {id}; its tokens stop working on the next request.");
            0
        }
        Ok((false, _)) => {
            eprintln!(
                "dynapi {command}: no grant or client `{id}`; `dynapi oauth list` shows them"
            );
            2
        }
        Err(e) => {
            eprintln!("dynapi {command}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_annotations_escape_as_the_runner_does() {
        let p = Problem {
            file: "manifests/a,b:c%.yaml".into(),
            line: 3,
            column: 9,
            message: "50% done: a, b\r\nnext".into(),
        };
        assert_eq!(
            github_annotation(&p),
            "::error file=manifests/a%2Cb%3Ac%25.yaml,line=3,col=9::50%25 done: a, b%0D%0Anext"
        );
    }
}
