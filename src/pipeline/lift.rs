//! The identical-failure rule at the end of a request: when every candidate
//! it tried refused it the same way on at least two credentials, the failure
//! is the request's own. The blocks it wrote for that failure are withdrawn
//! and the client gets the upstream's error, so one request never condemns
//! the pool (an image sent to a model whose every credential is text-only).

use futures_util::future::join_all;

use super::{Gateway, Reply};
use crate::routing::{SameFailure, Signature};
use crate::state::{Block, Scope};

/// A failed attempt whose verdict the rule may withdraw.
pub(super) struct Refused {
    pub signature: Signature,
    /// The block the attempt wrote, when it stands as written (a longer one
    /// that was there already is not this request's to withdraw).
    pub written: Option<(Scope, Block)>,
    /// The upstream's error as the client would get it.
    pub reply: Reply,
}

/// One request's failed attempts, as far as the rule needs them.
#[derive(Default)]
pub(super) struct Refusals {
    rule: SameFailure,
    written: Vec<(Scope, Block)>,
    /// The latest refusal's error: all of them are the same when it is used.
    reply: Option<Reply>,
}

impl Refusals {
    /// One failed attempt on `credential_id`; `None` for a failure the rule
    /// may not lift (401, 402, 429, 5xx, a broken connection...).
    pub(super) fn record(&mut self, credential_id: &str, refused: Option<Box<Refused>>) {
        let Some(refused) = refused else {
            self.rule.record(credential_id, None);
            return;
        };
        let Refused {
            signature,
            written,
            reply,
        } = *refused;
        self.rule.record(credential_id, Some(signature));
        self.written.extend(written);
        self.reply = Some(reply);
    }
}

impl Gateway {
    /// Applies the rule to a request that gives up (no candidate served it):
    /// when its failure was its own, withdraws the blocks it wrote and
    /// returns the upstream's error for the client.
    pub(super) async fn lift(&self, refusals: Refusals) -> Option<Reply> {
        if !refusals.rule.is_the_requests() {
            return None;
        }
        let store = &self.inner.store;
        let withdrawals = refusals.written.iter().map(|(scope, block)| async move {
            match store.withdraw(scope, block).await {
                Ok(lifted) => lifted,
                Err(e) => {
                    tracing::warn!(scope = %scope, error = %e, "withdrawing a block failed");
                    false
                }
            }
        });
        let lifted = join_all(withdrawals)
            .await
            .into_iter()
            .filter(|l| *l)
            .count();
        tracing::info!(
            blocks = lifted,
            "every candidate refused the request the same way: its own fault, blocks lifted"
        );
        refusals.reply
    }
}
