//! Files opened by the kernel beneath a root folder, never by re-resolving a
//! checked path: every open, create, rename and delete here is relative to a
//! descriptor of the root, through `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` (or, on kernels without it, a walk of `openat` with
//! `O_NOFOLLOW`, one component at a time). A folder swapped for a symlink between
//! a check and the open makes the open fail (`ELOOP`); it can never lead outside.
//!
//! Paths given here are relative, plain (no `.`, `..` or empty components) and
//! contain no symlink: `Workspace` resolves a request's internal symlinks first
//! and hands over the real location. This module never decides what may be
//! reached; it only makes sure the kernel opens exactly what was decided.
//!
//! Written on rustix (already in the tree through gix and tempfile): `cap-std`
//! would do the same job but allows symlinks that stay beneath the root, and a
//! symlink to `.git` stays beneath the root.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::TEMP_PREFIX;

/// A descriptor of the root folder that every operation starts from.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    /// Use the `openat` walk even where `openat2` works (tests of the fallback).
    walk_only: bool,
}

/// Set once `openat2` answered `ENOSYS` (kernels before 5.6, or a seccomp
/// profile that does not know it): the component walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The error for a path that would leave the root or pass through a symlink.
pub fn escapes() -> io::Error {
    io::Error::from_raw_os_error(libc::EXDEV)
}

/// Whether `e` says a path left the root or met a symlink (as `escapes`, or
/// the kernel's answers to `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` and
/// `O_NOFOLLOW`).
pub fn is_escape(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::ELOOP))
}

impl Beneath {
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let root = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Beneath {
            root,
            walk_only: false,
        })
    }

    /// Opens `rel` beneath the root with `flags` (plus `O_CLOEXEC` and
    /// `O_NOFOLLOW`); `""` is the root itself.
    fn open_at(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let rel = plain(rel)?;
        // `O_NOFOLLOW` with `O_PATH` would open a final symlink itself instead
        // of refusing it; without `O_PATH`, `RESOLVE_NO_SYMLINKS` refuses it
        // either way.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW
        };
        let path: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        if !self.walk_only && !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root, path, flags, mode, resolve) {
                Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // openat2 is retried by the kernel's own rule when a rename
                // raced the lookup; a second `EAGAIN` is answered as is.
                Err(Errno::AGAIN) => {
                    return rustix::fs::openat2(&self.root, path, flags, mode, resolve)
                        .map_err(io::Error::from)
                }
                other => return other.map_err(io::Error::from),
            }
        }
        self.walk(rel, flags, mode)
    }

    /// The fallback for kernels without `openat2`: each folder opened with
    /// `O_NOFOLLOW` from the one before, so a symlink anywhere is `ELOOP`.
    fn walk(&self, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let names: Vec<&std::ffi::OsStr> = rel.iter().collect();
        let Some((last, folders)) = names.split_last() else {
            return Ok(rustix::fs::openat(&self.root, ".", flags, mode)?);
        };
        let mut dir: Option<OwnedFd> = None;
        for name in folders {
            let at = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            dir = Some(folder_at(at, name)?);
        }
        let at = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        let fd = match rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW, mode) {
            Err(Errno::NOTDIR) => return Err(not_a_folder(at, last)),
            other => other?,
        };
        // With `O_PATH`, `O_NOFOLLOW` opens a final symlink itself: refuse it.
        if flags.contains(OFlags::PATH)
            && rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode)
                == rustix::fs::FileType::Symlink
        {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        Ok(fd)
    }

    /// Opens the regular file `rel` for reading. A FIFO, socket or device is
    /// refused without blocking (`O_NONBLOCK`), so a script cannot park a
    /// reader on a pipe.
    pub fn open_read(&self, rel: &Path) -> io::Result<fs::File> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        let file = fs::File::from(fd);
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        // Back to blocking reads (no effect on regular files, but plain).
        rustix::fs::fcntl_setfl(&file, OFlags::empty())?;
        Ok(file)
    }

    /// An `O_PATH` descriptor of `rel` itself (a symlink is `ELOOP`).
    pub fn open_path(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_at(rel, OFlags::PATH, Mode::empty())
    }

    /// The metadata of `rel` itself (a symlink is `ELOOP`).
    pub fn metadata(&self, rel: &Path) -> io::Result<fs::Metadata> {
        let fd = self.open_at(rel, OFlags::PATH, Mode::empty())?;
        fs::File::from(fd).metadata()
    }

    /// The entries of the folder `rel`: name and metadata of each (symlinks
    /// as symlinks), without `.` and `..`, unsorted.
    pub fn read_dir(&self, rel: &Path) -> io::Result<Vec<(OsString, fs::Metadata)>> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut entries = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = std::ffi::OsStr::from_bytes(name);
            // The entry itself through an O_PATH descriptor, never followed.
            let meta = match rustix::fs::openat(
                &fd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(entry_fd) => fs::File::from(entry_fd).metadata()?,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            entries.push((name.to_os_string(), meta));
        }
        Ok(entries)
    }

    /// The names of the regular files in the folder `rel` (symlinks are not
    /// files here). The kinds come with the names (`d_type`), so nothing is
    /// opened or looked at per entry; a file system that does not give kinds
    /// gets `read_dir`'s look at each entry instead.
    pub fn file_names(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::new(fd)? {
            let entry = entry?;
            match entry.file_type() {
                rustix::fs::FileType::RegularFile => names.push(OsString::from(
                    std::ffi::OsStr::from_bytes(entry.file_name().to_bytes()),
                )),
                rustix::fs::FileType::Unknown => {
                    return Ok(self
                        .read_dir(rel)?
                        .into_iter()
                        .filter(|(_, meta)| meta.is_file())
                        .map(|(name, _)| name)
                        .collect())
                }
                _ => {}
            }
        }
        Ok(names)
    }

    /// The folder `rel`, opened beneath the root (`O_PATH`), made first when
    /// `create` and it is missing, each missing folder with `mkdirat`.
    fn folder(&self, rel: &Path, create: bool) -> io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        match self.open_at(rel, flags, Mode::empty()) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let mut dir = self.open_at(Path::new(""), flags, Mode::empty())?;
        for name in plain(rel)?.iter() {
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = folder_at(dir.as_fd(), name)?;
        }
        Ok(dir)
    }

    /// Makes the folder `rel` and every missing folder above it.
    pub fn create_dir_all(&self, rel: &Path) -> io::Result<()> {
        self.folder(rel, true).map(drop)
    }

    /// Writes `contents` to `name` in the folder `parent` (made when missing)
    /// through a temporary file in the same folder and a rename, so readers see
    /// the old file or the new one, never half of one. What was at `name` (a
    /// file or a symlink) is replaced, never followed.
    pub fn write_atomic(
        &self,
        parent: &Path,
        name: &std::ffi::OsStr,
        contents: &[u8],
        executable: bool,
    ) -> io::Result<()> {
        let dir = self.folder(parent, true)?;
        // A file that is there keeps its permissions (a 0600 file stays
        // private); only the executable bits follow `executable`.
        let mode = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::RegularFile =>
            {
                let kept = st.st_mode & 0o666;
                if executable {
                    kept | ((kept & 0o444) >> 2)
                } else {
                    kept
                }
            }
            _ if executable => 0o755,
            _ => 0o644,
        };
        let (tmp_name, mut tmp) = temp_file(dir.as_fd(), mode)?;
        // No fsync: like git's own default, a write is safe from a crash of the
        // daemon (the kernel has it) but not from a power cut. The commit, the
        // record that matters, is not fsynced by gix either; fsyncing this copy
        // alone cost a third of the write rate (bench/writes.sh) and bought
        // nothing.
        let written = tmp
            .write_all(contents)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                tmp.set_permissions(fs::Permissions::from_mode(mode))
            })
            .and_then(|()| Ok(rustix::fs::renameat(&dir, &tmp_name, &dir, name)?));
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&dir, &tmp_name, AtFlags::empty());
        }
        written
    }

    /// Removes the file (or symlink) `name` in the folder `parent`.
    pub fn remove_file(&self, parent: &Path, name: &std::ffi::OsStr) -> io::Result<()> {
        let dir = self.folder(parent, false)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
    }

    /// Removes the folder `rel` if it is empty.
    pub fn remove_dir(&self, rel: &Path) -> io::Result<()> {
        let rel = plain(rel)?;
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        };
        let dir = self.folder(parent, false)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
    }
}

/// The folder `name` in `at` (`O_PATH`), never through a symlink: a symlink
/// there is `ELOOP` (`O_DIRECTORY | O_NOFOLLOW` alone would say `ENOTDIR`).
fn folder_at(at: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(at, name, flags, Mode::empty()) {
        Err(Errno::NOTDIR) => Err(not_a_folder(at, name)),
        other => Ok(other?),
    }
}

/// The error for `name` in `at` not opening as a folder: `ELOOP` when it is a
/// symlink, else `ENOTDIR`.
fn not_a_folder(at: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Error {
    match rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat)
            if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                == rustix::fs::FileType::Symlink =>
        {
            io::Error::from_raw_os_error(libc::ELOOP)
        }
        _ => io::Error::from_raw_os_error(libc::ENOTDIR),
    }
}

/// `rel` if it is a plain relative path (only names); else `escapes()`.
fn plain(rel: &Path) -> io::Result<&Path> {
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(rel)
    } else {
        Err(escapes())
    }
}

/// A new file with a random name in `dir`, opened exclusively (never through a
/// symlink).
fn temp_file(dir: BorrowedFd<'_>, mode: u32) -> io::Result<(OsString, fs::File)> {
    for _ in 0..16 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
        let name = OsString::from(format!("{TEMP_PREFIX}{}", hex::encode(bytes)));
        match rustix::fs::openat(
            dir,
            &name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        ) {
            Ok(fd) => return Ok((name, fs::File::from(fd))),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("could not create a temporary file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn nothing_is_reached_through_a_symlink() {
        check_confinement(false);
    }

    #[test]
    fn nothing_is_reached_through_a_symlink_on_kernels_without_openat2() {
        check_confinement(true);
    }

    fn check_confinement(walk_only: bool) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("box")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret.txt"), "secret").unwrap();
        fs::write(root.join("box/in.txt"), "in").unwrap();
        symlink(&outside, root.join("link")).unwrap();
        symlink("box", root.join("inner")).unwrap();
        let mut b = Beneath::open(&root).unwrap();
        b.walk_only = walk_only;
        let text = |p: &str| b.open_read(Path::new(p)).and_then(io::read_to_string);
        assert_eq!(text("box/in.txt").unwrap(), "in");
        for bad in [
            "link/secret.txt",
            "inner/in.txt",
            "../outside/secret.txt",
            "/etc/passwd",
        ] {
            let e = text(bad).unwrap_err();
            assert!(is_escape(&e), "{bad}: {e}");
        }
        let e = b
            .write_atomic(Path::new("link"), "w.txt".as_ref(), b"x", false)
            .unwrap_err();
        assert!(is_escape(&e), "{e}");
        assert!(!outside.join("w.txt").exists());
        b.write_atomic(Path::new("new/deep"), "w.txt".as_ref(), b"x", true)
            .unwrap();
        assert_eq!(fs::read(root.join("new/deep/w.txt")).unwrap(), b"x");
        // A symlink at the name is replaced, not followed.
        symlink(outside.join("secret.txt"), root.join("box/s")).unwrap();
        b.write_atomic(Path::new("box"), "s".as_ref(), b"mine", false)
            .unwrap();
        assert_eq!(
            fs::read_to_string(outside.join("secret.txt")).unwrap(),
            "secret"
        );
        let names: Vec<_> = b
            .read_dir(Path::new(""))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(names.contains(&OsString::from("link")));
        assert!(b.read_dir(Path::new("link")).is_err());
        b.remove_file(Path::new("box"), "s".as_ref()).unwrap();
        assert!(b
            .remove_file(Path::new("link"), "secret.txt".as_ref())
            .is_err());
        assert!(outside.join("secret.txt").exists());
    }
}
