//! Opening a file that a core names, on the analyst's machine.
//!
//! A core is data from somebody else: its `NT_FILE` paths, its CORESNAP
//! note's build-ids and a mapped file's `.gnu_debuglink` can name anything.
//! Opening a FIFO blocks until a writer comes, opening a device runs its
//! driver (a tape rewinds, a terminal becomes the controlling one), and
//! `/proc`, `/sys` and `/dev` hold files whose reading has effects or
//! reveals the analyst's own process. So a named file is opened in three
//! steps:
//!
//! 1. the path is resolved to an `O_PATH` handle, which opens nothing:
//!    inside the sysroot with `openat2(RESOLVE_IN_ROOT)` (`..` and symbolic
//!    links, absolute ones included, stay inside it; kernels before 5.6 get
//!    the same resolution done one component at a time, [`resolve_in_root`]);
//! 2. `fstat` and `fstatfs` of that handle: only a regular file, on no
//!    pseudo file system (proc, sysfs, debugfs, ...) and, outside a
//!    sysroot, not under `/proc`, `/sys` or `/dev`;
//! 3. that same file is opened for reading through `/proc/self/fd`, with
//!    `O_NONBLOCK | O_NOCTTY`, and checked again with `fstat` before any
//!    byte is read (same device and inode, still a regular file).

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::sys::statfs::{self, fstatfs};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Symbolic links followed in one lookup before giving up, as the kernel.
const MAX_LINKS: usize = 40;

/// Opens `path` for reading if it is a regular file that may be read.
///
/// `root`: a sysroot that confines the whole lookup (`path` is taken as
/// absolute inside it). Without one, `path` is looked up on this machine
/// and must not lie under `/proc`, `/sys` or `/dev`. `follow_final_link`:
/// whether a symbolic link as the last component is followed (a path the
/// kernel wrote into `NT_FILE` never ends in one, a debug file under
/// `.build-id` usually does).
pub fn open_regular(root: Option<&Path>, path: &Path, follow_final_link: bool) -> io::Result<File> {
    let handle = match root {
        Some(root) => {
            let root_fd = open(
                root,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            open_in_root(&root_fd, path, follow_final_link)?
        }
        None => {
            let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
            if !follow_final_link {
                flags |= OFlag::O_NOFOLLOW;
            }
            open(path, flags, Mode::empty())?
        }
    };
    let before = check_readable(&handle, root.is_none())?;
    let file = reopen_for_reading(&handle, root, path, follow_final_link)?;
    let after = fstat(&file)?;
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) || !is_regular(&after) {
        return Err(refused("it was replaced while being opened"));
    }
    Ok(file)
}

/// The `O_PATH` handle of `path` resolved inside `root`.
fn open_in_root(root: &OwnedFd, path: &Path, follow_final_link: bool) -> io::Result<OwnedFd> {
    let relative = relative_to_root(path);
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if !follow_final_link {
        flags |= OFlag::O_NOFOLLOW;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root, relative, how) {
        Ok(fd) => Ok(fd),
        // No openat2 (before 5.6), or a seccomp filter that hides it.
        Err(Errno::ENOSYS | Errno::EPERM) => resolve_in_root(root, relative, follow_final_link),
        Err(e) => Err(e.into()),
    }
}

/// `path` without its leading `/`, or `.` for the root itself.
fn relative_to_root(path: &Path) -> &Path {
    let bytes = path.as_os_str().as_bytes();
    let start = bytes.iter().position(|&b| b != b'/').unwrap_or(bytes.len());
    if start == bytes.len() {
        Path::new(".")
    } else {
        Path::new(OsStr::from_bytes(&bytes[start..]))
    }
}

/// What `openat2(RESOLVE_IN_ROOT)` does, one component at a time: `..`
/// never leaves `root` (the directories walked are kept, so `..` goes back
/// to the one walked through, not to the parent on disk), and a symbolic
/// link's target is resolved from `root` when absolute.
pub fn resolve_in_root(
    root: &OwnedFd,
    path: &Path,
    follow_final_link: bool,
) -> io::Result<OwnedFd> {
    let path_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut walked: Vec<OwnedFd> = vec![nix::unistd::dup(root)?];
    let mut pending: VecDeque<OsString> = components(path).collect();
    let mut links = 0usize;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if walked.len() > 1 {
                walked.pop();
            }
            continue;
        }
        if name == "/" {
            walked.truncate(1);
            continue;
        }
        let dir = walked.last().expect("the root is never popped");
        let fd = openat(dir, name.as_os_str(), path_flags, Mode::empty())?;
        let st = fstat(&fd)?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let last = pending.is_empty();
        if kind == SFlag::S_IFLNK && (!last || follow_final_link) {
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = readlinkat(dir, name.as_os_str())?;
            let target = Path::new(&target);
            for c in components(target).collect::<Vec<_>>().into_iter().rev() {
                pending.push_front(c);
            }
            if target.is_absolute() {
                pending.push_front("/".into());
            }
        } else if last {
            return Ok(fd);
        } else if kind == SFlag::S_IFDIR {
            walked.push(fd);
        } else {
            return Err(Errno::ENOTDIR.into());
        }
    }
    Ok(walked.pop().expect("the root is never popped"))
}

/// The names of `path`'s components; `..` kept, `.` and `/` dropped.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
    })
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

fn refused(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("not opened: {why}"),
    )
}

/// Checks the handle's file before anything opens it for reading.
fn check_readable(handle: &OwnedFd, on_this_machine: bool) -> io::Result<FileStat> {
    let st = fstat(handle)?;
    let kind = match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => None,
        SFlag::S_IFIFO => Some("a FIFO"),
        SFlag::S_IFCHR => Some("a character device"),
        SFlag::S_IFBLK => Some("a block device"),
        SFlag::S_IFSOCK => Some("a socket"),
        SFlag::S_IFDIR => Some("a directory"),
        SFlag::S_IFLNK => Some("a symbolic link"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind {
        return Err(refused(&format!("{kind}, not a regular file")));
    }
    let fs = fstatfs(handle)?.filesystem_type();
    let pseudo = [
        (statfs::PROC_SUPER_MAGIC, "proc"),
        (statfs::SYSFS_MAGIC, "sysfs"),
        (statfs::DEBUGFS_MAGIC, "debugfs"),
        (statfs::TRACEFS_MAGIC, "tracefs"),
        (statfs::SECURITYFS_MAGIC, "securityfs"),
        (statfs::CGROUP_SUPER_MAGIC, "cgroup"),
        (statfs::CGROUP2_SUPER_MAGIC, "cgroup2"),
        (statfs::BPF_FS_MAGIC, "bpf"),
        (statfs::DEVPTS_SUPER_MAGIC, "devpts"),
        (statfs::SELINUX_MAGIC, "selinuxfs"),
        (statfs::NSFS_MAGIC, "nsfs"),
    ];
    if let Some((_, name)) = pseudo.iter().find(|(magic, _)| *magic == fs) {
        return Err(refused(&format!("a file of the {name} file system")));
    }
    if on_this_machine && let Some(top) = under_system_tree(handle) {
        return Err(refused(&format!("a file under /{top}")));
    }
    Ok(st)
}

/// `proc`, `sys` or `dev` when the handle's file lies under that top
/// directory of this machine (as the kernel names it: after symbolic
/// links and `..`).
fn under_system_tree(handle: &OwnedFd) -> Option<&'static str> {
    let real = std::fs::read_link(format!("/proc/self/fd/{}", handle.as_raw_fd())).ok()?;
    let mut parts = real.components();
    if parts.next() != Some(Component::RootDir) {
        return None;
    }
    match parts.next()? {
        Component::Normal(top) if top == "proc" => Some("proc"),
        Component::Normal(top) if top == "sys" => Some("sys"),
        Component::Normal(top) if top == "dev" => Some("dev"),
        _ => None,
    }
}

/// The handle's file opened for reading: through `/proc/self/fd` (the very
/// file checked), or, without `/proc`, by resolving the path again (the
/// caller compares device and inode).
fn reopen_for_reading(
    handle: &OwnedFd,
    root: Option<&Path>,
    path: &Path,
    follow_final_link: bool,
) -> io::Result<File> {
    let read_flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let via_proc = format!("/proc/self/fd/{}", handle.as_raw_fd());
    match open(via_proc.as_str(), read_flags, Mode::empty()) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let mut flags = read_flags;
    if !follow_final_link {
        flags |= OFlag::O_NOFOLLOW;
    }
    let fd = match root {
        Some(root) => {
            let root_fd = open(
                root,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let how = OpenHow::new()
                .flags(flags)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            match openat2(&root_fd, relative_to_root(path), how) {
                Ok(fd) => fd,
                Err(Errno::ENOSYS | Errno::EPERM) => {
                    return Err(refused(
                        "neither /proc nor openat2 is available to open it inside the sysroot",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => open(path, flags, Mode::empty())?,
    };
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolution_in_root_never_leaves_it() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        std::fs::create_dir_all(root.join("lib/sub")).unwrap();
        std::fs::write(root.join("lib/libx.so"), b"inside").unwrap();
        std::fs::write(scratch.path().join("outside"), b"outside").unwrap();
        symlink("/lib/libx.so", root.join("lib/sub/absolute")).unwrap();
        symlink("../../../../outside", root.join("lib/sub/dotdot")).unwrap();
        symlink("/../outside", root.join("escape")).unwrap();
        let root_fd = open(
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let read = |fd: OwnedFd| {
            let file = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            file.map(|f| std::io::read_to_string(f).unwrap())
        };
        for (path, want) in [
            ("lib/sub/absolute", Some("inside")),
            ("../../../../lib/libx.so", Some("inside")),
            ("lib/sub/../../../lib/libx.so", Some("inside")),
            ("lib/sub/dotdot", None),
            ("escape", None),
            ("../outside", None),
        ] {
            let got = resolve_in_root(&root_fd, Path::new(path), true)
                .ok()
                .and_then(|fd| read(fd).ok());
            assert_eq!(got.as_deref(), want, "{path}");
            let kernel = openat2(
                &root_fd,
                path,
                OpenHow::new()
                    .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
                    .resolve(ResolveFlag::RESOLVE_IN_ROOT),
            )
            .ok()
            .and_then(|fd| read(fd).ok());
            assert_eq!(kernel, got, "{path}: the fallback resolves as openat2");
        }
        // Not following a final link: the link itself, which is refused.
        let link = resolve_in_root(&root_fd, Path::new("lib/sub/absolute"), false).unwrap();
        assert!(check_readable(&link, false).is_err());
    }

    #[test]
    fn only_regular_files_outside_system_trees_are_opened() {
        let scratch = tempfile::tempdir().unwrap();
        let fifo = scratch.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let regular = scratch.path().join("regular");
        std::fs::write(&regular, b"x").unwrap();
        assert!(open_regular(None, &regular, false).is_ok());
        for p in [
            fifo.as_path(),
            Path::new("/dev/zero"),
            Path::new("/dev/null"),
            Path::new("/proc/self/mem"),
            Path::new("/proc/self/status"),
            Path::new("/sys/kernel/mm/transparent_hugepage/enabled"),
            scratch.path(),
        ] {
            let e = open_regular(None, p, true).unwrap_err();
            assert!(e.to_string().contains("not opened"), "{p:?}: {e}");
        }
        // A symbolic link to /proc is judged by where it leads.
        let link = scratch.path().join("link");
        symlink("/proc/self/status", &link).unwrap();
        assert!(open_regular(None, &link, true).is_err());
        assert!(open_regular(None, &link, false).is_err());
        // In a sysroot, /dev/zero is the sysroot's (absent) file.
        let err = open_regular(Some(scratch.path()), Path::new("/dev/zero"), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        let in_root =
            open_regular(Some(scratch.path()), Path::new("/../../../regular"), false).unwrap();
        assert_eq!(std::io::read_to_string(in_root).unwrap(), "x");
    }
}
