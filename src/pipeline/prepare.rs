//! Before routing: which credentials can express the request at all.

use std::collections::BTreeSet;

use super::ClientRequest;
use super::GatewayError;
use crate::catalog::{CredentialKind, Provider, Route};
use crate::json::Document;
use crate::translate::{self, ir};
use crate::wire::ErrorKind;

/// A request made ready for every provider of its route.
pub(super) struct Prepared {
    /// The neutral form, when some candidate speaks another format.
    pub ir: Option<ir::Request>,
    /// Kinds of credential whose provider cannot express the request.
    pub excluded: Vec<CredentialKind>,
    /// The client's body mended for an upstream of its own format, when its
    /// history breaks that format's rules (thinking translated from another
    /// provider, see `translate::*::mend_history`).
    pub own: Option<Document>,
    /// The local estimate of the prompt's tokens (0 when not translated).
    pub input_estimate: u64,
}

impl Prepared {
    /// The request's custom tools (a Responses client's free-text tools).
    pub fn custom_tools(&self) -> Vec<String> {
        self.ir
            .as_ref()
            .map(ir::Request::custom_tools)
            .unwrap_or_default()
    }

    /// Translates the request for each foreign provider of the route once.
    /// A provider that cannot express it leaves its credentials out; when
    /// that leaves no candidate, the client gets a 400 saying why. Works on
    /// the route's kinds of credential, never on each credential.
    pub fn new(route: &Route, request: &ClientRequest) -> Result<Self, GatewayError> {
        let foreign: BTreeSet<Provider> = route
            .kinds
            .iter()
            .filter(|c| !translate::speaks(c, request.format))
            .map(|c| c.provider)
            .collect();
        let own = route
            .kinds
            .iter()
            .any(|c| translate::speaks(c, request.format))
            .then(|| translate::mend_history(request.format, &request.body))
            .flatten();
        if foreign.is_empty() {
            return Ok(Self {
                ir: None,
                excluded: Vec::new(),
                own,
                input_estimate: 0,
            });
        }
        let mut problem = None;
        let mut unusable = BTreeSet::new();
        let parsed = translate::parse_request(request.format, &request.body).map(|mut ir| {
            // Gemini says "stream" in its URL, not its body.
            ir.stream = request.stream;
            ir
        });
        let ir = match parsed {
            Ok(ir) => {
                for p in &foreign {
                    if let Err(e) =
                        translate::build_request(*p, &ir, &request.model).and_then(|b| b.check())
                    {
                        problem.get_or_insert(e);
                        unusable.insert(*p);
                    }
                }
                Some(ir)
            }
            Err(e) => {
                problem = Some(e);
                unusable = foreign;
                None
            }
        };
        let excluded: Vec<CredentialKind> = route
            .kinds
            .iter()
            .filter(|c| unusable.contains(&c.provider) && !translate::speaks(c, request.format))
            .map(|c| c.kind())
            .collect();
        if excluded.len() == route.kinds.len() {
            let why = problem.map_or_else(String::new, |e| e.0);
            return Err(GatewayError::new(
                ErrorKind::BadRequest,
                format!(
                    "no credential of model `{}` can serve this request: {why}",
                    request.model
                ),
            ));
        }
        let input_estimate = ir.as_ref().map_or(0, translate::count::estimate);
        Ok(Self {
            ir,
            excluded,
            own,
            input_estimate,
        })
    }
}
