//! Reading function configuration from the environment, with errors that name the variable.

use std::collections::HashMap;
use std::str::FromStr;

use crate::domain::{Budget, Limits, NanoUsd, PriceTable};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is {value:?}, which is not {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "BUDGET_USD_PER_MONTH is set, but these allowed models have no price: {}; add them to \
         MODEL_PRICES (or remove them from ALLOWED_MODEL_IDS)",
        .0.join(", ")
    )]
    Unpriced(Vec<String>),
}

/// A snapshot of environment variables; tests build one from a map. It remembers the name of
/// every variable asked for, so that the local stack's help lists exactly the settings the
/// functions read ([`Env::names_read`]).
pub struct Env {
    vars: HashMap<String, String>,
    read: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Env {
    pub fn from_process() -> Self {
        Self::from_map(std::env::vars().collect())
    }

    pub fn from_map(vars: HashMap<String, String>) -> Self {
        Self {
            vars,
            read: Default::default(),
        }
    }

    /// The names of the variables asked for so far, in order.
    pub fn names_read(&self) -> Vec<String> {
        let read = self
            .read
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        read.iter().cloned().collect()
    }

    /// The variable's value; unset and empty are the same.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.read
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(name.to_owned());
        self.vars
            .get(name)
            .filter(|value| !value.trim().is_empty())
            .cloned()
    }

    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    pub fn parsed_or<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(value) => value.trim().parse().map_err(|_| ConfigError::Invalid {
                name,
                value,
                expected,
            }),
        }
    }

    /// The shipped price table, with `MODEL_PRICES` (the same JSON shape as
    /// `shared/prices.json`) replacing or adding models.
    pub fn prices(&self) -> Result<PriceTable, ConfigError> {
        let table = PriceTable::defaults();
        match self.optional("MODEL_PRICES") {
            None => Ok(table),
            Some(overrides) => table
                .with_overrides(&overrides)
                .map_err(|_| ConfigError::Invalid {
                    name: "MODEL_PRICES",
                    value: overrides,
                    expected: "a JSON price table in the shape of shared/prices.json",
                }),
        }
    }

    /// `BUDGET_TOKENS_PER_DAY` and `BUDGET_USD_PER_MONTH`: every user's default limits
    /// (unset: none).
    pub fn budget(&self) -> Result<Budget, ConfigError> {
        let tokens_per_day = match self.optional("BUDGET_TOKENS_PER_DAY") {
            None => None,
            Some(_) => Some(self.positive("BUDGET_TOKENS_PER_DAY", 1u64)?),
        };
        let usd_per_month = match self.optional("BUDGET_USD_PER_MONTH") {
            None => None,
            Some(value) => Some(NanoUsd::parse_usd(&value).filter(|usd| usd.0 > 0).ok_or(
                ConfigError::Invalid {
                    name: "BUDGET_USD_PER_MONTH",
                    value,
                    expected: "an amount of dollars above zero, such as 5.00",
                },
            )?),
        };
        Ok(Budget {
            tokens_per_day,
            usd_per_month,
        })
    }

    /// The budget, for the function that prices jobs against it: with a dollar budget, every
    /// model of `limits` must have a price in `prices`, or a job could not be priced before
    /// it runs.
    pub fn priced_budget(
        &self,
        limits: &Limits,
        prices: &PriceTable,
    ) -> Result<Budget, ConfigError> {
        let budget = self.budget()?;
        let unpriced = prices.unpriced(&limits.allowed_models);
        if budget.usd_per_month.is_some() && !unpriced.is_empty() {
            return Err(ConfigError::Unpriced(
                unpriced.into_iter().map(str::to_owned).collect(),
            ));
        }
        Ok(budget)
    }

    /// `MAX_ATTEMPTS`: the model calls a job may have; the worker's limit, which recovery
    /// shares.
    pub fn max_attempts(&self) -> Result<u32, ConfigError> {
        self.positive("MAX_ATTEMPTS", 3)
    }

    /// `ALLOWED_ORIGIN`: the CORS origin, `*` when unset (local runs).
    pub fn allowed_origin(&self) -> String {
        self.optional("ALLOWED_ORIGIN")
            .unwrap_or_else(|| "*".to_owned())
    }

    /// `MODEL_ID`, `ALLOWED_MODEL_IDS`, `MAX_PROMPT_CHARS`, `MAX_OUTPUT_TOKENS`.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let default_model = self
            .optional("MODEL_ID")
            .unwrap_or_else(|| "amazon.nova-micro-v1:0".to_owned());
        let allowed_models = match self.optional("ALLOWED_MODEL_IDS") {
            None => vec![default_model.clone()],
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        if !allowed_models.contains(&default_model) {
            return Err(ConfigError::Invalid {
                name: "ALLOWED_MODEL_IDS",
                value: allowed_models.join(","),
                expected: "a list that includes MODEL_ID",
            });
        }
        Ok(Limits {
            max_prompt_chars: self.positive("MAX_PROMPT_CHARS", 20_000)?,
            max_output_tokens: self.positive("MAX_OUTPUT_TOKENS", 4_096)?,
            default_model,
            allowed_models,
        })
    }

    /// A positive whole number, or `None` when unset.
    pub fn optional_positive(&self, name: &'static str) -> Result<Option<u32>, ConfigError> {
        match self.optional(name) {
            None => Ok(None),
            Some(_) => self.positive(name, 1).map(Some),
        }
    }

    pub fn positive<T: FromStr + PartialOrd + Default>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        let value = self.parsed_or(name, default, "a positive whole number")?;
        if value > T::default() {
            Ok(value)
        } else {
            Err(ConfigError::Invalid {
                name,
                value: self.optional(name).unwrap_or_default(),
                expected: "a positive whole number",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn model_prices_override_the_shipped_table_or_name_the_variable() {
        let shipped = env(&[]).prices().unwrap();
        assert_eq!(shipped, PriceTable::defaults());
        let overridden = env(&[(
            "MODEL_PRICES",
            r#"{"my.model": {"input": "1", "output": "2"}}"#,
        )])
        .prices()
        .unwrap();
        assert!(overridden.price("my.model").is_some());
        assert!(
            overridden.price("amazon.nova-micro-v1:0").is_some(),
            "the rest is kept"
        );
        let error = env(&[("MODEL_PRICES", "cheap")]).prices().unwrap_err();
        assert!(error.to_string().contains("MODEL_PRICES"), "{error}");
    }

    #[test]
    fn budgets_are_optional_positive_and_need_every_model_priced() {
        let prices = PriceTable::defaults();
        let read = |pairs: &[(&str, &str)]| {
            let env = env(pairs);
            env.priced_budget(&env.limits().unwrap(), &prices)
        };
        assert_eq!(read(&[]), Ok(Budget::default()));
        assert_eq!(
            read(&[
                ("BUDGET_TOKENS_PER_DAY", "50000"),
                ("BUDGET_USD_PER_MONTH", "2.50")
            ]),
            Ok(Budget {
                tokens_per_day: Some(50_000),
                usd_per_month: Some(NanoUsd(2_500_000_000)),
            })
        );
        for (name, bad) in [
            ("BUDGET_TOKENS_PER_DAY", "0"),
            ("BUDGET_TOKENS_PER_DAY", "lots"),
            ("BUDGET_USD_PER_MONTH", "0"),
            ("BUDGET_USD_PER_MONTH", "$5"),
        ] {
            let error = read(&[(name, bad)]).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(bad), "{error}");
        }
        let unpriced = read(&[
            ("ALLOWED_MODEL_IDS", "amazon.nova-micro-v1:0,my.model"),
            ("BUDGET_USD_PER_MONTH", "5"),
        ])
        .unwrap_err();
        assert_eq!(unpriced, ConfigError::Unpriced(vec!["my.model".into()]));
        assert!(unpriced.to_string().contains("my.model"));
        let tokens_only = read(&[
            ("ALLOWED_MODEL_IDS", "amazon.nova-micro-v1:0,my.model"),
            ("BUDGET_TOKENS_PER_DAY", "5"),
        ]);
        assert!(tokens_only.is_ok(), "tokens need no prices");
    }

    #[test]
    fn limits_have_the_contract_defaults() {
        let limits = env(&[]).limits().unwrap();
        assert_eq!(limits.default_model, "amazon.nova-micro-v1:0");
        assert_eq!(limits.allowed_models, ["amazon.nova-micro-v1:0"]);
        assert_eq!(limits.max_prompt_chars, 20_000);
        assert_eq!(limits.max_output_tokens, 4_096);
    }

    #[test]
    fn allowed_models_are_a_trimmed_list_that_must_hold_the_default() {
        let limits = env(&[("MODEL_ID", "b"), ("ALLOWED_MODEL_IDS", " a, b ,")])
            .limits()
            .unwrap();
        assert_eq!(limits.allowed_models, ["a", "b"]);
        let error = env(&[("MODEL_ID", "c"), ("ALLOWED_MODEL_IDS", "a,b")])
            .limits()
            .unwrap_err();
        assert!(error.to_string().contains("ALLOWED_MODEL_IDS"), "{error}");
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(
            env(&[("JOBS_TABLE", " ")]).required("JOBS_TABLE"),
            Err(ConfigError::Missing("JOBS_TABLE"))
        );
        for bad in ["lots", "0", "-3"] {
            let error = env(&[("MAX_PROMPT_CHARS", bad)]).limits().unwrap_err();
            assert!(
                error.to_string().contains("MAX_PROMPT_CHARS") && error.to_string().contains(bad),
                "{error}"
            );
        }
        let error = env(&[("FLAG", "yes")])
            .parsed_or("FLAG", false, "true or false")
            .unwrap_err();
        assert!(error.to_string().contains("true or false"));
    }

    #[test]
    fn origin_defaults_to_any_only_when_unset() {
        assert_eq!(env(&[]).allowed_origin(), "*");
        let set = env(&[("ALLOWED_ORIGIN", "https://app.example")]);
        assert_eq!(set.allowed_origin(), "https://app.example");
    }
}
