//! Pieces of the bodies the gateway writes that are written without being
//! built first: text that is several parts of the neutral form, `data:`
//! URLs. A system prompt or a tool result may be most of a body; joined
//! into a string before being written, it would be held twice.

use std::borrow::Cow;
use std::fmt;

use super::ir::{Part, Untranslatable, untranslatable};

/// Text parts written out as one JSON string, without joining them first
/// (a tool result or a system prompt may be most of a body).
#[derive(Debug, Clone, Default)]
pub struct Texts<'a> {
    /// Written before the parts.
    pub prefix: &'static str,
    pub parts: Vec<&'a str>,
    /// Written between the parts.
    pub separator: &'static str,
}

impl<'a> Texts<'a> {
    pub fn new(parts: Vec<&'a str>, separator: &'static str) -> Self {
        Self {
            prefix: "",
            parts,
            separator,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.prefix.is_empty() && self.parts.iter().all(|p| p.is_empty())
    }

    /// Whether the text, in one piece, would start with `start`.
    pub fn starts_with(&self, start: &str) -> bool {
        let mut rest = start;
        for piece in std::iter::once(self.prefix).chain(self.parts.iter().copied()) {
            if piece.len() >= rest.len() {
                return piece.starts_with(rest);
            }
            match rest.strip_prefix(piece) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The text in one piece: borrowed when it is one part.
    pub fn joined(&self) -> Cow<'a, str> {
        match self.parts.as_slice() {
            [only] if self.prefix.is_empty() => Cow::Borrowed(*only),
            _ => Cow::Owned(self.to_string()),
        }
    }
}

impl fmt::Display for Texts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix)?;
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(self.separator)?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

impl serde::Serialize for Texts<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The text parts of tool-result content (or of a system message), to be
/// written as one string; images cannot be part of it.
pub fn texts<'a>(content: &'a [Part], target: &str) -> Result<Texts<'a>, Untranslatable> {
    let mut parts = Vec::with_capacity(content.len());
    for p in content {
        match p {
            Part::Text(t) => parts.push(t.as_str()),
            _ => return untranslatable(format!("{target} tool results carry text only")),
        }
    }
    Ok(Texts::new(parts, ""))
}

/// A `data:` URL, written out without building it first.
#[derive(Debug, Clone, Copy)]
pub struct DataUrl<'a> {
    pub media_type: &'a str,
    pub data: &'a str,
}

impl fmt::Display for DataUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data:{};base64,{}", self.media_type, self.data)
    }
}

impl serde::Serialize for DataUrl<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
