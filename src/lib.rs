//! switchyard: an LLM API gateway for teams.
//!
//! Modules are listed in reading order: the pure routing core first, then the
//! data it routes over, the stores, the upstream clients, and finally the
//! HTTP layer and the server that ties them together.

pub mod clock;
pub mod routing;

pub mod catalog;
pub mod config;
pub mod secret;

pub mod source;
pub mod state;

pub mod json;
pub mod sse;
pub mod translate;
pub mod upstream;
pub mod wire;

pub mod http;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod telemetry;

pub mod cli;
