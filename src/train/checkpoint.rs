//! Training checkpoints: everything needed to continue a run as if it had never stopped.
//!
//! `root/step-00000120/` holds `trainable.safetensors` (the trainable parameters by name),
//! `optimizer.safetensors` (AdamW's two moments per parameter) and `trainer.json` (step and
//! data position, skip counters, the dropout RNG's exact state, the schedule, the recipe's
//! hash). `root/latest` names the newest one.
//!
//! Crash safety: a checkpoint is written into a hidden temporary folder, every file and the
//! folder are fsynced, and only then is it renamed to `step-N`; `latest` is replaced
//! atomically afterwards and older checkpoints are pruned last. A process killed at any
//! moment leaves `latest` (or, failing that, the highest `step-N`) complete and loadable.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::optim::HostMoments;
use super::trainer::{Progress, ScheduleKind, Trainer};
use crate::model::Llama;
use crate::model::params::{Param, ParamVisitor};
use crate::model::save::{HostTensor, host, write_atomic, write_safetensors};

const FORMAT: u32 = 1;
const TRAINABLE: &str = "trainable.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "trainer.json";
const LATEST: &str = "latest";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("no checkpoint in {0} (no 'latest' file and no step-N folder)")]
    NotFound(PathBuf),
    #[error("{path}: the checkpoint does not fit this model: {msg}")]
    Mismatch { path: PathBuf, msg: String },
}

/// The dropout RNG's position: ChaCha's seed, stream and word position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: String,
    pub stream: u64,
    pub word_pos: String,
}

impl RngState {
    fn of(rng: &ChaCha8Rng) -> Self {
        let seed: String = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        Self {
            seed,
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    fn restore(&self) -> Option<ChaCha8Rng> {
        use rand::SeedableRng;
        if self.seed.len() != 64 {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).ok()?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

/// `trainer.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    pub progress: Progress,
    /// AdamW's bias-correction step count.
    pub optimizer_steps: u64,
    pub schedule: ScheduleState,
    pub rng: RngState,
    /// Hash of the recipe that wrote the checkpoint, when it ran from one.
    pub recipe_hash: Option<String>,
    /// Unix seconds.
    pub saved_at: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub kind: String,
    pub warmup: usize,
    pub total: Option<usize>,
    pub base_lr: f64,
}

/// What [`load`] restored, and anything the caller should tell the user.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    pub path: PathBuf,
    pub state: TrainerState,
    pub warnings: Vec<String>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

fn fsync_dir(dir: &Path) -> Result<(), CheckpointError> {
    crate::util::sync_folder(dir).map_err(io_err(dir))
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Checkpoint folders under `root`, oldest first.
fn step_dirs(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((step_of(&e.file_name().to_string_lossy())?, e.path())))
        .filter(|(_, p)| is_checkpoint(p))
        .collect();
    out.sort();
    out
}

/// True when `dir` is a checkpoint runner wrote, checked before anything is loaded from it or
/// deleted: its state file parses as this format, and it holds nothing but runner's three
/// files (a folder named `step-N` with anything of the user's in it is left alone).
fn is_checkpoint(dir: &Path) -> bool {
    let state_ok = fs::read(dir.join(STATE))
        .ok()
        .and_then(|b| serde_json::from_slice::<TrainerState>(&b).ok())
        .is_some_and(|s| s.format == FORMAT);
    let only_ours = fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().all(|e| {
            let n = e.file_name();
            [TRAINABLE, OPTIMIZER, STATE].iter().any(|ours| n == *ours)
        })
    });
    state_ok && only_ours
}

/// Collects the trainable parameters as host tensors.
struct Trainables(Vec<HostTensor>);

impl<B: Backend> ParamVisitor<B> for Trainables {
    fn visit1(&mut self, name: &str, p: &mut Param<B, 1>) {
        if p.trainable {
            let (shape, v) = host(&p.value);
            self.0.push((name.to_string(), shape, v));
        }
    }
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        if p.trainable {
            let (shape, v) = host(&p.value);
            self.0.push((name.to_string(), shape, v));
        }
    }
}

/// Saves a checkpoint of `trainer` and `model`'s trainable parameters under `root`, keeping
/// the newest `keep` (at least 1). Returns the checkpoint's folder.
pub fn save<B: AutodiffBackend>(
    root: &Path,
    trainer: &Trainer<B>,
    model: &mut Llama<B>,
    recipe_hash: Option<&str>,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(root).map_err(io_err(root))?;
    let name = step_dir_name(trainer.progress.step);
    let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;

    let mut trainables = Trainables(Vec::new());
    model.visit(&mut trainables);
    let save_err = |e: crate::model::save::SaveError| CheckpointError::Io {
        path: tmp.clone(),
        msg: e.to_string(),
    };
    write_safetensors(&tmp.join(TRAINABLE), &trainables.0).map_err(save_err)?;
    let mut moments = Vec::new();
    for (pname, HostMoments { m, v }) in trainer.optim.export_state() {
        moments.push((format!("{pname}.exp_avg"), vec![m.len()], m));
        moments.push((format!("{pname}.exp_avg_sq"), vec![v.len()], v));
    }
    write_safetensors(&tmp.join(OPTIMIZER), &moments).map_err(save_err)?;
    let s = &trainer.schedule;
    let state = TrainerState {
        format: FORMAT,
        progress: trainer.progress.clone(),
        optimizer_steps: trainer.optim.steps,
        schedule: ScheduleState {
            kind: match s.kind {
                ScheduleKind::Constant => "constant",
                ScheduleKind::Linear => "linear",
                ScheduleKind::Cosine => "cosine",
            }
            .into(),
            warmup: s.warmup,
            total: s.total,
            base_lr: trainer.optim.config.lr,
        },
        rng: RngState::of(&trainer.rng),
        recipe_hash: recipe_hash.map(String::from),
        saved_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let json = serde_json::to_vec_pretty(&state).expect("serializable state");
    // write_atomic syncs the folder it writes in.
    write_atomic(&tmp.join(STATE), &json).map_err(save_err)?;

    let dest = root.join(&name);
    let old = root.join(format!(".{name}.old-{}", std::process::id()));
    if dest.exists() {
        // Saving the same step again: move the old copy aside first; until the new one is
        // in place, loading falls back to the highest complete step-N.
        fs::rename(&dest, &old).map_err(io_err(&dest))?;
    }
    fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
    fsync_dir(root)?;
    write_atomic(&root.join(LATEST), format!("{name}\n").as_bytes()).map_err(|e| {
        CheckpointError::Io {
            path: root.join(LATEST),
            msg: e.to_string(),
        }
    })?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    prune(root, &name, keep.max(1))?;
    Ok(dest)
}

/// Removes all but the newest `keep` checkpoints (never `current`), and temporary folders
/// that an interrupted save or prune left behind. Only folders [`is_checkpoint`] accepts
/// count and are deleted: a `step-N` folder of the user's beside them is never touched. A
/// checkpoint is renamed to a hidden name before it is deleted, so a kill mid-delete leaves
/// a hidden folder the next prune removes, never a half-deleted `step-N`.
fn prune(root: &Path, current: &str, keep: usize) -> Result<(), CheckpointError> {
    let dirs = step_dirs(root);
    let excess = dirs.len().saturating_sub(keep);
    let doomed: Vec<PathBuf> = dirs.into_iter().take(excess).map(|(_, p)| p).collect();
    for path in doomed {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if name == current {
            continue;
        }
        let aside = root.join(format!(".{name}.old-{}-pruned", std::process::id()));
        fs::rename(&path, &aside).map_err(io_err(&path))?;
        fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
    }
    for entry in fs::read_dir(root).map_err(io_err(root))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(".step-") && (n.contains(".tmp-") || n.contains(".old-")) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// The checkpoint folder `root` points at: `latest`, else the highest complete `step-N`,
/// else `root` itself when it is a checkpoint folder. `None` when there is none.
pub fn find(root: &Path) -> Option<PathBuf> {
    if let Ok(name) = fs::read_to_string(root.join(LATEST)) {
        let dir = root.join(name.trim());
        if dir.join(STATE).is_file() {
            return Some(dir);
        }
    }
    if let Some((_, dir)) = step_dirs(root).pop() {
        return Some(dir);
    }
    root.join(STATE).is_file().then(|| root.to_path_buf())
}

/// Tensors by name: shape and f32 values.
type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn read_f32_tensors(path: &Path) -> Result<NamedTensors, CheckpointError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let invalid = |msg: String| CheckpointError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(invalid(format!(
                "tensor '{name}' is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// Replaces each trainable parameter with the checkpoint's tensor of the same name.
struct Restore<'a> {
    tensors: &'a mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    problems: Vec<String>,
}

impl Restore<'_> {
    fn take<B: Backend, const D: usize>(&mut self, name: &str, p: &mut Param<B, D>) {
        if !p.trainable {
            return;
        }
        match self.tensors.remove(name) {
            None => self.problems.push(format!(
                "the model trains '{name}', which the checkpoint lacks"
            )),
            Some((shape, _)) if shape != p.value.dims().to_vec() => self.problems.push(format!(
                "'{name}' is {:?} in the model but {shape:?} in the checkpoint",
                p.value.dims()
            )),
            Some((shape, values)) => {
                let device = p.value.device();
                *p = Param::new(
                    Tensor::from_data(TensorData::new(values, shape), &device),
                    true,
                );
            }
        }
    }
}

impl<B: Backend> ParamVisitor<B> for Restore<'_> {
    fn visit1(&mut self, name: &str, p: &mut Param<B, 1>) {
        self.take(name, p);
    }
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        self.take(name, p);
    }
}

/// Restores the checkpoint that `root` points at (see [`find`]) into `trainer` and `model`.
/// The model must train the same parameters (same adapters attached) as when it was saved;
/// nothing is changed when it does not.
pub fn load<B: AutodiffBackend>(
    root: &Path,
    trainer: &mut Trainer<B>,
    model: &mut Llama<B>,
    recipe_hash: Option<&str>,
) -> Result<LoadReport, CheckpointError> {
    let dir = find(root).ok_or_else(|| CheckpointError::NotFound(root.to_path_buf()))?;
    let state_path = dir.join(STATE);
    let text = fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
            path: state_path.clone(),
            msg: format!("invalid trainer state: {e}"),
        })?;
    if state.format != FORMAT {
        return Err(CheckpointError::Invalid {
            path: state_path,
            msg: format!(
                "checkpoint format {} is not supported (expected {FORMAT})",
                state.format
            ),
        });
    }
    let rng = state
        .rng
        .restore()
        .ok_or_else(|| CheckpointError::Invalid {
            path: state_path.clone(),
            msg: "invalid RNG state".into(),
        })?;
    let mut tensors = read_f32_tensors(&dir.join(TRAINABLE))?;
    let mut moments = read_f32_tensors(&dir.join(OPTIMIZER))?;

    // Check everything against a copy first, so a mismatch leaves the model untouched.
    let mut probe = model.clone();
    let mut check = Restore {
        tensors: &mut tensors.clone(),
        problems: Vec::new(),
    };
    probe.visit(&mut check);
    let mut problems = check.problems;
    if let Some(extra) = check.tensors.keys().min() {
        problems.push(format!(
            "the checkpoint has '{extra}', which the model does not train ({} such tensors)",
            check.tensors.len()
        ));
    }
    if !problems.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: dir,
            msg: format!(
                "{} (attach the same adapters, with the same names, before loading)",
                problems.join("; ")
            ),
        });
    }
    drop(probe);
    model.visit(&mut Restore {
        tensors: &mut tensors,
        problems: Vec::new(),
    });

    let mut names: Vec<String> = moments
        .keys()
        .filter_map(|k| k.strip_suffix(".exp_avg").map(String::from))
        .collect();
    names.sort();
    let mut state_moments = Vec::with_capacity(names.len());
    for name in names {
        let m = moments.remove(&format!("{name}.exp_avg")).map(|t| t.1);
        let v = moments.remove(&format!("{name}.exp_avg_sq")).map(|t| t.1);
        match (m, v) {
            (Some(m), Some(v)) if m.len() == v.len() => {
                state_moments.push((name, HostMoments { m, v }))
            }
            _ => {
                return Err(CheckpointError::Invalid {
                    path: dir.join(OPTIMIZER),
                    msg: format!("moments of '{name}' are incomplete"),
                });
            }
        }
    }
    let device = model.embed_tokens.value.clone().inner().device();
    trainer
        .optim
        .import_state(state.optimizer_steps, state_moments, &device);
    trainer.progress = state.progress.clone();
    trainer.rng = rng;

    let mut warnings = Vec::new();
    if let (Some(saved), Some(now)) = (&state.recipe_hash, recipe_hash)
        && saved != now
    {
        warnings.push("the recipe changed since this checkpoint was saved".to_string());
    }
    let s = &trainer.schedule;
    if state.schedule.warmup != s.warmup
        || state.schedule.total != s.total
        || state.schedule.base_lr != trainer.optim.config.lr
    {
        warnings.push(format!(
            "the learning-rate schedule differs from the checkpoint's (lr {} warmup {} total {:?} then; lr {} warmup {} total {:?} now)",
            state.schedule.base_lr, state.schedule.warmup, state.schedule.total, trainer.optim.config.lr, s.warmup, s.total
        ));
    }
    Ok(LoadReport {
        path: dir,
        state,
        warnings,
    })
}
