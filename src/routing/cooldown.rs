//! Block lengths and the quota ladder's arithmetic.

use crate::state::{Block, QuotaHit, Reason};

/// How long each kind of learned block lasts, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cooldowns {
    pub model_not_supported_ms: u64,
    pub not_found_ms: u64,
    pub unauthorized_ms: u64,
    pub payment_required_ms: u64,
    pub forbidden_ms: u64,
    pub upstream_error_ms: u64,
    /// The quota ladder's first step; each further 429 doubles it.
    pub quota_base_ms: u64,
    /// The quota ladder's longest step.
    pub quota_cap_ms: u64,
}

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

impl Default for Cooldowns {
    fn default() -> Self {
        Self {
            model_not_supported_ms: 12 * HOUR,
            not_found_ms: 12 * HOUR,
            unauthorized_ms: 30 * MINUTE,
            payment_required_ms: 30 * MINUTE,
            forbidden_ms: 30 * MINUTE,
            upstream_error_ms: MINUTE,
            quota_base_ms: SECOND,
            quota_cap_ms: 30 * MINUTE,
        }
    }
}

/// The length of the ladder's block at `level` (1 is the first step).
pub fn ladder_ms(level: u32, base_ms: u64, cap_ms: u64) -> u64 {
    let doublings = level.saturating_sub(1).min(62);
    base_ms.saturating_mul(1u64 << doublings).min(cap_ms)
}

/// The longest block a provider's hint can ask for: 24 h.
pub const MAX_HINT_MS: u64 = 24 * 60 * 60 * 1_000;

/// What a 429 leaves behind: the ladder's new level, the block that stands,
/// and how long the level is remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaStep {
    pub level: u32,
    pub block: Block,
    pub ladder_ttl_ms: u64,
}

/// Applies one 429 to a pair whose current block is `current` and whose ladder
/// stands at `level`.
///
/// - A provider's hint (capped at [`MAX_HINT_MS`]) is the block's length, and
///   the ladder stays where it is: only hint-less 429s climb.
/// - Inside an open quota block the ladder does not climb: concurrent requests
///   that all met the same exhausted quota are one event, not several.
/// - Otherwise the ladder climbs one step and the block lasts that step.
/// - Whatever block already stands is kept if it lasts longer: a hint only
///   ever lengthens a block.
pub fn quota_step(current: Option<&Block>, level: u32, hit: &QuotaHit) -> QuotaStep {
    let now = hit.now_ms;
    let open_quota = current.is_some_and(|b| b.reason == Reason::Quota && b.is_active(now));
    let hint = hit.hint_ms.map(|h| h.min(MAX_HINT_MS));
    let (level, length_ms) = match hint {
        Some(h) => (level, h),
        None if open_quota => (level.max(1), 0),
        None => {
            let level = level.saturating_add(1);
            (level, ladder_ms(level, hit.base_ms, hit.cap_ms))
        }
    };
    let proposed = Block {
        reason: Reason::Quota,
        status: hit.status,
        message: hit.message.clone(),
        replica: hit.replica.clone(),
        since_ms: now,
        until_ms: now.saturating_add(i64::try_from(length_ms).unwrap_or(i64::MAX)),
    };
    let block = match current.filter(|b| b.is_active(now)) {
        Some(old) => old.clone().merge(proposed),
        None => proposed,
    };
    let remaining = u64::try_from(block.until_ms - now).unwrap_or(0);
    QuotaStep {
        level,
        block,
        ladder_ttl_ms: remaining.saturating_add(hit.cap_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(now_ms: i64, hint_ms: Option<u64>) -> QuotaHit {
        QuotaHit {
            status: 429,
            message: "rate limited".into(),
            replica: "r1".into(),
            now_ms,
            hint_ms,
            base_ms: 1_000,
            cap_ms: 30 * 60 * 1_000,
        }
    }

    #[test]
    fn ladder_doubles_from_one_second_and_caps_at_thirty_minutes() {
        let steps: Vec<u64> = (1..=5).map(|l| ladder_ms(l, 1_000, 1_800_000)).collect();
        assert_eq!(steps, vec![1_000, 2_000, 4_000, 8_000, 16_000]);
        assert_eq!(ladder_ms(11, 1_000, 1_800_000), 1_024_000);
        assert_eq!(ladder_ms(12, 1_000, 1_800_000), 1_800_000);
        assert_eq!(ladder_ms(500, 1_000, 1_800_000), 1_800_000);
    }

    #[test]
    fn each_429_after_a_block_ended_climbs_one_step() {
        let mut now = 10_000;
        let mut level = 0;
        let mut current: Option<Block> = None;
        for expected in [1_000, 2_000, 4_000, 8_000] {
            let step = quota_step(current.as_ref(), level, &hit(now, None));
            assert_eq!(step.block.until_ms - now, expected);
            level = step.level;
            now = step.block.until_ms; // the block has just ended
            current = Some(step.block);
        }
        assert_eq!(level, 4);
    }

    #[test]
    fn a_429_inside_an_open_quota_block_does_not_climb() {
        let first = quota_step(None, 0, &hit(0, None));
        let again = quota_step(Some(&first.block), first.level, &hit(500, None));
        assert_eq!(again.level, 1);
        assert_eq!(again.block, first.block, "the open block stands unchanged");
    }

    #[test]
    fn a_hint_lengthens_but_never_shortens() {
        // A long hint beats the ladder's first step.
        let long = quota_step(None, 0, &hit(0, Some(20_000)));
        assert_eq!(long.block.until_ms, 20_000);
        // A hint replaces the ladder, which does not climb: an upstream that
        // keeps saying one second is blocked one second each time.
        let short = quota_step(None, 4, &hit(0, Some(1_000)));
        assert_eq!(short.block.until_ms, 1_000);
        assert_eq!(short.level, 4);
        let again = quota_step(Some(&short.block), short.level, &hit(1_000, Some(1_000)));
        assert_eq!((again.block.until_ms, again.level), (2_000, 4));
        // A huge hint is capped at 24 h.
        let huge = quota_step(None, 0, &hit(0, Some(u64::MAX)));
        assert_eq!(huge.block.until_ms, 24 * 3_600_000);
        // Inside an open block, a longer hint extends it; a shorter one is ignored.
        let extended = quota_step(Some(&long.block), long.level, &hit(1_000, Some(60_000)));
        assert_eq!(extended.block.until_ms, 61_000);
        let ignored = quota_step(Some(&extended.block), extended.level, &hit(2_000, Some(1)));
        assert_eq!(ignored.block.until_ms, 61_000);
    }

    #[test]
    fn a_longer_block_of_another_reason_stands() {
        let outage = Block {
            reason: Reason::UpstreamError,
            status: 503,
            message: "down".into(),
            replica: "r2".into(),
            since_ms: 0,
            until_ms: 60_000,
        };
        let step = quota_step(Some(&outage), 0, &hit(1_000, None));
        assert_eq!(step.block, outage);
        assert_eq!(step.level, 1, "the ladder still records the 429");
    }

    #[test]
    fn the_level_outlives_its_block() {
        let step = quota_step(None, 0, &hit(0, None));
        assert!(step.ladder_ttl_ms > (step.block.until_ms as u64));
    }
}
