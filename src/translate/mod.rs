//! Translation between the three wire formats, through the neutral form of
//! [`ir`]. Pure: no I/O. A request, a response or a stream that one format
//! cannot express is an [`ir::Untranslatable`], which the client gets as a
//! 400 in its own format rather than a silently different request.

pub mod anthropic;
pub mod count;
pub mod gemini;
pub mod ir;
pub mod openai;
pub mod out;
pub mod policy;
pub mod responses;
pub mod stream;
pub mod usage;

use serde::Serialize;

use crate::catalog::{Credential, Provider};
use crate::json::{Document, Json};
use crate::wire::Format;
use ir::Untranslatable;

/// The format `credential` is sent a request of a `client` format in:
/// the client's own when it speaks it, else its provider's.
pub fn upstream_format(credential: &Credential, client: Format) -> Format {
    if client == Format::Responses && credential.responses_api {
        return Format::Responses;
    }
    format_of(credential.provider)
}

/// Whether `credential` is sent the client's own body (passthrough).
pub fn speaks(credential: &Credential, client: Format) -> bool {
    upstream_format(credential, client) == client
}

/// The format a provider speaks.
pub fn format_of(provider: Provider) -> Format {
    match provider {
        Provider::Openai => Format::OpenAi,
        Provider::Anthropic => Format::Anthropic,
        Provider::Gemini => Format::Gemini,
    }
}

/// A client request in the neutral form.
pub fn parse_request(format: Format, body: &Document) -> Result<ir::Request, Untranslatable> {
    match format {
        Format::OpenAi => openai::parse_request(body),
        Format::Responses => responses::parse_request(body),
        Format::Anthropic => anthropic::parse_request(body),
        Format::Gemini => gemini::parse_request(body),
    }
}

/// An upstream body, borrowing the neutral request it is built from; its
/// JSON is written when it is serialised.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Built<'a> {
    OpenAi(openai::Body<'a>),
    Anthropic(anthropic::Body<'a>),
    Gemini(gemini::Body<'a>),
}

impl Built<'_> {
    /// The body's JSON text; an error when some part of the conversation
    /// cannot be carried (found as it is written). `about` is the size it is
    /// expected near (the client's body): the text is written into room made
    /// once, a quarter larger, rather than grown by doubling, whose copies
    /// would hold a large body two and three times over.
    pub fn to_vec(&self, about: usize) -> Result<Vec<u8>, Untranslatable> {
        let mut out = Vec::with_capacity(about.saturating_add(about / 4).saturating_add(1024));
        serde_json::to_writer(&mut out, self).map_err(|e| Untranslatable(e.to_string()))?;
        Ok(out)
    }

    /// Whether the whole body can be written, writing it nowhere: what a
    /// large conversation costs to check is a message at a time.
    pub fn check(&self) -> Result<(), Untranslatable> {
        serde_json::to_writer(std::io::sink(), self).map_err(|e| Untranslatable(e.to_string()))
    }
}

/// The upstream body for `provider`; an error when the request cannot be
/// carried there (its conversation is checked as it is written:
/// [`Built::check`]).
pub fn build_request<'a>(
    provider: Provider,
    req: &'a ir::Request,
    upstream_model: &'a str,
) -> Result<Built<'a>, Untranslatable> {
    Ok(match provider {
        Provider::Openai => Built::OpenAi(openai::build_request(req, upstream_model)?),
        Provider::Anthropic => Built::Anthropic(anthropic::build_request(req, upstream_model)?),
        Provider::Gemini => Built::Gemini(gemini::build_request(req)?),
    })
}

pub fn parse_response(provider: Provider, v: Json<'_>) -> Result<ir::Response, Untranslatable> {
    match provider {
        Provider::Openai => openai::parse_response(v),
        Provider::Anthropic => anthropic::parse_response(v),
        Provider::Gemini => gemini::parse_response(v),
    }
}

/// The client's response body, as JSON text; `model` is the name the
/// client asked for, `custom_tools` the request's custom tools (Responses).
pub fn build_response(
    format: Format,
    r: &ir::Response,
    model: &str,
    custom_tools: &[String],
) -> Vec<u8> {
    match format {
        Format::OpenAi => openai::build_response(r, model).to_string().into_bytes(),
        Format::Responses => responses::build_response(r, model, custom_tools)
            .to_string()
            .into_bytes(),
        Format::Anthropic => anthropic::build_response(r, model),
        Format::Gemini => gemini::build_response(r, model),
    }
}

/// The client's body mended for an upstream of its own format, when its
/// history carries what only this gateway could have put there.
pub fn mend_history(format: Format, body: &Document) -> Option<Document> {
    match format {
        Format::OpenAi | Format::Responses => None,
        Format::Anthropic => anthropic::mend_history(body),
        Format::Gemini => gemini::mend_history(body),
    }
}
