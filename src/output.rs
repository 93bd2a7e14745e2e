//! Creating output files safely in a directory someone else may write to.
//!
//! coresnap runs as root and writes memory it read from other processes.
//! A directory that another user can write to (their home, a shared
//! scratch directory, one they were given) lets that user plant symbolic
//! links or swap names while coresnap writes, so that root writes into a
//! file of the attacker's choosing or leaves memory readable to them.
//!
//! [`OutputDir`] opens the directory once, refusing a symbolic link, and
//! creates every file relative to that handle with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, mode 0600 whatever the umask: a name that exists, symbolic
//! link or not, is never opened. Replacing a file (`--force`) removes the
//! name first (the link itself, never what it points to) and then creates
//! it in the same exclusive way, so a name re-planted in between makes the
//! creation fail instead of being followed. A directory coresnap creates
//! itself is mode 0700.

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Mode of every file written into an [`OutputDir`].
pub const FILE_MODE: u32 = 0o600;
/// Mode of a directory [`OutputDir::create_or_open`] creates.
pub const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(
        "{path} is a symbolic link; coresnap writes only into a directory named directly (give the directory it points to, if that is the one you mean)"
    )]
    DirIsSymlink { path: PathBuf },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot create or open the directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "{path} appeared while coresnap was writing into {dir}: another process writes there; nothing was written through it. Use a directory only you can write to"
    )]
    Raced { path: PathBuf, dir: PathBuf },
    #[error(
        "{path} already exists; coresnap does not write through an existing name (pass --force to replace it)"
    )]
    Exists { path: PathBuf },
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

/// A directory held open by its handle; files are created relative to it.
#[derive(Debug)]
pub struct OutputDir {
    fd: OwnedFd,
    path: PathBuf,
    created: bool,
}

impl OutputDir {
    /// Creates the directory `path` (mode 0700), or opens the existing
    /// directory there; a symbolic link is refused.
    pub fn create_or_open(path: &Path) -> Result<OutputDir, OutputError> {
        // A trailing slash would make the kernel follow a final symbolic
        // link in spite of O_NOFOLLOW.
        let trimmed = trim_trailing_slashes(path);
        let dir_err = |source: io::Error| OutputError::Dir {
            path: path.to_path_buf(),
            source,
        };
        let mkdir = || nix::unistd::mkdir(trimmed, Mode::from_bits_truncate(DIR_MODE));
        let made = match mkdir() {
            Err(Errno::ENOENT) => {
                // Missing parents are made too, as private as the directory.
                if let Some(parent) = trimmed.parent().filter(|p| !p.as_os_str().is_empty()) {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(DIR_MODE)
                        .create(parent)
                        .map_err(dir_err)?;
                }
                mkdir()
            }
            other => other,
        };
        let created = match made {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(dir_err(e.into())),
        };
        let fd = match nix::fcntl::open(
            trimmed,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Linux says ELOOP or ENOTDIR for a final symbolic link,
            // depending on the flags; the name itself tells which it is.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let is_link =
                    std::fs::symlink_metadata(trimmed).is_ok_and(|m| m.file_type().is_symlink());
                return Err(if is_link {
                    OutputError::DirIsSymlink {
                        path: path.to_path_buf(),
                    }
                } else {
                    OutputError::NotADirectory {
                        path: path.to_path_buf(),
                    }
                });
            }
            Err(e) => return Err(dir_err(e.into())),
        };
        if created {
            // mkdir's mode is narrowed by the umask; make it exactly 0700.
            fchmod(&fd, Mode::from_bits_truncate(DIR_MODE)).map_err(|e| dir_err(e.into()))?;
        }
        Ok(OutputDir {
            fd,
            path: path.to_path_buf(),
            created,
        })
    }

    /// The directory as the user named it (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this call created the directory.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether the directory holds no entry.
    pub fn is_empty(&self) -> Result<bool, OutputError> {
        let mut dir = nix::dir::Dir::openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OutputError::Dir {
            path: self.path.clone(),
            source: e.into(),
        })?;
        for entry in dir.iter() {
            let entry = entry.map_err(|e| OutputError::Dir {
                path: self.path.clone(),
                source: e.into(),
            })?;
            if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Creates the file `name` (one path component) in the directory, mode
    /// 0600, for writing. An existing name is an error unless `replace`,
    /// which removes it first (a symbolic link is removed, not followed).
    pub fn create_file(&self, name: &str, replace: bool) -> Result<File, OutputError> {
        assert!(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "output file name {name:?} is not one path component"
        );
        let path = self.path.join(name);
        if replace {
            match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(OutputError::Create {
                        path,
                        source: e.into(),
                    });
                }
            }
        }
        let fd = match openat(
            &self.fd,
            name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(FILE_MODE),
        ) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) if replace => {
                return Err(OutputError::Raced {
                    path,
                    dir: self.path.clone(),
                });
            }
            Err(Errno::EEXIST) => return Err(OutputError::Exists { path }),
            Err(e) => {
                return Err(OutputError::Create {
                    path,
                    source: e.into(),
                });
            }
        };
        // The umask may have narrowed it further; the file is ours alone
        // whatever it is.
        let exact = fstat(&fd)
            .map(|st| st.st_mode & 0o7777 == FILE_MODE)
            .unwrap_or(false);
        if !exact {
            fchmod(&fd, Mode::from_bits_truncate(FILE_MODE)).map_err(|e| OutputError::Create {
                path: path.clone(),
                source: e.into(),
            })?;
        }
        Ok(File::from(fd))
    }
}

impl OutputDir {
    /// Removes the name `name` from the directory (a symbolic link is
    /// removed, not followed): to take back what a failed run created.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
    }

    /// Removes the directory if this call created it and it is empty.
    pub fn remove_if_created(&self) {
        if self.created {
            let _ = std::fs::remove_dir(trim_trailing_slashes(&self.path));
        }
    }
}

fn trim_trailing_slashes(path: &Path) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let mut end = bytes.len();
    while end > 1 && bytes[end - 1] == b'/' {
        end -= 1;
    }
    Path::new(std::ffi::OsStr::from_bytes(&bytes[..end]))
}

/// The directory `path` is in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The start of a temporary name beside `path`: hidden, and naming it.
pub(crate) fn temp_name(path: &Path) -> String {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "core".into());
    format!(".{file_name}.")
}

/// Gives the unnamed `file` the name `path` (never replacing a file there
/// unless `overwrite`).
pub(crate) fn link_unnamed(
    file: &std::fs::File,
    path: &Path,
    overwrite: bool,
) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, AtFlags};
    use std::os::fd::AsRawFd;
    let link = |to: &Path| {
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        nix::unistd::linkat(
            AT_FDCWD,
            fd_path.as_str(),
            AT_FDCWD,
            to,
            AtFlags::AT_SYMLINK_FOLLOW,
        )
        .map_err(std::io::Error::from)
    };
    if !overwrite {
        return link(path);
    }
    // Replace atomically: link under a fresh temporary name, then rename.
    let temp = tempfile::Builder::new()
        .prefix(&temp_name(path))
        .suffix(".partial")
        .make_in(parent_dir(path), |p| link(p))?;
    temp.into_temp_path().persist(path).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn creates_private_directory_and_files() {
        let scratch = tempfile::tempdir().unwrap();
        let path = scratch.path().join("out");
        let dir = OutputDir::create_or_open(&path).unwrap();
        assert!(dir.created());
        assert!(dir.is_empty().unwrap());
        let nested = OutputDir::create_or_open(&scratch.path().join("a/b/c")).unwrap();
        assert!(nested.created());
        for p in ["a", "a/b", "a/b/c"] {
            assert_eq!(fs_mode(&scratch.path().join(p)), 0o700, "{p}");
        }
        let mut f = dir.create_file("a.bin", false).unwrap();
        f.write_all(b"secret").unwrap();
        assert_eq!(fs_mode(&path), 0o700);
        assert_eq!(fs_mode(&path.join("a.bin")), 0o600);
        assert!(!dir.is_empty().unwrap());
        assert!(matches!(
            dir.create_file("a.bin", false),
            Err(OutputError::Exists { .. })
        ));
        dir.create_file("a.bin", true).unwrap();
        assert_eq!(std::fs::read(path.join("a.bin")).unwrap(), b"");
    }

    #[test]
    fn never_writes_through_a_symbolic_link() {
        let scratch = tempfile::tempdir().unwrap();
        let victim = scratch.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = scratch.path().join("out");
        std::fs::create_dir(&path).unwrap();
        std::os::unix::fs::symlink(&victim, path.join("index.tsv")).unwrap();
        let dir = OutputDir::create_or_open(&path.join("")).unwrap();
        assert!(!dir.created());
        assert!(dir.create_file("index.tsv", false).is_err());
        dir.create_file("index.tsv", true).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(
            std::fs::symlink_metadata(path.join("index.tsv"))
                .unwrap()
                .is_file()
        );

        let link = scratch.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        for named in [link.clone(), link.join("")] {
            assert!(matches!(
                OutputDir::create_or_open(&named),
                Err(OutputError::DirIsSymlink { .. })
            ));
        }
    }

    fn fs_mode(p: &Path) -> u32 {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
        m.permissions().mode() & 0o7777
    }
}
