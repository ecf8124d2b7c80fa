//! Token counting: the upstream count endpoint where the provider has one,
//! the local estimate otherwise. Counting reads blocks but never clears one,
//! and a local count touches no learned state.

use bytes::Bytes;
use serde_json::{Value, json};

use super::prepare::Prepared;
use super::{AttemptEnd, Attempted, ClientRequest, Gateway, Refusals, Reply, Trace};
use crate::catalog::Provider;
use crate::json::Document;
use crate::routing::{Failure, Outcome, Plan, Purpose, Step};
use crate::translate::{self, count, ir};
use crate::upstream::{anthropic, gemini};
use crate::wire::{ErrorKind, Format};

/// Fields Anthropic's count endpoint accepts.
const ANTHROPIC_COUNT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
];

impl Gateway {
    /// `POST /v1/messages/count_tokens` and `:countTokens`.
    pub async fn count_tokens(&self, request: ClientRequest, trace: &mut Trace) -> Reply {
        let (route, prepared) = match self.route_for(&request) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        let started = self.now_ms();
        let cfg = &self.inner.config;
        // A count is cheap to estimate and never worth a wait.
        let mut plan = Plan::new(cfg.routing, cfg.request_retry, 0, started)
            .excluding(prepared.excluded.clone());
        let mut seen = super::Confirmed::default();
        let mut refusals = Refusals::default();
        loop {
            match self.next_step(&mut plan, &route, &mut seen).await {
                Step::Try(pick) => {
                    trace.attempt(&pick);
                    let at = Attempted {
                        pick,
                        request_started_ms: started,
                        purpose: Purpose::CountTokens,
                    };
                    if at.pick.credential.provider == Provider::Openai {
                        return local_count(&request, &prepared);
                    }
                    let end = self.count_attempt(&at, &request, &prepared).await;
                    drop(seen.probe.take());
                    match end {
                        AttemptEnd::Done(reply) | AttemptEnd::Answered { reply, .. } => {
                            return reply;
                        }
                        AttemptEnd::Next(refused) => {
                            refusals.record(&at.pick.credential.id, refused);
                        }
                    }
                }
                // Every candidate blocked or failing: the estimate still
                // answers, and blocks a request refused everywhere the same
                // way wrote are lifted as for any request.
                Step::Wait { .. } | Step::GiveUp { .. } => {
                    let _ = self.lift(refusals).await;
                    return local_count(&request, &prepared);
                }
            }
        }
    }

    async fn count_attempt(
        &self,
        at: &Attempted,
        request: &ClientRequest,
        prepared: &Prepared,
    ) -> AttemptEnd {
        let cred = &at.pick.credential;
        let model = &at.pick.upstream_model;
        let same = translate::format_of(cred.provider) == request.format;
        // The body built for another format, as a document to rewrite.
        let translated = || {
            let ir = match &prepared.ir {
                Some(ir) => std::borrow::Cow::Borrowed(ir),
                None => std::borrow::Cow::Owned(
                    translate::parse_request(request.format, &request.body).ok()?,
                ),
            };
            let built = translate::build_request(cred.provider, &ir, model).ok()?;
            Document::parse(built.to_vec(request.body.len()).ok()?).ok()
        };
        let body = if same {
            request.body.clone()
        } else {
            match translated() {
                Some(doc) => doc,
                None => return AttemptEnd::Next(None),
            }
        };
        let sent = match cred.provider {
            Provider::Anthropic => {
                let model = Value::from(model.as_str()).to_string();
                let chunks = body.rewrite(&[("model", &model)], |k| {
                    ANTHROPIC_COUNT_FIELDS.contains(&k)
                });
                let client: &[(String, String)] = if same {
                    &request.passthrough_headers
                } else {
                    &[]
                };
                anthropic::count_tokens(cred, chunks.into(), client)
            }
            Provider::Gemini => {
                let name = format!("models/{}", model.strip_prefix("models/").unwrap_or(model));
                let name = Value::from(name).to_string();
                let mut chunks = vec![Bytes::from_static(b"{\"generateContentRequest\":")];
                chunks.extend(body.rewrite(&[("model", &name)], |_| true));
                chunks.push(Bytes::from_static(b"}"));
                gemini::count_tokens(cred, model, chunks.into())
            }
            Provider::Openai => return AttemptEnd::Next(None),
        };
        let mut response = match self.inner.upstream.post(sent).await {
            Ok(r) => r,
            Err(f) => return self.failed(at, f).await,
        };
        if !(200..300).contains(&response.status) {
            return self.upstream_error(at, response, request.format).await;
        }
        let body = match response.read_to_limit(super::ERROR_BODY_LIMIT).await {
            Ok(b) => b,
            Err(f) => return self.failed(at, f).await,
        };
        let tokens = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            v.get("input_tokens")
                .or_else(|| v.get("totalTokens"))
                .and_then(Value::as_u64)
        });
        let Some(tokens) = tokens else {
            return self.failed(at, Failure::Malformed).await;
        };
        self.learn(at, &Outcome::Success, "").await;
        AttemptEnd::Done(count_reply(request.format, tokens))
    }
}

fn local_count(request: &ClientRequest, prepared: &Prepared) -> Reply {
    let ir = match &prepared.ir {
        Some(ir) => Ok(ir.clone()),
        None => translate::parse_request(request.format, &request.body),
    };
    match ir {
        Ok(ir) => count_reply(request.format, count::estimate(&ir)),
        Err(ir::Untranslatable(why)) => Reply::error(ErrorKind::BadRequest, why),
    }
}

fn count_reply(format: Format, tokens: u64) -> Reply {
    let body = match format {
        Format::Gemini => json!({ "totalTokens": tokens }),
        Format::Anthropic | Format::OpenAi | Format::Responses => {
            json!({ "input_tokens": tokens })
        }
    };
    Reply::Body {
        status: 200,
        content_type: "application/json".into(),
        body: Bytes::from(body.to_string()),
    }
}
