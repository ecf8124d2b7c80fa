//! The routing core: which candidate to try, what an upstream outcome means,
//! and how long a learned block lasts.
//!
//! Everything here is pure: no I/O, no sleeping, no reading of the clock. The
//! caller passes the time and the blocks it read, and gets back a decision.
//! That keeps every rule testable step by step on a clock the test controls.

pub mod blame;
pub mod classify;
pub mod cooldown;
pub mod hints;
pub mod plan;
pub mod select;

pub use classify::{
    Failure, Learn, Next, Outcome, Purpose, SameFailure, ScopeKind, Signature, Verdict, classify,
};
pub use cooldown::Cooldowns;
pub use plan::{Plan, Step};
pub use select::{Pick, RoutingMode};
