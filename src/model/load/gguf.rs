//! GGUF (v2, v3) reader: metadata and tensor table, parsed with bounds checks so that a
//! malformed file gives an error naming the file and tensor — never a panic or a huge
//! allocation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::dequant::{self, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor '{tensor}': {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::U64(v) => Some(*v),
            MetaValue::I64(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(v) => Some(*v),
            _ => None,
        }
    }
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::F64(v) => Some(*v),
            MetaValue::U64(v) => Some(*v as f64),
            MetaValue::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub(crate) fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` varies fastest (so a PyTorch `[out, in]` weight is `[in, out]`).
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Byte offset from the start of the file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub(crate) fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file. Tensor bytes stay in the file (memory-mapped) until dequantized.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: memmap2::Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> GgufError {
        GgufError::Format {
            path: self.path.to_path_buf(),
            msg: msg.into(),
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {remaining} left",
                self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        let what = format!("metadata '{key}'");
        Ok(match ty {
            0 => MetaValue::U64(self.u8(&what)? as u64),
            1 => MetaValue::I64(self.u8(&what)? as i8 as i64),
            2 => {
                MetaValue::U64(u16::from_le_bytes(self.take(2, &what)?.try_into().unwrap()) as u64)
            }
            3 => {
                MetaValue::I64(i16::from_le_bytes(self.take(2, &what)?.try_into().unwrap()) as i64)
            }
            4 => MetaValue::U64(self.u32(&what)? as u64),
            5 => MetaValue::I64(self.u32(&what)? as i32 as i64),
            6 => {
                MetaValue::F64(f32::from_le_bytes(self.take(4, &what)?.try_into().unwrap()) as f64)
            }
            7 => match self.u8(&what)? {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(format!("{what}: invalid boolean byte {b}"))),
            },
            8 => MetaValue::Str(self.string(&what)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("{what}: arrays nested too deeply")));
                }
                let elem = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Every element takes at least one byte: a count beyond the bytes left is a lie,
                // and rejecting it here avoids a huge allocation.
                let remaining = (self.buf.len() - self.pos) as u64;
                if count > remaining {
                    return Err(self.err(format!(
                        "{what}: array claims {count} elements but only {remaining} bytes remain"
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(&what)?),
            11 => MetaValue::I64(self.u64(&what)? as i64),
            12 => MetaValue::F64(f64::from_le_bytes(self.take(8, &what)?.try_into().unwrap())),
            other => return Err(self.err(format!("{what}: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed under us while loading is the user's race.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, bytes)
    }

    fn parse(path: &Path, bytes: memmap2::Mmap) -> Result<Self, GgufError> {
        let mut c = Cursor {
            buf: &bytes,
            pos: 0,
            path,
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(c.err("not a GGUF file (bad magic)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!(
                "unsupported GGUF version {version} (expected 2 or 3)"
            )));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        let remaining = (bytes.len() - c.pos) as u64;
        if n_tensors > remaining / 8 || n_kv > remaining / 8 {
            return Err(c.err(format!("header claims {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold")));
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&format!("metadata '{key}' type"))?;
            let v = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(c.err(format!("duplicate metadata key '{key}'")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| c.err("general.alignment is not an integer"))?,
        };
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(c.err(format!(
                "general.alignment must be a power of two (got {alignment})"
            )));
        }
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let terr = |msg: String| GgufError::Tensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                msg,
            };
            let n_dims = c.u32("tensor dims")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(terr(format!(
                    "has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dim")?);
            }
            let ty = c.u32("tensor type")?;
            let offset = c.u64("tensor offset")?;
            let dtype = GgmlType::from_id(ty)
                .ok_or_else(|| terr(format!("unknown or unsupported ggml type {ty}")))?;
            let numel = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| terr(format!("dims {dims:?} overflow")))?;
            if numel == 0 {
                return Err(terr(format!("has an empty shape {dims:?}")));
            }
            let (block, block_bytes) = dtype.block();
            if dims[0] % block as u64 != 0 {
                return Err(terr(format!(
                    "first dimension {} is not a multiple of the {dtype} block size {block}",
                    dims[0]
                )));
            }
            let size = (numel / block as u64)
                .checked_mul(block_bytes as u64)
                .ok_or_else(|| terr("byte size overflows".into()))?;
            if offset % alignment != 0 {
                return Err(terr(format!(
                    "offset {offset} is not aligned to {alignment}"
                )));
            }
            if !seen.insert(name.clone()) {
                return Err(terr("appears twice in the tensor table".into()));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
                size,
            });
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &mut tensors {
            let terr = |msg: String| GgufError::Tensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                msg,
            };
            let start = data_start
                .checked_add(t.offset)
                .ok_or_else(|| terr("offset overflows".into()))?;
            let end = start
                .checked_add(t.size)
                .ok_or_else(|| terr("offset overflows".into()))?;
            if end > file_len {
                return Err(terr(format!(
                    "data [{start}, {end}) runs past the end of the file ({file_len} bytes): truncated file?"
                )));
            }
            t.offset = start;
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for pair in by_offset.windows(2) {
            if pair[0].offset + pair[0].size > pair[1].offset {
                return Err(GgufError::Tensor {
                    path: path.to_path_buf(),
                    tensor: pair[1].name.clone(),
                    msg: format!("overlaps tensor '{}'", pair[0].name),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    pub(crate) fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub(crate) fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's values as f32, in GGUF element order (dims[0] fastest). A block whose
    /// scale is NaN or infinite is an error naming the tensor and the block.
    pub(crate) fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let raw = &self.bytes[info.offset as usize..(info.offset + info.size) as usize];
        if let Some((block, scale)) = dequant::first_bad_block(info.dtype, raw) {
            return Err(GgufError::Tensor {
                path: self.path.clone(),
                tensor: info.name.clone(),
                msg: format!(
                    "{} block {block} (weights {} to {}) has the scale {scale}: corrupt data",
                    info.dtype,
                    block * info.dtype.block().0,
                    (block + 1) * info.dtype.block().0 - 1
                ),
            });
        }
        Ok(dequant::dequantize(info.dtype, raw, info.numel() as usize))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a GGUF v3 file in memory: metadata as (key, type, encoded value) and F32 tensors.
    pub(crate) fn build(
        meta: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, Vec<u64>, Vec<f32>)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((meta.len() as u64).to_le_bytes());
        let s = |out: &mut Vec<u8>, x: &str| {
            out.extend((x.len() as u64).to_le_bytes());
            out.extend(x.as_bytes());
        };
        for (k, ty, v) in meta {
            s(&mut out, k);
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let mut offset = 0u64;
        for (name, dims, values) in tensors {
            s(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (values.len() as u64 * 4).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        for (_, _, values) in tensors {
            let start = out.len();
            for v in values {
                out.extend(v.to_le_bytes());
            }
            while (out.len() - start) % 32 != 0 {
                out.push(0);
            }
        }
        out
    }

    pub(crate) fn parse_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        GgufFile::open(f.path())
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let bytes = build(
            &[
                (
                    "general.architecture",
                    8,
                    [&4u64.to_le_bytes()[..], b"test"].concat(),
                ),
                ("n", 4, 7u32.to_le_bytes().to_vec()),
            ],
            &[
                ("a", vec![2, 3], (0..6).map(|i| i as f32).collect()),
                ("b", vec![4], vec![1.0, 2.0, 3.0, 4.0]),
            ],
        );
        let f = parse_bytes(&bytes).unwrap();
        assert_eq!(
            f.meta("general.architecture").unwrap().as_str(),
            Some("test")
        );
        assert_eq!(f.meta("n").unwrap().as_u64(), Some(7));
        assert_eq!(
            f.dequantize(f.tensor("a").unwrap()).unwrap(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        assert_eq!(
            f.dequantize(f.tensor("b").unwrap()).unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = build(
            &[("k", 8, [&3u64.to_le_bytes()[..], b"abc"].concat())],
            &[("w", vec![8], vec![0.5; 8])],
        );
        for len in 0..bytes.len() {
            let err = parse_bytes(&bytes[..len])
                .err()
                .unwrap_or_else(|| panic!("length {len} parsed"));
            let msg = err.to_string();
            assert!(
                msg.contains("truncated")
                    || msg.contains("bad magic")
                    || msg.contains("more than the file"),
                "{len}: {msg}"
            );
        }
    }

    #[test]
    fn malformed_headers_get_named_errors() {
        let good = build(&[], &[("w", vec![8], vec![0.5; 8])]);
        let tensor_table = 4 + 4 + 8 + 8; // magic, version, counts
        let name_len = 8 + 1;
        let dims_at = tensor_table + name_len;
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut v = good.clone();
        v[dims_at..dims_at + 4].copy_from_slice(&5u32.to_le_bytes());
        cases.push((v, "has 5 dimensions"));
        let mut v = good.clone();
        let ty_at = dims_at + 4 + 8;
        v[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
        cases.push((v, "unknown or unsupported ggml type 99"));
        let mut v = good.clone();
        v[ty_at + 4..ty_at + 12].copy_from_slice(&4u64.to_le_bytes());
        cases.push((v, "not aligned"));
        let mut v = good.clone();
        v[ty_at + 4..ty_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
        cases.push((v, "runs past the end of the file"));
        let mut v = good.clone();
        v[dims_at + 4..dims_at + 12].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push((v, "overflow"));
        let mut v = good.clone();
        v[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push((v, "more than the file can hold"));
        for (bytes, want) in cases {
            let msg = parse_bytes(&bytes)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(want), "want '{want}', got '{msg}'");
        }
        // Alignment 0.
        let bytes = build(
            &[("general.alignment", 4, 0u32.to_le_bytes().to_vec())],
            &[("w", vec![8], vec![0.5; 8])],
        );
        assert!(
            parse_bytes(&bytes)
                .err()
                .unwrap()
                .to_string()
                .contains("power of two")
        );
        // Duplicate tensor names and overlapping data.
        let bytes = build(
            &[],
            &[("w", vec![8], vec![0.5; 8]), ("w", vec![8], vec![0.5; 8])],
        );
        assert!(
            parse_bytes(&bytes)
                .err()
                .unwrap()
                .to_string()
                .contains("tensor 'w': appears twice")
        );
        let mut bytes = build(
            &[],
            &[("a", vec![16], vec![0.5; 16]), ("b", vec![8], vec![0.5; 8])],
        );
        // Point b's offset (the last 8 bytes of its table entry) at a's data.
        let b_off_at = tensor_table + (8 + 1 + 4 + 8 + 4 + 8) + (8 + 1 + 4 + 8 + 4);
        bytes[b_off_at..b_off_at + 8].copy_from_slice(&32u64.to_le_bytes());
        assert!(
            parse_bytes(&bytes)
                .err()
                .unwrap()
                .to_string()
                .contains("overlaps tensor 'a'")
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::tests::{build, parse_bytes};
    use rand::{Rng, SeedableRng};

    /// Random corruptions of a valid file (byte changes, truncations, insertions, large
    /// integers written into the header) must give an error or a file, never a panic.
    #[test]
    fn corrupted_files_never_panic() {
        let good = build(
            &[
                (
                    "general.architecture",
                    8,
                    [&5u64.to_le_bytes()[..], b"llama"].concat(),
                ),
                ("list", 9, {
                    let mut v = 4u32.to_le_bytes().to_vec();
                    v.extend(3u64.to_le_bytes());
                    for x in [1u32, 2, 3] {
                        v.extend(x.to_le_bytes());
                    }
                    v
                }),
            ],
            &[
                ("a", vec![4, 2], vec![1.0; 8]),
                ("b", vec![8], vec![2.0; 8]),
            ],
        );
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for round in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..4) {
                    0 => bytes[at] = rng.random(),
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, rng.random()),
                    _ => {
                        let end = (at + 8).min(bytes.len());
                        let big =
                            [u64::MAX, 1 << 40, 1 << 62, 0][rng.random_range(0..4)].to_le_bytes();
                        bytes[at..end].copy_from_slice(&big[..end - at]);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let result = std::panic::catch_unwind(|| {
                parse_bytes(&bytes).map(|f| {
                    f.tensors
                        .iter()
                        .map(|t| f.dequantize(t).map_or(0, |w| w.len()))
                        .sum::<usize>()
                })
            });
            assert!(result.is_ok(), "round {round}: the parser panicked");
        }
    }
}
