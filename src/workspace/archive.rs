//! Archives: a folder of the workspace as a zip or a tar.gz, built in memory with
//! a bound on the bytes put in. Entries are named by their workspace-relative
//! path, keep the executable bit, and never include `.git`, symlinks, or the
//! archive being written.

use std::io::{Cursor, Read};
use std::path::Path;

use super::files::is_executable;
use super::{FsError, Workspace};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    TarGz,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "zip" => Some(Format::Zip),
            "tar.gz" | "tgz" => Some(Format::TarGz),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Zip => "zip",
            Format::TarGz => "tar.gz",
        }
    }
}

pub struct Built {
    pub bytes: Vec<u8>,
    pub files: usize,
}

/// Builds an archive of the folder (or file) `path`. `include_ignored` also takes
/// files `.gitignore` ignores; `skip` (the output's own path) is left out; more
/// than `max_bytes` of input is refused.
pub fn build(
    ws: &Workspace,
    path: &str,
    format: Format,
    include_ignored: bool,
    skip: &Path,
    max_bytes: u64,
) -> Result<Built, FsError> {
    let target = ws.resolve(path)?;
    ws.metadata(&target).map_err(FsError::io(path))?;
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in ws.walker(&target, !include_ignored).build().flatten() {
        if !entry.file_type().is_some_and(|t| t.is_file())
            || !entry.path().starts_with(&target)
            || entry.path() == skip
        {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|e| FsError::BadRequest(e.to_string()))?;
        total += meta.len();
        if total > max_bytes {
            return Err(FsError::TooLarge(format!(
                "the files under `{path}` add up to more than {max_bytes} bytes; archive a smaller folder"
            )));
        }
        let rel = ws.relative(entry.path());
        files.push((entry.into_path(), rel, is_executable(&meta), meta));
    }
    let count = files.len();
    let bytes = match format {
        Format::Zip => zip(ws, &files),
        Format::TarGz => tar_gz(ws, &files),
    }
    .map_err(|source| FsError::Io {
        path: path.to_string(),
        source,
    })?;
    Ok(Built {
        bytes,
        files: count,
    })
}

type Files = [(std::path::PathBuf, String, bool, std::fs::Metadata)];

// Each file is opened by the kernel beneath the workspace (`Workspace::open_file`):
// a folder swapped for a symlink after the walk is refused, never followed.
fn zip(ws: &Workspace, files: &Files) -> std::io::Result<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (abs, rel, executable, meta) in files {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(if *executable { 0o755 } else { 0o644 })
            .large_file(meta.len() >= u32::MAX as u64);
        writer
            .start_file(rel.as_str(), options)
            .map_err(std::io::Error::other)?;
        std::io::copy(&mut ws.open_file(abs)?.take(meta.len()), &mut writer)?;
    }
    Ok(writer.finish().map_err(std::io::Error::other)?.into_inner())
}

fn tar_gz(ws: &Workspace, files: &Files) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (abs, rel, executable, meta) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(meta.len());
        header.set_mode(if *executable { 0o755 } else { 0o644 });
        header.set_mtime(
            meta.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        );
        let file = ws.open_file(abs)?;
        if file.metadata()?.len() < meta.len() {
            return Err(std::io::Error::other(format!(
                "`{rel}` shrank while it was archived"
            )));
        }
        tar.append_data(&mut header, rel, file.take(meta.len()))?;
    }
    tar.into_inner()?.finish()
}
