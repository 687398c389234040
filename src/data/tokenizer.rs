//! Tokenizers. Byte-level: every UTF-8 byte is one token id (0..=255), enough to train the
//! tiny models. Real ones through the `tokenizers` crate: built from GGUF metadata
//! (gpt2-style byte-level BPE) the way transformers converts it, or read from a Hugging Face
//! directory, plus the model's chat template.

use serde_json::json;

use crate::model::load::GgufFile;

#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    pub const VOCAB: usize = 256;

    pub(crate) fn encode(&self, text: &str) -> Vec<i64> {
        text.bytes().map(i64::from).collect()
    }

    /// Lossy for ids that do not form valid UTF-8; ids above 255 are skipped.
    pub(crate) fn decode(&self, ids: &[i64]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&i| u8::try_from(i).ok()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {msg}")]
    Build { path: String, msg: String },
    #[error("tokenizer: {0}")]
    Run(String),
    #[error("chat template: {0}")]
    Template(String),
}

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    /// Builds the tokenizer in `tokenizer.ggml.*` as transformers' GGUF loader does
    /// ([`super::gguf_tokenizer`]): byte-level BPE, or SentencePiece as BPE with byte
    /// fallback; no BOS added, control tokens as special added tokens.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        let path = f.path.display().to_string();
        let err = |msg: String| TokenizerError::Build {
            path: path.clone(),
            msg,
        };
        let spec = super::gguf_tokenizer::spec(f).map_err(&err)?;
        let inner: tokenizers::Tokenizer = serde_json::from_value(spec)
            .map_err(|e| err(format!("building the tokenizer: {e}")))?;
        let id = |key: &str| f.meta(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            chat_template: f
                .meta("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(String::from),
        })
    }

    /// `tokenizer.json` of a Hugging Face directory, with the special tokens and chat template
    /// of `tokenizer_config.json` (or `chat_template.jinja`), falling back to config.json's ids.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Self, TokenizerError> {
        let file = dir.join("tokenizer.json");
        let err = |path: &std::path::Path, msg: String| TokenizerError::Build {
            path: path.display().to_string(),
            msg,
        };
        let inner =
            tokenizers::Tokenizer::from_file(&file).map_err(|e| err(&file, e.to_string()))?;
        let read_json = |name: &str| -> Option<serde_json::Value> {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        };
        let tk_config = read_json("tokenizer_config.json").unwrap_or(serde_json::Value::Null);
        let config = read_json("config.json").unwrap_or(serde_json::Value::Null);
        let special = |key: &str| -> Option<u32> {
            let token = match tk_config.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v) => v.get("content").and_then(|c| c.as_str()).map(String::from),
                None => None,
            };
            token.and_then(|t| inner.token_to_id(&t)).or_else(|| {
                let v = config.get(format!("{key}_id"))?;
                v.as_u64()
                    .or_else(|| v.as_array()?.first()?.as_u64())
                    .map(|i| i as u32)
            })
        };
        let chat_template = match tk_config.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        Ok(Self {
            bos: special("bos_token"),
            eos: special("eos_token"),
            chat_template,
            inner,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Run(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.is_empty() && !text.trim().is_empty() {
            warn_empty_encoding(text);
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Run(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Renders `messages` (role, content) with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| TokenizerError::Template("the model has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", template)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let msgs: Vec<serde_json::Value> = messages
            .iter()
            .map(|(r, c)| json!({"role": r, "content": c}))
            .collect();
        let tok = |id: Option<u32>| {
            id.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => msgs,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => tok(self.bos),
                    eos_token => tok(self.eos),
                })
            })
            .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

/// Text to token ids, as collation needs it.
pub trait Encode {
    fn encode_ids(&self, text: &str) -> Result<Vec<i64>, TokenizerError>;
    /// The end-of-sequence id appended to responses that ask for it.
    fn eos_id(&self) -> Option<i64> {
        None
    }
}

impl Encode for ByteTokenizer {
    fn encode_ids(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        Ok(self.encode(text))
    }
}

impl Encode for Tokenizer {
    fn encode_ids(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        Ok(self.encode(text)?.into_iter().map(i64::from).collect())
    }
    fn eos_id(&self) -> Option<i64> {
        self.eos().map(i64::from)
    }
}

/// The tokenizer a model comes with: bytes for the tiny random models, BPE for real ones.
#[derive(Clone)]
pub enum Tokenizer {
    Bytes,
    Text(std::rc::Rc<TextTokenizer>),
}

impl Tokenizer {
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Text(t) => t.encode(text),
        }
    }

    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        match self {
            Tokenizer::Bytes => {
                Ok(ByteTokenizer.decode(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()))
            }
            Tokenizer::Text(t) => t.decode(ids, skip_special),
        }
    }

    pub(crate) fn eos(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => None,
            Tokenizer::Text(t) => t.eos,
        }
    }
}

/// Says once per run that a tokenizer dropped a whole text: its vocabulary does not cover the
/// text and it has no unknown token, so the example would train on nothing.
fn warn_empty_encoding(text: &str) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        let sample: String = text.chars().take(40).collect();
        eprintln!(
            "warning: the tokenizer turned a non-empty text into no tokens (\"{sample}\"): its \
             vocabulary does not cover it and it has no unknown token; such examples train on \
             nothing (said once)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = ByteTokenizer;
        let ids = t.encode("héllo");
        assert_eq!(ids.len(), 6);
        assert_eq!(t.decode(&ids), "héllo");
    }

    #[test]
    fn gguf_pre_tokenizers_split_as_transformers_does() {
        // scripts/make_gguf_family_fixtures.py: one learned byte-level vocabulary written with
        // `tokenizer.ggml.pre` gpt-2, qwen2 and llama-bpe; transformers' GGUF tokenizer ids.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
        let exp: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("gguf_tokenizers_expected.json")).unwrap(),
        )
        .unwrap();
        let texts: Vec<String> = serde_json::from_value(exp["texts"].clone()).unwrap();
        for pre in ["gpt-2", "qwen2", "llama-bpe"] {
            let file = crate::model::load::gguf::GgufFile::open(
                &dir.join(format!("tokenizer_{pre}.gguf")),
            )
            .unwrap();
            let tok = TextTokenizer::from_gguf(&file).unwrap();
            let want: Vec<Vec<u32>> = serde_json::from_value(exp[pre].clone()).unwrap();
            for (text, want) in texts.iter().zip(want) {
                assert_eq!(tok.encode(text).unwrap(), want, "{pre}: {text:?}");
            }
        }
    }

    #[test]
    fn gguf_sentencepiece_vocabularies_tokenize_as_transformers_does() {
        // scripts/make_gguf_family_fixtures.py: one learned SentencePiece vocabulary (byte
        // fallback, user-defined `<think>`, runs of spaces) under the llama, phi3 and gemma2
        // pipelines; transformers' GGUF tokenizer's ids and decoded text.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
        let exp: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("gguf_spm_tokenizers_expected.json")).unwrap(),
        )
        .unwrap();
        let texts: Vec<String> = serde_json::from_value(exp["texts"].clone()).unwrap();
        for arch in ["llama", "phi3", "gemma2"] {
            let path = dir.join(format!("tokenizer_spm_{arch}.gguf"));
            let file = crate::model::load::gguf::GgufFile::open(&path).unwrap();
            let tok = TextTokenizer::from_gguf(&file).unwrap();
            let want: Vec<Vec<u32>> = serde_json::from_value(exp[arch].clone()).unwrap();
            let decoded: Vec<String> =
                serde_json::from_value(exp[format!("{arch}_decoded")].clone()).unwrap();
            for ((text, want), decoded) in texts.iter().zip(want).zip(decoded) {
                let ids = tok.encode(text).unwrap();
                assert_eq!(ids, want, "{arch}: {text:?}");
                assert_eq!(
                    tok.decode(&ids, false).unwrap(),
                    decoded,
                    "{arch}: {text:?}"
                );
            }
        }
    }
}
