//! Relaying an upstream event stream to the client, event by event, after
//! its first event. A failure from here on cannot fall back: it is learned and
//! the stream ends with an error event in the client's format.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

use super::{Attempted, Gateway};
use crate::routing::{Failure, Outcome};
use crate::sse::{Event, Parser};
use crate::upstream::{self, Response};
use crate::wire::{ErrorKind, Format, stream_error};

struct Relay {
    gateway: Gateway,
    attempted: Attempted,
    response: Response,
    parser: Parser,
    format: Format,
    /// The upstream said the stream is complete (`[DONE]` or a finish reason).
    complete: bool,
    finished: bool,
}

pub(super) fn relay(
    gateway: Gateway,
    attempted: Attempted,
    response: Response,
    parser: Parser,
    first: Event,
    format: Format,
) -> BoxStream<'static, Bytes> {
    let mut relay = Relay {
        gateway,
        attempted,
        response,
        parser,
        format,
        complete: false,
        finished: false,
    };
    let mut head = BytesMut::new();
    relay.take(&first, &mut head);
    let head = futures_util::stream::once(async move { head.freeze() });
    let rest = futures_util::stream::unfold(relay, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((chunk, r))
    });
    head.chain(rest).boxed()
}

impl Relay {
    /// Encodes one upstream event for the client and notes whether it ends the stream.
    fn take(&mut self, event: &Event, out: &mut BytesMut) {
        if upstream::openai::is_done(&event.data) {
            self.complete = true;
        } else if let Ok(chunk) = serde_json::from_str::<Value>(&event.data) {
            if upstream::openai::has_finish_reason(&chunk) {
                self.complete = true;
            }
        }
        event.encode_into(out);
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            let mut out = BytesMut::new();
            loop {
                match self.parser.next_event() {
                    Ok(Some(event)) => self.take(&event, &mut out),
                    Ok(None) => break,
                    Err(_) => return Some(self.cut(Failure::Malformed, out).await),
                }
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
            let hard_stop = self.gateway.inner.hard_stop.clone();
            let chunk = tokio::select! {
                biased;
                () = hard_stop.cancelled() => {
                    self.finished = true;
                    let event = stream_error(self.format, ErrorKind::Unavailable, "the gateway is shutting down");
                    return Some(event.encode());
                }
                chunk = self.response.chunk() => chunk,
            };
            match chunk {
                Ok(Some(bytes)) => self.parser.push(&bytes),
                Ok(None) if self.complete && !self.parser.has_partial() => {
                    self.finished = true;
                    return None;
                }
                Ok(None) => return Some(self.cut(Failure::StreamCut, out).await),
                Err(_) => return Some(self.cut(Failure::StreamCut, out).await),
            }
        }
    }

    /// Learns a broken stream and ends it with an error event.
    async fn cut(&mut self, failure: Failure, mut out: BytesMut) -> Bytes {
        self.finished = true;
        let kind = Failure::StreamCut;
        self.gateway
            .learn(
                &self.attempted,
                &Outcome::Transport(kind),
                failure.describe(),
            )
            .await;
        tracing::warn!(
            credential = %self.attempted.pick.credential.id,
            upstream_model = %self.attempted.pick.upstream_model,
            "upstream stream broke after the first event"
        );
        stream_error(self.format, ErrorKind::Upstream, failure.describe()).encode_into(&mut out);
        out.freeze()
    }
}
