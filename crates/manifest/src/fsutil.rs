//! The one way this project writes a small file that must never be seen half-written.

use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same
/// directory is written and fsynced, renamed over `path`, and the directory is
/// fsynced so the rename itself survives a crash. Readers see the old content or
/// the new, never a mix; a crash leaves at most a stray temporary file, which the
/// next write replaces.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] for content produced piece by piece: `write` fills the
/// temporary file through a buffer, so the content is never held in memory whole.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let result = (|| {
        let mut file = io::BufWriter::with_capacity(256 << 10, fs_err::File::create(&temp)?);
        write(&mut file)?;
        let file = file.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs_err::rename(&temp, path)?;
        fs_err::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn error_names_the_file() {
        let err = write_atomic(Path::new("/nonexistent-dir/x"), b"").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    }
}
