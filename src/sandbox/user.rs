//! Who scripts run as. A daemon started as root runs its scripts as an
//! unprivileged user (`--script-user`, `nobody` unless told otherwise): the
//! kernel's own permission checks then keep root's files (`/etc/shadow`,
//! private keys, sockets that trust uid 0) closed to them, whatever Landlock
//! grants, and the process limit binds (the kernel exempts root from it).
//!
//! The switch is made in the child, between clone and exec, after the limits
//! and before Landlock (`Prepared::apply`). The child's working folder is
//! entered while it is still root, and the script is started by a path
//! relative to it, so the user needs only to enter the workspace itself, not
//! every folder above it. What the daemon owns in a run's `writable` folders
//! is opened to the user's group when the run's ruleset is built
//! (`RunAs::hand_over`), so a file the daemon wrote there through the API
//! stays writable by scripts, but never theirs to chmod.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{FileType, Mode as FileMode, OFlags};
use serde::Serialize;

/// The user a script runs as.
#[derive(Debug, Clone, Serialize)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Whether the child switches to this user: the daemon is root and it is not.
    #[serde(skip)]
    pub switch: bool,
}

/// How deep `hand_over` goes below a writable folder, and how many entries it
/// looks at for one ruleset: a folder deeper or larger is handed over in part.
const MAX_DEPTH: usize = 64;
pub const HAND_OVER_BUDGET: usize = 100_000;
/// `nobody` where the user database has no such name.
const NOBODY: u32 = 65534;

impl RunAs {
    /// The user scripts run as for the operator's `choice` (a name, `uid` or
    /// `uid:gid`; `nobody` when the daemon is root and nothing is chosen),
    /// and, when that is not what a sandbox should be, why in words.
    pub fn choose(choice: Option<&str>) -> (RunAs, Option<String>) {
        // SAFETY: geteuid and getegid cannot fail and touch no memory.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let daemon = RunAs {
            name: name_of(euid).unwrap_or_else(|| euid.to_string()),
            uid: euid,
            gid: egid,
            switch: false,
        };
        if euid != 0 {
            return match choice.map(lookup) {
                Some(Ok(other)) if other.uid != euid => {
                    let note = format!(
                        "scripts run as the daemon's user {} (uid {euid}): only a daemon started as root can run them as {} (--script-user)",
                        daemon.name, other.name
                    );
                    (daemon, Some(note))
                }
                Some(Err(e)) => (daemon, Some(e)),
                _ => (daemon, None),
            };
        }
        // Never root: a script that owns root's files could change their
        // modes (chmod needs no capability, and Landlock does not see it).
        let nobody = || {
            lookup("nobody")
                .ok()
                .filter(|u| u.uid != 0 && u.gid != 0)
                .unwrap_or(RunAs {
                    name: "nobody".to_string(),
                    uid: NOBODY,
                    gid: NOBODY,
                    switch: false,
                })
        };
        let (user, note) = match choice.map(lookup) {
            None => (nobody(), None),
            Some(Ok(user)) if user.uid != 0 && user.gid != 0 => (user, None),
            Some(found) => {
                let instead = nobody();
                let why = match found {
                    Ok(user) => format!(
                        "--script-user `{}` has uid or gid 0, which scripts never run with",
                        user.name
                    ),
                    Err(e) => e,
                };
                let note = format!(
                    "{why}; scripts run as {} (uid {}) instead",
                    instead.name, instead.uid
                );
                (instead, Some(note))
            }
        };
        (
            RunAs {
                switch: true,
                ..user
            },
            note,
        )
    }

    /// Checks `--script-user` when it is given: a user that exists (or
    /// `uid:gid`), neither of them 0.
    pub fn parse(choice: &str) -> Result<String, String> {
        if choice.is_empty() {
            return Ok(String::new());
        }
        let user = lookup(choice)?;
        if user.uid == 0 || user.gid == 0 {
            return Err(format!(
                "`{choice}` has uid or gid 0: scripts never run as root (`sandbox: off` in dynapi.yaml turns the sandbox off instead)"
            ));
        }
        Ok(choice.to_string())
    }

    /// Whether this user may enter (search) a folder of this `stat`.
    pub fn may_enter(&self, st: &rustix::fs::Stat) -> bool {
        let bit = if st.st_uid == self.uid {
            0o100
        } else if st.st_gid == self.gid {
            0o010
        } else {
            0o001
        };
        st.st_mode & bit != 0
    }

    /// Lets this user write what the daemon owns at and below `fd` (a folder
    /// or file opened `O_PATH` beneath the workspace) through its group: the
    /// user's group, with group write (and search for folders); the owner
    /// stays the daemon, so a script may write these files but never change
    /// their modes (chmod needs the owner, and Landlock does not see it).
    /// Set-user and set-group bits of files are dropped. Only folders, and
    /// regular files with one name (a second name may be a hard link from
    /// outside the workspace; the descriptor pins the inode checked).
    /// Symlinks are never followed nor changed. Looks at `budget` entries at
    /// most.
    pub fn hand_over(&self, fd: BorrowedFd<'_>, budget: &mut usize) {
        // SAFETY: geteuid cannot fail and touches no memory.
        let daemon = unsafe { libc::geteuid() };
        self.hand_over_at(fd, daemon, 0, budget);
    }

    fn hand_over_at(&self, fd: BorrowedFd<'_>, daemon: u32, depth: usize, budget: &mut usize) {
        let Some(left) = budget.checked_sub(1) else {
            return;
        };
        *budget = left;
        let Ok(st) = rustix::fs::fstat(fd) else {
            return;
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        let folder = kind == FileType::Directory;
        let single = kind == FileType::RegularFile && st.st_nlink == 1;
        if st.st_uid == daemon && (folder || single) {
            let mode = if folder {
                (st.st_mode & 0o1777) | 0o070
            } else {
                (st.st_mode & 0o777) | 0o060
            };
            if st.st_gid != self.gid {
                // SAFETY: fchownat on the descriptor itself (AT_EMPTY_PATH)
                // with an empty, NUL-terminated path; the owner unchanged (-1).
                unsafe {
                    libc::fchownat(
                        fd.as_raw_fd(),
                        c"".as_ptr(),
                        u32::MAX,
                        self.gid,
                        libc::AT_EMPTY_PATH,
                    )
                };
            }
            if st.st_mode & 0o7777 != mode || st.st_gid != self.gid {
                // An `O_PATH` descriptor has no fchmod; its /proc link names
                // the very inode (never a symlink: checked above).
                let link = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
                // SAFETY: chmod reads the NUL-terminated path we pass.
                unsafe { libc::chmod(link.as_ptr().cast(), mode) };
            }
        }
        if kind != FileType::Directory || depth >= MAX_DEPTH {
            return;
        }
        let Ok(listing) = rustix::fs::openat(
            fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            FileMode::empty(),
        ) else {
            return;
        };
        let Ok(names) = rustix::fs::Dir::read_from(&listing) else {
            return;
        };
        for entry in names.flatten() {
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            if let Ok(child) = rustix::fs::openat(
                fd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                FileMode::empty(),
            ) {
                self.hand_over_at(child.as_fd(), daemon, depth + 1, budget);
            }
            if *budget == 0 {
                return;
            }
        }
    }
}

/// A user by name, `uid` or `uid:gid`, from the system's user database.
fn lookup(choice: &str) -> Result<RunAs, String> {
    let numbers = |s: &str| s.parse::<u32>().ok();
    if let Some((uid, gid)) = choice.split_once(':') {
        return match (numbers(uid), numbers(gid)) {
            (Some(uid), Some(gid)) => Ok(RunAs {
                name: name_of(uid).unwrap_or_else(|| uid.to_string()),
                uid,
                gid,
                switch: false,
            }),
            _ => Err(format!(
                "--script-user `{choice}` is neither a user name nor `uid:gid`"
            )),
        };
    }
    let found = match numbers(choice) {
        Some(uid) => passwd(|pwd, buf, len, result| {
            // SAFETY: getpwuid_r writes into the buffers we pass.
            unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
        }),
        None => {
            let name = CString::new(choice).map_err(|_| "a NUL byte in --script-user")?;
            passwd(|pwd, buf, len, result| {
                // SAFETY: getpwnam_r reads the name and writes into the buffers we pass.
                unsafe { libc::getpwnam_r(name.as_ptr(), pwd, buf, len, result) }
            })
        }
    };
    match (found, numbers(choice)) {
        (Some((name, uid, gid)), _) => Ok(RunAs {
            name,
            uid,
            gid,
            switch: false,
        }),
        (None, Some(uid)) => Ok(RunAs {
            name: uid.to_string(),
            uid,
            gid: uid,
            switch: false,
        }),
        (None, None) => Err(format!(
            "there is no user `{choice}` here; choose one with --script-user (DYNAPI_SCRIPT_USER)"
        )),
    }
}

fn name_of(uid: u32) -> Option<String> {
    passwd(|pwd, buf, len, result| {
        // SAFETY: getpwuid_r writes into the buffers we pass.
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
    .map(|(name, _, _)| name)
}

/// One entry of the user database: name, uid and primary gid.
fn passwd(
    get: impl Fn(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
) -> Option<(String, u32, u32)> {
    // SAFETY: an all-zero passwd is a valid value to be written over.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    if get(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points at a NUL-terminated string in `buf`.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((name, pwd.pw_uid, pwd.pw_gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name_and_number() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_str()), (0, 0, "root"));
        assert_eq!(lookup("0").unwrap().name, "root");
        let pair = lookup("4242:4343").unwrap();
        assert_eq!((pair.uid, pair.gid), (4242, 4343));
        assert!(lookup("no-such-user-here")
            .unwrap_err()
            .contains("--script-user"));
        assert!(lookup("1:x").is_err());
    }

    #[test]
    fn entering_a_folder_follows_the_permission_bits_of_the_user() {
        let user = RunAs {
            name: "u".into(),
            uid: 1000,
            gid: 1000,
            switch: true,
        };
        // SAFETY: an all-zero stat is a valid value to fill in.
        let mut st: rustix::fs::Stat = unsafe { std::mem::zeroed() };
        st.st_uid = 0;
        st.st_gid = 0;
        st.st_mode = 0o40700;
        assert!(!user.may_enter(&st));
        st.st_mode = 0o40701;
        assert!(user.may_enter(&st));
        st.st_gid = 1000;
        st.st_mode = 0o40750;
        assert!(user.may_enter(&st));
        st.st_uid = 1000;
        st.st_mode = 0o40070;
        assert!(
            !user.may_enter(&st),
            "the owner's bits decide for the owner"
        );
    }
}
