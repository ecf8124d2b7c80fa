//! Counting a generation request once what it used is known: at once for a
//! whole answer, when the stream ends (or its client leaves) for a stream.
//! The count goes to the ledger; nothing here waits on anything.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;

use super::{AppState, RequestLog};
use crate::catalog::ApiKey;
use crate::config::Usage;
use crate::ledger::Counts;
use crate::pipeline::Tally;

/// One request's count, waiting for its usage.
pub(super) struct Count {
    state: AppState,
    key: Arc<ApiKey>,
    model: String,
    upstream: Option<(String, String)>,
    error: bool,
    tally: Tally,
}

impl Count {
    pub(super) fn new(state: &AppState, status: u16, log: &RequestLog) -> Self {
        // Counted under the credential whose answer (or error) the client
        // got; '' when the gateway answered itself.
        let upstream = log
            .trace
            .credential
            .clone()
            .zip(log.trace.upstream_model.clone())
            .filter(|_| log.trace.answered);
        Self {
            state: state.clone(),
            key: log.key.clone(),
            model: log.model.clone(),
            upstream,
            error: status >= 400,
            tally: log.trace.spent.clone(),
        }
    }

    /// Counts it now, or when the response's stream ends.
    pub(super) fn attach(self, response: Response) -> Response {
        if !self.tally.streaming() {
            self.record();
            return response;
        }
        response.map(|body| {
            Body::from_stream(Counting {
                inner: Some(body.into_data_stream()),
                count: Some(self),
            })
        })
    }

    fn record(self) {
        let spent = self.tally.spent().unwrap_or_default();
        let error = self.error || spent.broke;
        // An answer, whole or streamed, the upstream reported no usage for.
        if !spent.reported && !matches!(self.tally, Tally::Nothing) {
            self.state.gateway.metrics().usage_estimated();
        }
        let u = spent.usage;
        let price = self.state.gateway.catalog().load().prices.of(&self.model);
        let counts = Counts {
            requests: 1,
            errors: u64::from(error),
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_tokens: u.cached_tokens,
            cache_write_tokens: u.cache_write_tokens,
            reasoning_tokens: u.reasoning_tokens,
            cost_pico: price.map_or(0, |p| p.cost_pico(&u)),
        };
        let upstream = self
            .upstream
            .as_ref()
            .map(|(c, m)| (c.as_str(), m.as_str()));
        if self.state.gateway.config().usage == Usage::On {
            self.state
                .ledger
                .record(&self.key.name, &self.model, upstream, counts);
        }
        let limits = &self.key.limits;
        if limits.spends() {
            self.state.limiter.spent(
                limits,
                &self.key.name,
                u.input_tokens + u.output_tokens,
                counts.cost_pico,
            );
        }
    }
}

/// A streamed body that counts its request when it is dropped: after the
/// relay under it, which leaves what the stream used.
struct Counting {
    inner: Option<BodyDataStream>,
    count: Option<Count>,
}

impl Stream for Counting {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        // The relay first: it leaves the stream's usage in the tally.
        drop(self.inner.take());
        if let Some(count) = self.count.take() {
            count.record();
        }
    }
}
