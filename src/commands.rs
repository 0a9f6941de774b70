//! The one-shot commands: `dynapi check`, `dynapi init` and `dynapi token new`.
//! They print to stdout/stderr and return an exit code; `main.rs` only dispatches.

use std::path::Path;

use crate::auth::{self, Scopes};
use crate::manifest::Problem;
use crate::registry::{FileKind, Registry, Snapshot, MANIFEST_DIR, SETTINGS_FILE};
use crate::source::repo::Repo;
use crate::workspace;

/// Validates the manifests of a checkout as they are on disk. Returns every problem.
pub fn check_dir(dir: &Path) -> std::io::Result<Vec<Problem>> {
    Ok(build_dir(dir)?.err().unwrap_or_default())
}

/// The registry of a checkout as it is on disk, or its problems.
fn build_dir(dir: &Path) -> std::io::Result<Result<Registry, Vec<Problem>>> {
    let mut snapshot = Snapshot::default();
    match std::fs::read_to_string(dir.join(SETTINGS_FILE)) {
        Ok(text) => snapshot.settings = Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let manifests = dir.join(MANIFEST_DIR);
    if manifests.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(&manifests)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
            .collect();
        names.sort();
        for name in names {
            let text = std::fs::read_to_string(manifests.join(&name))?;
            snapshot
                .manifests
                .push((format!("{MANIFEST_DIR}/{name}"), text));
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

/// `dynapi openapi [--profile gpt] [--public-url URL] [DIR]`: prints the OpenAPI
/// document the daemon would serve for this checkout.
pub fn openapi(dir: &Path, profile: &str, public_url: &str) -> i32 {
    let Some(profile) = crate::openapi::Profile::parse(profile) else {
        eprintln!("dynapi openapi: --profile is `full` or `gpt`, not `{profile}`");
        return 2;
    };
    match build_dir(dir) {
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

/// `dynapi check [DIR]`: 0 when valid, 1 with `file:line:column: message` lines otherwise.
pub fn check(dir: &Path) -> i32 {
    match check_dir(dir) {
        Ok(problems) if problems.is_empty() => {
            println!("{}: manifests are valid", dir.display());
            0
        }
        Ok(problems) => {
            for p in &problems {
                println!("{p}");
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

/// `dynapi init [DIR]`: a new git repository from the template, with the workflow.
pub fn init(dir: &Path) -> i32 {
    if dir.join(".git").exists() {
        eprintln!("dynapi init: {} is already a git repository", dir.display());
        return 1;
    }
    let files = workspace::template_files(true);
    match Repo::init(dir, "main", &files, &crate::daemon_author()) {
        Ok(_) => {
            println!(
                "Created {} with {} files on branch main.",
                dir.display(),
                files.len()
            );
            println!("Serve it with: dynapi serve --workspace {}", dir.display());
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
