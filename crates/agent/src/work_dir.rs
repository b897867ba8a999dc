//! One live agent per work directory: a static agent holds an exclusive lock
//! on `agent.lock` in its work directory for as long as it runs. Two agents
//! from one directory would share its instance id, and the server takes a
//! registration with a known instance for a restart of that agent, so each
//! would take the other's place, again and again.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::AgentError;

/// The lock file, in the work directory.
pub const LOCK_FILE: &str = "agent.lock";

/// Held while the agent runs; the kernel lets the lock go when the process
/// ends, however it ends.
#[derive(Debug)]
pub struct WorkDirLock {
    _file: File,
}

impl WorkDirLock {
    /// Takes the lock, or says which process holds it.
    pub fn acquire(work_dir: &Path) -> Result<WorkDirLock, AgentError> {
        let path = work_dir.join(LOCK_FILE);
        let failed = |source| AgentError::WorkDir {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(work_dir).map_err(failed)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(AgentError::WorkDirTaken {
                    dir: work_dir.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(failed(e)),
        }
        // The holder's pid, for the message of an agent refused.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(failed)?;
        Ok(WorkDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_work_dir_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("corral-lock-{}", std::process::id()));
        let first = WorkDirLock::acquire(&dir).expect("the first lock");
        let refused = WorkDirLock::acquire(&dir).expect_err("a second lock");
        let message = refused.to_string();
        assert!(
            message.contains(&std::process::id().to_string())
                && message.contains(&*dir.to_string_lossy()),
            "{message}"
        );
        drop(first);
        WorkDirLock::acquire(&dir).expect("the lock once the first is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
