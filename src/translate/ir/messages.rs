//! The conversation of a neutral request. A body of ordinary size keeps its
//! messages in memory; a large one keeps only where they lie in the
//! client's text and reads them again, one at a time, each time they are
//! walked. In the neutral form a message costs about 150 bytes whatever its
//! text: a body of a million one-word messages held that way costs several
//! times its size, read again it costs a message at a time.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::iter::Peekable;

use super::{Message, Part, Role, Untranslatable};
use crate::json::{Document, Items, Json};

/// Bodies larger than this keep their conversation as text.
pub const READ_AGAIN_ABOVE: usize = 1 << 20;

/// A format's reader of one item of its conversation array: it puts what
/// the item says into `to` (a message, a part of the last message, or
/// opening system text).
pub type ReadItem = fn(Json<'_>, &mut Conversation) -> Result<(), Untranslatable>;

/// What a format's reader writes to, item by item. A message put here can
/// still be added to while it is the last; the ones before it are done.
#[derive(Debug, Default)]
pub struct Conversation {
    /// System text before the first message.
    pub system: Vec<String>,
    ready: VecDeque<Message>,
    put: usize,
    /// Calls numbered so far, for ids made up for calls without one.
    pub numbered: usize,
    /// Per function name, the id of its latest call (for results that name
    /// their function, not their call).
    calls: HashMap<String, String>,
}

impl Conversation {
    /// No message yet (system text does not count).
    pub fn is_empty(&self) -> bool {
        self.put == 0
    }

    pub fn push(&mut self, message: Message) {
        self.put += 1;
        self.ready.push_back(message);
    }

    /// Adds `part` to the last message when it has `role`, else to a new
    /// one: consecutive calls (and results) stay together, up to
    /// [`super::MAX_PARTS`].
    pub fn push_part(&mut self, role: Role, part: Part) -> Result<(), Untranslatable> {
        match self.ready.back_mut() {
            Some(m) if m.role == role && m.parts.len() >= super::MAX_PARTS => {
                return Err(Untranslatable(super::too_many_parts()));
            }
            Some(m) if m.role == role => m.parts.push(part),
            _ => self.push(Message::new(role, vec![part])),
        }
        Ok(())
    }

    /// Remembers the calls of `parts` by their function's name.
    pub fn note_calls(&mut self, parts: &[Part]) {
        for p in parts {
            if let Part::ToolCall { id, name, .. } = p {
                self.calls.insert(name.clone(), id.clone());
            }
        }
    }

    /// The id of the latest call noted of function `name`.
    pub fn latest_call(&self, name: &str) -> Option<&str> {
        self.calls.get(name).map(String::as_str)
    }
}

/// Where a conversation read again lies, and how to read it.
#[derive(Clone)]
struct Source {
    body: Document,
    key: &'static str,
    read: ReadItem,
}

/// The messages of a request, walked with [`Messages::iter`].
#[derive(Clone, Default)]
pub struct Messages {
    /// The messages, when they are kept.
    kept: Option<Vec<Message>>,
    source: Option<Source>,
    len: usize,
    has_system: bool,
    ends_in_results: bool,
    /// Characters of text and the number of images and documents, for the
    /// local token estimate.
    chars: usize,
    images: u64,
}

impl Messages {
    /// Reads the conversation at `body[key]` with `read`, checking every
    /// item; also gives the system text that opens it.
    pub fn read(
        body: &Document,
        key: &'static str,
        read: ReadItem,
    ) -> Result<(Messages, Vec<String>), Untranslatable> {
        let source = Source {
            body: body.clone(),
            key,
            read,
        };
        let keep = body.len() <= READ_AGAIN_ABOVE;
        let mut out = Messages {
            kept: keep.then(Vec::new),
            source: None,
            ..Messages::default()
        };
        let mut reader = Reader::new(&source);
        while let Some(m) = reader.next() {
            let m = m?.into_owned();
            out.note(&m);
            if let Some(kept) = &mut out.kept {
                kept.push(m);
            }
        }
        let system = std::mem::take(&mut reader.to.system);
        drop(reader);
        out.source = Some(source);
        Ok((out, system))
    }

    fn note(&mut self, m: &Message) {
        for p in &m.parts {
            crate::translate::count::tally(p, &mut self.chars, &mut self.images);
        }
        self.len += 1;
        self.has_system |= m.role == Role::System;
        self.ends_in_results =
            m.role == Role::User && m.parts.iter().any(|p| matches!(p, Part::ToolResult { .. }));
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The characters of its text (and calls) and its number of images and
    /// documents.
    pub fn size(&self) -> (usize, u64) {
        (self.chars, self.images)
    }

    /// Some system message inside the conversation.
    pub fn has_system(&self) -> bool {
        self.has_system
    }

    /// The last message is the user's tool results (a tool loop).
    pub fn ends_in_tool_results(&self) -> bool {
        self.ends_in_results
    }

    /// The messages in order: borrowed when kept, read again otherwise. A
    /// read that fails ends the walk with its error.
    pub fn iter(&self) -> Iter<'_> {
        match (&self.kept, &self.source) {
            (Some(kept), _) => Iter::Kept(kept.iter()),
            (None, Some(source)) => Iter::Read(Reader::new(source)),
            (None, None) => Iter::Kept([].iter()),
        }
    }

    /// The messages, owned.
    pub fn to_vec(&self) -> Vec<Message> {
        self.iter()
            .filter_map(Result::ok)
            .map(Cow::into_owned)
            .collect()
    }

    /// Drops the kept messages of a conversation that can be read again
    /// (tests: what a large body does).
    pub fn read_again(mut self) -> Self {
        if self.source.is_some() {
            self.kept = None;
        }
        self
    }

    /// The texts of the system messages inside the conversation, in order.
    pub fn system_texts(&self) -> Result<Vec<String>, Untranslatable> {
        let mut out = Vec::new();
        if !self.has_system {
            return Ok(out);
        }
        for m in self.iter() {
            let m = m?;
            if m.role == Role::System {
                out.extend(m.parts.iter().filter_map(|p| match p {
                    Part::Text(t) => Some(t.clone()),
                    _ => None,
                }));
            }
        }
        Ok(out)
    }
}

impl From<Vec<Message>> for Messages {
    fn from(messages: Vec<Message>) -> Self {
        let mut out = Messages::default();
        for m in &messages {
            out.note(m);
        }
        out.kept = Some(messages);
        out
    }
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Messages {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

/// A walk over [`Messages`].
pub enum Iter<'a> {
    Kept(std::slice::Iter<'a, Message>),
    Read(Reader<'a>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = Result<Cow<'a, Message>, Untranslatable>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Kept(it) => it.next().map(|m| Ok(Cow::Borrowed(m))),
            Iter::Read(reader) => reader.next(),
        }
    }
}

/// Reads a conversation's items one by one, holding at most the message
/// being read and the one before it.
pub struct Reader<'a> {
    items: Items<'a>,
    read: ReadItem,
    to: Conversation,
    failed: bool,
}

impl<'a> Reader<'a> {
    fn new(source: &'a Source) -> Self {
        Reader {
            items: source.body.get(source.key).unwrap_or(Json::NULL).items(),
            read: source.read,
            to: Conversation::default(),
            failed: false,
        }
    }

    fn next(&mut self) -> Option<Result<Cow<'a, Message>, Untranslatable>> {
        loop {
            if self.failed {
                return None;
            }
            // Only the last message can still grow.
            if self.to.ready.len() > 1 {
                return self.to.ready.pop_front().map(|m| Ok(Cow::Owned(m)));
            }
            match self.items.next() {
                Some(item) => {
                    if let Err(e) = (self.read)(item, &mut self.to) {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
                None => return self.to.ready.pop_front().map(|m| Ok(Cow::Owned(m))),
            }
        }
    }
}

type Walk<'a> = Box<dyn Iterator<Item = Result<Cow<'a, Message>, Untranslatable>> + 'a>;

/// The conversation as formats that need strict alternation take it:
/// consecutive messages of one role make one turn, and system messages
/// inside it are left out (such formats put their text with the opening
/// system text, [`Messages::system_texts`]). Walked a turn at a time and,
/// within a turn, a message at a time, so a turn of a million messages is
/// never held whole; shared by reference between a turn's writer and the
/// writer of its parts.
pub struct Turns<'a> {
    walk: RefCell<Peekable<Walk<'a>>>,
}

impl<'a> Turns<'a> {
    pub fn new(messages: &'a Messages) -> Self {
        let walk: Walk<'a> = Box::new(
            messages
                .iter()
                .filter(|m| !matches!(m, Ok(m) if m.role == Role::System)),
        );
        Turns {
            walk: RefCell::new(walk.peekable()),
        }
    }

    /// The role of the next turn; `None` at the end.
    pub fn next_role(&self) -> Result<Option<Role>, Untranslatable> {
        let mut walk = self.walk.borrow_mut();
        match walk.peek() {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m.role)),
            Some(Err(_)) => match walk.next() {
                Some(Err(e)) => Err(e),
                _ => Ok(None),
            },
        }
    }

    /// The next message of the current turn (of `role`); `None` when the
    /// turn ends.
    pub fn next_in(&self, role: Role) -> Result<Option<Cow<'a, Message>>, Untranslatable> {
        let mut walk = self.walk.borrow_mut();
        match walk.peek() {
            Some(Ok(m)) if m.role == role => walk.next().transpose(),
            Some(Err(_)) => walk.next().transpose(),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::MAX_PARTS;

    /// One item a message; items whose `merge` is true join the last
    /// message (as Responses calls do).
    fn read(item: Json<'_>, to: &mut Conversation) -> Result<(), Untranslatable> {
        let text = Part::Text(item.field("text").as_str().unwrap_or_default().into_owned());
        let role = if item.get("user").is_some() {
            Role::User
        } else {
            Role::Assistant
        };
        if item.get("merge").is_some() {
            to.push_part(role, text)
        } else if item.get("fail").is_some() {
            Err(Untranslatable("this item cannot be read".into()))
        } else {
            to.push(Message::new(role, vec![text]));
            Ok(())
        }
    }

    fn body(items: &str) -> Document {
        Document::from_string(format!(r#"{{"items":[{items}]}}"#)).unwrap()
    }

    #[test]
    fn a_conversation_read_again_holds_a_message_at_a_time_and_reads_the_same() {
        let doc = body(
            r#"{"user":1,"text":"a"},{"text":"b"},{"text":"c","merge":1},{"user":1,"text":"d"}"#,
        );
        let (kept, _) = Messages::read(&doc, "items", read).unwrap();
        let again = kept.clone().read_again();
        assert!(matches!(again.iter(), Iter::Read(_)), "not kept");
        let texts =
            |m: &Messages| -> Vec<usize> { m.iter().map(|m| m.unwrap().parts.len()).collect() };
        assert_eq!(
            texts(&kept),
            vec![1, 2, 1],
            "the merged part joined its message"
        );
        assert_eq!(kept, again);
        assert_eq!(again.len(), 3);
        assert_eq!(again.size(), (4, 0));
    }

    #[test]
    fn a_failing_item_ends_the_walk_with_its_error() {
        let doc = body(r#"{"text":"a"},{"fail":1},{"text":"b"}"#);
        let err = Messages::read(&doc, "items", read).unwrap_err();
        assert_eq!(err.0, "this item cannot be read");
    }

    #[test]
    fn parts_joined_to_a_message_stop_at_the_bound() {
        let mut to = Conversation::default();
        for _ in 0..MAX_PARTS {
            to.push_part(Role::Assistant, Part::Text("x".into()))
                .unwrap();
        }
        assert!(
            to.push_part(Role::Assistant, Part::Text("x".into()))
                .is_err()
        );
        assert!(to.push_part(Role::User, Part::Text("x".into())).is_ok());
    }
}
