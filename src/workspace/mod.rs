//! The workspace on disk: the only code that turns a path from a request into a
//! file path (`Workspace::resolve`), and everything the project routes do with
//! files: listing and reading (`files`), search (`search`), combining (`combine`),
//! archives (`archive`), plus atomic writes and the bundled `template`.
//!
//! Confinement compares resolved path components, never string prefixes (`/ws_evil`
//! is not inside `/ws`), and resolves symlinks on the whole path, including the last
//! component, so a link inside the workspace cannot lead outside it. It must never
//! hand out a path under `.git/`: that is where the repository and the daemon's own
//! state (tokens) live. Walks never follow symlinks and never enter `.git`.
//!
//! Nothing here commits: writes that must become commits go through the change
//! writer (`source::change`), which uses `resolve` and `write_atomic` from here.

pub mod archive;
pub mod combine;
pub mod files;
pub mod search;
mod template;

pub use template::{template_files, TemplateFile};

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

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

/// What went wrong with a file operation; `http` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("`{0}` does not exist")]
    NotFound(String),
    #[error("`{0}` is a folder, not a file")]
    IsFolder(String),
    #[error("`{0}` is not a folder")]
    NotFolder(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("could not read or write `{path}`: {source}")]
    Io { path: String, source: io::Error },
}

impl FsError {
    /// Wraps an I/O error on `path`; a missing file is `NotFound`.
    pub fn io(path: &str) -> impl FnOnce(io::Error) -> FsError + '_ {
        move |source| match source.kind() {
            io::ErrorKind::NotFound => FsError::NotFound(path.to_string()),
            _ => FsError::Io {
                path: path.to_string(),
                source,
            },
        }
    }
}

/// The name of the writer's temporary files; walks and listings never show them.
pub const TEMP_PREFIX: &str = ".dynapi-tmp-";

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

    /// The repository-relative path (with `/`) of `path`, a path inside the root.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// `request` confined and written the one way git spells a path: `./a//b/` is
    /// `a/b`; the root is `""`.
    pub fn normalize(&self, request: &str) -> Result<String, PathError> {
        let resolved = self.resolve(request)?;
        Ok(self.relative(&resolved))
    }

    /// A walk of the files below `subtree` (a path from `resolve`). It starts at the
    /// root so that every `.gitignore` from the root down applies (when
    /// `honour_ignore`) and none from above the workspace does. Hidden files are
    /// included; `.git` and the writer's temporary files never are; symlinks are
    /// not followed.
    pub fn walker(&self, subtree: &Path, honour_ignore: bool) -> ignore::WalkBuilder {
        let subtree = subtree.to_path_buf();
        let mut builder = ignore::WalkBuilder::new(&self.root);
        builder
            .hidden(false)
            .parents(false)
            .ignore(false)
            .git_global(false)
            .git_ignore(honour_ignore)
            .git_exclude(honour_ignore)
            .require_git(false)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .filter_entry(move |entry| {
                let name = entry.file_name().to_string_lossy();
                if name == ".git" || name.starts_with(TEMP_PREFIX) {
                    return false;
                }
                let path = entry.path();
                path.starts_with(&subtree) || subtree.starts_with(path)
            });
        builder
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
                // A missing entry, or a file where a folder would be (`a.txt/b`): look
                // at the part of the path that exists.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
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
    // No fsync: like git's own default, a write is safe from a crash of the
    // daemon (the kernel has it) but not from a power cut. The commit, the record
    // that matters, is not fsynced by gix either; fsyncing this copy alone cost a
    // third of the write rate (bench/writes.sh) and bought nothing.
    tmp.1.write_all(contents)?;
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
        let path = dir.join(format!("{TEMP_PREFIX}{}", hex::encode(bytes)));
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
}
