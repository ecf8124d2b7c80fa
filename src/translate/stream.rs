//! Relaying one upstream stream to one client: passed through when both
//! speak the same format, translated event by event when they do not.

use super::ir::{Delta, Untranslatable};
use super::{anthropic, gemini, openai};
use crate::catalog::Provider;
use crate::sse::Event;
use crate::wire::Format;

enum Decoder {
    OpenAi(openai::Decoder),
    Anthropic(anthropic::Decoder),
    Gemini(gemini::Decoder),
}

enum Encoder {
    OpenAi(openai::Encoder),
    Anthropic(anthropic::Encoder),
    Gemini(gemini::Encoder),
}

enum Mode {
    /// Same format on both sides: events go through as they are.
    Same(Format),
    Translate {
        decoder: Decoder,
        encoder: Encoder,
    },
}

pub struct StreamTranslator {
    mode: Mode,
    /// The upstream said its answer is complete (an end marker or a stop reason).
    complete: bool,
    /// The closing events have been produced.
    closed: bool,
}

impl StreamTranslator {
    /// `model` is the name the client asked for; `include_usage` whether an
    /// OpenAI client asked for a usage chunk.
    pub fn new(provider: Provider, client: Format, model: &str, include_usage: bool) -> Self {
        let upstream = super::format_of(provider);
        let mode = if upstream == client {
            Mode::Same(client)
        } else {
            Mode::Translate {
                decoder: match provider {
                    Provider::Openai => Decoder::OpenAi(openai::Decoder::default()),
                    Provider::Anthropic => Decoder::Anthropic(anthropic::Decoder::default()),
                    Provider::Gemini => Decoder::Gemini(gemini::Decoder::default()),
                },
                encoder: match client {
                    Format::OpenAi => Encoder::OpenAi(openai::Encoder::new(model, include_usage)),
                    Format::Anthropic => Encoder::Anthropic(anthropic::Encoder::new(model)),
                    Format::Gemini => Encoder::Gemini(gemini::Encoder::new(model)),
                },
            }
        };
        Self {
            mode,
            complete: false,
            closed: false,
        }
    }

    /// Whether the upstream has said its answer is complete.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// One upstream event in, the client's events out. An error means the
    /// upstream reported a failure inside the stream or sent something broken.
    pub fn feed(&mut self, event: &Event) -> Result<Vec<Event>, Untranslatable> {
        match &mut self.mode {
            Mode::Same(format) => {
                let format = *format;
                self.check_same(format, event)?;
                Ok(vec![event.clone()])
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
                            if matches!(d, Delta::Stop(_)) {
                                self.complete = true;
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

    fn check_same(&mut self, format: Format, event: &Event) -> Result<(), Untranslatable> {
        let data = event.data.trim();
        match format {
            Format::OpenAi => {
                if data == "[DONE]" {
                    self.complete = true;
                    return Ok(());
                }
                let v: serde_json::Value = serde_json::from_str(data)
                    .map_err(|_| Untranslatable("a stream chunk is not JSON".into()))?;
                if v.get("error").is_some() {
                    return Err(Untranslatable(crate::pipeline::error_text(data.as_bytes())));
                }
                if openai_finished(&v) {
                    self.complete = true;
                }
            }
            Format::Anthropic => match event.event.as_deref() {
                Some("message_stop") => self.complete = true,
                Some("error") => {
                    return Err(Untranslatable(crate::pipeline::error_text(data.as_bytes())));
                }
                _ => {}
            },
            Format::Gemini => {
                let v: serde_json::Value = serde_json::from_str(data)
                    .map_err(|_| Untranslatable("a stream chunk is not JSON".into()))?;
                if v.get("error").is_some() {
                    return Err(Untranslatable(crate::pipeline::error_text(data.as_bytes())));
                }
                if v.pointer("/candidates/0/finishReason").is_some() {
                    self.complete = true;
                }
            }
        }
        Ok(())
    }
}

fn openai_finished(v: &serde_json::Value) -> bool {
    v.get("choices")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
        })
}

fn encode(encoder: &mut Encoder, d: &Delta, out: &mut Vec<Event>) {
    match encoder {
        Encoder::OpenAi(e) => e.encode(d, out),
        Encoder::Anthropic(e) => e.encode(d, out),
        Encoder::Gemini(e) => e.encode(d, out),
    }
}

fn close(encoder: &mut Encoder, out: &mut Vec<Event>) {
    match encoder {
        Encoder::OpenAi(e) => e.finish(out),
        Encoder::Anthropic(e) => e.finish(out),
        Encoder::Gemini(e) => e.finish(out),
    }
}
