//! The workspace on disk: the only code that turns a path from a request into a
//! file path (`Workspace::resolve`), atomic writes, and the bundled template a new
//! workspace starts from.
//!
//! Confinement compares resolved path components, never string prefixes (`/ws_evil`
//! is not inside `/ws`), and resolves symlinks on the whole path, including the last
//! component, so a link inside the workspace cannot lead outside it. It must never
//! hand out a path under `.git/`: that is where the repository and the daemon's own
//! state (tokens) live.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use include_dir::{include_dir, Dir};

/// The bundled template: the project's own `manifests/` and `scripts/`.
static TEMPLATE_MANIFESTS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/manifests");
static TEMPLATE_SCRIPTS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/scripts");

const TEMPLATE_GITIGNORE: &str =
    "# Read and written through dynapi, never committed.\ndata/\n*.db\n*.sqlite\n";
const TEMPLATE_SETTINGS: &str = "# dynapi settings for this repository (all optional).\n# defaults:\n#   timeout: 30s\n# tokens:            # more tokens: `dynapi token new --scopes read` prints a line for here\n#   - name: reader\n#     sha256: <64 hex digits>\n#     scopes: [read]\n";
const TEMPLATE_WORKFLOW: &str = include_str!("template/dynapi-check.yml");

/// A file of the template: repository-relative path, contents, executable bit.
pub struct TemplateFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub executable: bool,
}

/// Every file a new repository starts with. Scripts are executable; `with_workflow`
/// adds the GitHub workflow that runs `dynapi check` on pull requests.
pub fn template_files(with_workflow: bool) -> Vec<TemplateFile> {
    let mut files = Vec::new();
    collect(&TEMPLATE_MANIFESTS, "manifests", false, &mut files);
    collect(&TEMPLATE_SCRIPTS, "scripts", true, &mut files);
    let mut add = |path: &str, contents: &str| {
        files.push(TemplateFile {
            path: path.to_string(),
            contents: contents.as_bytes().to_vec(),
            executable: false,
        })
    };
    add(".gitignore", TEMPLATE_GITIGNORE);
    add("dynapi.yaml", TEMPLATE_SETTINGS);
    if with_workflow {
        add(".github/workflows/dynapi-check.yml", TEMPLATE_WORKFLOW);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// Adds every file below `dir` (include_dir paths are relative to the embedded root).
fn collect(dir: &Dir<'_>, top: &str, executable: bool, out: &mut Vec<TemplateFile>) {
    for file in dir.files() {
        out.push(TemplateFile {
            path: format!("{top}/{}", file.path().to_string_lossy()),
            contents: file.contents().to_vec(),
            executable,
        });
    }
    for sub in dir.dirs() {
        collect(sub, top, executable, out);
    }
}

/// Why a request path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("the path `{0}` is not allowed: {1}")]
    Refused(String, &'static str),
    #[error("the path `{0}` leads outside the workspace")]
    Escapes(String),
    #[error("could not resolve `{0}`: {1}")]
    Io(String, String),
}

/// The daemon's checkout.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// `root` must exist; it is canonicalized once so later checks compare real paths.
    pub fn open(root: &Path) -> io::Result<Workspace> {
        Ok(Workspace {
            root: root.canonicalize()?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the daemon keeps its own state (the generated token): inside `.git`,
    /// so it is never committed and never reachable through `resolve`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".git").join("dynapi")
    }

    /// THE confinement function: turns a repository-relative path from a request
    /// into a path on disk inside the workspace, or refuses it. The path need not
    /// exist. `""` and `"."` mean the workspace root.
    pub fn resolve(&self, request: &str) -> Result<PathBuf, PathError> {
        let refuse = |why| Err(PathError::Refused(request.to_string(), why));
        if request.contains('\0') || request.chars().any(|c| c.is_control()) {
            return refuse("it contains control characters");
        }
        if request.contains('\\') {
            return refuse("use `/` to separate folders");
        }
        if request.starts_with('/') {
            return refuse("paths are relative to the workspace root");
        }
        let mut relative = PathBuf::new();
        for segment in request.split('/') {
            match segment {
                "" | "." => continue,
                ".." => return refuse("`..` is not allowed"),
                s if s.eq_ignore_ascii_case(".git") => {
                    return refuse("the repository's `.git` folder is not part of the workspace")
                }
                s => relative.push(s),
            }
        }
        // Belt and braces: after the split nothing may be anything but a plain name.
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return refuse("it is not a plain relative path");
        }
        let candidate = self.root.join(&relative);
        self.confine(request, &candidate)?;
        Ok(candidate)
    }

    /// Resolves symlinks on the longest existing prefix of `candidate` (the whole
    /// path when it exists, so a final symlink is followed too) and checks that
    /// the real location is inside the root, component by component.
    fn confine(&self, request: &str, candidate: &Path) -> Result<(), PathError> {
        let mut existing = candidate.to_path_buf();
        let mut rest = Vec::new();
        loop {
            match existing.canonicalize() {
                Ok(real) => {
                    let mut full = real;
                    full.extend(rest.iter().rev());
                    if !full.starts_with(&self.root) {
                        return Err(PathError::Escapes(request.to_string()));
                    }
                    // `.git` may also be reached through a link inside the workspace.
                    let inside = full.strip_prefix(&self.root).unwrap_or(Path::new(""));
                    if inside
                        .components()
                        .next()
                        .is_some_and(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
                    {
                        return Err(PathError::Refused(
                            request.to_string(),
                            "it leads into `.git`",
                        ));
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // An entry that exists but cannot be resolved is a dangling
                    // symlink: refuse rather than guess where it would lead.
                    if fs::symlink_metadata(&existing).is_ok() {
                        return Err(PathError::Escapes(request.to_string()));
                    }
                    let name = existing.file_name().map(PathBuf::from);
                    match (name, existing.parent()) {
                        (Some(name), Some(parent)) => {
                            rest.push(name);
                            existing = parent.to_path_buf();
                        }
                        _ => return Err(PathError::Escapes(request.to_string())),
                    }
                }
                Err(e) => return Err(PathError::Io(request.to_string(), e.to_string())),
            }
        }
    }
}

/// Writes `contents` to `path` through a temporary file in the same folder and a
/// rename, so readers see the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, contents: &[u8], executable: bool) -> io::Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent folder"))?;
    fs::create_dir_all(parent)?;
    let mut tmp = tempfile_in(parent)?;
    tmp.1.write_all(contents)?;
    tmp.1.sync_all()?;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(&tmp.0, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp.0, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp.0);
    })
}

/// A new file with a random name in `dir`, opened exclusively.
fn tempfile_in(dir: &Path) -> io::Result<(PathBuf, fs::File)> {
    for _ in 0..16 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        let path = dir.join(format!(".dynapi-tmp-{}", hex::encode(bytes)));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a temporary file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn hostile_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let ws_root = base.join("ws");
        fs::create_dir_all(ws_root.join("sub")).unwrap();
        fs::create_dir_all(base.join("ws_evil")).unwrap();
        fs::create_dir_all(ws_root.join(".git")).unwrap();
        symlink(base.join("ws_evil"), ws_root.join("out")).unwrap();
        symlink("/etc/passwd", ws_root.join("passwd")).unwrap();
        symlink(ws_root.join("sub"), ws_root.join("in")).unwrap();
        symlink(ws_root.join(".git"), ws_root.join("g")).unwrap();
        symlink(base.join("missing"), ws_root.join("dangling")).unwrap();
        let ws = Workspace::open(&ws_root).unwrap();
        for bad in [
            "../ws_evil/x",
            "/etc/passwd",
            "a/../../x",
            ".git/config",
            "sub/.GIT/x",
            "a\\..\\x",
            "a\0b",
            "out/x",
            "out",
            "passwd",
            "g/config",
            "dangling",
            "sub/../../ws_evil",
        ] {
            assert!(ws.resolve(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            ws.resolve("sub/new.txt").unwrap(),
            ws_root.join("sub/new.txt")
        );
        assert_eq!(ws.resolve("in/x").unwrap(), ws_root.join("in/x"));
        assert_eq!(ws.resolve("").unwrap(), ws_root);
        assert_eq!(ws.resolve("./a//b").unwrap(), ws_root.join("a/b"));
    }

    #[test]
    fn the_template_has_the_seed_scripts_executable() {
        let files = template_files(true);
        let find = |p: &str| files.iter().find(|f| f.path == p);
        assert!(find("scripts/sample_script.sh").unwrap().executable);
        assert!(find("scripts/run_sql.sh").unwrap().executable);
        assert!(!find("manifests/hello.yaml").unwrap().executable);
        assert!(find(".github/workflows/dynapi-check.yml").is_some());
    }
}
