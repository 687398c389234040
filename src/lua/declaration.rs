//! Which part of a recipe's text declares a sweep's values, found by reading the Lua tokens of
//! the `runner.sweep{...}` call: everything in the call except the trial function. Trial ids
//! hash the recipe without it, so adding a grid value keeps the other trials' ids however the
//! call is laid out (one line or many).

/// The recipe text with the sweep declaration that starts on line `call_line` (1-based)
/// removed: every character of it except line breaks, so line numbers stay put. Removed are
/// the call line up to the `trial` field (the whole line when the field starts its own
/// line) and any fields after the trial function. `None` when the call cannot be read
/// (called through another name, say): the caller falls back to whole lines.
pub(crate) fn mask_sweep_declaration(source: &str, call_line: usize) -> Option<String> {
    let tokens = lex(source)?;
    let line_start = nth_line_start(source, call_line)?;
    // `sweep` after `.` or `:`, followed by `{` or `({`, at or after the call line.
    let first = tokens.iter().position(|t| t.start >= line_start)?;
    let mut open = None;
    for i in first..tokens.len().saturating_sub(1) {
        let dotted = i > 0 && matches!(tokens[i - 1].text(source), "." | ":");
        if tokens[i].text(source) == "sweep" && dotted {
            open = match tokens[i + 1].text(source) {
                "{" => Some(i + 1),
                "(" if tokens.get(i + 2).is_some_and(|t| t.text(source) == "{") => Some(i + 2),
                _ => None,
            };
            break;
        }
    }
    let open = open?;
    // The constructor's fields at depth 0: (first token, last token).
    let mut fields = Vec::new();
    let mut depth = 0i64;
    let mut field_start = open + 1;
    let mut close = None;
    for (i, t) in tokens.iter().enumerate().skip(open + 1) {
        match t.text(source) {
            "(" | "{" | "[" | "function" | "do" | "if" | "repeat" => depth += 1,
            ")" | "]" | "end" | "until" => depth -= 1,
            "}" if depth == 0 => {
                if field_start < i {
                    fields.push((field_start, i - 1));
                }
                close = Some(i);
                break;
            }
            "}" => depth -= 1,
            "," | ";" if depth == 0 => {
                fields.push((field_start, i - 1));
                field_start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    let close = close?;
    let is_trial = |&(a, _): &(usize, usize)| {
        tokens[a].text(source) == "trial"
            && tokens.get(a + 1).is_some_and(|t| t.text(source) == "=")
    };
    let trial = fields.iter().copied().find(is_trial)?;
    let trial_at = tokens[trial.0].start;
    // Up to the trial field, or to the start of its line when only indentation precedes it
    // there (then a multi-line call masks exactly its lines before the trial function).
    let trial_line_start = source[..trial_at].rfind('\n').map_or(0, |i| i + 1);
    let cut =
        if source[trial_line_start..trial_at].trim().is_empty() && trial_line_start >= line_start {
            trial_line_start
        } else {
            trial_at
        };
    let mut ranges = vec![(line_start, cut)];
    if fields.last() != Some(&trial) {
        // Fields after the trial function declare values too.
        ranges.push((tokens[trial.1].end, tokens[close].start));
    }
    let mut out = String::with_capacity(source.len());
    let mut last = 0;
    for (a, b) in ranges {
        out.push_str(&source[last..a]);
        out.extend(source[a..b].chars().filter(|&c| c == '\n'));
        last = b;
    }
    out.push_str(&source[last..]);
    Some(out)
}

fn nth_line_start(source: &str, line: usize) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let mut start = 0;
    for _ in 1..line {
        start += source[start..].find('\n')? + 1;
    }
    Some(start)
}

/// A token's byte range in the source.
#[derive(Clone, Copy, Debug)]
struct Token {
    start: usize,
    end: usize,
}

impl Token {
    fn text<'a>(&self, source: &'a str) -> &'a str {
        &source[self.start..self.end]
    }
}

/// Lua's tokens, without comments and whitespace: names and keywords, numbers, strings
/// (short and long) as one token each, and symbols (one character each is enough here).
/// `None` on text Lua would not accept (an unfinished string or comment).
fn lex(source: &str) -> Option<Vec<Token>> {
    let b = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            i += 2;
            if let Some(level) = long_bracket(&b[i..]) {
                i = close_long_bracket(b, i + level + 2, level)?;
            } else {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
        } else if c == b'"' || c == b'\'' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != c {
                if b[i] == b'\\' {
                    i += 1;
                }
                if b.get(i) == Some(&b'\n') && b[i - 1] != b'\\' {
                    return None;
                }
                i += 1;
            }
            if i >= b.len() {
                return None;
            }
            i += 1;
            out.push(Token { start, end: i });
        } else if c == b'[' && long_bracket(&b[i..]).is_some() {
            let level = long_bracket(&b[i..])?;
            let start = i;
            i = close_long_bracket(b, i + level + 2, level)?;
            out.push(Token { start, end: i });
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            // A number's exponent sign or fraction stays inside the number.
            if c.is_ascii_digit() {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || ((b[i] == b'+' || b[i] == b'-')
                            && matches!(b[i - 1], b'e' | b'E' | b'p' | b'P')))
                {
                    i += 1;
                }
            }
            out.push(Token { start, end: i });
        } else {
            out.push(Token {
                start: i,
                end: i + 1,
            });
            i += 1;
        }
    }
    Some(out)
}

/// The level of a long bracket `[==[` opening `b`, if it opens one.
fn long_bracket(b: &[u8]) -> Option<usize> {
    if b.first() != Some(&b'[') {
        return None;
    }
    let level = b[1..].iter().take_while(|&&c| c == b'=').count();
    (b.get(level + 1) == Some(&b'[')).then_some(level)
}

/// The index just past the `]==]` of `level` that closes a long bracket, searching from `i`.
fn close_long_bracket(b: &[u8], mut i: usize, level: usize) -> Option<usize> {
    while i < b.len() {
        if b[i] == b']'
            && b.len() > i + level + 1
            && b[i + 1..i + 1 + level].iter().all(|&c| c == b'=')
            && b[i + 1 + level] == b']'
        {
            return Some(i + level + 2);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(src: &str, line: usize) -> String {
        mask_sweep_declaration(src, line).expect("readable")
    }

    #[test]
    fn a_one_line_header_masks_the_values_but_not_the_trial() {
        let a = "local x = 1\nrunner.sweep{ name = \"m\", grid = { rank = {1, 2} }, trial = function(p)\n  return { y = p.rank }\nend }\n";
        let b = a.replace("{1, 2}", "{1, 2, 4}");
        assert_eq!(masked(a, 2), masked(&b, 2));
        assert_eq!(
            masked(a, 2),
            "local x = 1\ntrial = function(p)\n  return { y = p.rank }\nend }\n"
        );
        // The trial's own code still counts.
        let c = a.replace("p.rank }", "p.rank * 2 }");
        assert_ne!(masked(a, 2), masked(&c, 2));
    }

    #[test]
    fn a_multi_line_call_masks_whole_lines_as_before() {
        let src = "local s = runner.sweep{\n  name = \"x\",\n  grid = { a = { 1, 2 } }, -- a } comment\n  trial = function(p)\n    local t = { 1, 2 }\n    if p.a then return { y = t[1] } end\n  end,\n}\nprint(s)\n";
        assert_eq!(
            masked(src, 1),
            "\n\n\n  trial = function(p)\n    local t = { 1, 2 }\n    if p.a then return { y = t[1] } end\n  end,\n}\nprint(s)\n"
        );
    }

    #[test]
    fn fields_after_the_trial_function_are_masked_too() {
        let a = "runner.sweep({ name = 'x', trial = function(p) return { y = 1 } end, grid = { a = { 1 } } })\n";
        let b = a.replace("{ 1 }", "{ 1, 2 }");
        assert_eq!(masked(a, 1), masked(&b, 1));
        assert_eq!(masked(a, 1), "trial = function(p) return { y = 1 } end})\n");
    }

    #[test]
    fn strings_and_long_brackets_do_not_confuse_it() {
        let src = "runner.sweep{ name = \"a}b\", grid = { s = { [[x,}]] , 'y\\'}' } }, trial = function(p) return {} end }\n";
        assert_eq!(masked(src, 1), "trial = function(p) return {} end }\n");
    }

    #[test]
    fn a_call_it_cannot_read_gives_none() {
        assert!(
            mask_sweep_declaration("local f = runner.sweep\nf{ trial = function() end }\n", 2)
                .is_none()
        );
        assert!(mask_sweep_declaration("runner.sweep{ name = 'x' }\n", 1).is_none());
        assert!(mask_sweep_declaration("runner.sweep{ name = \"x\n", 1).is_none());
    }
}
