//! The local token estimate, for providers without a count endpoint.
//!
//! About four characters a token over every text, tool call, tool result and
//! tool declaration, plus a few tokens of framing per message; an image
//! counts as a flat 1,000 tokens. It is an estimate: upstream counts are used
//! wherever the provider has a count endpoint.

use super::ir::{Part, Request};

const CHARS_PER_TOKEN: usize = 4;
const TOKENS_PER_MESSAGE: u64 = 4;
const TOKENS_PER_IMAGE: u64 = 1_000;

pub fn estimate(req: &Request) -> u64 {
    let mut chars = 0usize;
    let mut images = 0u64;
    for s in &req.system {
        chars += s.len();
    }
    for t in &req.tools {
        chars += t.name.len()
            + t.description.as_ref().map_or(0, String::len)
            + t.parameters.text().len();
    }
    let (message_chars, message_images) = req.messages.size();
    chars += message_chars;
    images += message_images;
    let text = chars.div_ceil(CHARS_PER_TOKEN) as u64;
    text + images * TOKENS_PER_IMAGE + TOKENS_PER_MESSAGE * (req.messages.len() as u64 + 1)
}

/// Adds what part `p` weighs to `chars` and `images` (a conversation's
/// total is taken as it is read: [`super::ir::Messages::size`]).
pub fn tally(p: &Part, chars: &mut usize, images: &mut u64) {
    match p {
        Part::Text(t) | Part::Thinking(t) => *chars += t.len(),
        Part::Image(_) | Part::Document { .. } => *images += 1,
        Part::ToolCall {
            name, arguments, ..
        } => *chars += name.len() + arguments.text().len(),
        Part::ToolResult { content, .. } => {
            for c in content {
                tally(c, chars, images);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::{Message, Role};

    #[test]
    fn about_four_characters_a_token() {
        let req = Request {
            system: vec!["x".repeat(40)],
            messages: vec![Message::new(Role::User, vec![Part::Text("y".repeat(400))])].into(),
            ..Request::default()
        };
        assert_eq!(estimate(&req), 110 + 8);
    }
}
