//! The results folder as the live page sees it: which sweeps it holds, what a request may name,
//! and each sweep's results loaded once per change. Nothing here writes to the folder.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::report::SweepResults;

/// The files whose change changes what the page shows of a sweep.
const WATCHED: [&str; 3] = ["trials.csv", "steps.csv", ".trials.journal"];

/// Size, modification time and inode of each watched file (`None` when missing): trials.csv
/// replaced atomically gets a new inode even when its size and time happen to match.
pub(crate) type Signature = [Option<(u64, i64, i64, u64)>; 3];

/// Why a sweep name in a request was not served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not a plain folder name (`..`, a slash, a hidden name) or outside the results folder.
    BadName,
    /// No such sweep (never was, or deleted).
    NotFound,
}

/// A sweep's results as read, or the message saying why they could not be.
pub(crate) type Loaded = Arc<Result<SweepResults, String>>;

pub(crate) struct ResultsFolder {
    root: PathBuf,
    /// Per sweep: the signature its results were loaded at, and what was read.
    cache: Mutex<HashMap<String, (Signature, Loaded)>>,
    /// The last error logged per sweep, so the server log says each one once.
    logged: Mutex<HashMap<String, String>>,
}

impl ResultsFolder {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            cache: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The sweeps: folders directly under the root that hold trials.csv or a journal, by name.
    /// Empty when the root does not exist (yet).
    pub(crate) fn sweeps(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| plain_name(name))
            .filter(|name| {
                let dir = self.root.join(name);
                dir.join("trials.csv").is_file() || dir.join(".trials.journal").is_file()
            })
            .collect();
        names.sort();
        names
    }

    /// The folder of sweep `name`, checked to be a sweep directly inside the root.
    pub(crate) fn dir_of(&self, name: &str) -> Result<PathBuf, Refused> {
        if !plain_name(name) {
            return Err(Refused::BadName);
        }
        let dir = self.root.join(name);
        let (Ok(root), Ok(real)) = (self.root.canonicalize(), dir.canonicalize()) else {
            return Err(Refused::NotFound);
        };
        // A symlinked sweep folder pointing elsewhere is outside the folder served.
        if real.parent() != Some(root.as_path()) {
            return Err(Refused::BadName);
        }
        if !(real.join("trials.csv").is_file() || real.join(".trials.journal").is_file()) {
            return Err(Refused::NotFound);
        }
        Ok(real)
    }

    pub(crate) fn signature(&self, name: &str) -> Signature {
        let dir = self.root.join(name);
        WATCHED.map(|f| {
            fs::metadata(dir.join(f))
                .ok()
                .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
        })
    }

    /// Every sweep's signature: what the change watcher compares.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, Signature> {
        self.sweeps()
            .into_iter()
            .map(|n| {
                let s = self.signature(&n);
                (n, s)
            })
            .collect()
    }

    /// Sweep `name`'s results, read again only when one of its files changed. An unreadable
    /// or malformed file gives its message (with file and line), logged once on stderr.
    pub(crate) fn results(&self, name: &str) -> Result<Arc<Result<SweepResults, String>>, Refused> {
        let dir = self.dir_of(name)?;
        let sig = self.signature(name);
        if let Some((cached, results)) = self.cache.lock().unwrap().get(name)
            && *cached == sig
        {
            return Ok(results.clone());
        }
        let loaded = SweepResults::load(&dir).map_err(|e| format!("{e:#}"));
        let mut logged = self.logged.lock().unwrap();
        match &loaded {
            Err(msg) if logged.get(name) != Some(msg) => {
                eprintln!("serve: {msg}");
                logged.insert(name.to_string(), msg.clone());
            }
            Ok(_) => {
                logged.remove(name);
            }
            Err(_) => {}
        }
        let loaded = Arc::new(loaded);
        self.cache
            .lock()
            .unwrap()
            .insert(name.to_string(), (sig, loaded.clone()));
        Ok(loaded)
    }
}

/// A single visible path component: no separators, no `..`, not hidden.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, ResultsFolder) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("results");
        for (name, file) in [("a", "trials.csv"), ("b", ".trials.journal")] {
            fs::create_dir_all(root.join(name)).unwrap();
            fs::write(root.join(name).join(file), "").unwrap();
        }
        fs::create_dir_all(root.join("plots_only")).unwrap();
        fs::create_dir_all(root.join(".hidden")).unwrap();
        fs::write(root.join(".hidden/trials.csv"), "").unwrap();
        let f = ResultsFolder::new(root);
        (tmp, f)
    }

    #[test]
    fn sweeps_are_the_folders_with_results() {
        let (_tmp, f) = folder();
        assert_eq!(f.sweeps(), ["a", "b"]);
        let gone = ResultsFolder::new(f.root().join("missing"));
        assert!(gone.sweeps().is_empty());
    }

    #[test]
    fn names_cannot_leave_the_folder() {
        let (tmp, f) = folder();
        fs::write(tmp.path().join("trials.csv"), "secret").unwrap();
        for bad in [
            "..",
            "../results",
            "a/..",
            "/etc",
            ".hidden",
            "",
            "a\\b",
            ".",
        ] {
            assert_eq!(f.dir_of(bad), Err(Refused::BadName), "{bad:?}");
        }
        assert_eq!(f.dir_of("plots_only"), Err(Refused::NotFound));
        assert_eq!(f.dir_of("nope"), Err(Refused::NotFound));
        assert!(f.dir_of("a").unwrap().ends_with("results/a"));
        // A symlink inside the folder that points out of it is refused too.
        std::os::unix::fs::symlink(tmp.path(), f.root().join("link")).unwrap();
        assert_eq!(f.dir_of("link"), Err(Refused::BadName));
    }

    #[test]
    fn results_are_read_again_only_after_a_change() {
        let (_tmp, f) = folder();
        let dir = f.root().join("a");
        fs::write(
            dir.join("trials.csv"),
            "trial_id,x,status,seconds,score\nt1,1,ok,0.5,3\n",
        )
        .unwrap();
        let first = f.results("a").unwrap();
        assert_eq!(first.as_ref().as_ref().unwrap().trials.len(), 1);
        assert!(Arc::ptr_eq(&first, &f.results("a").unwrap()));
        fs::write(
            dir.join("trials.csv"),
            "trial_id,x,status,seconds,score\nt1,1,ok,0.5,3\nt2,2,ok,0.5,bad,extra\n",
        )
        .unwrap();
        let err = f.results("a").unwrap();
        let msg = err.as_ref().as_ref().unwrap_err();
        assert!(msg.contains("trials.csv:3"), "{msg}");
    }
}
