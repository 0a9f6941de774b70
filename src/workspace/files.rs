//! Listing folders and reading files for the project routes: git blob ids (the
//! `ETag` of a file), binary detection, pages of lines from files of any size, and
//! exact-text edits. Reads only: writes go through the change writer.
//!
//! A file is read once, in chunks, whatever its size: the chunks feed the blob id
//! and the line count, and only the requested lines are kept, up to a byte budget,
//! so memory stays bounded by the answer, not by the file.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use gix::ObjectId;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{FsError, Workspace, TEMP_PREFIX};

/// How many leading bytes decide whether a file is binary: git's own heuristic,
/// a NUL byte among the first 8000.
const SNIFF: usize = 8000;

/// The git blob id of `bytes`: what `git hash-object` prints, and the `ETag`.
pub fn blob_id(bytes: &[u8]) -> io::Result<ObjectId> {
    gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, bytes)
        .map_err(io::Error::other)
}

/// A blob id computed as bytes arrive.
struct BlobHasher {
    hasher: gix::hash::Hasher,
    expected: u64,
    seen: u64,
}

impl BlobHasher {
    fn new(len: u64) -> BlobHasher {
        let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
        hasher.update(&gix::objs::encode::loose_header(gix::objs::Kind::Blob, len));
        BlobHasher {
            hasher,
            expected: len,
            seen: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.seen += bytes.len() as u64;
        self.hasher.update(bytes);
    }

    fn finish(self) -> io::Result<ObjectId> {
        if self.seen != self.expected {
            return Err(io::Error::other("the file changed while it was read"));
        }
        self.hasher.try_finalize().map_err(io::Error::other)
    }
}

/// The blob id and executable bit of the regular file at `path`, streamed; None
/// when nothing is there.
pub fn file_state(ws: &Workspace, path: &Path) -> io::Result<Option<(ObjectId, bool)>> {
    let mut file = match ws.open_file(path) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    state_of(&mut file).map(Some)
}

/// The blob id and executable bit of an open regular file, read to its end.
pub fn state_of(file: &mut fs::File) -> io::Result<(ObjectId, bool)> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "not a regular file",
        ));
    }
    let mut hasher = BlobHasher::new(meta.len());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finish()?, is_executable(&meta)))
}

pub fn is_executable(meta: &fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// One entry of a folder listing.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The git mode: `100644`, `100755`, `040000` or `120000`.
    pub mode: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<Entry>,
    /// Entries there are in all, to `depth`.
    pub total: usize,
    /// Set when `entries` stops before the end: ask again with `offset` = this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
}

/// Lists the folder `request` down to `depth` levels (1: its own entries), sorted
/// by path, `max` entries from `offset`. Symlinks are listed, never followed.
pub fn list(
    ws: &Workspace,
    request: &str,
    depth: usize,
    offset: usize,
    max: usize,
) -> Result<Listing, FsError> {
    let dir = ws.resolve(request)?;
    let meta = ws.metadata(&dir).map_err(FsError::io(request))?;
    if !meta.is_dir() {
        return Err(FsError::NotFolder(request.to_string()));
    }
    let mut all = Vec::new();
    collect_entries(ws, &dir, depth.max(1), &mut all)?;
    all.sort_by(|a, b| a.path.cmp(&b.path));
    let total = all.len();
    let entries: Vec<Entry> = all.into_iter().skip(offset).take(max).collect();
    let next = offset + entries.len();
    Ok(Listing {
        path: ws.relative(&dir),
        total,
        next_offset: (next < total).then_some(next),
        entries,
    })
}

/// How many entries one listing may hold before it refuses: a folder with more
/// than this is listed with a smaller `depth`.
const MAX_SCANNED: usize = 100_000;

fn collect_entries(
    ws: &Workspace,
    dir: &Path,
    depth: usize,
    out: &mut Vec<Entry>,
) -> Result<(), FsError> {
    let rel = ws.relative(dir);
    let read = ws.read_dir(dir).map_err(FsError::io(&rel))?;
    for (name, meta) in read {
        let item = dir.join(&name);
        let name = name.to_string_lossy().into_owned();
        if name == ".git" || name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = ws.relative(&item);
        let entry = if meta.file_type().is_symlink() {
            Entry {
                path,
                kind: "symlink",
                size: None,
                mode: "120000",
            }
        } else if meta.is_dir() {
            Entry {
                path,
                kind: "dir",
                size: None,
                mode: "040000",
            }
        } else {
            Entry {
                path,
                kind: "file",
                size: Some(meta.len()),
                mode: if is_executable(&meta) {
                    "100755"
                } else {
                    "100644"
                },
            }
        };
        let descend = meta.is_dir() && depth > 1;
        out.push(entry);
        if out.len() > MAX_SCANNED {
            return Err(FsError::TooLarge(format!(
                "more than {MAX_SCANNED} entries; list with a smaller `depth` or a deeper `path`"
            )));
        }
        if descend {
            collect_entries(ws, &item, depth - 1, out)?;
        }
    }
    Ok(())
}

/// A page of a file: some of its lines, and what it takes to read on.
#[derive(Debug, Serialize)]
pub struct Page {
    pub path: String,
    pub etag: String,
    pub size: u64,
    pub executable: bool,
    pub binary: bool,
    /// The lines asked for, as text; absent for a binary file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Lines skipped before `content`.
    pub offset: u64,
    /// Lines in `content`.
    pub lines: u64,
    pub total_lines: u64,
    /// Set when lines remain after `content`: ask again with `offset` = this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    /// True when the page stops before the end of the file or inside a line.
    pub truncated: bool,
    /// True when one line alone was longer than the budget and was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub line_cut: bool,
}

/// What part of a file to read.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Lines to skip.
    pub offset: u64,
    /// Lines to return at most.
    pub limit: u64,
    /// Bytes of content to return at most; the page ends at a line boundary
    /// before this, unless its first line alone is longer.
    pub max_bytes: usize,
}

/// Reads a page of the file at `target` (shown as `path`).
pub fn read_page(
    ws: &Workspace,
    target: &Path,
    path: &str,
    want: PageRequest,
) -> Result<Page, FsError> {
    let file = ws.open_file(target).map_err(|e| match e.raw_os_error() {
        Some(libc::EISDIR) => FsError::IsFolder(path.to_string()),
        _ => FsError::io(path)(e),
    })?;
    let meta = file.metadata().map_err(FsError::io(path))?;
    let mut pager = Pager::new(want);
    let mut hasher = BlobHasher::new(meta.len());
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut sniffed = 0usize;
    let mut binary = false;
    loop {
        let chunk = reader.fill_buf().map_err(FsError::io(path))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        hasher.update(chunk);
        if sniffed < SNIFF {
            let look = &chunk[..n.min(SNIFF - sniffed)];
            binary |= look.contains(&0);
            sniffed += look.len();
        }
        pager.feed(chunk);
        reader.consume(n);
    }
    let etag = hasher.finish().map_err(FsError::io(path))?.to_string();
    let (content, lines, total_lines, next_offset, line_cut) = pager.finish();
    Ok(Page {
        path: path.to_string(),
        etag,
        size: meta.len(),
        executable: is_executable(&meta),
        binary,
        content: (!binary).then(|| String::from_utf8_lossy(&content).into_owned()),
        offset: want.offset,
        lines: if binary { 0 } else { lines },
        total_lines,
        next_offset: if binary { None } else { next_offset },
        truncated: !binary && (next_offset.is_some() || line_cut),
        line_cut: !binary && line_cut,
    })
}

/// Splits a stream of bytes into lines and keeps the requested ones.
struct Pager {
    want: PageRequest,
    content: Vec<u8>,
    /// Index of the line the next byte belongs to.
    line: u64,
    at_line_start: bool,
    /// Whether the current line is being kept, and where it starts in `content`.
    taking: Option<usize>,
    taken: u64,
    done: bool,
    next_offset: Option<u64>,
    line_cut: bool,
    ended_with_newline: bool,
    any: bool,
}

impl Pager {
    fn new(want: PageRequest) -> Pager {
        Pager {
            want,
            content: Vec::new(),
            line: 0,
            at_line_start: true,
            taking: None,
            taken: 0,
            done: false,
            next_offset: None,
            line_cut: false,
            ended_with_newline: false,
            any: false,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.any = true;
        self.ended_with_newline = bytes.last() == Some(&b'\n');
        while !bytes.is_empty() {
            if self.at_line_start {
                self.at_line_start = false;
                self.start_line();
            }
            let (segment, ends_line) = match memchr::memchr(b'\n', bytes) {
                Some(i) => (&bytes[..=i], true),
                None => (bytes, false),
            };
            if let Some(start) = self.taking {
                self.content.extend_from_slice(segment);
                if self.content.len() > self.want.max_bytes {
                    if self.taken == 1 {
                        // One line longer than the whole budget: give its start.
                        self.content.truncate(self.want.max_bytes);
                        self.line_cut = true;
                        self.stop(self.line + 1);
                    } else {
                        self.content.truncate(start);
                        self.taken -= 1;
                        self.stop(self.line);
                    }
                }
            }
            if ends_line {
                self.line += 1;
                self.at_line_start = true;
                if self.taking.is_some() && self.taken >= self.want.limit {
                    self.taking = None;
                }
            }
            bytes = &bytes[segment.len()..];
        }
    }

    fn start_line(&mut self) {
        if self.done || self.line < self.want.offset {
            return;
        }
        if self.taken >= self.want.limit {
            self.stop(self.line);
            return;
        }
        self.taken += 1;
        self.taking = Some(self.content.len());
    }

    fn stop(&mut self, next: u64) {
        if !self.done {
            self.done = true;
            self.next_offset = Some(next);
        }
        self.taking = None;
    }

    fn finish(self) -> (Vec<u8>, u64, u64, Option<u64>, bool) {
        let total = if !self.any {
            0
        } else if self.ended_with_newline {
            self.line
        } else {
            self.line + 1
        };
        let next = self.next_offset.filter(|n| *n < total);
        (self.content, self.taken, total, next, self.line_cut)
    }
}

/// One exact-text edit: `old` must occur exactly once in the text.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextEdit {
    /// Text that occurs exactly once in the file.
    pub old: String,
    /// What replaces it.
    pub new: String,
}

/// Why an edit could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("edit {index}: `old` is empty")]
    Empty { index: usize },
    #[error("edit {index}: `old` was not found")]
    NotFound { index: usize },
    #[error("edit {index}: `old` occurs {count} times; include more context so it occurs once")]
    Ambiguous { index: usize, count: usize },
}

impl EditError {
    pub fn index(&self) -> usize {
        match self {
            EditError::Empty { index }
            | EditError::NotFound { index }
            | EditError::Ambiguous { index, .. } => *index,
        }
    }
}

/// Applies `edits` in order, each to the text the previous ones left; all or none.
pub fn apply_edits(text: &str, edits: &[TextEdit]) -> Result<String, EditError> {
    let mut text = text.to_string();
    for (index, edit) in edits.iter().enumerate() {
        if edit.old.is_empty() {
            return Err(EditError::Empty { index });
        }
        let Some(at) = text.find(&edit.old) else {
            return Err(EditError::NotFound { index });
        };
        // Overlapping occurrences count too: `aa` occurs twice in `aaa`.
        let step = text[at..].chars().next().map_or(1, char::len_utf8);
        if text[at + step..].contains(&edit.old) {
            let count = text.matches(&edit.old).count().max(2);
            return Err(EditError::Ambiguous { index, count });
        }
        text.replace_range(at..at + edit.old.len(), &edit.new);
    }
    Ok(text)
}

/// A content type from a file name, for downloads and MCP resources. Text is
/// served as plain text whatever it holds, so nothing downloaded renders as a
/// page in a browser.
pub fn content_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit('.').next().unwrap_or("");
    match ext {
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "csv" => "text/csv; charset=utf-8",
        "txt" | "md" | "rs" | "py" | "sh" | "yaml" | "yml" | "toml" | "js" | "ts" | "html"
        | "css" | "sql" | "log" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str, offset: u64, limit: u64, max_bytes: usize) -> (String, Option<u64>, u64) {
        let mut pager = Pager::new(PageRequest {
            offset,
            limit,
            max_bytes,
        });
        // Feed in awkward chunks to exercise lines split across reads.
        for chunk in text.as_bytes().chunks(3) {
            pager.feed(chunk);
        }
        let (content, _, total, next, _) = pager.finish();
        (String::from_utf8(content).unwrap(), next, total)
    }

    #[test]
    fn pages_of_lines() {
        let text = "one\ntwo\nthree\nfour\n";
        assert_eq!(page(text, 0, 100, 1000), (text.to_string(), None, 4));
        assert_eq!(page(text, 1, 2, 1000), ("two\nthree\n".into(), Some(3), 4));
        assert_eq!(page(text, 3, 2, 1000), ("four\n".into(), None, 4));
        assert_eq!(page(text, 9, 2, 1000), ("".into(), None, 4));
        // The byte budget ends the page at a line boundary.
        assert_eq!(page(text, 0, 100, 9), ("one\ntwo\n".into(), Some(2), 4));
        // A first line longer than the budget is cut, and reading goes on after it.
        assert_eq!(page("abcdefgh\nx", 0, 100, 4), ("abcd".into(), Some(1), 2));
        assert_eq!(page("a\nb", 0, 100, 1000), ("a\nb".into(), None, 2));
        assert_eq!(page("", 0, 100, 1000), ("".into(), None, 0));
    }

    #[test]
    fn edits_apply_exactly_once_or_not_at_all() {
        let e = |old: &str, new: &str| TextEdit {
            old: old.into(),
            new: new.into(),
        };
        assert_eq!(
            apply_edits("a b c", &[e("b", "B"), e("B c", "BC")]).unwrap(),
            "a BC"
        );
        assert_eq!(
            apply_edits("x y x", &[e("x", "z")]),
            Err(EditError::Ambiguous { index: 0, count: 2 })
        );
        assert_eq!(
            apply_edits("aaa", &[e("aa", "b")]),
            Err(EditError::Ambiguous { index: 0, count: 2 })
        );
        assert_eq!(
            apply_edits("abc", &[e("a", "A"), e("zz", "")]),
            Err(EditError::NotFound { index: 1 })
        );
        assert_eq!(
            apply_edits("abc", &[e("", "x")]),
            Err(EditError::Empty { index: 0 })
        );
        assert_eq!(apply_edits("héllo", &[e("é", "e")]).unwrap(), "hello");
    }
}
