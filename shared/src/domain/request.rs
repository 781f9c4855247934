use serde_json::{Map, Value};

use super::{ErrorCode, RequestError};

/// `max_tokens` when the caller names none (lowered to `MAX_OUTPUT_TOKENS` if that is smaller).
pub const DEFAULT_MAX_TOKENS: u32 = 512;

const FIELDS: [&str; 5] = ["prompt", "model", "max_tokens", "temperature", "system"];

/// The operator's limits on what a caller may ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_prompt_chars: usize,
    pub max_output_tokens: u32,
    pub default_model: String,
    pub allowed_models: Vec<String>,
}

/// A validated `POST /generate` body, with the defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    /// Trimmed: what was validated is what the model gets.
    pub prompt: String,
    pub model: String,
    pub max_tokens: u32,
    /// As the model takes it (Bedrock's `temperature` is a 32-bit float), so that whatever is
    /// stored and sent is a value every dependency accepts.
    pub temperature: Option<f32>,
    /// Trimmed; a blank system prompt counts as none.
    pub system: Option<String>,
}

impl GenerateRequest {
    /// A request for `prompt` to `model`, without a system prompt or a temperature.
    pub fn new(prompt: impl Into<String>, model: impl Into<String>, max_tokens: u32) -> Self {
        Self {
            prompt: prompt.into(),
            model: model.into(),
            max_tokens,
            temperature: None,
            system: None,
        }
    }

    /// Parses and validates a request body. Every error names the field it is about.
    pub fn from_json(body: &str, limits: &Limits) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_str(body).map_err(|error| {
            RequestError::new(
                ErrorCode::InvalidJson,
                format!("The request body is not valid JSON ({error})."),
            )
        })?;
        let Value::Object(fields) = value else {
            return Err(RequestError::new(
                ErrorCode::InvalidJson,
                "The request body must be a JSON object, such as {\"prompt\": \"Hello\"}.",
            ));
        };
        Self::from_fields(&fields, limits)
    }

    fn from_fields(fields: &Map<String, Value>, limits: &Limits) -> Result<Self, RequestError> {
        if let Some(unknown) = fields.keys().find(|key| !FIELDS.contains(&key.as_str())) {
            return Err(RequestError::invalid_request(format!(
                "Unknown field \"{unknown}\"; the fields are {}.",
                FIELDS.join(", ")
            )));
        }
        let field = |name: &str| fields.get(name).filter(|value| !value.is_null());

        let prompt = match field("prompt") {
            None => {
                return Err(RequestError::invalid_request(
                    "Field prompt is required: the text to send to the model.",
                ));
            }
            Some(value) => text(value, "prompt")?,
        };
        if prompt.is_empty() {
            return Err(RequestError::invalid_request(
                "Field prompt must not be empty or only white space.",
            ));
        }
        check_length(&prompt, "prompt", limits.max_prompt_chars)?;

        let system = field("system")
            .map(|value| text(value, "system"))
            .transpose()?
            .filter(|system| !system.is_empty());
        if let Some(system) = &system {
            check_length(system, "system", limits.max_prompt_chars)?;
        }

        let model = match field("model") {
            None => limits.default_model.clone(),
            Some(Value::String(model)) if limits.allowed_models.contains(model) => model.clone(),
            Some(Value::String(model)) => {
                return Err(RequestError::new(
                    ErrorCode::UnsupportedModel,
                    format!(
                        "Model \"{model}\" is not allowed here; use one of: {}.",
                        limits.allowed_models.join(", ")
                    ),
                ));
            }
            Some(_) => return Err(wrong_type("model", "a string")),
        };

        let default_max_tokens = DEFAULT_MAX_TOKENS.min(limits.max_output_tokens);
        let max_tokens = match field("max_tokens") {
            None => default_max_tokens,
            Some(Value::Number(number)) => whole_number(number)
                .ok_or_else(|| wrong_type("max_tokens", "a whole number"))?
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=limits.max_output_tokens).contains(n))
                .ok_or_else(|| {
                    RequestError::invalid_request(format!(
                        "Field max_tokens must be between 1 and {}.",
                        limits.max_output_tokens
                    ))
                })?,
            Some(_) => return Err(wrong_type("max_tokens", "a whole number")),
        };

        let temperature = match field("temperature") {
            None => None,
            Some(Value::Number(number)) => {
                let temperature = number.as_f64().unwrap_or(f64::NAN);
                if !(0.0..=1.0).contains(&temperature) {
                    return Err(RequestError::invalid_request(
                        "Field temperature must be between 0.0 and 1.0.",
                    ));
                }
                // Rounded to what the model takes: 1e-200 becomes 0.0 instead of a number
                // that DynamoDB cannot store.
                Some(temperature as f32)
            }
            Some(_) => return Err(wrong_type("temperature", "a number")),
        };

        Ok(Self {
            prompt,
            model,
            max_tokens,
            temperature,
            system,
        })
    }
}

/// A number without a fractional part, however it is written (`512`, `512.0`, `5.12e2`):
/// `None` if it has one; `Some(None)` if it is whole but negative or too large for `u64`.
fn whole_number(number: &serde_json::Number) -> Option<Option<u64>> {
    if let Some(whole) = number.as_u64() {
        return Some(Some(whole));
    }
    if number.is_i64() {
        return Some(None);
    }
    let float = number.as_f64()?;
    if float.fract() != 0.0 || !float.is_finite() {
        return None;
    }
    // Casts saturate, so a huge whole number is caught by the range check that follows.
    Some((float >= 0.0 && float < u64::MAX as f64).then_some(float as u64))
}

fn text(value: &Value, name: &str) -> Result<String, RequestError> {
    value
        .as_str()
        .map(|text| text.trim().to_owned())
        .ok_or_else(|| wrong_type(name, "a string"))
}

fn wrong_type(name: &str, expected: &str) -> RequestError {
    RequestError::invalid_request(format!("Field {name} must be {expected}."))
}

fn check_length(text: &str, name: &str, max_chars: usize) -> Result<(), RequestError> {
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(RequestError::new(
            ErrorCode::PromptTooLong,
            format!("Field {name} has {chars} characters; the limit is {max_chars}."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_prompt_chars: 10,
            max_output_tokens: 1000,
            default_model: "model-a".into(),
            allowed_models: vec!["model-a".into(), "model-b".into()],
        }
    }

    #[test]
    fn fills_in_defaults_and_trims() {
        let request = GenerateRequest::from_json(r#"{"prompt": "  hi  "}"#, &limits()).unwrap();
        assert_eq!(
            request,
            GenerateRequest {
                prompt: "hi".into(),
                model: "model-a".into(),
                max_tokens: DEFAULT_MAX_TOKENS,
                temperature: None,
                system: None,
            }
        );
    }

    #[test]
    fn keeps_every_valid_field() {
        let body = r#"{"prompt": "hi", "model": "model-b", "max_tokens": 1000,
                       "temperature": 0.2, "system": " be brief "}"#;
        let request = GenerateRequest::from_json(body, &limits()).unwrap();
        assert_eq!(request.model, "model-b");
        assert_eq!(request.max_tokens, 1000);
        assert_eq!(request.temperature, Some(0.2));
        assert_eq!(request.system.as_deref(), Some("be brief"));
    }

    #[test]
    fn boundaries_are_inclusive() {
        let body = r#"{"prompt": "0123456789", "max_tokens": 1, "temperature": 0,
                       "system": "0123456789"}"#;
        assert!(GenerateRequest::from_json(body, &limits()).is_ok());
        let hot = r#"{"prompt": "x", "temperature": 1.0, "max_tokens": 1000}"#;
        assert!(GenerateRequest::from_json(hot, &limits()).is_ok());
    }

    #[test]
    fn counts_characters_not_bytes() {
        let body = r#"{"prompt": "éééééééééé"}"#; // 10 characters, 20 bytes
        assert!(GenerateRequest::from_json(body, &limits()).is_ok());
    }

    #[test]
    fn nulls_count_as_absent_and_blank_system_as_none() {
        let body = r#"{"prompt": "hi", "model": null, "temperature": null, "system": "   "}"#;
        let request = GenerateRequest::from_json(body, &limits()).unwrap();
        assert_eq!(request.model, "model-a");
        assert_eq!(request.temperature, None);
        assert_eq!(request.system, None);
    }

    #[test]
    fn whole_numbers_count_however_they_are_written() {
        for (written, expected) in [("747", 747), ("747.0", 747), ("1e3", 1000), ("5.12e2", 512)] {
            let body = format!(r#"{{"prompt": "hi", "max_tokens": {written}}}"#);
            let request = GenerateRequest::from_json(&body, &limits()).unwrap();
            assert_eq!(request.max_tokens, expected, "{written}");
        }
    }

    #[test]
    fn temperatures_are_kept_as_the_model_takes_them() {
        for (written, expected) in [
            ("1e-200", 0.0),
            ("5e-324", 0.0),
            ("-0.0", 0.0),
            ("0.2", 0.2),
            ("0.99999999999", 1.0),
            ("1", 1.0),
        ] {
            let body = format!(r#"{{"prompt": "hi", "temperature": {written}}}"#);
            let request = GenerateRequest::from_json(&body, &limits()).unwrap();
            assert_eq!(request.temperature, Some(expected), "{written}");
        }
    }

    #[test]
    fn default_max_tokens_never_exceeds_the_limit() {
        let small = Limits {
            max_output_tokens: 100,
            ..limits()
        };
        let request = GenerateRequest::from_json(r#"{"prompt": "hi"}"#, &small).unwrap();
        assert_eq!(request.max_tokens, 100);
    }

    #[test]
    fn every_bad_input_gets_its_code_and_names_its_field() {
        use ErrorCode::*;
        #[rustfmt::skip]
        let cases: &[(&str, ErrorCode, &str)] = &[
            ("", InvalidJson, "not valid JSON"),
            ("{\"prompt\": ", InvalidJson, "not valid JSON"),
            ("[\"prompt\"]", InvalidJson, "JSON object"),
            ("\"hello\"", InvalidJson, "JSON object"),
            ("null", InvalidJson, "JSON object"),
            ("{}", InvalidRequest, "prompt is required"),
            (r#"{"prompt": null}"#, InvalidRequest, "prompt is required"),
            (r#"{"prompt": ""}"#, InvalidRequest, "prompt must not be empty"),
            (r#"{"prompt": " \n\t "}"#, InvalidRequest, "prompt must not be empty"),
            (r#"{"prompt": 42}"#, InvalidRequest, "prompt must be a string"),
            (r#"{"prompt": ["hi"]}"#, InvalidRequest, "prompt must be a string"),
            (r#"{"prompt": "01234567890"}"#, PromptTooLong, "prompt has 11"),
            (r#"{"prompt": "hi", "system": "01234567890"}"#, PromptTooLong, "system has 11"),
            (r#"{"prompt": "hi", "system": 1}"#, InvalidRequest, "system must be a string"),
            (r#"{"prompt": "hi", "model": "model-z"}"#, UnsupportedModel, "model-a, model-b"),
            (r#"{"prompt": "hi", "model": ""}"#, UnsupportedModel, "model-a, model-b"),
            (r#"{"prompt": "hi", "model": 7}"#, InvalidRequest, "model must be a string"),
            (r#"{"prompt": "hi", "max_tokens": 0}"#, InvalidRequest, "max_tokens must be between 1 and 1000"),
            (r#"{"prompt": "hi", "max_tokens": 1001}"#, InvalidRequest, "max_tokens must be between"),
            (r#"{"prompt": "hi", "max_tokens": -5}"#, InvalidRequest, "max_tokens must be between"),
            (r#"{"prompt": "hi", "max_tokens": 99999999999}"#, InvalidRequest, "max_tokens must be between"),
            (r#"{"prompt": "hi", "max_tokens": 12.5}"#, InvalidRequest, "max_tokens must be a whole number"),
            (r#"{"prompt": "hi", "max_tokens": "12"}"#, InvalidRequest, "max_tokens must be a whole number"),
            (r#"{"prompt": "hi", "max_tokens": 1.5e3}"#, InvalidRequest, "max_tokens must be between"),
            (r#"{"prompt": "hi", "max_tokens": 1e30}"#, InvalidRequest, "max_tokens must be between"),
            (r#"{"prompt": "hi", "max_tokens": -2.0}"#, InvalidRequest, "max_tokens must be between"),
            (r#"{"prompt": "hi", "max_tokens": 1e400}"#, InvalidJson, "not valid JSON"),
            (r#"{"prompt": "hi", "temperature": 1.0000001}"#, InvalidRequest, "temperature must be between"),
            (r#"{"prompt": "hi", "temperature": 1.01}"#, InvalidRequest, "temperature must be between"),
            (r#"{"prompt": "hi", "temperature": -0.1}"#, InvalidRequest, "temperature must be between"),
            (r#"{"prompt": "hi", "temperature": "hot"}"#, InvalidRequest, "temperature must be a number"),
            (r#"{"prompt": "hi", "temperature": true}"#, InvalidRequest, "temperature must be a number"),
            (r#"{"prompt": "hi", "stream": true}"#, InvalidRequest, "Unknown field \"stream\""),
            (r#"{"prompt": "hi", "Prompt": "x"}"#, InvalidRequest, "Unknown field \"Prompt\""),
        ];
        for (body, code, fragment) in cases {
            let error = GenerateRequest::from_json(body, &limits()).unwrap_err();
            assert_eq!(error.code, *code, "{body}: {error}");
            assert!(
                error.message.contains(fragment),
                "{body}: {:?} should contain {fragment:?}",
                error.message
            );
            // People read these as they are: no Markdown or other markup in them.
            assert!(!error.message.contains('`'), "{:?}", error.message);
        }
    }
}
