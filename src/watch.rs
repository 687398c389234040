//! File watching for `runner --watch`: re-run a recipe when it or a file it depends on changes.
//!
//! We watch the *parent directories* (non-recursively) instead of the files themselves, because
//! editors often save by writing a temporary file and renaming it over the original, or by
//! deleting and recreating it; an inode watch on the file would be lost after the first save.
//! Events are then filtered to the watched paths, and after a debounce each candidate's content
//! hash is compared with the last one seen, so that one save gives exactly one re-run however
//! many events the editor produced.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

/// How often the stop flag is checked while waiting.
const POLL: Duration = Duration::from_millis(100);

/// What a file holds; mtime is left out on purpose so that saving identical bytes is no change.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fingerprint {
    Missing,
    Present([u8; 32]),
}

struct WatchedFile {
    /// As the caller gave it; this is what gets reported back.
    path: PathBuf,
    /// Absolute, with the deepest existing directory canonicalized: the form notify reports.
    key: PathBuf,
    /// Content when watching started or when a change was last reported.
    baseline: Fingerprint,
}

/// Watches a small set of files and reports when their content changes.
pub struct FileWatcher {
    files: Vec<WatchedFile>,
    /// Event path -> indices into `files` (a symlinked file is also known by its target).
    keys: HashMap<PathBuf, Vec<usize>>,
    /// Files already differing from their baseline when `watch_files` was called.
    pending: BTreeSet<usize>,
    /// Kept alive so that its directory watches stay registered.
    _watcher: RecommendedWatcher,
    rx: Receiver<notify::Result<Event>>,
}

/// Events gathered during one wait.
#[derive(Default)]
struct Batch {
    candidates: BTreeSet<usize>,
    /// A directory on the way to a watched file appeared, vanished or moved.
    rearm: bool,
}

impl FileWatcher {
    /// Starts watching nothing yet.
    pub fn new() -> Result<Self> {
        let (watcher, rx) = start_watcher()?;
        Ok(Self {
            files: Vec::new(),
            keys: HashMap::new(),
            pending: BTreeSet::new(),
            _watcher: watcher,
            rx,
        })
    }

    /// Replaces the watched set with these files (recipe, required Lua modules, data files).
    /// Files that do not exist yet are watched too: their creation counts as a change.
    ///
    /// A file that was already watched keeps its baseline, so an edit made while the recipe ran
    /// (between the previous `wait_for_change` and this call) is reported by the next wait.
    pub fn watch_files(&mut self, files: &[PathBuf]) -> Result<()> {
        let old: HashMap<PathBuf, Fingerprint> =
            self.files.drain(..).map(|f| (f.key, f.baseline)).collect();
        let mut seen = HashSet::new();
        for path in files {
            let key = watch_key(path)?;
            if seen.insert(key.clone()) {
                self.files.push(WatchedFile {
                    path: path.clone(),
                    key,
                    baseline: Fingerprint::Missing,
                });
            }
        }
        // Watch before reading, so that a write racing with this call is not lost.
        self.arm()?;
        self.pending.clear();
        for (i, file) in self.files.iter_mut().enumerate() {
            let now = fingerprint(&file.key)?;
            file.baseline = old.get(&file.key).copied().unwrap_or(now);
            if file.baseline != now {
                self.pending.insert(i);
            }
        }
        Ok(())
    }

    /// Blocks until at least one watched file changed, then keeps collecting events until
    /// `debounce` passes with no new event, and returns the changed files (as given to
    /// `watch_files`, deduplicated and sorted). Returns `Ok(None)` once `stop` is true; it is
    /// checked at least every 100 ms.
    pub fn wait_for_change(
        &mut self,
        debounce: Duration,
        stop: &AtomicBool,
    ) -> Result<Option<Vec<PathBuf>>> {
        loop {
            let mut batch = Batch {
                candidates: std::mem::take(&mut self.pending),
                rearm: false,
            };
            // Wait for the first relevant event, unless watch_files already found a change.
            while batch.candidates.is_empty() && !batch.rearm {
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                if let Some(event) = self.recv(POLL)? {
                    self.note(event, &mut batch);
                }
            }
            // Debounce: editors emit bursts (truncate, write, close, rename...).
            let mut quiet_until = Instant::now() + debounce;
            loop {
                if stop.load(Ordering::Relaxed) {
                    self.pending = batch.candidates;
                    return Ok(None);
                }
                let now = Instant::now();
                if now >= quiet_until {
                    break;
                }
                if let Some(event) = self.recv((quiet_until - now).min(POLL))?
                    && self.note(event, &mut batch)
                {
                    quiet_until = Instant::now() + debounce;
                }
            }
            if batch.rearm {
                // Directories changed under us: watch anew and check every file.
                self.arm()?;
                batch.candidates.extend(0..self.files.len());
            }
            let mut changed = Vec::new();
            for i in batch.candidates {
                let file = &mut self.files[i];
                let now = fingerprint(&file.key)?;
                if now != file.baseline {
                    file.baseline = now;
                    changed.push(file.path.clone());
                }
            }
            if !changed.is_empty() {
                changed.sort();
                return Ok(Some(changed));
            }
            // Only spurious events (same bytes rewritten, editor temp files): keep waiting.
        }
    }

    /// Next event, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Result<Option<Event>> {
        match self.rx.recv_timeout(timeout) {
            Ok(event) => Ok(Some(event.context("file watcher error")?)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => bail!("the file watcher stopped unexpectedly"),
        }
    }

    /// Records an event in `batch`; true if it concerns a watched file.
    fn note(&self, event: Event, batch: &mut Batch) -> bool {
        if event.need_rescan() {
            // The kernel queue overflowed: events were lost, so check everything.
            batch.candidates.extend(0..self.files.len());
            return true;
        }
        let structural = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Any
                | EventKind::Other
        );
        // Close-after-write counts so that a slow writer keeps extending the debounce.
        let content = structural
            || matches!(
                event.kind,
                EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other)
                    | EventKind::Access(AccessKind::Close(AccessMode::Write))
            );
        if !content {
            return false;
        }
        let mut relevant = false;
        for path in &event.paths {
            if let Some(indices) = self.keys.get(path) {
                batch.candidates.extend(indices);
                relevant = true;
            } else if structural && self.keys.keys().any(|key| key.starts_with(path)) {
                batch.rearm = true;
                relevant = true;
            }
        }
        relevant
    }

    /// (Re)creates the notify watcher on the directories holding the watched files. A fresh
    /// watcher is simpler than patching watches whose directories were moved or deleted.
    fn arm(&mut self) -> Result<()> {
        let (mut watcher, rx) = start_watcher()?;
        self.keys.clear();
        let mut dirs = BTreeSet::new();
        for (i, file) in self.files.iter().enumerate() {
            let mut names = vec![file.key.clone()];
            // A symlinked file changes when its target does: watch the target's directory too.
            if let Ok(target) = fs::canonicalize(&file.key)
                && target != file.key
            {
                names.push(target);
            }
            for name in names {
                // A missing directory is watched through its nearest existing ancestor,
                // whose events tell us when to re-arm.
                let mut dir = name.parent().map(Path::to_path_buf).unwrap_or_default();
                while !dir.is_dir() {
                    dir = dir.parent().map(Path::to_path_buf).ok_or_else(|| {
                        anyhow!("no existing directory above {}", file.path.display())
                    })?;
                }
                dirs.insert(dir);
                self.keys.entry(name).or_default().push(i);
            }
        }
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("cannot watch directory {}", dir.display()))?;
        }
        self._watcher = watcher;
        self.rx = rx;
        Ok(())
    }
}

fn start_watcher() -> Result<(RecommendedWatcher, Receiver<notify::Result<Event>>)> {
    let (tx, rx) = mpsc::channel();
    let watcher = notify::recommended_watcher(tx).context("cannot start the file watcher")?;
    Ok((watcher, rx))
}

/// The path under which notify reports events for `path`: absolute, with its deepest existing
/// directory canonicalized (notify joins the watched directory with the entry's name).
fn watch_key(path: &Path) -> Result<PathBuf> {
    let abs =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut tail = Vec::new();
    let mut dir = abs.as_path();
    loop {
        let name = dir
            .file_name()
            .with_context(|| format!("{} does not name a file", path.display()))?;
        tail.push(name.to_os_string());
        dir = dir
            .parent()
            .with_context(|| format!("{} has no parent directory", path.display()))?;
        if let Ok(mut key) = fs::canonicalize(dir) {
            key.extend(tail.iter().rev());
            return Ok(key);
        }
    }
}

fn fingerprint(path: &Path) -> Result<Fingerprint> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if is_absent(&e) => return Ok(Fingerprint::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut hasher = Sha256::new();
    match io::copy(&mut file, &mut hasher) {
        Ok(_) => Ok(Fingerprint::Present(hasher.finalize().into())),
        // A directory where the file should be, or a file removed mid-read.
        Err(e) if is_absent(&e) => Ok(Fingerprint::Missing),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    const DEBOUNCE: Duration = Duration::from_millis(150);

    fn watcher_on(files: &[PathBuf]) -> FileWatcher {
        let mut w = FileWatcher::new().expect("watcher");
        w.watch_files(files).expect("watch_files");
        w
    }

    /// A stop flag that turns true after `ms` milliseconds.
    fn stop_after(ms: u64) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            flag.store(true, Ordering::Relaxed);
        });
        stop
    }

    /// Waits for a change, giving up after 5 s so that a broken watcher fails instead of hanging.
    fn next_change(w: &mut FileWatcher) -> Option<Vec<PathBuf>> {
        w.wait_for_change(DEBOUNCE, &stop_after(5000))
            .expect("wait")
    }

    /// Asserts that nothing more is reported within about a second.
    fn assert_quiet(w: &mut FileWatcher) {
        assert_eq!(
            w.wait_for_change(DEBOUNCE, &stop_after(1000))
                .expect("wait"),
            None
        );
    }

    fn recipe_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let recipe = dir.path().join("recipe.lua");
        fs::write(&recipe, "print(1)\n").expect("write");
        (dir, recipe)
    }

    #[test]
    fn plain_write_is_reported() {
        let (dir, recipe) = recipe_dir();
        let data = dir.path().join("data.csv");
        fs::write(&data, "a,b\n").unwrap();
        let mut w = watcher_on(&[recipe.clone(), data]);
        fs::write(&recipe, "print(2)\n").unwrap();
        assert_eq!(next_change(&mut w), Some(vec![recipe]));
    }

    #[test]
    fn rename_over_is_one_change() {
        let (dir, recipe) = recipe_dir();
        let mut w = watcher_on(std::slice::from_ref(&recipe));
        let tmp = dir.path().join("recipe.lua.tmp");
        fs::write(&tmp, "print(2)\n").unwrap();
        fs::rename(&tmp, &recipe).unwrap();
        assert_eq!(next_change(&mut w), Some(vec![recipe.clone()]));
        assert_quiet(&mut w);
        // The watch survives the inode swap.
        fs::write(&recipe, "print(3)\n").unwrap();
        assert_eq!(next_change(&mut w), Some(vec![recipe]));
    }

    #[test]
    fn unrelated_files_are_ignored() {
        let (dir, recipe) = recipe_dir();
        let mut w = watcher_on(&[recipe]);
        fs::write(dir.path().join("other.txt"), "x").unwrap();
        fs::write(dir.path().join(".recipe.lua.swp"), "x").unwrap();
        fs::create_dir(dir.path().join("results")).unwrap();
        fs::write(dir.path().join("results").join("metrics.csv"), "loss\n1\n").unwrap();
        assert_quiet(&mut w);
    }

    #[test]
    fn quick_writes_are_one_change() {
        let (_dir, recipe) = recipe_dir();
        let mut w = watcher_on(std::slice::from_ref(&recipe));
        for i in 0..5 {
            fs::write(&recipe, format!("print({i})\n-- edit\n")).unwrap();
            thread::sleep(Duration::from_millis(40));
        }
        assert_eq!(next_change(&mut w), Some(vec![recipe]));
        assert_quiet(&mut w);
    }

    #[test]
    fn delete_and_recreate_is_one_change() {
        let (_dir, recipe) = recipe_dir();
        let mut w = watcher_on(std::slice::from_ref(&recipe));
        fs::remove_file(&recipe).unwrap();
        thread::sleep(Duration::from_millis(30));
        fs::write(&recipe, "print('new')\n").unwrap();
        assert_eq!(next_change(&mut w), Some(vec![recipe]));
        assert_quiet(&mut w);
    }

    #[test]
    fn stop_flag_ends_wait_promptly() {
        let (_dir, recipe) = recipe_dir();
        let mut w = watcher_on(&[recipe]);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let setter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            flag.store(true, Ordering::Relaxed);
            Instant::now()
        });
        assert_eq!(w.wait_for_change(DEBOUNCE, &stop).unwrap(), None);
        let returned = Instant::now();
        let set_at = setter.join().unwrap();
        assert!(returned.duration_since(set_at) < Duration::from_millis(500));
    }

    #[test]
    fn identical_rewrite_is_no_change() {
        let (_dir, recipe) = recipe_dir();
        let mut w = watcher_on(std::slice::from_ref(&recipe));
        fs::write(&recipe, "print(1)\n").unwrap();
        assert_quiet(&mut w);
    }

    #[test]
    fn missing_file_and_directory_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        // Non-canonical and not yet existing: `lib/util.lua` appears later.
        let module = dir.path().join(".").join("lib").join("util.lua");
        let mut w = watcher_on(std::slice::from_ref(&module));
        fs::create_dir(dir.path().join("lib")).unwrap();
        fs::write(dir.path().join("lib/util.lua"), "return {}\n").unwrap();
        assert_eq!(next_change(&mut w), Some(vec![module.clone()]));
        fs::write(&module, "return { x = 1 }\n").unwrap();
        assert_eq!(next_change(&mut w), Some(vec![module]));
    }

    #[test]
    fn edit_between_watch_calls_is_reported() {
        let (dir, recipe) = recipe_dir();
        let mut w = watcher_on(std::slice::from_ref(&recipe));
        // Edited while the recipe ran, then watching is renewed with a new dependency.
        fs::write(&recipe, "print(2)\n").unwrap();
        w.watch_files(&[recipe.clone(), dir.path().join("mod.lua")])
            .unwrap();
        assert_eq!(next_change(&mut w), Some(vec![recipe]));
        assert_quiet(&mut w);
    }
}
