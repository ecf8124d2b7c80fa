//! Server-sent events: an incremental parser for upstream streams and the
//! encoder for what the gateway sends its clients.

use bytes::{Bytes, BytesMut};

/// One event. `data` joins multi-line data with `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

impl Event {
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            event: None,
            data: data.into(),
        }
    }

    pub fn named(event: &str, data: impl Into<String>) -> Self {
        Self {
            event: Some(event.to_string()),
            data: data.into(),
        }
    }

    /// Writes the event in wire form.
    pub fn encode_into(&self, out: &mut BytesMut) {
        if let Some(name) = &self.event {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\n");
        }
        for line in self.data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\n");
        }
        out.extend_from_slice(b"\n");
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.data.len() + 16);
        self.encode_into(&mut out);
        out.freeze()
    }
}

/// Longest event the parser holds before it gives up on a stream: a guard
/// against an upstream that never ends an event.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("an upstream event exceeded {MAX_EVENT_BYTES} bytes")]
    TooLong,
    #[error("an upstream event is not UTF-8")]
    NotUtf8,
}

/// Splits a byte stream into events, whatever the chunk boundaries.
#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
    /// Bytes of `buf` already scanned for a blank line.
    scanned: usize,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, skipping comment-only and empty blocks.
    pub fn next_event(&mut self) -> Result<Option<Event>, ParseError> {
        loop {
            let Some((end, sep)) = find_blank_line(&self.buf, self.scanned) else {
                self.scanned = self.buf.len().saturating_sub(3);
                if self.buf.len() > MAX_EVENT_BYTES {
                    return Err(ParseError::TooLong);
                }
                return Ok(None);
            };
            let block = self.buf.split_to(end + sep);
            self.scanned = 0;
            let text = std::str::from_utf8(&block[..end]).map_err(|_| ParseError::NotUtf8)?;
            if let Some(event) = parse_block(text) {
                return Ok(Some(event));
            }
        }
    }

    /// Whether bytes of an unfinished event are held.
    pub fn has_partial(&self) -> bool {
        self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }
}

/// Position and length of the first blank line (`\n\n`, `\r\n\r\n` or `\r\r`).
fn find_blank_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' if buf.get(i + 1) == Some(&b'\n') => return Some((i, 2)),
            b'\r' if buf[i + 1..].starts_with(b"\n\r\n") => return Some((i, 4)),
            b'\r' if buf.get(i + 1) == Some(&b'\r') => return Some((i, 2)),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_block(text: &str) -> Option<Event> {
    let mut event = Event::default();
    let mut has_data = false;
    for line in text.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event.event = Some(value.to_string()),
            "data" => {
                if has_data {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    has_data.then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = p.next_event().expect("valid") {
            out.push(e);
        }
        out
    }

    #[test]
    fn events_across_arbitrary_chunk_boundaries() {
        let wire = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: message_start\ndata: x\ndata: y\n\r\n\r\ndata: [DONE]\n\n";
        for split in 1..wire.len() {
            let mut p = Parser::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                p.push(chunk);
                got.extend(all(&mut p));
            }
            assert_eq!(
                got,
                vec![
                    Event::data("{\"a\":1}"),
                    Event::named("message_start", "x\ny"),
                    Event::data("[DONE]"),
                ],
                "split {split}"
            );
            assert!(!p.has_partial());
        }
    }

    #[test]
    fn encode_round_trips() {
        let e = Event::named("ping", "a\nb");
        let mut p = Parser::new();
        p.push(&e.encode());
        assert_eq!(p.next_event().expect("valid"), Some(e));
    }

    #[test]
    fn an_unfinished_event_is_reported_as_partial() {
        let mut p = Parser::new();
        p.push(b"data: {\"half\":");
        assert_eq!(p.next_event().expect("valid"), None);
        assert!(p.has_partial());
    }
}
