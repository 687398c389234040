//! Byte-level tokenization: every UTF-8 byte is one token id (0..=255). Enough to train the
//! tiny models; real BPE tokenizers come with pretrained models.

#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    pub const VOCAB: usize = 256;

    pub fn encode(&self, text: &str) -> Vec<i64> {
        text.bytes().map(i64::from).collect()
    }

    /// Lossy for ids that do not form valid UTF-8; ids above 255 are skipped.
    pub fn decode(&self, ids: &[i64]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&i| u8::try_from(i).ok()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
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
}
