//! Fingerprints of the files a recipe reads (required Lua modules, data, models), so that a
//! trial id changes when its inputs change, and `--watch` knows what to watch.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::util::hex;

/// Files up to this size are hashed whole; larger ones (model weights) by size, their first
/// and last mebibyte and [`SAMPLES`] blocks spread between: quick, and still catches a
/// replaced file. Not the modification time: a model fetched again, or copied to another
/// node's cache, is the same input and keeps its finished trials.
const HASH_WHOLE_LIMIT: u64 = 64 << 20;
const EDGE: u64 = 1 << 20;
const SAMPLES: u64 = 16;
const SAMPLE: u64 = 64 << 10;

/// A short fingerprint of a file, or of a folder's files (a Hugging Face model directory).
/// A missing path has the fingerprint "missing".
pub fn fingerprint(path: &Path) -> io::Result<String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok("missing".into()),
        Err(e) => return Err(e),
    };
    let mut h = Sha256::new();
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            h.update(
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            h.update(file_digest(&p)?);
        }
    } else {
        h.update(file_digest(path)?);
    }
    Ok(hex(&h.finalize()[..8]))
}

fn file_digest(path: &Path) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    let mut h = Sha256::new();
    let len = meta.len();
    h.update(len.to_le_bytes());
    let mut f = fs::File::open(path)?;
    if len <= HASH_WHOLE_LIMIT {
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf)?;
        h.update(&buf);
    } else {
        let mut read_at = |at: u64, size: u64| -> io::Result<()> {
            let mut buf = vec![0u8; size as usize];
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut buf)?;
            h.update(&buf);
            Ok(())
        };
        read_at(0, EDGE)?;
        let span = len - 2 * EDGE - SAMPLE;
        for i in 0..SAMPLES {
            read_at(EDGE + span * i / (SAMPLES - 1), SAMPLE)?;
        }
        read_at(len - EDGE, EDGE)?;
    }
    Ok(h.finalize().to_vec())
}

/// The files a recipe has read so far, in first-read order, each with its fingerprint when
/// first read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inputs {
    files: Vec<(PathBuf, String)>,
}

impl Inputs {
    /// Records a file (once); returns its fingerprint.
    pub(crate) fn note(&mut self, path: &Path) -> io::Result<String> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some((_, f)) = self.files.iter().find(|(p, _)| *p == path) {
            return Ok(f.clone());
        }
        let f = fingerprint(&path)?;
        self.files.push((path, f.clone()));
        Ok(f)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    pub(crate) fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// The files noted since the first `since`, with their fingerprints.
    #[cfg(test)]
    pub(crate) fn since(&self, since: usize) -> &[(PathBuf, String)] {
        &self.files[since.min(self.files.len())..]
    }

    /// One line per file: what a trial id hashes.
    pub(crate) fn describe(&self) -> String {
        self.files
            .iter()
            .map(|(p, f)| format!("{}={f}\n", p.display()))
            .collect()
    }
}

/// Whether every recorded `(path, fingerprint)` still holds.
pub(crate) fn unchanged(recorded: &[(PathBuf, String)]) -> bool {
    recorded
        .iter()
        .all(|(p, f)| fingerprint(p).map(|now| now == *f).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_follow_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        assert_eq!(fingerprint(&p).unwrap(), "missing");
        fs::write(&p, "one").unwrap();
        let a = fingerprint(&p).unwrap();
        assert_eq!(a, fingerprint(&p).unwrap());
        fs::write(&p, "two").unwrap();
        assert_ne!(a, fingerprint(&p).unwrap());
        let d = fingerprint(dir.path()).unwrap();
        fs::write(dir.path().join("b"), "x").unwrap();
        assert_ne!(d, fingerprint(dir.path()).unwrap());

        let mut inputs = Inputs::default();
        inputs.note(&p).unwrap();
        inputs.note(&p).unwrap();
        assert_eq!(inputs.len(), 1);
        assert!(unchanged(inputs.since(0)));
        fs::write(&p, "three").unwrap();
        assert!(!unchanged(inputs.since(0)));
    }

    /// A large file (model weights) keeps its fingerprint when only its modification time
    /// changes (fetched again, copied to another cache) and loses it when bytes in its middle
    /// change.
    #[test]
    fn large_files_are_fingerprinted_by_content_not_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.bin");
        let len = HASH_WHOLE_LIMIT as usize + 3 * EDGE as usize + 12_345;
        let mut bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        fs::write(&p, &bytes).unwrap();
        let a = fingerprint(&p).unwrap();
        let file = fs::File::options().write(true).open(&p).unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7))
            .unwrap();
        drop(file);
        assert_eq!(
            fingerprint(&p).unwrap(),
            a,
            "a new modification time changed it"
        );
        // A byte inside the sampled block nearest the middle.
        let middle = (EDGE + (len as u64 - 2 * EDGE - SAMPLE) * 8 / (SAMPLES - 1)) as usize;
        bytes[middle + 100] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert_ne!(
            fingerprint(&p).unwrap(),
            a,
            "a changed byte in the middle went unseen"
        );
    }
}
