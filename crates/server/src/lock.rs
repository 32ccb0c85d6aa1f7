//! One server per data directory: `dgx-music.lock`, held with an exclusive OS lock (flock on Unix,
//! LockFileEx on Windows) for the life of the process and holding its pid for the message a second
//! server prints. The OS drops the lock when the process ends however it ends, `kill -9` included,
//! so a stale file never keeps a server from starting; the file itself is left in place.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::ServerError;

pub const LOCK_FILE: &str = "dgx-music.lock";

/// The held lock; dropping it (the process ending) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the lock of `dir` or says which process holds it.
pub fn lock(dir: &Path) -> Result<DataDirLock, ServerError> {
    let path = dir.join(LOCK_FILE);
    let io_err = |source| ServerError::DataDir { path: path.clone(), source };
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_err)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(ServerError::DataDirInUse { dir: dir.to_path_buf(), pid: text.trim().parse().ok() });
        }
        Err(fs4::TryLockError::Error(source)) => return Err(io_err(source)),
    }
    file.set_len(0).map_err(io_err)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).and_then(|()| file.sync_all()).map_err(io_err)?;
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_lock_returns_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        let err = lock(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ServerError::DataDirInUse { pid: Some(p), .. } if p == std::process::id()), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())) && message.contains("--data-dir"),
            "{message}"
        );
        drop(held);
        lock(dir.path()).expect("the lock is free again once its holder is gone");
    }
}
