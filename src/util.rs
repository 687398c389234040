//! Small helpers that know no project type, for every layer: crash-safe file writes, hex
//! digests and did-you-mean suggestions.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The step of [`write_atomic`] that failed, so callers can word their own messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteStep {
    /// Creating the temporary file next to the target.
    Create,
    /// Writing the contents or syncing them to disk.
    Write,
    /// Renaming over the target, or syncing the folder that records the rename.
    Rename,
}

#[derive(Debug)]
pub(crate) struct WriteError {
    pub step: WriteStep,
    pub source: io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            WriteStep::Rename => write!(f, "failed to persist temporary file: {}", self.source),
            WriteStep::Create | WriteStep::Write => write!(f, "{}", self.source),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        e.source
    }
}

/// Writes `contents` to `path` so that after a crash the path holds either the old file or
/// the new one, whole: a temporary file in the same folder, synced, renamed over `path`,
/// then the folder synced so the rename itself survives. The folder must exist. The file
/// gets an ordinary file's permissions (0666 less the umask), not a temporary file's 0600.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    // A write in progress finishes before the watchdog may end the process.
    let _working = crate::interrupt::working();
    let fail = |step: WriteStep| move |source: io::Error| WriteError { step, source };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir).map_err(fail(WriteStep::Create))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(fail(WriteStep::Write))?;
    tmp.persist(path)
        .map_err(|e| fail(WriteStep::Rename)(e.error))?;
    sync_folder(dir).map_err(fail(WriteStep::Rename))
}

/// Makes a rename in `dir` durable. Filesystems that cannot sync a folder say so with
/// EINVAL or ENOTSUP; there the rename is as durable as they make it.
pub(crate) fn sync_folder(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Lowercase hex of `bytes`.
/// `n` bytes for people: 1.5 GB, 12.0 TB (decimal units, as `runner mem` prints).
pub(crate) fn human_bytes(n: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit + 1 == units.len() && value >= 1000.0 {
        return format!("{n:.1e} B");
    }
    format!("{value:.1} {}", units[unit])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 digest of `bytes`, in lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Closest candidate by edit distance, if it is close enough to be a plausible typo.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_atomic_names_the_failed_step() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_atomic(&dir.path().join("missing/out.csv"), b"x").unwrap_err();
        assert_eq!(e.step, WriteStep::Create);
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
