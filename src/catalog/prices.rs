//! Model prices (`model_prices`, contract section 9): a requested name's
//! price is its exact row, else the longest pattern (`claude-*`) it starts
//! with, as `credential_models` rows match. Prices are kept in millionths of
//! a micro-dollar per token (pico-dollars), so costs add up exactly.

use std::collections::HashMap;

use crate::translate::ir::Usage;

/// One row of `model_prices`, per token in pico-dollars (a dollar per
/// million tokens is 1,000,000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRow {
    pub model: String,
    pub input_pico: u64,
    pub output_pico: u64,
    /// Cached input; `None` is the input price.
    pub cached_pico: Option<u64>,
}

/// A price a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input_pico: u64,
    pub output_pico: u64,
    pub cached_pico: u64,
}

impl Price {
    /// What `u` costs, in pico-dollars: cache reads at the cached price, the
    /// rest of the prompt (cache writes included) at the input price.
    pub fn cost_pico(&self, u: &Usage) -> u64 {
        let cached = u.cached_tokens.min(u.input_tokens);
        (u.input_tokens - cached)
            .saturating_mul(self.input_pico)
            .saturating_add(cached.saturating_mul(self.cached_pico))
            .saturating_add(u.output_tokens.saturating_mul(self.output_pico))
    }
}

/// The prices of a catalog snapshot.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    exact: HashMap<String, Price>,
    /// Pattern prefixes (the row's model without its `*`).
    patterns: HashMap<String, Price>,
    /// The distinct prefix lengths, longest first: a lookup costs one hash
    /// probe per length, however many rows there are.
    lengths: Vec<usize>,
}

impl Prices {
    pub fn new(rows: &[PriceRow]) -> Self {
        let mut prices = Self::default();
        for r in rows {
            let price = Price {
                input_pico: r.input_pico,
                output_pico: r.output_pico,
                cached_pico: r.cached_pico.unwrap_or(r.input_pico),
            };
            match r.model.strip_suffix('*') {
                Some(prefix) => {
                    prices.patterns.insert(prefix.to_string(), price);
                    if !prices.lengths.contains(&prefix.len()) {
                        prices.lengths.push(prefix.len());
                    }
                }
                None => {
                    prices.exact.insert(r.model.clone(), price);
                }
            }
        }
        prices.lengths.sort_unstable_by(|a, b| b.cmp(a));
        prices
    }

    /// The price of `model`, if a row names it.
    pub fn of(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.exact.get(model) {
            return Some(*p);
        }
        self.lengths
            .iter()
            .filter(|&&n| n <= model.len() && model.is_char_boundary(n))
            .find_map(|&n| self.patterns.get(&model[..n]))
            .copied()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, input: u64) -> PriceRow {
        PriceRow {
            model: model.into(),
            input_pico: input,
            output_pico: 10 * input,
            cached_pico: None,
        }
    }

    #[test]
    fn an_exact_row_beats_patterns_and_the_longest_pattern_wins() {
        let p = Prices::new(&[
            row("claude-*", 1),
            row("claude-opus-*", 2),
            row("claude-opus-4", 3),
        ]);
        assert_eq!(p.of("claude-opus-4").map(|p| p.input_pico), Some(3));
        assert_eq!(p.of("claude-opus-4-1").map(|p| p.input_pico), Some(2));
        assert_eq!(p.of("claude-haiku").map(|p| p.input_pico), Some(1));
        assert_eq!(p.of("gpt-4o"), None);
    }

    #[test]
    fn cache_reads_cost_the_cached_price() {
        let p = Price {
            input_pico: 3_000_000,
            output_pico: 15_000_000,
            cached_pico: 300_000,
        };
        let u = Usage {
            input_tokens: 1_000,
            output_tokens: 100,
            cached_tokens: 400,
            cache_write_tokens: 100,
            reasoning_tokens: 50,
        };
        // 600 at $3, 400 at $0.30 and 100 at $15 a million tokens.
        assert_eq!(
            p.cost_pico(&u),
            600 * 3_000_000 + 400 * 300_000 + 100 * 15_000_000
        );
    }
}
