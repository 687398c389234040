//! Text metrics for scoring generated answers against references: ROUGE-L as Google's
//! `rouge-score` package computes it and SQuAD-style exact match. Matching the Python
//! reference implementations number for number lets results be compared with published ones;
//! `scripts/make_metric_fixtures.py` generates the fixtures the tests check against.
//!
//! Std only, so the module also compiles on its own:
//! `rustc --edition 2021 --test src/train/metrics.rs`.

/// ROUGE-L precision, recall and F-measure of one candidate against one reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RougeScore {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

/// rouge-score's default tokenizer without stemming: lowercase (full Unicode lowercasing, as
/// Python's `str.lower`), every run of characters outside ASCII `[a-z0-9]` separates tokens.
/// Non-ASCII letters therefore split words ("café" → "caf"), except the few whose lowercase is
/// ASCII: KELVIN SIGN → "k", "İ" → "i" + a combining dot (a separator).
fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Length of the longest common subsequence of two token lists (two-row dynamic programme).
fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L of `candidate` against `reference`, as rouge-score's
/// `RougeScorer(['rougeL'], use_stemmer=False).score(reference, candidate)`:
/// precision = LCS / candidate tokens, recall = LCS / reference tokens, F = 2PR / (P + R).
///
/// Conventions kept from rouge-score: if either side has no tokens (empty, whitespace or
/// punctuation only, or only non-ASCII characters) all three are 0, including when both are
/// empty; F is 0 when the LCS is 0. The arithmetic is done in the same order as the Python so
/// the results are the same doubles.
pub(crate) fn rouge_l(reference: &str, candidate: &str) -> RougeScore {
    let reference = rouge_tokens(reference);
    let candidate = rouge_tokens(candidate);
    if reference.is_empty() || candidate.is_empty() {
        return RougeScore {
            precision: 0.0,
            recall: 0.0,
            fmeasure: 0.0,
        };
    }
    let lcs = lcs_len(&reference, &candidate) as f64;
    let precision = lcs / candidate.len() as f64;
    let recall = lcs / reference.len() as f64;
    let fmeasure = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    RougeScore {
        precision,
        recall,
        fmeasure,
    }
}

/// Mean ROUGE-L F-measure over (reference, candidate) pairs, the plain average rouge-score
/// users report. `None` when the slices are empty or of different lengths (a mismatch means
/// the caller paired the wrong lists; a mean of nothing is undefined).
#[cfg(test)]
pub(crate) fn mean_rouge_l_f<R: AsRef<str>, C: AsRef<str>>(refs: &[R], cands: &[C]) -> Option<f64> {
    if refs.is_empty() || refs.len() != cands.len() {
        return None;
    }
    let sum: f64 = refs
        .iter()
        .zip(cands)
        .map(|(r, c)| rouge_l(r.as_ref(), c.as_ref()).fmeasure)
        .sum();
    Some(sum / refs.len() as f64)
}

/// `\w` of Python's `re` on str patterns (what `\b` looks at). Python counts Unicode letters
/// and numbers; Rust's `is_alphanumeric` also counts the few marks and symbols with the
/// Other_Alphabetic property (Indic vowel signs, circled letters), which only matters when
/// one touches an article with no space between. (Characters new since the Unicode version of
/// the Python in use may also differ.)
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `str.isspace` (what `str.split()` splits on): Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// SQuAD v1.1's `normalize_answer`: lowercase; delete ASCII punctuation (Python's
/// `string.punctuation`, so "don't" → "dont", "U.S." → "us"); replace the whole words
/// "a", "an", "the" by a space (word = run of `\w` characters, so "theater" and "1the" stay);
/// collapse whitespace to single spaces and trim.
pub(crate) fn normalize_answer(s: &str) -> String {
    let no_punct: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();

    let mut no_articles = String::with_capacity(no_punct.len());
    let mut rest = no_punct.as_str();
    while let Some(first) = rest.chars().next() {
        let word = is_word_char(first);
        let end = rest
            .find(|c: char| is_word_char(c) != word)
            .unwrap_or(rest.len());
        let run = &rest[..end];
        if word && matches!(run, "a" | "an" | "the") {
            no_articles.push(' ');
        } else {
            no_articles.push_str(run);
        }
        rest = &rest[end..];
    }

    no_articles
        .split(is_py_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQuAD exact match: the normalized strings are equal.
pub(crate) fn exact_match(reference: &str, candidate: &str) -> bool {
    normalize_answer(reference) == normalize_answer(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUGE_L_TSV: &str = include_str!("../../tests/fixtures/metrics/rouge_l.tsv");
    const EXACT_MATCH_TSV: &str = include_str!("../../tests/fixtures/metrics/exact_match.tsv");

    /// Undoes the fixture escaping: `\\`, `\t`, `\n`, `\r`.
    fn unescape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                other => panic!("bad escape \\{other:?} in {s:?}"),
            }
        }
        out
    }

    /// Data rows (the header skipped), each split on tabs into `columns` fields.
    fn rows(tsv: &str, columns: usize) -> Vec<Vec<&str>> {
        let rows: Vec<Vec<&str>> = tsv
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect())
            .collect();
        for r in &rows {
            assert_eq!(r.len(), columns, "row {r:?}");
        }
        rows
    }

    #[test]
    fn rouge_l_matches_rouge_score_fixtures() {
        let rows = rows(ROUGE_L_TSV, 5);
        assert!(rows.len() >= 80, "only {} rows", rows.len());
        for r in rows {
            let (reference, candidate) = (unescape(r[0]), unescape(r[1]));
            let want: Vec<f64> = r[2..].iter().map(|x| x.parse().unwrap()).collect();
            let got = rouge_l(&reference, &candidate);
            let fields = [
                ("precision", got.precision),
                ("recall", got.recall),
                ("fmeasure", got.fmeasure),
            ];
            for ((name, g), w) in fields.into_iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-12,
                    "{name} {g} != {w} for {reference:?} / {candidate:?}"
                );
            }
        }
    }

    #[test]
    fn exact_match_matches_squad_fixtures() {
        let rows = rows(EXACT_MATCH_TSV, 5);
        assert!(rows.len() >= 80, "only {} rows", rows.len());
        for r in rows {
            let (reference, candidate) = (unescape(r[0]), unescape(r[1]));
            assert_eq!(
                normalize_answer(&reference),
                unescape(r[3]),
                "normalize_answer({reference:?})"
            );
            assert_eq!(
                normalize_answer(&candidate),
                unescape(r[4]),
                "normalize_answer({candidate:?})"
            );
            assert_eq!(
                exact_match(&reference, &candidate),
                r[2] == "1",
                "{reference:?} / {candidate:?}"
            );
        }
    }

    #[test]
    fn empty_inputs_score_zero() {
        let zero = RougeScore {
            precision: 0.0,
            recall: 0.0,
            fmeasure: 0.0,
        };
        assert_eq!(rouge_l("", ""), zero);
        assert_eq!(rouge_l("a b", ""), zero);
        assert_eq!(rouge_l("", "a b"), zero);
        assert_eq!(rouge_l("!!!", "café"), zero);
    }

    #[test]
    fn mean_rouge_l_f_averages_and_rejects_bad_input() {
        let refs = ["a b c d".to_string(), "x".to_string()];
        let cands = ["a b c d".to_string(), "y".to_string()];
        assert_eq!(mean_rouge_l_f(&refs, &cands), Some(0.5));
        assert_eq!(
            mean_rouge_l_f(&["a b"], &["b"]),
            Some(rouge_l("a b", "b").fmeasure)
        );
        assert_eq!(mean_rouge_l_f::<String, String>(&[], &[]), None);
        assert_eq!(mean_rouge_l_f(&refs, &cands[..1]), None);
    }

    #[test]
    fn normalize_answer_examples() {
        assert_eq!(normalize_answer("  The  Eiffel-Tower! "), "eiffeltower");
        assert_eq!(
            normalize_answer("an apple, a pear and the plum"),
            "apple pear and plum"
        );
        assert_eq!(normalize_answer("Theater"), "theater");
        assert!(exact_match("The Beatles", "beatles"));
        assert!(!exact_match("Beatles", "The Beetles"));
    }
}
