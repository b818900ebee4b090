//! Atomic file replacement: readers see the old file or the whole new one, never a partial write,
//! and an interrupted fetch leaves at most a dot-prefixed temporary file behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// Writes `bytes` to `dir/file_name` through a temporary file in `dir` and a rename.
pub(crate) fn write_atomically(
    dir: &Path,
    file_name: &str,
    bytes: &[u8],
) -> Result<PathBuf, ModelError> {
    fs::create_dir_all(dir).map_err(|source| ModelError::io("creating", dir, source))?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|source| ModelError::io("creating a temporary file in", dir, source))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|source| ModelError::io("writing", temp.path(), source))?;
    let path = dir.join(file_name);
    temp.persist(&path)
        .map_err(|error| ModelError::io("renaming a temporary file to", &path, error.error))?;
    // Make the rename itself durable; a failure here does not undo it, so it is not an error.
    if let Ok(dir_handle) = fs::File::open(dir) {
        let _ = dir_handle.sync_all();
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "a.bin", b"old").unwrap();
        let path = write_atomically(dir.path(), "a.bin", b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["a.bin"]);
    }
}
