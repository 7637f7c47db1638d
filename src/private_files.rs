//! Files and directories that only their owner may read: everything pm-events
//! writes under the log directory holds an event's payload, a URL (which may
//! carry `user:password@` or `?api_key=`) or a secret. Files are created mode
//! 0600 and directories 0700, whatever the process's umask (a umask can only
//! take permissions away, and these already give none to others). Existing
//! files and directories are left as they are.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// The mode of every file created.
pub const FILE_MODE: u32 = 0o600;

/// The mode of every directory created.
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` whose `create` makes the file mode 0600.
pub fn open_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(FILE_MODE);
    }
    o
}

/// Creates `dir` and its missing parents, each mode 0700.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(DIR_MODE);
    }
    b.create(dir)
}

/// Writes `bytes` to `path`, creating it mode 0600 (or truncating it).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)
}

/// Creates the file at `path` mode 0600 if it is missing (an SQLite database
/// before SQLite opens it: its `-wal` and `-shm` files take the database
/// file's mode).
pub fn touch(path: &Path) -> io::Result<()> {
    open_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
}

/// Makes an SQLite database and its `-wal` and `-shm` files mode 0600 — those
/// a version that created them with the umask's mode left readable.
pub fn restrict_database(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        for p in [path.as_os_str().to_owned(), wal, shm] {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(FILE_MODE));
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).map_or(0, |m| m.permissions().mode() & 0o777)
    }

    #[test]
    fn created_files_and_directories_are_private() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        create_dir_all(&d).unwrap();
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&d), 0o700);
        write(&d.join("f"), b"x").unwrap();
        assert_eq!(mode(&d.join("f")), 0o600);
        touch(&d.join("g")).unwrap();
        assert_eq!(mode(&d.join("g")), 0o600);
    }
}
