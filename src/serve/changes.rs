//! Which sweeps changed, as they change: the page is told (server-sent events) instead of
//! polling. File events (notify, as `--watch` uses) on the results folder and on each sweep's
//! folder wake the check; the check itself compares every sweep's file signatures, so a
//! replaced trials.csv, a deleted folder or a new sweep all count. A slow poll backs the events
//! up where a filesystem delivers none (NFS on a cluster) and while the folder does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::broadcast;

use super::folder::{ResultsFolder, Signature};

/// A check runs at least this often without any file event.
const POLL: Duration = Duration::from_secs(2);
/// After a file event, wait this long for its siblings (a sweep writes several files).
const SETTLE: Duration = Duration::from_millis(100);

/// The names of the sweeps that appeared, vanished or changed between two snapshots.
pub(crate) fn changed(
    before: &BTreeMap<String, Signature>,
    after: &BTreeMap<String, Signature>,
) -> Vec<String> {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|n| before.get(*n) != after.get(*n))
        .cloned()
        .collect()
}

/// Starts the thread that sends the names of changed sweeps (a JSON list) to `tx`; it runs
/// for the rest of the process. The first snapshot is taken here, before the caller serves
/// anything: taken by the thread, it could come after a change a page was already told of
/// the state before (a loaded machine can start a thread late), and that change would never
/// be reported.
pub(crate) fn spawn(folder: Arc<ResultsFolder>, tx: broadcast::Sender<Arc<str>>) {
    let first = folder.snapshot();
    std::thread::Builder::new()
        .name("serve-changes".into())
        .spawn(move || follow(&folder, &tx, first))
        .expect("starting a thread");
}

fn follow(
    folder: &ResultsFolder,
    tx: &broadcast::Sender<Arc<str>>,
    mut last: BTreeMap<String, Signature>,
) {
    let (event_tx, events) = mpsc::channel();
    // Without a watcher (inotify limits reached), the poll alone keeps the page current.
    let mut watcher: Option<RecommendedWatcher> = notify::recommended_watcher(event_tx).ok();
    let mut watched: Vec<std::path::PathBuf> = Vec::new();
    loop {
        // Watch the root and every sweep folder (not recursively: trial folders hold
        // checkpoints whose writes do not concern the page).
        let mut want = vec![folder.root().to_path_buf()];
        want.extend(last.keys().map(|n| folder.root().join(n)));
        if want != watched
            && let Some(w) = watcher.as_mut()
        {
            for p in &watched {
                let _ = w.unwatch(p);
            }
            watched = want
                .into_iter()
                .filter(|p| w.watch(p, RecursiveMode::NonRecursive).is_ok())
                .collect();
        }
        match events.recv_timeout(POLL) {
            Ok(_) => {
                std::thread::sleep(SETTLE);
                while events.try_recv().is_ok() {}
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
        let now = folder.snapshot();
        let names = changed(&last, &now);
        if !names.is_empty() {
            let json = serde_json::to_string(&names).expect("a list of names");
            // No page open is fine: nobody to tell.
            let _ = tx.send(Arc::from(json));
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_replaced_and_deleted_sweeps_are_changes() {
        let sig = |n: u64| -> Signature { [Some((n, 0, 0, 1)), None, None] };
        let before: BTreeMap<String, Signature> = [
            ("a".into(), sig(1)),
            ("b".into(), sig(1)),
            ("c".into(), sig(1)),
        ]
        .into();
        let after: BTreeMap<String, Signature> = [
            ("a".into(), sig(1)),
            ("b".into(), sig(2)),
            ("d".into(), sig(1)),
        ]
        .into();
        assert_eq!(changed(&before, &after), ["b", "c", "d"]);
        assert!(changed(&after, &after).is_empty());
    }

    #[test]
    fn a_change_on_disk_reaches_subscribers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("results");
        let folder = Arc::new(ResultsFolder::new(root.clone()));
        let (tx, mut rx) = broadcast::channel(16);
        spawn(folder, tx);
        // The folder does not exist yet: the sweep appearing is found by the poll.
        std::thread::sleep(Duration::from_millis(200));
        std::fs::create_dir_all(root.join("s")).unwrap();
        std::fs::write(root.join("s/trials.csv"), "trial_id,status,seconds\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let got = loop {
            match rx.try_recv() {
                Ok(msg) => break msg,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("no change reported: {e}"),
            }
        };
        assert_eq!(&*got, r#"["s"]"#);
    }
}
