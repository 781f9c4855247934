//! What model calls cost: a price table per model id, in USD per 1,000 tokens, and exact
//! arithmetic in nano-dollars (10⁻⁹ USD), so that the sum of many small costs never drifts as
//! floating point would.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

/// An amount of US dollars, in nano-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NanoUsd(pub u64);

impl NanoUsd {
    const PER_USD: u64 = 1_000_000_000;

    /// A decimal amount of dollars, such as `"0.000035"`: digits, at most one point, at most
    /// nine decimals (a finer price is not one Bedrock publishes).
    pub fn parse_usd(text: &str) -> Option<Self> {
        let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() && fraction.is_empty()
            || !digits(whole)
            || !digits(fraction)
            || fraction.len() > 9
        {
            return None;
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let fraction: u64 = format!("{fraction:0<9}").parse().ok()?;
        whole
            .checked_mul(Self::PER_USD)?
            .checked_add(fraction)
            .map(Self)
    }

    /// In dollars, for display (JSON numbers); sums are made in nano-dollars.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / Self::PER_USD as f64
    }

    pub fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

/// `0.00000042`: dollars with as many decimals as the amount needs (at most nine).
impl fmt::Display for NanoUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, fraction) = (self.0 / Self::PER_USD, self.0 % Self::PER_USD);
        if fraction == 0 {
            return write!(f, "{whole}");
        }
        let fraction = format!("{fraction:09}");
        write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
    }
}

/// Tokens of one model call, as the model reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
    /// Input read from the model's prompt cache, where the model reports it.
    pub cache_read: u64,
    /// Input written to the prompt cache, where the model reports it.
    pub cache_write: u64,
}

/// A model's prices, per 1,000 tokens. A model that publishes no cache prices bills cached
/// tokens as input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    pub input: NanoUsd,
    pub output: NanoUsd,
    pub cache_read: Option<NanoUsd>,
    pub cache_write: Option<NanoUsd>,
}

impl Price {
    /// What `tokens` cost, rounded up to a whole nano-dollar (never less than the bill).
    pub fn cost(&self, tokens: &TokenCounts) -> NanoUsd {
        let per_thousand = |count: u64, price: NanoUsd| u128::from(count) * u128::from(price.0);
        let total = per_thousand(tokens.input, self.input)
            + per_thousand(tokens.output, self.output)
            + per_thousand(tokens.cache_read, self.cache_read.unwrap_or(self.input))
            + per_thousand(tokens.cache_write, self.cache_write.unwrap_or(self.input));
        NanoUsd(u64::try_from(total.div_ceil(1000)).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceError {
    #[error("the price table is not JSON of model id → prices: {0}")]
    Unreadable(String),
    #[error(
        "the price {value:?} of {model} ({field}) is not an amount of dollars such as \"0.000035\""
    )]
    BadAmount {
        model: String,
        field: &'static str,
        value: String,
    },
}

/// Prices per model id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceTable(HashMap<String, Price>);

/// The shipped table: `shared/prices.json`.
const DEFAULT_PRICES: &str = include_str!("../../prices.json");

/// Inference profiles name a model with a geography in front (`us.amazon.nova-micro-v1:0`).
const PROFILE_PREFIXES: [&str; 5] = ["us.", "eu.", "apac.", "us-gov.", "global."];

impl PriceTable {
    /// The shipped prices.
    pub fn defaults() -> Self {
        Self::parse(DEFAULT_PRICES).expect("shared/prices.json is a valid price table")
    }

    /// A table in the shape of `shared/prices.json`; keys starting with `_` are comments.
    pub fn parse(json: &str) -> Result<Self, PriceError> {
        #[derive(Deserialize)]
        struct Entry {
            input: String,
            output: String,
            cache_read: Option<String>,
            cache_write: Option<String>,
        }
        let raw: HashMap<String, serde_json::Value> = serde_json::from_str(json)
            .map_err(|error| PriceError::Unreadable(error.to_string()))?;
        let mut table = HashMap::new();
        for (model, value) in raw.into_iter().filter(|(model, _)| !model.starts_with('_')) {
            let entry: Entry = serde_json::from_value(value)
                .map_err(|error| PriceError::Unreadable(format!("{model}: {error}")))?;
            let amount = |field: &'static str, value: &str| {
                NanoUsd::parse_usd(value).ok_or_else(|| PriceError::BadAmount {
                    model: model.clone(),
                    field,
                    value: value.to_owned(),
                })
            };
            let optional = |field, value: &Option<String>| {
                value.as_deref().map(|v| amount(field, v)).transpose()
            };
            let price = Price {
                input: amount("input", &entry.input)?,
                output: amount("output", &entry.output)?,
                cache_read: optional("cache_read", &entry.cache_read)?,
                cache_write: optional("cache_write", &entry.cache_write)?,
            };
            table.insert(model, price);
        }
        Ok(Self(table))
    }

    /// This table with `overrides` (same shape) replacing or adding models.
    pub fn with_overrides(mut self, overrides: &str) -> Result<Self, PriceError> {
        self.0.extend(Self::parse(overrides)?.0);
        Ok(self)
    }

    /// The price of `model`, or of the model an inference profile names.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.0.get(model).or_else(|| {
            PROFILE_PREFIXES
                .iter()
                .find_map(|prefix| model.strip_prefix(prefix))
                .and_then(|base| self.0.get(base))
        })
    }

    /// The models of `models` that have no price, in order.
    pub fn unpriced<'a>(&self, models: &'a [String]) -> Vec<&'a str> {
        models
            .iter()
            .map(String::as_str)
            .filter(|model| self.price(model).is_none())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_amounts_parse_exactly_into_nano_dollars() {
        let cases = [
            ("0.000035", Some(35_000)),
            ("0.00000875", Some(8_750)),
            ("1", Some(1_000_000_000)),
            ("12.5", Some(12_500_000_000)),
            (".5", Some(500_000_000)),
            ("3.", Some(3_000_000_000)),
            ("0.000000001", Some(1)),
            (" 0.25 ", Some(250_000_000)),
            ("0.0000000001", None),
            ("-1", None),
            ("1e-5", None),
            ("", None),
            (".", None),
            ("1.2.3", None),
            ("0x10", None),
            ("99999999999999999999", None),
        ];
        for (text, nano) in cases {
            assert_eq!(NanoUsd::parse_usd(text), nano.map(NanoUsd), "{text:?}");
        }
    }

    #[test]
    fn amounts_print_as_plain_dollars() {
        for (nano, text) in [
            (0, "0"),
            (420, "0.00000042"),
            (35_000, "0.000035"),
            (1_500_000_000, "1.5"),
            (2_000_000_000, "2"),
        ] {
            assert_eq!(NanoUsd(nano).to_string(), text);
            assert_eq!(NanoUsd::parse_usd(text), Some(NanoUsd(nano)), "round trip");
        }
    }

    /// Costs in nano-dollars, computed by hand: tokens × price per 1,000 / 1,000, rounded up.
    #[test]
    fn a_call_costs_its_tokens_at_the_models_prices() {
        let nova_micro = Price {
            input: NanoUsd(35_000),
            output: NanoUsd(140_000),
            cache_read: Some(NanoUsd(8_750)),
            cache_write: None,
        };
        let tokens = |input, output, cache_read, cache_write| TokenCounts {
            input,
            output,
            cache_read,
            cache_write,
        };
        let cases = [
            ("nothing", tokens(0, 0, 0, 0), 0),
            ("12 in, 80 out", tokens(12, 80, 0, 0), 12 * 35 + 80 * 140),
            ("one token, rounded up", tokens(1, 0, 0, 0), 35),
            (
                "a million of each",
                tokens(1_000_000, 1_000_000, 0, 0),
                35_000_000 + 140_000_000,
            ),
            ("cache read at its price", tokens(0, 0, 1000, 0), 8_750),
            (
                "cache write, no price: input's",
                tokens(0, 0, 0, 1000),
                35_000,
            ),
            ("a fraction of a nano-dollar", tokens(0, 0, 1, 0), 9),
        ];
        for (name, usage, nano) in cases {
            assert_eq!(nova_micro.cost(&usage), NanoUsd(nano), "{name}");
        }
        let huge = tokens(u64::MAX, u64::MAX, 0, 0);
        assert_eq!(
            nova_micro.cost(&huge),
            NanoUsd(u64::MAX),
            "saturates, never wraps"
        );
    }

    #[test]
    fn the_shipped_table_prices_the_templates_models_and_profiles() {
        let table = PriceTable::defaults();
        let micro = table.price("amazon.nova-micro-v1:0").unwrap();
        assert_eq!(micro.input, NanoUsd(35_000));
        assert_eq!(micro.output, NanoUsd(140_000));
        assert_eq!(
            table.price("us.amazon.nova-micro-v1:0"),
            Some(micro),
            "inference profile"
        );
        assert_eq!(table.price("global.amazon.nova-micro-v1:0"), Some(micro));
        assert_eq!(table.price("amazon.titan-unknown"), None);
        assert!(
            table
                .price("anthropic.claude-3-haiku-20240307-v1:0")
                .is_some()
        );
        let models = vec!["amazon.nova-micro-v1:0".to_owned(), "my.model".to_owned()];
        assert_eq!(table.unpriced(&models), ["my.model"]);
    }

    #[test]
    fn overrides_replace_and_add_and_bad_ones_say_what_is_wrong() {
        let table = PriceTable::defaults()
            .with_overrides(r#"{"amazon.nova-micro-v1:0": {"input": "1", "output": "2"}, "my.model": {"input": "0.5", "output": "0.5"}}"#)
            .unwrap();
        assert_eq!(
            table.price("amazon.nova-micro-v1:0").unwrap().input,
            NanoUsd(1_000_000_000)
        );
        assert_eq!(
            table.price("amazon.nova-micro-v1:0").unwrap().cache_read,
            None
        );
        assert_eq!(
            table.price("my.model").unwrap().output,
            NanoUsd(500_000_000)
        );

        let bad = PriceTable::parse(r#"{"m": {"input": "cheap", "output": "1"}}"#).unwrap_err();
        assert_eq!(
            bad.to_string(),
            r#"the price "cheap" of m (input) is not an amount of dollars such as "0.000035""#
        );
        assert!(matches!(
            PriceTable::parse(r#"{"m": {"input": "1"}}"#),
            Err(PriceError::Unreadable(message)) if message.contains("output")
        ));
        assert!(matches!(
            PriceTable::parse("[]"),
            Err(PriceError::Unreadable(_))
        ));
    }
}
