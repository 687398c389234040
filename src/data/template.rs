//! Templates: rows with task fields -> prompt/response examples.

use serde_json::Value;

use super::row::Row;
use super::tokenizer::Tokenizer;

/// The Stanford Alpaca prompt, with and without an input.
const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

#[derive(Clone, Debug, PartialEq)]
pub enum Template {
    /// `instruction`, optional `input`, `output` (field names settable).
    Alpaca {
        instruction: String,
        input: String,
        output: String,
    },
    /// A conversation rendered with the model's own chat template: a `messages` list of
    /// `{role, content}` whose last message is the assistant's answer, or `prompt` and
    /// `response` fields taken as one user turn and the assistant's reply.
    Chat { messages: String },
    /// One field as plain text, every token learned.
    Text { field: String },
}

impl Template {
    pub fn alpaca() -> Self {
        Template::Alpaca {
            instruction: "instruction".into(),
            input: "input".into(),
            output: "output".into(),
        }
    }
}

fn string_field(row: &Row, k: &str, required: bool) -> Result<Option<String>, String> {
    match row.get(k) {
        None | Some(Value::Null) if required => Err(format!(
            "no field '{k}' (fields: {})",
            row.keys().cloned().collect::<Vec<_>>().join(", ")
        )),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("field '{k}' must be a string, found {other}")),
    }
}

fn example_row(prompt: String, response: String, eos: bool) -> Row {
    let mut out = Row::new();
    out.insert("prompt".into(), Value::String(prompt));
    out.insert("response".into(), Value::String(response));
    out.insert("eos".into(), Value::Bool(eos));
    out
}

/// The messages of a chat row as (role, content) pairs.
fn messages(row: &Row, field: &str) -> Result<Vec<(String, String)>, String> {
    if let Some(list) = row.get(field) {
        let Value::Array(items) = list else {
            return Err(format!(
                "field '{field}' must be a list of {{role, content}}"
            ));
        };
        return items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m.get("role").and_then(Value::as_str);
                let content = m.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(r), Some(c)) => Ok((r.to_string(), c.to_string())),
                    _ => Err(format!(
                        "{field}[{}] needs string 'role' and 'content'",
                        i + 1
                    )),
                }
            })
            .collect();
    }
    let prompt = string_field(row, "prompt", true)?.unwrap_or_default();
    let response = string_field(row, "response", true)?.unwrap_or_default();
    Ok(vec![
        ("user".into(), prompt),
        ("assistant".into(), response),
    ])
}

impl Template {
    /// The example row (`prompt`, `response`, `eos`) for one input row.
    pub(crate) fn apply(&self, row: &Row, tokenizer: Option<&Tokenizer>) -> Result<Row, String> {
        match self {
            Template::Alpaca {
                instruction,
                input,
                output,
            } => {
                let ins = string_field(row, instruction, true)?.unwrap_or_default();
                let inp = string_field(row, input, false)?.unwrap_or_default();
                let out = string_field(row, output, true)?.unwrap_or_default();
                let prompt = if inp.trim().is_empty() {
                    ALPACA_NO_INPUT.replace("{instruction}", &ins)
                } else {
                    ALPACA_WITH_INPUT
                        .replace("{instruction}", &ins)
                        .replace("{input}", &inp)
                };
                Ok(example_row(prompt, out, true))
            }
            Template::Text { field } => {
                let text = string_field(row, field, true)?.unwrap_or_default();
                Ok(Row::from_iter([("text".to_string(), Value::String(text))]))
            }
            Template::Chat { messages: field } => {
                let Some(Tokenizer::Text(tok)) = tokenizer else {
                    return Err("the chat template needs a model with a chat template (a pretrained model's tokenizer)".into());
                };
                let msgs = messages(row, field)?;
                match msgs.last() {
                    Some((role, _)) if role == "assistant" => {}
                    _ => {
                        return Err(
                            "the last message must be the assistant's (the response to learn)"
                                .into(),
                        );
                    }
                }
                let prompt = tok
                    .apply_chat_template(&msgs[..msgs.len() - 1], true)
                    .map_err(|e| e.to_string())?;
                let full = tok
                    .apply_chat_template(&msgs, false)
                    .map_err(|e| e.to_string())?;
                let response = full
                    .strip_prefix(&prompt)
                    .ok_or("the chat template renders the conversation differently from its prompt plus the reply; cannot mask the prompt")?
                    .to_string();
                Ok(example_row(prompt, response, false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Dataset, Example};

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn alpaca_with_and_without_input() {
        let ds = Dataset::from_rows(
            vec![
                row(&[
                    ("instruction", "Add"),
                    ("input", "2 and 3"),
                    ("output", "5"),
                ]),
                row(&[("instruction", "Say hi"), ("output", "hi")]),
            ],
            "mem",
        );
        let ex = ds
            .template(&Template::alpaca(), None)
            .unwrap()
            .examples()
            .unwrap();
        assert!(
            ex[0]
                .prompt
                .contains("### Input:\n2 and 3\n\n### Response:\n")
                && ex[0].prompt.contains("### Instruction:\nAdd\n")
        );
        assert!(!ex[1].prompt.contains("### Input") && ex[1].prompt.ends_with("### Response:\n"));
        assert_eq!((ex[0].response.as_str(), ex[0].eos), ("5", true));
        let err = Dataset::from_rows(vec![row(&[("instruction", "x")])], "mem")
            .template(&Template::alpaca(), None)
            .unwrap_err();
        assert!(
            err.to_string().contains("row 1: no field 'output'"),
            "{err}"
        );
    }

    #[test]
    fn text_template_and_chat_needs_a_tokenizer() {
        let ds = Dataset::from_rows(vec![row(&[("document", "d")])], "mem");
        assert_eq!(
            ds.template(
                &Template::Text {
                    field: "document".into()
                },
                None
            )
            .unwrap()
            .examples()
            .unwrap()[0],
            Example::text("d")
        );
        let err = ds
            .template(
                &Template::Chat {
                    messages: "messages".into(),
                },
                Some(&Tokenizer::Bytes),
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("needs a model with a chat template"),
            "{err}"
        );
    }
}
