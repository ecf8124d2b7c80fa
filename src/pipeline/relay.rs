//! Relaying an upstream event stream to the client, event by event, after
//! its first event. A failure from here on cannot fall back: it is learned and
//! the stream ends with an error event in the client's format.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{Attempted, Gateway, Tally};
use crate::routing::{Failure, Outcome};
use crate::sse::{Event, Parser};
use crate::translate::stream::StreamTranslator;
use crate::upstream::Response;
use crate::wire::{ErrorKind, Format};

struct Relay {
    gateway: Gateway,
    attempted: Attempted,
    response: Response,
    parser: Parser,
    translator: StreamTranslator,
    format: Format,
    finished: bool,
    /// The stream ended with an error event (the upstream broke, or the
    /// gateway is shutting down).
    broke: bool,
    /// Where what the stream used is left when it ends, however it ends.
    tally: Tally,
    input_estimate: u64,
}

/// A stream whose first events have arrived, to be relayed.
pub(super) struct Start {
    pub attempted: Attempted,
    pub response: Response,
    pub parser: Parser,
    pub translator: StreamTranslator,
    /// The client's events so far.
    pub first: Vec<Event>,
    pub format: Format,
    pub tally: Tally,
    /// The local estimate of the prompt, should the upstream report nothing.
    pub input_estimate: u64,
}

pub(super) fn relay(gateway: Gateway, start: Start) -> BoxStream<'static, Bytes> {
    let relay = Relay {
        gateway,
        attempted: start.attempted,
        response: start.response,
        parser: start.parser,
        translator: start.translator,
        format: start.format,
        finished: false,
        broke: false,
        tally: start.tally,
        input_estimate: start.input_estimate,
    };
    let head = encode(&start.first);
    let head = futures_util::stream::once(async move { head });
    let rest = futures_util::stream::unfold(relay, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((chunk, r))
    });
    head.chain(rest).boxed()
}

impl Drop for Relay {
    /// The stream ended, was cut, or its client left: what it used so far
    /// (the upstream's report, else the estimate) is what it is counted with.
    fn drop(&mut self) {
        if let Tally::Stream(cell) = &self.tally {
            let mut spent = self.translator.spent(self.input_estimate);
            spent.broke = self.broke;
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(spent);
        }
    }
}

fn encode(events: &[Event]) -> Bytes {
    let mut out = BytesMut::new();
    for e in events {
        e.encode_into(&mut out);
    }
    out.freeze()
}

impl Relay {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            let mut out = BytesMut::new();
            loop {
                match self.parser.next_event() {
                    Ok(Some(event)) if event.data.trim().is_empty() => {}
                    Ok(Some(event)) => match self.translator.feed(&event) {
                        Ok(events) => events.iter().for_each(|e| e.encode_into(&mut out)),
                        Err(e) => {
                            return Some(Box::pin(self.cut(Failure::Malformed, &e.0, out)).await);
                        }
                    },
                    Ok(None) => break,
                    Err(_) => {
                        let why = Failure::Malformed.describe();
                        return Some(Box::pin(self.cut(Failure::Malformed, why, out)).await);
                    }
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
                    self.broke = true;
                    let event = self.translator.failure(self.format, ErrorKind::Unavailable, "the gateway is shutting down");
                    return Some(event.encode());
                }
                chunk = self.response.chunk() => chunk,
            };
            match chunk {
                Ok(Some(bytes)) => self.parser.push(&bytes),
                Ok(None) if !self.parser.has_partial() => {
                    self.finished = true;
                    return match self.translator.finish() {
                        Ok(events) if events.is_empty() => None,
                        Ok(events) => Some(encode(&events)),
                        Err(e) => Some(Box::pin(self.cut(Failure::StreamCut, &e.0, out)).await),
                    };
                }
                Ok(None) | Err(_) => {
                    let why = Failure::StreamCut.describe();
                    return Some(Box::pin(self.cut(Failure::StreamCut, why, out)).await);
                }
            }
        }
    }

    /// Learns a broken stream and ends it with an error event. Callers box
    /// this future: it is rare and large, and every open stream would
    /// otherwise carry its size.
    async fn cut(&mut self, failure: Failure, why: &str, mut out: BytesMut) -> Bytes {
        self.finished = true;
        self.broke = true;
        self.gateway
            .learn(
                &self.attempted,
                &Outcome::Transport(Failure::StreamCut),
                why,
            )
            .await;
        tracing::warn!(
            credential = %self.attempted.pick.credential.id,
            upstream_model = %self.attempted.pick.upstream_model,
            reason = failure.describe(),
            "upstream stream broke after the first event"
        );
        let cut = Failure::StreamCut.describe();
        let message = if why == cut {
            cut.to_string()
        } else {
            format!("{cut}: {why}")
        };
        self.translator
            .failure(self.format, ErrorKind::Upstream, &message)
            .encode_into(&mut out);
        out.freeze()
    }
}
