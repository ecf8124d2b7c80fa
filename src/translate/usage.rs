//! What an upstream says an answer used, read from its own wire format into
//! the contract's one meaning across providers (section 9): `input_tokens`
//! counts every prompt token, cached ones included (Anthropic reports its
//! cache reads and writes apart; they are added in), `cached_tokens` the
//! cache reads, `cache_write_tokens` the cache writes, `reasoning_tokens` the
//! part of `output_tokens` spent thinking (Gemini reports it apart; it is
//! added in).
//!
//! [`Meter`] follows a stream, from whichever of its events carry usage;
//! [`of_answer`] reads a whole answer. Both are fed the upstream's own
//! text, whether the client gets it passed through or translated.

use super::ir::Usage;
use crate::json::Json;
use crate::sse::Event;
use crate::wire::{self, Format};

fn n(v: Option<Json<'_>>) -> u64 {
    v.and_then(Json::as_u64).unwrap_or(0)
}

/// The fields of an object, in one pass.
fn fields<'a, const N: usize>(v: Option<Json<'a>>, keys: [&str; N]) -> [Option<Json<'a>>; N] {
    v.map_or([None; N], |v| v.get_many(keys))
}

/// An OpenAI chat completions `usage` object. Some compatible servers
/// report cache writes as `prompt_tokens_details.cache_write_tokens`.
pub fn openai(u: Json<'_>) -> Usage {
    let [input, output, input_details, output_details] = u.get_many([
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "completion_tokens_details",
    ]);
    let [cached, cache_write] = fields(input_details, ["cached_tokens", "cache_write_tokens"]);
    let [reasoning] = fields(output_details, ["reasoning_tokens"]);
    Usage {
        input_tokens: n(input),
        output_tokens: n(output),
        cached_tokens: n(cached),
        cache_write_tokens: n(cache_write),
        reasoning_tokens: n(reasoning),
    }
}

/// An OpenAI Responses `usage` object.
pub fn responses(u: Json<'_>) -> Usage {
    let [input, output, input_details, output_details] = u.get_many([
        "input_tokens",
        "output_tokens",
        "input_tokens_details",
        "output_tokens_details",
    ]);
    let [cached] = fields(input_details, ["cached_tokens"]);
    let [reasoning] = fields(output_details, ["reasoning_tokens"]);
    Usage {
        input_tokens: n(input),
        output_tokens: n(output),
        cached_tokens: n(cached),
        cache_write_tokens: 0,
        reasoning_tokens: n(reasoning),
    }
}

/// Anthropic's `usage` fields, each as last reported: a stream reports
/// them over two events (`message_start`, then `message_delta`, whose
/// counts are cumulative and win where present).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnthropicUsage {
    /// Prompt tokens neither read from nor written to the cache.
    pub uncached: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
}

impl AnthropicUsage {
    /// Takes the fields `u` reports; the others keep their values.
    pub fn update(&mut self, u: Json<'_>) {
        let [uncached, cache_read, cache_write, output] = u.get_many([
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "output_tokens",
        ]);
        let take = |slot: &mut u64, v: Option<Json<'_>>| {
            if let Some(v) = v.and_then(Json::as_u64) {
                *slot = v;
            }
        };
        take(&mut self.uncached, uncached);
        take(&mut self.cache_read, cache_read);
        take(&mut self.cache_write, cache_write);
        take(&mut self.output, output);
    }

    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.uncached + self.cache_read + self.cache_write,
            output_tokens: self.output,
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            // Anthropic does not count thinking apart.
            reasoning_tokens: 0,
        }
    }
}

/// An Anthropic `usage` object of a whole answer.
pub fn anthropic(u: Json<'_>) -> Usage {
    let mut a = AnthropicUsage::default();
    a.update(u);
    a.usage()
}

/// Gemini's `usageMetadata`: its candidates count leaves out the thoughts,
/// and its prompt count the prompt of tool use.
pub fn gemini(u: Json<'_>) -> Usage {
    let [thoughts, prompt, tool_prompt, candidates, cached] = u.get_many([
        "thoughtsTokenCount",
        "promptTokenCount",
        "toolUsePromptTokenCount",
        "candidatesTokenCount",
        "cachedContentTokenCount",
    ]);
    let thoughts = n(thoughts);
    Usage {
        input_tokens: n(prompt) + n(tool_prompt),
        output_tokens: n(candidates) + thoughts,
        cached_tokens: n(cached),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
    }
}

/// The field of a whole answer in `format` that holds its usage.
pub fn field(format: Format) -> &'static str {
    match format {
        Format::Gemini => "usageMetadata",
        Format::OpenAi | Format::Responses | Format::Anthropic => "usage",
    }
}

/// The usage object `u` of an answer in `format`, if it is one.
pub fn of_field(format: Format, u: Json<'_>) -> Option<Usage> {
    let read: fn(Json<'_>) -> Usage = match format {
        Format::OpenAi => openai,
        Format::Responses => responses,
        Format::Anthropic => anthropic,
        Format::Gemini => gemini,
    };
    u.is_object().then(|| read(u))
}

/// The usage a whole answer in `format` reports, if it reports any.
pub fn of_answer(format: Format, v: Json<'_>) -> Option<Usage> {
    of_field(format, v.get(field(format))?)
}

/// What one request used, as the ledger counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    pub usage: Usage,
    /// False when the upstream reported nothing and `usage` is the local
    /// estimate.
    pub reported: bool,
    /// The stream broke after it began: the request counts as an error.
    pub broke: bool,
}

/// A stream's usage, from the upstream's events as they pass; and, for
/// when it reports none (or the client leaves first), the length of the
/// content it carried, for the local estimate.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    usage: Usage,
    anthropic: AnthropicUsage,
    reported: bool,
    /// Bytes of content (text, reasoning, tool arguments) seen.
    content_bytes: u64,
}

/// Characters per token of the local estimate (as `count` estimates).
const CHARS_PER_TOKEN: u64 = 4;

impl Meter {
    /// Reads the usage an upstream event in `format` carries, if any. Only
    /// events whose text names a usage object are parsed.
    pub fn event(&mut self, format: Format, event: &Event) {
        let data = event.data.as_bytes();
        let names_usage = match format {
            Format::Gemini => wire::contains(data, b"\"usageMetadata\""),
            _ => wire::contains(data, b"\"usage\":{") || wire::contains(data, b"\"usage\": {"),
        };
        if !names_usage {
            return;
        }
        let Ok(v) = Json::parse(event.data.trim()) else {
            return;
        };
        let found = match format {
            Format::OpenAi => v.get("usage").filter(|u| u.is_object()).map(openai),
            Format::Gemini => v.get("usageMetadata").filter(|u| u.is_object()).map(gemini),
            // `response.completed` (and `.incomplete`, `.failed`) carry it.
            Format::Responses => v
                .pointer("/response/usage")
                .filter(|u| u.is_object())
                .map(responses),
            Format::Anthropic => {
                let u = v
                    .pointer("/message/usage")
                    .or_else(|| v.get("usage"))
                    .filter(|u| u.is_object());
                u.map(|u| {
                    self.anthropic.update(u);
                    self.anthropic.usage()
                })
            }
        };
        if let Some(u) = found {
            self.usage = u;
            self.reported = true;
        }
    }

    /// Counts content for the local estimate.
    pub fn content(&mut self, bytes: usize) {
        self.content_bytes += bytes as u64;
    }

    /// What the stream used: as reported, else the estimate from the
    /// prompt's estimate and the content seen.
    pub fn spent(&self, input_estimate: u64) -> Spent {
        if self.reported {
            return Spent {
                usage: self.usage,
                reported: true,
                broke: false,
            };
        }
        Spent {
            usage: Usage {
                input_tokens: input_estimate,
                output_tokens: self.content_bytes.div_ceil(CHARS_PER_TOKEN),
                ..Usage::default()
            },
            reported: false,
            broke: false,
        }
    }
}

/// The local estimate of a prompt whose neutral form was not built: its
/// body's length over the characters of a token.
pub fn estimate_of_body(len: usize) -> u64 {
    (len as u64).div_ceil(CHARS_PER_TOKEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> Event {
        Event {
            event: name.map(String::from),
            data: data.to_string(),
        }
    }

    #[test]
    fn every_provider_reports_in_one_meaning() {
        let parse = |t: &'static str| Json::parse(t).expect("json");
        let openai = of_answer(
            Format::OpenAi,
            parse(
                r#"{"usage":{"prompt_tokens":100,"completion_tokens":30,"prompt_tokens_details":{"cached_tokens":40,"cache_write_tokens":7},"completion_tokens_details":{"reasoning_tokens":12}}}"#,
            ),
        );
        let anthropic = of_answer(
            Format::Anthropic,
            parse(
                r#"{"usage":{"input_tokens":53,"cache_read_input_tokens":40,"cache_creation_input_tokens":7,"output_tokens":30}}"#,
            ),
        );
        let gemini = of_answer(
            Format::Gemini,
            parse(
                r#"{"usageMetadata":{"promptTokenCount":100,"cachedContentTokenCount":40,"candidatesTokenCount":18,"thoughtsTokenCount":12}}"#,
            ),
        );
        let want = Usage {
            input_tokens: 100,
            output_tokens: 30,
            cached_tokens: 40,
            cache_write_tokens: 7,
            reasoning_tokens: 12,
        };
        assert_eq!(openai, Some(want));
        assert_eq!(
            anthropic,
            Some(Usage {
                reasoning_tokens: 0,
                ..want
            })
        );
        assert_eq!(
            gemini,
            Some(Usage {
                cache_write_tokens: 0,
                ..want
            })
        );
        assert_eq!(of_answer(Format::OpenAi, parse(r#"{"usage":null}"#)), None);
    }

    #[test]
    fn an_anthropic_stream_reports_over_two_events() {
        let mut m = Meter::default();
        m.event(Format::Anthropic, &event(Some("message_start"), r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":1}}}"#));
        m.event(
            Format::Anthropic,
            &event(
                Some("content_block_delta"),
                r#"{"type":"content_block_delta","delta":{"text":"hi"}}"#,
            ),
        );
        m.event(
            Format::Anthropic,
            &event(
                Some("message_delta"),
                r#"{"type":"message_delta","usage":{"output_tokens":42}}"#,
            ),
        );
        let s = m.spent(999);
        assert!(s.reported);
        assert_eq!(
            (
                s.usage.input_tokens,
                s.usage.cached_tokens,
                s.usage.output_tokens
            ),
            (15, 5, 42)
        );
    }

    #[test]
    fn a_stream_without_usage_is_estimated() {
        let mut m = Meter::default();
        m.event(
            Format::OpenAi,
            &event(
                None,
                r#"{"choices":[{"delta":{"content":"abcdefgh"}}],"usage":null}"#,
            ),
        );
        m.content(8);
        let s = m.spent(25);
        assert!(!s.reported);
        assert_eq!((s.usage.input_tokens, s.usage.output_tokens), (25, 2));
    }
}
