//! What an upstream error blames: the model itself, or something the request
//! asked for.
//!
//! The classification table blocks a pair for hours when a 400 says the model
//! is unsupported, so the question "is the model the thing that failed?" must
//! not be answered by a word search. The rule, in order:
//!
//! 1. The provider's structured fields decide first. A `code` or `type` is read
//!    as a tiny sentence of its own (`model_not_found`, `DeploymentNotFound`,
//!    `invalid_model`: the model; `unsupported_parameter`, `invalid_value`,
//!    `context_length_exceeded`: the request). A `param` names the field at
//!    fault: `model` blames the model, any other field the request.
//! 2. Only then the message, after two rewrites: a quoted span that names the
//!    upstream model becomes the word `model`, any other quoted span becomes
//!    the placeholder `quoted` (it is what the client sent, never a verdict);
//!    an unquoted mention of the upstream model becomes `model` too.
//! 3. Each clause is read for a negative verdict ("not supported", "does not
//!    exist", "unknown", "no such" ...). The model is blamed only when it is
//!    the *subject* of that verdict ("The requested model is not supported",
//!    "unsupported model: x", "The model `x` does not exist") and nothing
//!    about the request is: a feature in the subject ("Image input is not
//!    supported for this model", "Tool 'x' not found in model response"), a
//!    feature after it ("model x is not supported for image input"), or "does
//!    not support <feature>" blame the request. Any clause blaming the request
//!    wins over one blaming the model: a wrong 12 h block costs more than
//!    one request returned to its client.
//!
//! Everything here is pure and allocation-light; it runs on error paths only.

use crate::wire::UpstreamError;
use words::{
    AFTER_SUBJECT, AUXILIARIES, BEFORE_NOUN, CODE_FEATURES, FEATURES, FILLERS, MODEL_NOUNS,
    NEGATIONS, PREPOSITIONS, QUOTED, SUPPORT,
};

mod words;

/// What an upstream error says failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The model itself is unsupported, unknown or unavailable.
    Model,
    /// Something the request asked for: a feature, a field, a value it sent.
    Request,
    /// Neither is clear.
    Unclear,
}

/// Reads `error` (the upstream's answer to a request for `upstream_model`).
pub fn blame(error: &UpstreamError, upstream_model: &str) -> Blame {
    for field in [&error.code, &error.kind].into_iter().flatten() {
        match code_blame(field) {
            Blame::Unclear => {}
            decided => return decided,
        }
    }
    if let Some(param) = &error.param {
        return if param.eq_ignore_ascii_case("model") {
            Blame::Model
        } else {
            Blame::Request
        };
    }
    let message = error.message.trim();
    // Some servers put only their code where the message goes.
    if !message.is_empty()
        && message
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        if let decided @ (Blame::Model | Blame::Request) = code_blame(message) {
            return decided;
        }
    }
    let text = Text::new(message, upstream_model);
    match text.blame() {
        // Anthropic's `not_found_error` and Gemini's `NOT_FOUND` say what
        // happened; a message that names the model says to what.
        Blame::Unclear
            if error.kind.as_deref().is_some_and(is_not_found) && text.mentions_model() =>
        {
            Blame::Model
        }
        said => said,
    }
}

/// Whether the error's text names a model at all ("model: claude-9").
pub fn mentions_model(error: &UpstreamError, upstream_model: &str) -> bool {
    Text::new(&error.message, upstream_model).mentions_model()
}

/// The message with ids, quoted values, model names and numbers taken out:
/// two upstreams refusing a request the same way give the same text.
pub fn normalized_message(message: &str, upstream_model: &str) -> String {
    let text = Text::new(message, upstream_model);
    let words: Vec<&str> = text
        .clauses
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|w| !w.bytes().any(|b| b.is_ascii_digit()) && !MODEL_NOUNS.contains(w))
        .collect();
    words.join(" ")
}

fn is_model(word: &str) -> bool {
    MODEL_NOUNS.contains(&word)
}

/// A feature word, also inside a compound (`image_url`, `tool_choice`).
fn is_feature(word: &str) -> bool {
    FEATURES.contains(&word) || word.contains('_') && word.split('_').any(|p| FEATURES.contains(&p))
}

fn is_not_found(kind: &str) -> bool {
    code_words(kind).windows(2).any(|w| w == ["not", "found"])
}

/// A code or type read as a sentence: `model_not_found`, `ModelNotFound`.
fn code_blame(code: &str) -> Blame {
    let owned = code_words(code);
    let words: Vec<&str> = owned.iter().map(String::as_str).collect();
    if words
        .iter()
        .any(|w| is_feature(w) || CODE_FEATURES.contains(w))
    {
        return Blame::Request;
    }
    // Azure's `OperationNotSupported`: the deployment cannot serve this route.
    let model = words.iter().any(|w| is_model(w) || *w == "operation");
    let verdict = (0..words.len()).any(|i| {
        BEFORE_NOUN
            .iter()
            .chain(AFTER_SUBJECT)
            .any(|p| words[i..].starts_with(p))
    });
    if model && verdict {
        Blame::Model
    } else {
        Blame::Unclear
    }
}

/// Splits a code at `_`, `-`, `.` and camel-case humps, lower-cased.
fn code_words(code: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in code.chars() {
        if !c.is_ascii_alphanumeric() {
            words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)));
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            words.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_lowercase());
    }
    words.extend((!word.is_empty()).then_some(word));
    words
}

/// A message as clauses of lower-case words, with quoted values and the
/// upstream model's name rewritten (see the module's rule 2).
struct Text {
    clauses: Vec<Vec<String>>,
}

impl Text {
    fn new(message: &str, upstream_model: &str) -> Self {
        let name = upstream_model.trim().to_lowercase();
        let unquoted = resolve_quotes(&message.to_lowercase(), &name);
        let named = replace_name(&unquoted, &name);
        let clauses = split_clauses(&named)
            .into_iter()
            .map(|c| {
                c.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .filter(|w| !w.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|words| !words.is_empty())
            .collect();
        Self { clauses }
    }

    fn mentions_model(&self) -> bool {
        self.clauses.iter().flatten().any(|w| is_model(w))
    }

    fn blame(&self) -> Blame {
        let mut model = false;
        for clause in &self.clauses {
            match clause_blame(clause) {
                Blame::Request => return Blame::Request,
                Blame::Model => model = true,
                Blame::Unclear => {}
            }
        }
        if model { Blame::Model } else { Blame::Unclear }
    }
}

fn clause_blame(words: &[String]) -> Blame {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    // "does not support image input", "No endpoints found that support tool use".
    if w.iter().any(|x| NEGATIONS.contains(x))
        && w.iter().any(|x| SUPPORT.contains(x))
        && w.iter().any(|x| is_feature(x))
    {
        return Blame::Request;
    }
    let mut found = Blame::Unclear;
    for i in 0..w.len() {
        let rest = &w[i..];
        if let Some(p) = BEFORE_NOUN.iter().find(|p| rest.starts_with(p)) {
            let judged = rest[p.len()..].iter().find(|x| !FILLERS.contains(x));
            match judged {
                Some(x) if is_feature(x) => return Blame::Request,
                Some(x) if is_model(x) => found = Blame::Model,
                _ => {}
            }
        }
        if let Some(p) = AFTER_SUBJECT.iter().find(|p| rest.starts_with(p)) {
            let supports = p.last() == Some(&"support");
            let complement = &rest[p.len()..];
            let faults_request = complement
                .iter()
                .any(|x| is_feature(x) || supports && *x == QUOTED);
            match subject_blame(&w[..i]) {
                Blame::Request => return Blame::Request,
                Blame::Model if faults_request => return Blame::Request,
                Blame::Model => found = Blame::Model,
                Blame::Unclear => {}
            }
        }
    }
    found
}

/// The words before a verdict: whether their subject is the model.
fn subject_blame(subject: &[&str]) -> Blame {
    let mut end = subject.len();
    while end > 0
        && (AUXILIARIES.contains(&subject[end - 1]) || FILLERS.contains(&subject[end - 1]))
    {
        end -= 1;
    }
    let subject = &subject[..end];
    if subject.iter().any(|x| is_feature(x)) {
        return Blame::Request;
    }
    let mut after_preposition = false;
    for (i, word) in subject.iter().enumerate() {
        if is_model(word) && !after_preposition && subject.get(i + 1) != Some(&"s") {
            return Blame::Model;
        }
        if PREPOSITIONS.contains(word) {
            after_preposition = true;
        } else if !FILLERS.contains(word) {
            after_preposition = false;
        }
    }
    Blame::Unclear
}

/// Rewrites quoted spans: the upstream model's name becomes "model", anything
/// else the placeholder. An apostrophe inside a word ("doesn't", "model's")
/// is not a quote.
fn resolve_quotes(text: &str, name: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let closer = match c {
            '\'' | '‘' | '’' => Some(['\'', '’']),
            '"' => Some(['"', '"']),
            '`' => Some(['`', '`']),
            '“' | '”' => Some(['”', '“']),
            _ => None,
        };
        let word_before = i > 0 && chars[i - 1].is_alphanumeric();
        let opens = closer.filter(|_| !(matches!(c, '\'' | '’') && word_before));
        let end = opens.and_then(|closers| {
            (i + 1..chars.len()).find(|&j| {
                closers.contains(&chars[j])
                    && !(matches!(chars[j], '\'' | '’')
                        && chars.get(j + 1).is_some_and(|n| n.is_alphanumeric()))
            })
        });
        match end {
            Some(j) => {
                let inner: String = chars[i + 1..j].iter().collect();
                let inner = inner.trim();
                let names_model = !name.is_empty()
                    && (inner == name || inner.strip_prefix("models/") == Some(name));
                out.push(' ');
                out.push_str(if names_model { "model" } else { QUOTED });
                out.push(' ');
                i = j + 1;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Replaces unquoted mentions of the upstream model's name with "model".
fn replace_name(text: &str, name: &str) -> String {
    if name.is_empty() {
        return text.to_string();
    }
    let is_name_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(name) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + name.len()..].chars().next();
        // A trailing "." ends a sentence rather than continuing the name.
        let after_ok = match after {
            None => true,
            Some('.') => rest[at + name.len() + 1..]
                .chars()
                .next()
                .is_none_or(char::is_whitespace),
            Some(c) => !is_name_char(c),
        };
        let bounded = before.is_none_or(|c| !is_name_char(c)) && after_ok;
        out.push_str(&rest[..at]);
        out.push_str(if bounded {
            " model "
        } else {
            &rest[at..at + name.len()]
        });
        rest = &rest[at + name.len()..];
    }
    out.push_str(rest);
    out
}

/// Clauses end at sentence and list punctuation; a "." ends one only before
/// a space or the end (`v1.5`, `gpt-4.1` stay whole).
fn split_clauses(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut clauses = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let ends = match c {
            ';' | ':' | ',' | '!' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '\n' => true,
            '.' => bytes.get(i + 1).is_none_or(u8::is_ascii_whitespace),
            _ => false,
        };
        if ends {
            clauses.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    clauses.push(&text[start..]);
    clauses
}

#[cfg(test)]
mod tests;
