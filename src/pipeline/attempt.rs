//! One upstream attempt: rewrite the request for the chosen credential, send
//! it, and turn what comes back into an answer or a reason to move on.

use bytes::Bytes;
use serde_json::Value;

use super::prepare::Prepared;
use super::{
    AttemptEnd, Attempted, ClientRequest, ERROR_BODY_LIMIT, Gateway, Refused, Reply, Tally,
    contains, error_text, relay,
};
use crate::catalog::Provider;
use crate::json::{Json, span_in};
use crate::routing::{Failure, Next, Outcome, hints};
use crate::secret::scrub;
use crate::sse;
use crate::translate::{
    self, ir,
    stream::{StreamSpec, StreamTranslator},
    usage::{self, Spent},
};
use crate::upstream::{self, Payload, anthropic, gemini, openai};
use crate::wire::{self, ErrorKind, Format, UpstreamError};

impl Gateway {
    pub(super) async fn attempt(
        &self,
        at: &Attempted,
        request: &ClientRequest,
        prepared: &Prepared,
    ) -> AttemptEnd {
        let provider = at.pick.credential.provider;
        let upstream_format = translate::upstream_format(&at.pick.credential, request.format);
        let same = upstream_format == request.format;
        let sent = match build(at, request, prepared, same) {
            Some(s) => s,
            // Excluded before routing; reaching here would be a bug, not a client error.
            None => return AttemptEnd::Next(None),
        };
        let mut response = match self.inner.upstream.post(sent).await {
            Ok(r) => r,
            Err(f) => return self.failed(at, f).await,
        };
        if !(200..300).contains(&response.status) {
            return self.upstream_error(at, response, request.format).await;
        }
        if request.stream {
            let translator = StreamTranslator::new(&StreamSpec {
                upstream: upstream_format,
                client: request.format,
                model: &request.model,
                include_usage: request.include_usage,
                usage_added: asks_for_usage(request, same),
                input_estimate: prepared.input_estimate,
                custom_tools: prepared.custom_tools(),
            });
            let input_estimate = input_estimate(request, prepared);
            return self
                .begin_stream(at, response, translator, request.format, input_estimate)
                .await;
        }
        let body = match response
            .read_whole(self.inner.config.max_answer_bytes)
            .await
        {
            Ok(b) => b,
            Err(f) => return self.failed(at, f).await,
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return self.failed(at, Failure::Empty).await;
        }
        let reported;
        let answer = if same {
            let rename = match check_answer(upstream_format, &body, &request.model) {
                Ok((used, rename)) => {
                    reported = used
                        .filter(|_| request.metered)
                        .and_then(|u| usage::of_field(upstream_format, u));
                    rename
                }
                Err(message) => return self.failed_with(at, Failure::Malformed, &message).await,
            };
            renamed(body, rename, &request.model)
        } else {
            let Some(v) = std::str::from_utf8(&body)
                .ok()
                .and_then(|t| Json::parse(t).ok())
            else {
                return self
                    .failed_with(at, Failure::Malformed, "the upstream answer is not JSON")
                    .await;
            };
            reported = request
                .metered
                .then(|| usage::of_answer(upstream_format, v))
                .flatten();
            match translate::parse_response(provider, v) {
                Ok(r) => Bytes::from(translate::build_response(
                    request.format,
                    &r,
                    &request.model,
                    &prepared.custom_tools(),
                )),
                // JSON of some other shape is the upstream's failure...
                Err(e) if !has_answer(provider, v) => {
                    return self.failed_with(at, Failure::Malformed, &e.0).await;
                }
                // ...an answer the gateway could not translate is its own:
                // it teaches nothing about the credential.
                Err(e) => return AttemptEnd::Done(untranslated(at, &e.0)),
            }
        };
        self.learn(at, &Outcome::Success, "").await;
        self.headroom(at, &response).await;
        let response_id = (same && request.format == Format::Responses)
            .then(|| response_id(&answer))
            .flatten();
        let spent = match reported {
            Some(usage) => Spent {
                usage,
                reported: true,
                broke: false,
            },
            None => Spent {
                usage: ir::Usage {
                    input_tokens: input_estimate(request, prepared),
                    output_tokens: usage::estimate_of_body(answer.len()),
                    ..ir::Usage::default()
                },
                reported: false,
                broke: false,
            },
        };
        AttemptEnd::Answered {
            reply: Reply::Body {
                status: 200,
                content_type: "application/json".into(),
                body: answer,
            },
            response_id,
            spent: Tally::Known(spent),
        }
    }

    /// Holds the response until the upstream's first event that gives the
    /// client something: any failure before it falls back invisibly.
    async fn begin_stream(
        &self,
        at: &Attempted,
        mut response: upstream::Response,
        mut translator: StreamTranslator,
        format: Format,
        input_estimate: u64,
    ) -> AttemptEnd {
        let mut parser = sse::Parser::new();
        // What the client gets once the upstream has sent content.
        let mut held = Vec::new();
        loop {
            match parser.next_event() {
                Ok(Some(event)) if event.data.trim().is_empty() => continue,
                Ok(Some(event)) => match translator.feed(&event) {
                    Ok(out) => {
                        held.extend(out);
                        if translator.has_content() {
                            break;
                        }
                        if translator.complete() {
                            return self.failed(at, Failure::Empty).await;
                        }
                        continue;
                    }
                    Err(e) => return self.failed_with(at, Failure::Malformed, &e.0).await,
                },
                Ok(None) => {}
                Err(_) => return self.failed(at, Failure::Malformed).await,
            }
            match response.chunk().await {
                Ok(Some(chunk)) => parser.push(&chunk),
                Ok(None) => return self.failed(at, Failure::Empty).await,
                Err(f) => return self.failed(at, f).await,
            }
        }
        self.learn(at, &Outcome::Success, "").await;
        self.headroom(at, &response).await;
        let response_id = translator.response_id().map(String::from);
        let tally = Tally::stream();
        let stream = relay::relay(
            self.clone(),
            relay::Start {
                attempted: at.clone(),
                response,
                parser,
                translator,
                first: held,
                format,
                tally: tally.clone(),
                input_estimate,
            },
        );
        AttemptEnd::Answered {
            reply: Reply::Stream(stream),
            response_id,
            spent: tally,
        }
    }

    /// Headroom: a successful answer whose rate-limit headers say nothing is
    /// left blocks its pair until the reset, as a quota block of reason
    /// `exhausted`, so no replica spends a failed call on it.
    async fn headroom(&self, at: &Attempted, response: &upstream::Response) {
        if !response.has_header_starting(&["x-ratelimit-remaining", "anthropic-ratelimit"]) {
            return;
        }
        let now = self.now_ms();
        let Some((ms, header)) = hints::exhausted(|h| response.header(h), now) else {
            return;
        };
        let cred = &at.pick.credential;
        let pair = crate::state::Scope::pair(&cred.id, &at.pick.upstream_model);
        let block = crate::state::Block {
            reason: crate::state::Reason::Exhausted,
            status: response.status,
            message: format!("{header}: nothing left until the reset"),
            replica: self.inner.config.replica_id.clone(),
            since_ms: now,
            until_ms: now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        };
        match self.inner.store.put(&pair, block).await {
            Ok(_) => {
                self.inner.metrics.block("exhausted", pair.kind());
                tracing::info!(credential = %cred.id, scope = %pair, block_ms = ms, header, "headroom used up");
            }
            Err(e) => tracing::warn!(credential = %cred.id, error = %e, "learning headroom failed"),
        }
    }

    /// A non-2xx answer: classified and learned; relayed to the client when
    /// it is the request's own fault.
    pub(super) async fn upstream_error(
        &self,
        at: &Attempted,
        mut response: upstream::Response,
        format: Format,
    ) -> AttemptEnd {
        let body = response
            .read_to_limit(ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let hint_ms = hints::quota_hint(|h| response.header(h), json.as_ref(), self.now_ms());
        let text = error_text(&body);
        let error = match &json {
            Some(v) => UpstreamError::from_json(v),
            None => UpstreamError::parse(&body),
        };
        let outcome = Outcome::Status {
            status: response.status,
            error: &error,
            upstream_model: &at.pick.upstream_model,
            hint_ms,
        };
        let learned = self.learn(at, &outcome, &text).await;
        match learned.next {
            Next::ReturnToClient | Next::Answer => {
                AttemptEnd::Done(relay_error(at, &response, body, &text, format))
            }
            Next::NextCandidate | Next::Stop => {
                // Kept for the request's end: should every candidate refuse it
                // like this, the client gets this error.
                let refused = learned.signature.map(|signature| {
                    Box::new(Refused {
                        signature,
                        written: learned.written,
                        reply: relay_error(at, &response, body, &text, format),
                    })
                });
                AttemptEnd::Next(refused)
            }
        }
    }
}

/// The upstream request for this attempt: the client's own body when the
/// provider speaks its format (with the model rewritten, the rest sent as
/// the pieces of the client's text), else a translation.
fn build(
    at: &Attempted,
    request: &ClientRequest,
    prepared: &Prepared,
    same: bool,
) -> Option<upstream::Request> {
    let cred = &at.pick.credential;
    let model = &at.pick.upstream_model;
    let body: Payload = if same {
        let own = prepared.own.as_ref().unwrap_or(&request.body);
        // Gemini names the model in the URL, the others in the body.
        let renamed = Value::from(model.as_str()).to_string();
        let set: &[(&str, &str)] = match cred.provider {
            Provider::Gemini => &[],
            _ if asks_for_usage(request, same) => &[
                ("model", &renamed),
                ("stream_options", r#"{"include_usage":true}"#),
            ],
            _ => &[("model", &renamed)],
        };
        own.rewrite(set, |_| true).into()
    } else {
        translate::build_request(cred.provider, prepared.ir.as_ref()?, model)
            .and_then(|b| b.to_vec(request.body.len()))
            .ok()?
            .into()
    };
    Some(match cred.provider {
        Provider::Openai if same && request.format == Format::Responses => {
            openai::responses(cred, body)
        }
        Provider::Openai => openai::chat_completions(cred, body),
        Provider::Anthropic => {
            let client: &[(String, String)] = if same {
                &request.passthrough_headers
            } else {
                &[]
            };
            anthropic::messages(cred, body, client)
        }
        Provider::Gemini => gemini::generate(cred, model, request.stream, body),
    })
}

/// The `id` of a Responses answer.
fn response_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(body).ok().map(|v| v.id)
}

/// Whether a JSON answer has the shape of a provider's answer at all.
fn has_answer(provider: Provider, v: Json<'_>) -> bool {
    let key = match provider {
        Provider::Openai => "choices",
        Provider::Anthropic => "content",
        Provider::Gemini => "candidates",
    };
    v.get(key).is_some()
}

/// The client's error for an answer the gateway could not translate.
fn untranslated(at: &Attempted, why: &str) -> Reply {
    tracing::error!(
        credential = %at.pick.credential.id,
        upstream_model = %at.pick.upstream_model,
        error = why,
        "could not translate an upstream answer"
    );
    Reply::error(
        ErrorKind::Upstream,
        format!("the gateway could not translate the upstream's answer: {why}"),
    )
}

/// A passthrough answer naming the model the client asked for, not the one
/// sent upstream: the span of its `model` field (found by [`check_answer`])
/// replaced in the text, the rest as it came.
fn renamed(body: Vec<u8>, slot: Option<std::ops::Range<usize>>, model: &str) -> Bytes {
    let Some(at) = slot else {
        return Bytes::from(body);
    };
    let name = serde_json::to_string(model).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + name.len());
    out.extend_from_slice(&body[..at.start]);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&body[at.end..]);
    Bytes::from(out)
}

/// A 2xx body of the client's own format: JSON, and not an error object in
/// disguise (some OpenAI-compatible servers answer failures with a 200).
/// Whether a passed-through OpenAI chat stream is sent asking for the usage
/// chunk its client did not ask for (the ledger reads it; the client does
/// not get it).
fn asks_for_usage(request: &ClientRequest, same: bool) -> bool {
    same && request.stream
        && request.format == Format::OpenAi
        && !request.include_usage
        && request.metered
}

/// The local estimate of the prompt's tokens: the neutral form's, else the
/// body's length.
fn input_estimate(request: &ClientRequest, prepared: &Prepared) -> u64 {
    match prepared.input_estimate {
        0 => usage::estimate_of_body(request.body.len()),
        n => n,
    }
}

/// A passed-through answer checked, in one pass over its fields: its usage
/// object, and where its model field names another model than `model`
/// (to be renamed).
fn check_answer<'a>(
    format: Format,
    body: &'a [u8],
    model: &str,
) -> Result<(Option<Json<'a>>, Option<std::ops::Range<usize>>), String> {
    let (model_key, answer_key) = match format {
        Format::OpenAi => ("model", "choices"),
        Format::Responses => ("model", "output"),
        Format::Anthropic => ("model", "content"),
        Format::Gemini => ("modelVersion", "candidates"),
    };
    let keys = [model_key, usage::field(format), "error", answer_key];
    let Some((text, [named, used, error, answer])) = std::str::from_utf8(body)
        .ok()
        .and_then(|t| Some((t, Json::parse_many(t, keys).ok()?.1)))
    else {
        return Err(Failure::Malformed.describe().into());
    };
    if error.is_some() && answer.is_none() {
        return Err(error_text(body));
    }
    let rename = named
        .filter(|slot| slot.as_str().as_deref() != Some(model))
        .map(|slot| span_in(text, slot.text()));
    Ok((used, rename))
}

/// An upstream error that is the request's own fault, for the client: as it
/// is when the upstream speaks the client's format, else re-rendered in it.
fn relay_error(
    at: &Attempted,
    response: &upstream::Response,
    body: Bytes,
    text: &str,
    format: Format,
) -> Reply {
    let secret = at.pick.credential.api_key.expose();
    if translate::speaks(&at.pick.credential, format) {
        let body = if !secret.is_empty() && contains(&body, secret.as_bytes()) {
            Bytes::from(scrub(&String::from_utf8_lossy(&body), &[secret]))
        } else {
            body
        };
        return Reply::Body {
            status: response.status,
            content_type: response
                .content_type()
                .unwrap_or("application/json")
                .to_string(),
            body,
        };
    }
    let kind = match response.status {
        413 => ErrorKind::PayloadTooLarge,
        _ => ErrorKind::BadRequest,
    };
    let message = scrub(text, &[secret]);
    let mut rendered = wire::error_body(format, kind, &message);
    if let Some(code) = rendered
        .pointer_mut("/error/code")
        .filter(|c| c.is_number())
    {
        *code = Value::from(response.status);
    }
    Reply::Body {
        status: response.status,
        content_type: "application/json".into(),
        body: Bytes::from(rendered.to_string()),
    }
}
