//! Relaying one upstream stream to one client: passed through when both
//! speak the same format, translated event by event when they do not.

use std::borrow::Cow;

use serde_json::Value;

use super::ir::{Delta, Untranslatable};
use super::usage::{Meter, Spent};
use super::{anthropic, gemini, openai, responses};
use crate::json::{Json, span_in};
use crate::sse::Event;
use crate::wire::{self, ErrorKind, Format};

enum Decoder {
    OpenAi(openai::Decoder),
    Anthropic(anthropic::Decoder),
    Gemini(gemini::Decoder),
}

enum Encoder {
    OpenAi(openai::Encoder),
    Responses(responses::Encoder),
    Anthropic(anthropic::Encoder),
    Gemini(gemini::Encoder),
}

enum Mode {
    /// Same format on both sides: events go through as they are.
    Same(Format),
    Translate {
        decoder: Decoder,
        /// Boxed: passthrough streams, the common case, stay small.
        encoder: Box<Encoder>,
    },
}

pub struct StreamTranslator {
    mode: Mode,
    /// The upstream said its answer is complete (an end marker or a stop reason).
    complete: bool,
    /// The closing events have been produced.
    closed: bool,
    /// The upstream has sent content (text, thinking, a tool call): the
    /// point after which the stream is the client's.
    content: bool,
    /// In passthrough, the name the client asked for: events that name
    /// another model are given it.
    rename: Rename,
    /// The next `sequence_number` of a passed-through Responses stream.
    sequence: u64,
    /// A passed-through Responses stream's response id (from its first events).
    response_id: Option<String>,
    /// The upstream's format, whose events the meter reads.
    upstream: Format,
    /// The usage the upstream's events report, and the content they carried.
    meter: Meter,
    /// The upstream was asked for a usage chunk the client did not ask for:
    /// it is read, not passed on.
    hide_usage: bool,
}

/// Gives passthrough answers the model name the client asked for, touching
/// only those that name another (upstreams answer "gpt-4o" with a dated name).
#[derive(Debug, Clone)]
pub struct Rename {
    model: String,
    /// `"model":"<name>"` as serialisers write it, with and without a space.
    needles: [String; 2],
}

impl Rename {
    pub fn new(model: &str, key: &str) -> Self {
        let quoted = Value::String(model.to_string()).to_string();
        Self {
            model: model.to_string(),
            needles: [
                format!("\"{key}\":{quoted}"),
                format!("\"{key}\": {quoted}"),
            ],
        }
    }

    /// Whether `text` may name another model.
    pub fn needed(&self, text: &[u8]) -> bool {
        !self
            .needles
            .iter()
            .any(|n| wire::contains(text, n.as_bytes()))
    }

    pub fn model(&self) -> &str {
        &self.model
    }
}

/// What a stream is relayed for.
pub struct StreamSpec<'a> {
    /// The format the upstream answers in ([`super::upstream_format`]).
    pub upstream: Format,
    pub client: Format,
    /// The name the client asked for.
    pub model: &'a str,
    /// Whether an OpenAI client asked for a usage chunk.
    pub include_usage: bool,
    /// Whether the gateway asked a passed-through OpenAI upstream for one
    /// the client did not ask for.
    pub usage_added: bool,
    /// The local estimate of the prompt's tokens.
    pub input_estimate: u64,
    /// The request's custom tools (Responses clients get their calls as such).
    pub custom_tools: Vec<String>,
}

impl StreamTranslator {
    pub fn new(spec: &StreamSpec<'_>) -> Self {
        let model = spec.model;
        let mode = if spec.upstream == spec.client {
            Mode::Same(spec.client)
        } else {
            Mode::Translate {
                decoder: match spec.upstream {
                    // A Responses upstream only ever serves Responses clients
                    // (passed through), so only chat completions reach here.
                    Format::OpenAi | Format::Responses => {
                        Decoder::OpenAi(openai::Decoder::default())
                    }
                    Format::Anthropic => Decoder::Anthropic(anthropic::Decoder::default()),
                    Format::Gemini => Decoder::Gemini(gemini::Decoder::default()),
                },
                encoder: Box::new(match spec.client {
                    Format::OpenAi => {
                        Encoder::OpenAi(openai::Encoder::new(model, spec.include_usage))
                    }
                    Format::Responses => Encoder::Responses(responses::Encoder::new(
                        model,
                        spec.custom_tools.clone(),
                    )),
                    Format::Anthropic => {
                        Encoder::Anthropic(anthropic::Encoder::new(model, spec.input_estimate))
                    }
                    Format::Gemini => Encoder::Gemini(gemini::Encoder::new(model)),
                }),
            }
        };
        Self {
            mode,
            complete: false,
            closed: false,
            content: false,
            sequence: 0,
            response_id: None,
            upstream: spec.upstream,
            meter: Meter::default(),
            hide_usage: spec.usage_added && !spec.include_usage,
            rename: Rename::new(
                spec.model,
                if spec.client == Format::Gemini {
                    "modelVersion"
                } else {
                    "model"
                },
            ),
        }
    }

    /// Whether the upstream has said its answer is complete.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// A passed-through Responses stream's response id, once it was seen.
    pub fn response_id(&self) -> Option<&str> {
        self.response_id.as_deref()
    }

    /// What the stream used so far: the upstream's report, else the local
    /// estimate (`input_estimate` for the prompt).
    pub fn spent(&self, input_estimate: u64) -> Spent {
        self.meter.spent(input_estimate)
    }

    /// Whether the upstream has sent content yet.
    pub fn has_content(&self) -> bool {
        self.content
    }

    /// One upstream event in, the client's events out. An error means the
    /// upstream reported a failure inside the stream or sent something broken.
    pub fn feed(&mut self, event: &Event) -> Result<Vec<Event>, Untranslatable> {
        self.meter.event(self.upstream, event);
        match &mut self.mode {
            Mode::Same(format) => {
                let format = *format;
                Ok(self.pass(format, event)?.into_iter().collect())
            }
            Mode::Translate { decoder, encoder } => {
                let deltas = match decoder {
                    Decoder::OpenAi(d) => d.feed(event)?,
                    Decoder::Anthropic(d) => d.feed(event)?,
                    Decoder::Gemini(d) => d.feed(event)?,
                };
                let mut out = Vec::new();
                match deltas {
                    Some(deltas) => {
                        for d in &deltas {
                            match d {
                                Delta::Stop(_) => self.complete = true,
                                Delta::Text(t) | Delta::Thinking(t) => {
                                    self.content = true;
                                    self.meter.content(t.len());
                                }
                                Delta::ToolStart { .. } => self.content = true,
                                Delta::ToolArgs { json, .. } => self.meter.content(json.len()),
                                _ => {}
                            }
                            encode(encoder, d, &mut out);
                        }
                    }
                    None => {
                        self.complete = true;
                        self.closed = true;
                        close(encoder, &mut out);
                    }
                }
                Ok(out)
            }
        }
    }

    /// The upstream stream ended cleanly: the closing events, or an error
    /// when it ended before its answer was complete.
    pub fn finish(&mut self) -> Result<Vec<Event>, Untranslatable> {
        if !self.complete {
            return Err(Untranslatable(
                "the upstream stream ended before its answer was complete".into(),
            ));
        }
        let mut out = Vec::new();
        if let Mode::Translate { encoder, .. } = &mut self.mode {
            if !self.closed {
                self.closed = true;
                close(encoder, &mut out);
            }
        }
        Ok(out)
    }

    /// The event that ends the client's stream when it fails after it began,
    /// in the client's format (a Responses stream keeps its numbering).
    pub fn failure(&mut self, format: Format, kind: ErrorKind, message: &str) -> Event {
        match &mut self.mode {
            Mode::Translate { encoder, .. } => match encoder.as_mut() {
                Encoder::Responses(e) => e.failed(kind, message),
                _ => wire::stream_error(format, kind, message),
            },
            Mode::Same(Format::Responses) => {
                self.sequence += 1;
                wire::response_failed(kind, message, self.sequence - 1)
            }
            Mode::Same(_) => wire::stream_error(format, kind, message),
        }
    }

    /// An event of the client's own format: checked for errors, content and
    /// the end, and given the client's model name; `None` for the usage
    /// chunk the client did not ask for.
    fn pass(&mut self, format: Format, event: &Event) -> Result<Option<Event>, Untranslatable> {
        let data = event.data.trim();
        if format == Format::OpenAi && data == "[DONE]" {
            self.complete = true;
            return Ok(Some(event.clone()));
        }
        if format == Format::Anthropic {
            match event.event.as_deref() {
                Some("message_stop") => self.complete = true,
                Some("error") => {
                    return Err(Untranslatable(crate::wire::error_text(data.as_bytes())));
                }
                Some("content_block_start") => self.content = true,
                Some("content_block_delta") => {
                    self.content = true;
                    self.meter
                        .content(data.len().saturating_sub(ANTHROPIC_DELTA_FRAME));
                }
                _ => {}
            }
            // Only message_start names the model.
            if event.event.as_deref() != Some("message_start")
                || !self.rename.needed(data.as_bytes())
            {
                return Ok(Some(event.clone()));
            }
        }
        let v =
            Json::parse(data).map_err(|_| Untranslatable("a stream chunk is not JSON".into()))?;
        if v.get("error").is_some() {
            return Err(Untranslatable(crate::wire::error_text(data.as_bytes())));
        }
        match format {
            Format::OpenAi => {
                if openai_finished(v) {
                    self.complete = true;
                }
                if openai_content(v) {
                    self.content = true;
                    self.meter.content(openai_content_bytes(v));
                }
                if self.hide_usage
                    && v.field("choices").items().next().is_none()
                    && v.get("usage").is_some_and(Json::is_object)
                {
                    return Ok(None);
                }
            }
            Format::Gemini => {
                if v.pointer("/candidates/0/finishReason").is_some() {
                    self.complete = true;
                }
                if let Some(parts) = v
                    .pointer("/candidates/0/content/parts")
                    .filter(|p| p.items().next().is_some())
                {
                    self.content = true;
                    self.meter.content(parts.text().len());
                }
            }
            Format::Responses => {
                if let Some(n) = v.get("sequence_number").and_then(Json::as_u64) {
                    self.sequence = n + 1;
                }
                if self.response_id.is_none() {
                    self.response_id = v
                        .pointer("/response/id")
                        .and_then(Json::as_str)
                        .map(Cow::into_owned);
                }
                let kind = v.get("type").and_then(Json::as_str).unwrap_or_default();
                match responses::event_kind(&kind) {
                    responses::EventKind::Content => {
                        self.content = true;
                        self.meter
                            .content(v.get("delta").map_or(0, |d| d.text().len()));
                    }
                    responses::EventKind::Done => self.complete = true,
                    responses::EventKind::Failed => {
                        return Err(Untranslatable(crate::wire::error_text(data.as_bytes())));
                    }
                    responses::EventKind::Other => {}
                }
            }
            Format::Anthropic => {}
        }
        if !self.rename.needed(data.as_bytes()) {
            return Ok(Some(event.clone()));
        }
        let slot = match format {
            Format::OpenAi => v.get("model"),
            Format::Responses => v.pointer("/response/model"),
            Format::Anthropic => v.pointer("/message/model"),
            Format::Gemini => v.get("modelVersion"),
        };
        let Some(slot) = slot else {
            return Ok(Some(event.clone()));
        };
        // The model's name replaced in the event's text; the rest as it came.
        let at = span_in(data, slot.text());
        let name = Value::String(self.rename.model().to_string()).to_string();
        Ok(Some(Event {
            event: event.event.clone(),
            data: format!("{}{name}{}", &data[..at.start], &data[at.end..]),
        }))
    }
}

/// The framing of an Anthropic `content_block_delta` event around its text,
/// left out of the content the local estimate counts.
const ANTHROPIC_DELTA_FRAME: usize = 72;

/// The length of the text, reasoning and tool arguments an OpenAI chunk
/// carries, as written (for the local estimate).
fn openai_content_bytes(v: Json<'_>) -> usize {
    v.field("choices")
        .items()
        .map(|c| {
            let d = c.field("delta");
            let text: usize = ["content", "reasoning_content", "reasoning"]
                .iter()
                .filter_map(|k| d.get(k))
                .filter(|t| !t.is_null())
                .map(|t| t.text().len())
                .sum();
            let calls: usize = d
                .field("tool_calls")
                .items()
                .map(|t| {
                    t.pointer("/function/arguments")
                        .map_or(0, |a| a.text().len())
                })
                .sum();
            text + calls
        })
        .sum()
}

/// Whether an OpenAI chunk carries text, reasoning or a tool call.
fn openai_content(v: Json<'_>) -> bool {
    v.field("choices").items().any(|c| {
        let d = c.field("delta");
        ["content", "reasoning_content", "reasoning"]
            .iter()
            .any(|k| {
                d.get(k)
                    .and_then(Json::as_str)
                    .is_some_and(|t| !t.is_empty())
            })
            || d.get("tool_calls").is_some_and(|t| !t.is_null())
    })
}

fn openai_finished(v: Json<'_>) -> bool {
    v.field("choices")
        .items()
        .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
}

fn encode(encoder: &mut Encoder, d: &Delta, out: &mut Vec<Event>) {
    match encoder {
        Encoder::OpenAi(e) => e.encode(d, out),
        Encoder::Responses(e) => e.encode(d, out),
        Encoder::Anthropic(e) => e.encode(d, out),
        Encoder::Gemini(e) => e.encode(d, out),
    }
}

fn close(encoder: &mut Encoder, out: &mut Vec<Event>) {
    match encoder {
        Encoder::OpenAi(e) => e.finish(out),
        Encoder::Responses(e) => e.finish(out),
        Encoder::Anthropic(e) => e.finish(out),
        Encoder::Gemini(e) => e.finish(out),
    }
}
