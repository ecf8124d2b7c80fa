//! Translation between the three wire formats, through the neutral form of
//! [`ir`]. Pure: no I/O. A request, a response or a stream that one format
//! cannot express is an [`ir::Untranslatable`], which the client gets as a
//! 400 in its own format rather than a silently different request.

pub mod anthropic;
pub mod count;
pub mod gemini;
pub mod ir;
pub mod openai;
pub mod policy;
pub mod responses;
pub mod stream;

use serde_json::{Map, Value};

use crate::catalog::{Credential, Provider};
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
pub fn parse_request(
    format: Format,
    body: &Map<String, Value>,
) -> Result<ir::Request, Untranslatable> {
    match format {
        Format::OpenAi => openai::parse_request(body),
        Format::Responses => responses::parse_request(body),
        Format::Anthropic => anthropic::parse_request(body),
        Format::Gemini => gemini::parse_request(body),
    }
}

/// The upstream body for `provider`.
pub fn build_request(
    provider: Provider,
    req: &ir::Request,
    upstream_model: &str,
) -> Result<Value, Untranslatable> {
    match provider {
        Provider::Openai => openai::build_request(req, upstream_model),
        Provider::Anthropic => anthropic::build_request(req, upstream_model),
        Provider::Gemini => gemini::build_request(req),
    }
}

pub fn parse_response(provider: Provider, v: &Value) -> Result<ir::Response, Untranslatable> {
    match provider {
        Provider::Openai => openai::parse_response(v),
        Provider::Anthropic => anthropic::parse_response(v),
        Provider::Gemini => gemini::parse_response(v),
    }
}

/// The client's response body; `model` is the name the client asked for,
/// `custom_tools` the request's custom tools (Responses).
pub fn build_response(
    format: Format,
    r: &ir::Response,
    model: &str,
    custom_tools: &[String],
) -> Value {
    match format {
        Format::OpenAi => openai::build_response(r, model),
        Format::Responses => responses::build_response(r, model, custom_tools),
        Format::Anthropic => anthropic::build_response(r, model),
        Format::Gemini => gemini::build_response(r, model),
    }
}

/// The client's body mended for an upstream of its own format, when its
/// history carries what only this gateway could have put there.
pub fn mend_history(format: Format, body: &Map<String, Value>) -> Option<Map<String, Value>> {
    match format {
        Format::OpenAi | Format::Responses => None,
        Format::Anthropic => anthropic::mend_history(body),
        Format::Gemini => gemini::mend_history(body),
    }
}
