//! The project as MCP resources: every file of the working tree is
//! `dynapi://files/<path>`, and a file as of a commit of the branch is
//! `dynapi://commits/<commit>/files/<path>` (history the assistant can read).
//! What a resource may show is what `GET /files` may: paths confined by
//! `Workspace::resolve`, never `.git`, and files the repository's ignore rules
//! exclude (`.env` and other secrets kept out of git) are neither listed nor read.
//!
//! `changes` says which files a new commit changed, for
//! `notifications/resources/updated` and `list_changed` (`http::mcp`).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use gix::ObjectId;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use rmcp::model::{Resource, ResourceContents, ResourceTemplate};

use crate::source::repo::{Lookup, Repo, RepoError};
use crate::workspace::files::content_type;
use crate::workspace::{FsError, Workspace};

pub const FILES: &str = "dynapi://files/";
pub const COMMITS: &str = "dynapi://commits/";

/// Files one `resources/list` page holds.
pub const PAGE: usize = 500;
/// The largest file `resources/read` returns; a larger one is read in pages
/// with the readFile tool.
pub const MAX_READ: u64 = 4 << 20;
/// Files a listing looks at before it stops (as `GET /files` refuses a larger
/// listing): a page past this many is not served.
const MAX_SCANNED: usize = 100_000;

/// What a resource URI names.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// A file of the working tree.
    File(String),
    /// A file as of a commit (a full id or a prefix of 4 hex digits or more).
    AtCommit { commit: String, path: String },
}

/// Why a resource cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("`{0}` is not a resource of this server: use dynapi://files/<path> or dynapi://commits/<commit>/files/<path>")]
    BadUri(String),
    #[error("no file at `{0}`")]
    NotFound(String),
    #[error("`{0}` is ignored by the repository (kept out of git), so it is not a resource")]
    Ignored(String),
    #[error("`{0}` is {1} bytes, more than the {MAX_READ} a resource may hold: read it in pages with the readFile tool")]
    TooLarge(String, u64),
    #[error("no commit of the branch starts with `{0}`")]
    NoCommit(String),
    #[error("more than one commit starts with `{0}`: give more digits")]
    Ambiguous(String),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl From<crate::workspace::PathError> for ResourceError {
    fn from(e: crate::workspace::PathError) -> Self {
        ResourceError::Fs(e.into())
    }
}

/// Characters a path segment keeps as they are in a URI (RFC 3986 `pchar`
/// without the sub-delimiters that confuse clients).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

fn encode(path: &str) -> String {
    utf8_percent_encode(path, SEGMENT).to_string()
}

fn decode(text: &str) -> Option<String> {
    percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The URI of the working tree's `path`.
pub fn file_uri(path: &str) -> String {
    format!("{FILES}{}", encode(path))
}

/// What `uri` names, its path not yet confined (`Workspace::resolve` does that).
pub fn parse(uri: &str) -> Result<Target, ResourceError> {
    let bad = || ResourceError::BadUri(uri.to_string());
    if let Some(path) = uri.strip_prefix(FILES) {
        return Ok(Target::File(decode(path).ok_or_else(bad)?));
    }
    let rest = uri.strip_prefix(COMMITS).ok_or_else(bad)?;
    let (commit, path) = rest.split_once("/files/").ok_or_else(bad)?;
    let hex =
        commit.len() >= 4 && commit.len() <= 64 && commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return Err(bad());
    }
    Ok(Target::AtCommit {
        commit: commit.to_ascii_lowercase(),
        path: decode(path).ok_or_else(bad)?,
    })
}

/// The template of any file of the working tree.
pub const FILE_TEMPLATE: &str = "dynapi://files/{+path}";
/// The template of any file as of a commit.
pub const COMMIT_TEMPLATE: &str = "dynapi://commits/{commit}/files/{+path}";

/// The two templates: any file of the working tree, any file as of a commit.
pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(FILE_TEMPLATE, "file")
            .with_title("A file of the project")
            .with_description("Any file of the working tree, by its path from the repository root."),
        ResourceTemplate::new(COMMIT_TEMPLATE, "file-at-commit")
            .with_title("A file as of a commit")
            .with_description(
                "A file as it was in a commit of the branch (a full id, or its first 7 digits as the history tool lists them).",
            ),
    ]
}

/// One page of the working tree's files, sorted by path, after the path
/// `after` (the cursor the previous page gave), and the next cursor.
pub fn list(
    ws: &Workspace,
    after: Option<&str>,
) -> Result<(Vec<Resource>, Option<String>), ResourceError> {
    let root = ws.resolve("")?;
    let mut page = Vec::new();
    let mut scanned = 0;
    for entry in ws.walker(&root, true).build() {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        scanned += 1;
        if scanned > MAX_SCANNED {
            break;
        }
        let path = ws.relative(entry.path());
        // The walk is sorted by name at each level, which is not the order of
        // whole paths ("a/b" and "a.txt"): compare paths, keep the smallest.
        if after.is_some_and(|a| path.as_str() <= a) {
            continue;
        }
        page.push((path, entry));
    }
    page.sort_by(|a, b| a.0.cmp(&b.0));
    let more = page.len() > PAGE;
    page.truncate(PAGE);
    let next = more.then(|| page.last().map(|(p, _)| p.clone())).flatten();
    // Sizes of the page's files only: a stat each, not one per file walked.
    let resources = page
        .into_iter()
        .map(|(path, entry)| {
            let size = entry.metadata().map(|m| m.len()).ok();
            let name = path.rsplit('/').next().unwrap_or(&path).to_string();
            let mut raw = Resource::new(file_uri(&path), name)
                .with_title(path.clone())
                .with_mime_type(mime(&path));
            if let Some(size) = size {
                raw = raw.with_size(size);
            }
            raw
        })
        .collect();
    Ok((resources, next))
}

fn mime(path: &str) -> &'static str {
    content_type(path.rsplit('/').next().unwrap_or(path))
}

/// The contents of the working tree's `path` (confined, not ignored).
pub fn read_file(
    ws: &Workspace,
    repo: &Repo,
    uri: &str,
    path: &str,
) -> Result<ResourceContents, ResourceError> {
    let path = ws.normalize(path)?;
    let target = ws.resolve(&path)?;
    // The rules judge the file really read: a link `notes.md -> ../.env`,
    // whose own name no rule ignores, is `.env`.
    let real = ws.real_path(&target).map_err(FsError::io(&path))?;
    let really = real.relative();
    if repo.ignored(&[&path, &really])?.contains(&true) {
        return Err(ResourceError::Ignored(path));
    }
    // Opened as judged, through no symlink: one put on the way since fails.
    let file = match ws.open_real(&real) {
        Ok(file) => file,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::InvalidInput
                || e.raw_os_error() == Some(libc::EISDIR) =>
        {
            return Err(ResourceError::NotFound(path))
        }
        Err(e) => return Err(FsError::io(&path)(e).into()),
    };
    let len = file.metadata().map_err(FsError::io(&path))?.len();
    if len > MAX_READ {
        return Err(ResourceError::TooLarge(path, len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_READ + 1), &mut bytes)
        .map_err(FsError::io(&path))?;
    if bytes.len() as u64 > MAX_READ {
        return Err(ResourceError::TooLarge(path, bytes.len() as u64));
    }
    Ok(contents(uri, &path, bytes))
}

/// The contents of `path` as of `commit` (a commit of the branch, found by a
/// prefix within `max_walk` commits).
pub fn read_at(
    repo: &Repo,
    uri: &str,
    commit: &str,
    path: &str,
    max_walk: usize,
) -> Result<ResourceContents, ResourceError> {
    let id = match repo.find_in_history(commit, max_walk)? {
        Lookup::Found(id) => id,
        Lookup::NotFound => return Err(ResourceError::NoCommit(commit.to_string())),
        Lookup::Ambiguous => return Err(ResourceError::Ambiguous(commit.to_string())),
    };
    let path = path.trim_matches('/');
    let file = repo
        .file(repo.tree_of(id)?, path)?
        .ok_or_else(|| ResourceError::NotFound(format!("{path} in {commit}")))?;
    let bytes = repo.blob(file.id)?;
    if bytes.len() as u64 > MAX_READ {
        return Err(ResourceError::TooLarge(
            path.to_string(),
            bytes.len() as u64,
        ));
    }
    Ok(contents(uri, path, bytes))
}

/// Text when the bytes are UTF-8 without NUL, else a blob in base64.
fn contents(uri: &str, path: &str, bytes: Vec<u8>) -> ResourceContents {
    let mime = mime(path);
    match String::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => ResourceContents::TextResourceContents {
            uri: uri.to_string(),
            mime_type: Some(if mime == "application/octet-stream" {
                "text/plain; charset=utf-8".to_string()
            } else {
                mime.to_string()
            }),
            text,
            meta: None,
        },
        Ok(text) => blob(uri, mime, text.as_bytes()),
        Err(e) => blob(uri, mime, e.as_bytes()),
    }
}

fn blob(uri: &str, mime: &str, bytes: &[u8]) -> ResourceContents {
    ResourceContents::BlobResourceContents {
        uri: uri.to_string(),
        mime_type: Some(mime.to_string()),
        blob: base64::engine::general_purpose::STANDARD.encode(bytes),
        meta: None,
    }
}

/// Completions one `completion/complete` answers (MCP's bound).
pub const MAX_COMPLETIONS: usize = 100;

/// Paths of the working tree that start with `prefix`, for
/// `completion/complete`: the entries of `prefix`'s folder whose names start
/// with its last part, a folder's with a trailing `/`; confined as any path,
/// `.git` and ignored files left out; sorted, at most `MAX_COMPLETIONS`, and
/// whether there were more. A folder that cannot be read completes to nothing.
pub fn complete_path(
    ws: &Workspace,
    repo: &Repo,
    prefix: &str,
) -> Result<(Vec<String>, bool), ResourceError> {
    let (dir, stem) = match prefix.rfind('/') {
        Some(i) => (&prefix[..i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let Ok(folder) = ws.resolve(dir) else {
        return Ok((Vec::new(), false));
    };
    let Ok(entries) = ws.read_dir(&folder) else {
        return Ok((Vec::new(), false));
    };
    let mut found: Vec<(String, bool)> = entries
        .into_iter()
        .filter_map(|(name, meta)| {
            let name = name.into_string().ok()?;
            let hidden = name == ".git" || name.starts_with(crate::workspace::TEMP_PREFIX);
            (!hidden && name.starts_with(stem)).then(|| {
                let path = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                (path, meta.is_dir())
            })
        })
        .collect();
    found.sort();
    // Checked against the ignore rules in one pass, a page at a time.
    let mut out = Vec::new();
    let mut more = false;
    for chunk in found.chunks(MAX_COMPLETIONS) {
        let paths: Vec<&str> = chunk.iter().map(|(p, _)| p.as_str()).collect();
        let ignored = repo.ignored(&paths)?;
        for ((path, folder), ignored) in chunk.iter().zip(ignored) {
            if ignored {
                continue;
            }
            if out.len() == MAX_COMPLETIONS {
                more = true;
                break;
            }
            out.push(if *folder {
                format!("{path}/")
            } else {
                path.clone()
            });
        }
        if more {
            break;
        }
    }
    Ok((out, more))
}

/// Commits of the branch, newest first, whose ids start with `prefix` (7
/// digits each, as `history` shows them), for `completion/complete`.
pub fn complete_commit(
    repo: &Repo,
    prefix: &str,
    max_walk: usize,
) -> Result<(Vec<String>, bool), ResourceError> {
    let prefix = prefix.to_ascii_lowercase();
    let (commits, _) = repo.log(None, 0, max_walk.min(1_000), max_walk)?;
    let mut matching = commits
        .into_iter()
        .filter(|c| c.commit.starts_with(&prefix))
        .map(|c| c.commit[..7.min(c.commit.len())].to_string());
    let out: Vec<String> = matching.by_ref().take(MAX_COMPLETIONS).collect();
    Ok((out, matching.next().is_some()))
}

/// What a new commit changed, for the notifications.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Files whose contents changed, were added or removed.
    pub files: BTreeSet<String>,
    /// Whether a file was added or removed (the list changed).
    pub listed: bool,
}

/// The files of `new`'s tree that differ from `old`'s (every file when there
/// was no `old`).
pub fn changes(repo: &Repo, old: Option<ObjectId>, new: ObjectId) -> Result<Changes, RepoError> {
    let files_of = |commit: ObjectId| -> Result<BTreeMap<String, ObjectId>, RepoError> {
        Ok(repo
            .files_of(repo.tree_of(commit)?)?
            .into_iter()
            .map(|(path, f)| (path, f.id))
            .collect())
    };
    let before = match old {
        Some(old) => files_of(old)?,
        None => BTreeMap::new(),
    };
    let after = files_of(new)?;
    let mut out = Changes::default();
    for (path, id) in &after {
        match before.get(path) {
            Some(was) if was == id => {}
            Some(_) => {
                out.files.insert(path.clone());
            }
            None => {
                out.files.insert(path.clone());
                out.listed = true;
            }
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        out.files.insert(path.clone());
        out.listed = true;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_the_file_and_end_with_its_path() {
        let uri = file_uri("src/a b#1.rs");
        assert_eq!(uri, "dynapi://files/src/a%20b%231.rs");
        assert_eq!(parse(&uri).unwrap(), Target::File("src/a b#1.rs".into()));
        assert_eq!(
            parse("dynapi://commits/ABCDEF1/files/docs/x.md").unwrap(),
            Target::AtCommit {
                commit: "abcdef1".into(),
                path: "docs/x.md".into()
            }
        );
        for bad in [
            "file:///etc/passwd",
            "dynapi://commits/xyz/files/a",
            "dynapi://commits/abc/files/a",
            "dynapi://commits/abcdef1/a",
            "dynapi://files/%ff",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
