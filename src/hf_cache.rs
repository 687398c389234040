//! Finding a model by its Hugging Face hub id (`org/name`, or `org/name/file.gguf`) in the
//! cache that `huggingface_hub` and transformers fill, offline: `$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. A repository lives in
//! `models--org--name/`, its files in `snapshots/<commit>/` (links into `blobs/`), and
//! `refs/main` names the commit that `main` was when last downloaded.

use std::path::{Path, PathBuf};

/// The cache folder, from the environment as `huggingface_hub` reads it.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/huggingface/hub")
}

/// A hub id split into the repository (`org/name`) and an optional file inside it.
pub fn parse_id(id: &str) -> Option<(&str, Option<&str>)> {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let parts: Vec<&str> = id.split('/').collect();
    match parts.as_slice() {
        [org, name] if ok(org) && ok(name) => Some((id, None)),
        [org, name, file] if ok(org) && ok(name) && ok(file) => {
            Some((&id[..org.len() + 1 + name.len()], Some(*file)))
        }
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "'{id}' is neither a local path nor in the Hugging Face cache (looked in {looked}); fetch it with:\n  hf download {repo}\n(pip install huggingface_hub), or set HF_HUB_CACHE or HF_HOME to the cache that holds it"
    )]
    Missing {
        id: String,
        repo: String,
        looked: String,
    },
    #[error(
        "'{id}': the cached snapshot {snapshot} has several GGUF files ({files}); name one as {repo}/FILE.gguf"
    )]
    Ambiguous {
        id: String,
        repo: String,
        snapshot: PathBuf,
        files: String,
    },
    #[error(
        "'{id}': the cached snapshot {snapshot} has neither config.json nor a .gguf file (an incomplete download?)"
    )]
    NoModel { id: String, snapshot: PathBuf },
}

/// The model `id` names in the cache at `root`: the snapshot folder of a transformers
/// checkpoint, or the one GGUF file of a GGUF repository (or the file the id names).
pub fn resolve_in(root: &Path, id: &str) -> Result<PathBuf, CacheError> {
    let (repo, file) = parse_id(id).expect("called with a hub id");
    let folder = format!("models--{}", repo.replace('/', "--"));
    let repo_dir = find_repo(root, &folder);
    let snapshot = repo_dir.as_deref().and_then(newest_snapshot);
    let missing = |looked: &Path| CacheError::Missing {
        id: id.to_string(),
        repo: repo.to_string(),
        looked: looked.display().to_string(),
    };
    let Some(snapshot) = snapshot else {
        let looked = repo_dir.unwrap_or_else(|| root.join(&folder));
        return Err(missing(&looked));
    };
    if let Some(file) = file {
        let path = snapshot.join(file);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(missing(&path))
        };
    }
    if snapshot.join("config.json").is_file() {
        return Ok(snapshot);
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(&snapshot)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
        .collect();
    ggufs.sort();
    match ggufs.len() {
        1 => Ok(ggufs.remove(0)),
        0 => Err(CacheError::NoModel {
            id: id.to_string(),
            snapshot,
        }),
        _ => Err(CacheError::Ambiguous {
            id: id.to_string(),
            repo: repo.to_string(),
            files: ggufs
                .iter()
                .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
            snapshot,
        }),
    }
}

/// The repository's folder: the exact name, else one that differs only in case (hub ids
/// are case-insensitive on the hub, and people type them either way).
fn find_repo(root: &Path, folder: &str) -> Option<PathBuf> {
    let exact = root.join(folder);
    if exact.is_dir() {
        return Some(exact);
    }
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(folder))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
}

/// The snapshot `refs/main` names when it exists; else the most recently modified one.
fn newest_snapshot(repo_dir: &Path) -> Option<PathBuf> {
    let snapshots = repo_dir.join("snapshots");
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs/main")) {
        let dir = snapshots.join(commit.trim());
        if !commit.trim().is_empty() && dir.is_dir() {
            return Some(dir);
        }
    }
    std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// Models in the cache at `root`: (hub id, resolved path).
pub fn cached_models(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("models--")?.replacen("--", "/", 1);
            parse_id(&id)?;
            resolve_in(root, &id).ok().map(|p| (id, p))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache folder laid out as huggingface_hub writes it: files are links into blobs/.
    fn repo(root: &Path, id: &str, commit: &str, files: &[&str]) -> PathBuf {
        let dir = root.join(format!("models--{}", id.replace('/', "--")));
        let snap = dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        for f in files {
            let blob = dir.join("blobs").join(format!("{commit}-{f}"));
            std::fs::write(&blob, f.as_bytes()).unwrap();
            std::os::unix::fs::symlink(&blob, snap.join(f)).unwrap();
        }
        snap
    }

    #[test]
    fn ids_are_org_and_name_with_an_optional_file() {
        assert_eq!(
            parse_id("Qwen/Qwen2.5-0.5B"),
            Some(("Qwen/Qwen2.5-0.5B", None))
        );
        assert_eq!(
            parse_id("bartowski/x-GGUF/x.Q4_K_M.gguf"),
            Some(("bartowski/x-GGUF", Some("x.Q4_K_M.gguf")))
        );
        for bad in [
            "model.gguf",
            "./a/b",
            "a/../b",
            "/abs/path",
            "a//b",
            "a/b/c/d",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn refs_main_picks_the_snapshot_and_gguf_repos_give_their_file() {
        let root = tempfile::tempdir().unwrap();
        let old = repo(root.path(), "org/tiny", "aaa", &["config.json"]);
        let new = repo(root.path(), "org/tiny", "bbb", &["config.json"]);
        let dir = root.path().join("models--org--tiny");
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs/main"), "aaa").unwrap();
        assert_eq!(resolve_in(root.path(), "org/tiny").unwrap(), old);
        std::fs::remove_file(dir.join("refs/main")).unwrap();
        // Without refs/main: the newest snapshot.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        std::fs::File::open(&new)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(resolve_in(root.path(), "ORG/Tiny").unwrap(), new);

        let snap = repo(root.path(), "org/q-GGUF", "c1", &["a.Q4_K_M.gguf"]);
        assert_eq!(
            resolve_in(root.path(), "org/q-GGUF").unwrap(),
            snap.join("a.Q4_K_M.gguf")
        );
        let listed = cached_models(root.path());
        assert_eq!(
            listed.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["org/q-GGUF", "org/tiny"]
        );
    }

    #[test]
    fn missing_and_ambiguous_models_say_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let err = resolve_in(root.path(), "Qwen/Qwen2.5-0.5B")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models--Qwen--Qwen2.5-0.5B")
                && err.contains("hf download Qwen/Qwen2.5-0.5B"),
            "{err}"
        );
        repo(
            root.path(),
            "org/m-GGUF",
            "c",
            &["m.Q4_K_M.gguf", "m.Q8_0.gguf"],
        );
        let err = resolve_in(root.path(), "org/m-GGUF")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.Q4_K_M.gguf, m.Q8_0.gguf") && err.contains("org/m-GGUF/FILE.gguf"),
            "{err}"
        );
        assert!(resolve_in(root.path(), "org/m-GGUF/m.Q8_0.gguf").is_ok());
        let err = resolve_in(root.path(), "org/m-GGUF/m.Q5_K.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.Q5_K.gguf"), "{err}");
        repo(root.path(), "org/partial", "c", &["README.md"]);
        let err = resolve_in(root.path(), "org/partial")
            .unwrap_err()
            .to_string();
        assert!(err.contains("incomplete download"), "{err}");
    }
}
