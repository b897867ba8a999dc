//! A SQLite store's data directory is its owner's alone: the directory 0700 and
//! every file in it 0600, whatever the umask, since steps' environments and
//! output live there. A directory made by an earlier version with looser modes
//! is tightened at start.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Result, StoreError};

/// The mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (0700) if it is missing, and tightens the modes of the
/// directory and of every file in it.
pub fn private_data_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| io(dir, e))?;
    let meta = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
    // A shared directory such as /tmp (or a fresh tmpfs) is not the server's
    // to close: its files are still the owner's alone.
    if meta.permissions().mode() & 0o1000 != 0 {
        tracing::warn!(dir = %dir.display(), "the data directory is shared (its sticky bit is set): its mode is left as it is; give the server a directory of its own");
    } else {
        tighten(dir, DIR_MODE).map_err(|e| io(dir, e))?;
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        if entry.file_type().map_err(|e| io(&path, e))?.is_file() {
            tighten(&path, FILE_MODE).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// Opens `path` for reading and writing, created 0600 if it is missing.
pub(crate) fn private_file(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| io(path, e))?;
    // The umask may have taken bits off; none are added back but ours.
    tighten(path, FILE_MODE).map_err(|e| io(path, e))?;
    Ok(file)
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Sets `path`'s permission bits to `mode` if they differ.
pub fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        tracing::info!(path = %path.display(), from = format_args!("{current:o}"), to = format_args!("{mode:o}"), "tightened the mode");
    }
    Ok(())
}
