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
pub mod beneath;
pub mod combine;
pub mod files;
pub mod search;
mod template;

pub use template::{library_files, template_files, TemplateFile};

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use beneath::Beneath;

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
            _ if beneath::is_escape(&source) => FsError::Path(PathError::Escapes(path.to_string())),
            io::ErrorKind::InvalidInput => {
                FsError::BadRequest(format!("`{path}` is not a regular file"))
            }
            _ => FsError::Io {
                path: path.to_string(),
                source,
            },
        }
    }
}

/// Whether `inside` (relative to the root) starts in `.git`, in any case.
fn leads_into_git(inside: &Path) -> bool {
    inside
        .components()
        .next()
        .is_some_and(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
}

/// The longest name of one file or folder Linux filesystems hold, in bytes.
pub const NAME_MAX: usize = 255;
/// The longest path a request may name, in bytes (Linux's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// The name of the writer's temporary files; walks and listings never show them.
pub const TEMP_PREFIX: &str = ".dynapi-tmp-";

/// A path as `Workspace::real_path` found it: relative to the root, through
/// no symlink, inside the root and outside `.git`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealPath(PathBuf);

impl RealPath {
    /// The repository-relative path, with `/`.
    pub fn relative(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

/// The daemon's checkout.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    /// The root, held open: every file operation starts from it (`beneath`).
    dir: Arc<Beneath>,
}

impl Workspace {
    /// `root` must exist; it is canonicalized once so later checks compare real paths.
    pub fn open(root: &Path) -> io::Result<Workspace> {
        let root = root.canonicalize()?;
        Ok(Workspace {
            dir: Arc::new(Beneath::open(&root)?),
            root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the daemon keeps its own state (the generated token): inside `.git`,
    /// so it is never committed and never reachable through `resolve`.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".git").join(crate::layout::PRIVATE)
    }

    /// The repository-relative path (with `/`) of `path`, a path inside the root.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// `request` confined and written the one way git spells a path: `./a//b/` is
    /// `a/b`; the root is `""`. Folders are named where they really are: through
    /// a folder link `data/up -> ..`, `data/up/dynapi.yaml` is `dynapi.yaml`, so
    /// every rule about a path (the writer's `dynapi.yaml` rule among them) sees
    /// the file that would really change. The last name is kept as it is (a
    /// link there is the link itself, not its target).
    pub fn normalize(&self, request: &str) -> Result<String, PathError> {
        let resolved = self.resolve(request)?;
        if resolved == self.root {
            return Ok(String::new());
        }
        let (parent, name) = self.entry(&resolved).map_err(|e| {
            if beneath::is_escape(&e) {
                PathError::Escapes(request.to_string())
            } else {
                PathError::Io(request.to_string(), e.to_string())
            }
        })?;
        Ok(parent.join(name).to_string_lossy().into_owned())
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
                s if s.len() > NAME_MAX => {
                    return refuse(
                        "a name in it is longer than 255 bytes, more than a filesystem holds",
                    )
                }
                s => relative.push(s),
            }
        }
        if request.len() > PATH_MAX {
            return refuse("it is longer than 4,096 bytes");
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

    /// Where `path` (from `resolve` or a walk) really is, relative to the root:
    /// its symlinks resolved, checked again to be inside the root and outside
    /// `.git`. The file operations below open exactly this path by the kernel,
    /// refusing any symlink on the way, so what changed between this check and
    /// the open cannot lead anywhere else: the open fails instead.
    fn real(&self, path: &Path) -> io::Result<PathBuf> {
        let full = self
            .confine(&path.to_string_lossy(), path)
            .map_err(|e| match e {
                PathError::Io(_, message) => io::Error::other(message),
                _ => beneath::escapes(),
            })?;
        Ok(full
            .strip_prefix(&self.root)
            .map_err(|_| beneath::escapes())?
            .to_path_buf())
    }

    /// The real folder of `path` and its own name (not followed: a symlink
    /// there is the entry itself), for operations on the entry.
    fn entry<'p>(&self, path: &'p Path) -> io::Result<(PathBuf, &'p std::ffi::OsStr)> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(beneath::escapes());
        };
        if !path.starts_with(&self.root) || path == self.root {
            return Err(beneath::escapes());
        }
        Ok((self.real(parent)?, name))
    }

    /// The metadata of `path` exactly as spelled, for code that must open it by
    /// path (SQLite): `None` when nothing is there; an escape error when any
    /// part of it is a symlink, even one that stays inside.
    pub fn metadata_as_spelled(&self, path: &Path) -> io::Result<Option<fs::Metadata>> {
        let rel = path
            .strip_prefix(&self.root)
            .map_err(|_| beneath::escapes())?;
        match self.dir.metadata(rel) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where `path` (from `resolve`) really is, every symlink on it followed
    /// (the last one too), checked inside the root and outside `.git`: the
    /// file a rule about what is read must judge (`http::resources` asks the
    /// ignore rules about it, not about a link's own name).
    pub fn real_path(&self, path: &Path) -> io::Result<RealPath> {
        self.real(path).map(RealPath)
    }

    /// Opens the regular file at `real` for reading exactly as spelled: a
    /// symlink put on the way since `real_path` looked makes the open fail,
    /// so what was judged is what is read.
    pub fn open_real(&self, real: &RealPath) -> io::Result<fs::File> {
        self.dir.open_read(&real.0)
    }

    /// Opens the regular file at `path` (from `resolve` or a walk) for reading.
    pub fn open_file(&self, path: &Path) -> io::Result<fs::File> {
        self.dir.open_read(&self.real(path)?)
    }

    /// The metadata of what is at `path`, following symlinks inside the
    /// workspace (and refusing one that leads outside).
    pub fn metadata(&self, path: &Path) -> io::Result<fs::Metadata> {
        self.dir.metadata(&self.real(path)?)
    }

    /// The entries of the folder at `path`: names and metadata (symlinks as
    /// symlinks), unsorted.
    pub fn read_dir(&self, path: &Path) -> io::Result<Vec<(std::ffi::OsString, fs::Metadata)>> {
        self.dir.read_dir(&self.real(path)?)
    }

    /// The names of the regular files in the folder `path` (from `resolve`),
    /// without the writer's temporary files.
    pub fn file_names(&self, path: &Path) -> io::Result<Vec<String>> {
        // `path` is confined already; opened as it is, beneath the root and
        // through no symlink, it is its own real path. A symlink on the way
        // takes the long way through `real`.
        let literal = path
            .strip_prefix(&self.root)
            .map_err(|_| beneath::escapes())?;
        let names = match self.dir.file_names(literal) {
            Err(e) if beneath::is_escape(&e) => self.dir.file_names(&self.real(path)?)?,
            other => other?,
        };
        let mut names: Vec<String> = names
            .into_iter()
            .map(|name| name.to_string_lossy().into_owned())
            .filter(|name| !name.starts_with(TEMP_PREFIX))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Writes `contents` at `path` atomically (see `Beneath::write_atomic`),
    /// making missing folders; a symlink at `path` itself is replaced.
    pub fn write_atomic(&self, path: &Path, contents: &[u8], executable: bool) -> io::Result<()> {
        let (parent, name) = self.entry(path)?;
        self.dir.write_atomic(&parent, name, contents, executable)
    }

    /// Removes the file (or symlink) at `path`.
    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (parent, name) = self.entry(path)?;
        self.dir.remove_file(&parent, name)
    }

    /// Removes the folder at `path` if it is empty.
    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let (parent, name) = self.entry(path)?;
        self.dir.remove_dir(&parent.join(name))
    }

    /// An `O_PATH` descriptor of what is at `path` (from `resolve`), opened
    /// beneath the root by the kernel; `ELOOP` when `path` is, or passes
    /// through, a symlink, even one that stays inside. For grants that must
    /// cover exactly the path that was checked (the sandbox's `writable`).
    pub fn open_path(&self, path: &Path) -> io::Result<std::os::fd::OwnedFd> {
        let real = self.real(path)?;
        if self.root.join(&real) != path {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        self.dir.open_path(&real)
    }

    /// Removes the folders above `file` that are now empty, as git does; stops
    /// at the first one that is not, and never removes the root.
    pub fn remove_empty_parents(&self, file: &Path) {
        let mut dir = file.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || self.remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    /// Where a file is to be written at `path` and a folder is (a folder that
    /// becomes a file), removes that folder when it holds only folders, bottom
    /// up; `DirectoryNotEmpty` when anything else is in it. Nothing at `path`,
    /// or a file, is left as it is.
    pub fn remove_empty_tree(&self, path: &Path) -> io::Result<()> {
        match self.metadata_as_spelled(path) {
            Ok(Some(meta)) if meta.is_dir() => {}
            _ => return Ok(()),
        }
        for (name, meta) in self.read_dir(path)? {
            if !meta.is_dir() {
                return Err(io::Error::from(io::ErrorKind::DirectoryNotEmpty));
            }
            self.remove_empty_tree(&path.join(name))?;
        }
        self.remove_dir(path)
    }

    /// Makes the folder at `path` and the missing ones above it.
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.dir.create_dir_all(&self.real(path)?)
    }

    /// Resolves symlinks on the longest existing prefix of `candidate` (the whole
    /// path when it exists, so a final symlink is followed too) and checks that
    /// the real location is inside the root, component by component.
    fn confine(&self, request: &str, candidate: &Path) -> Result<PathBuf, PathError> {
        // Most paths exist and pass through no symlink: the kernel says so in
        // one call (opened beneath the root, refusing any symlink), and such a
        // path is its own real path. Anything else (missing, a symlink on the
        // way, not plain) is looked at the long way below, which gives the
        // same answer for these paths without the many lookups of
        // `canonicalize` from `/`.
        if let Ok(inside) = candidate.strip_prefix(&self.root) {
            if self.dir.open_path(inside).is_ok() {
                if leads_into_git(inside) {
                    return Err(PathError::Refused(
                        request.to_string(),
                        "it leads into `.git`",
                    ));
                }
                return Ok(candidate.to_path_buf());
            }
        }
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
                    if leads_into_git(inside) {
                        return Err(PathError::Refused(
                            request.to_string(),
                            "it leads into `.git`",
                        ));
                    }
                    return Ok(full);
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
