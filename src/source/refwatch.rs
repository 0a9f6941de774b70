//! Wakes the local watcher when the branch may have moved: inotify on the
//! folders git writes the branch's ref into. It only says "look again"; what
//! the branch points at is always read from the repository (`Repo::head`), so
//! a missed or spurious event costs a late or an extra look, never a wrong
//! answer. `Syncer::watch_local` keeps polling beside it, slower, as a safety
//! net, and polls alone when inotify cannot be set up.
//!
//! Folders are watched, not files: git writes a ref to `<name>.lock` and
//! renames it over the ref, which replaces the file (and would end a watch on
//! it). What git writes there is `HEAD` and `packed-refs` in the git folder,
//! the loose ref in `refs/heads/` (or the folder of a branch named `a/b`), and
//! the tables in `reftable/` for repositories in that format.
//!
//! inotify through rustix's calls (already in the tree for the workspace's
//! `*at` calls) and tokio's `AsyncFd`: no watcher crate and no thread.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// An inotify descriptor watching where git writes the branch's ref.
pub struct RefEvents {
    fd: AsyncFd<OwnedFd>,
    /// The watch on the git folder itself, where only `HEAD` and `packed-refs`
    /// matter (the index, `ORIG_HEAD`, `COMMIT_EDITMSG` change there too).
    git_dir_watch: i32,
}

/// What is watched in each folder: an entry written, renamed in or out,
/// removed; and the folder itself going away (the watch ends then).
fn flags() -> WatchFlags {
    WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

impl RefEvents {
    /// Watches the folders of `git_dir` that hold `branch`'s ref. An error when
    /// inotify cannot be had (no kernel support, the watch limit reached) or
    /// the git folder or `refs/heads` cannot be watched.
    pub fn new(git_dir: &Path, branch: &str) -> io::Result<RefEvents> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let git_dir_watch = inotify::add_watch(&fd, git_dir, flags())?;
        let heads = git_dir.join("refs").join("heads");
        inotify::add_watch(&fd, &heads, flags())?;
        // A branch named `team/main` is the file `main` in `refs/heads/team`.
        if let Some(folder) = heads.join(branch).parent().filter(|f| *f != heads) {
            if let Err(e) = inotify::add_watch(&fd, folder, flags()) {
                tracing::debug!(folder = %folder.display(), error = %e, "the branch's ref folder is not watched; the poll covers it");
            }
        }
        let reftable = git_dir.join("reftable");
        if reftable.is_dir() {
            inotify::add_watch(&fd, &reftable, flags())?;
        }
        // SAFETY: the descriptor is owned by the `AsyncFd` for its whole life
        // and `OwnedFd::as_raw_fd` always answers that one.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(RefEvents { fd, git_dir_watch })
    }

    /// Waits until a ref may have changed, reading every event queued. An
    /// error means the events cannot be read any more; the caller polls then.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut reader = inotify::Reader::new(ready.get_inner(), &mut buf);
            let mut relevant = false;
            loop {
                match reader.next() {
                    Ok(event) => relevant |= self.matters(&event),
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            ready.clear_ready();
            if relevant {
                return Ok(());
            }
        }
    }

    fn matters(&self, event: &inotify::Event<'_>) -> bool {
        let flags = event.events();
        // Events were lost, or a watched folder went away: look, to be sure.
        if flags.intersects(ReadFlags::QUEUE_OVERFLOW | ReadFlags::IGNORED) {
            return true;
        }
        let Some(name) = event.file_name().map(|n| n.to_bytes()) else {
            return false;
        };
        // A lock file is git still writing; the rename that ends it is the news.
        if name.ends_with(b".lock") {
            return false;
        }
        event.wd() != self.git_dir_watch || name == b"HEAD" || name == b"packed-refs"
    }
}
