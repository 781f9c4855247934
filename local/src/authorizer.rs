//! What API Gateway's Cognito JWT authorizer does, for the local gateway: verify the bearer
//! token's RS256 signature against the user pool's JWKS, its issuer, `token_use == "access"`,
//! `client_id`, expiry, `nbf` and `iat`, and hand the claims on.
//!
//! moto signs real tokens but stamps the real AWS issuer host while it serves the JWKS
//! itself, so the issuer and the JWKS address are configured separately.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

/// Why a request was refused (401). The caller only ever sees "unauthorized"; this is for
/// the log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    #[error("the token is not a signed JWT: {0}")]
    Malformed(String),
    #[error("the token is signed with {0:?}, not RS256")]
    WrongAlgorithm(String),
    #[error("no key {0:?} in the user pool's JWKS")]
    UnknownKey(String),
    #[error("the signature or issuer is wrong: {0}")]
    Invalid(String),
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet (its {0} is in the future)")]
    NotYetValid(&'static str),
    #[error("the token is an {0:?} token, not an access token")]
    NotAnAccessToken(String),
    #[error("the token was issued to another app client")]
    WrongClient,
    #[error("the user pool's JWKS could not be fetched: {0}")]
    Jwks(String),
}

/// Seconds since the epoch; tests move it to expire tokens.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How often at most an unknown key id makes the authorizer fetch the JWKS again: a stream
/// of tokens with made-up key ids must not become a stream of fetches.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

pub struct JwtAuthorizer {
    issuer: String,
    client_id: String,
    jwks_url: String,
    http: reqwest::Client,
    keys: RwLock<Option<JwkSet>>,
    /// When the JWKS was last fetched; held while a fetch is under way.
    last_fetch: Mutex<Option<Instant>>,
    refetch_interval: Duration,
    clock: Clock,
}

impl JwtAuthorizer {
    pub fn new(issuer: String, client_id: String, jwks_url: String) -> Self {
        Self {
            issuer,
            client_id,
            jwks_url,
            // Requests wait for a fetch under way: it must not hang.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a client with a timeout"),
            keys: RwLock::new(None),
            last_fetch: Mutex::new(None),
            refetch_interval: JWKS_REFETCH_INTERVAL,
            clock: Arc::new(|| chrono::Utc::now().timestamp().max(0) as u64),
        }
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// The token's claims, if the `Authorization` header carries a valid access token.
    pub async fn authorize(
        &self,
        authorization: Option<&str>,
    ) -> Result<Map<String, Value>, Rejection> {
        let token = authorization
            .map(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .unwrap_or(value)
                    .trim()
            })
            .filter(|token| !token.is_empty())
            .ok_or(Rejection::MissingToken)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| Rejection::Malformed(error.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(Rejection::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| Rejection::Malformed("no key id (kid)".into()))?;
        let key = self.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false; // access tokens carry client_id, not aud
        validation.validate_exp = false; // checked below, against our clock
        validation.required_spec_claims =
            HashSet::from(["exp".to_owned(), "iss".to_owned(), "sub".to_owned()]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|error| Rejection::Invalid(error.to_string()))?
            .claims;

        let now = (self.clock)();
        let expires = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        if expires <= now {
            return Err(Rejection::Expired);
        }
        // As API Gateway: when present, both must be at or before the current time.
        for name in ["nbf", "iat"] {
            match claims.get(name) {
                None => {}
                Some(value) if value.as_u64().is_some_and(|at| at <= now) => {}
                Some(_) => return Err(Rejection::NotYetValid(name)),
            }
        }
        match claims.get("token_use").and_then(Value::as_str) {
            Some("access") => {}
            other => return Err(Rejection::NotAnAccessToken(other.unwrap_or("").to_owned())),
        }
        if claims.get("client_id").and_then(Value::as_str) != Some(&self.client_id) {
            return Err(Rejection::WrongClient);
        }
        Ok(claims)
    }

    /// The key `kid` from the cached JWKS, fetched again when the key is not in it (as after
    /// a key rotation), but at most once per refetch interval.
    async fn key(&self, kid: &str) -> Result<DecodingKey, Rejection> {
        if let Some(key) = self.cached_key(kid).await? {
            return Ok(key);
        }
        // Held through the fetch: requests that miss the key meanwhile wait for this fetch
        // instead of being refused as if it had found nothing.
        let mut last_fetch = self.last_fetch.lock().await;
        if let Some(key) = self.cached_key(kid).await? {
            return Ok(key);
        }
        if last_fetch.is_some_and(|at| at.elapsed() < self.refetch_interval) {
            return Err(Rejection::UnknownKey(kid.to_owned()));
        }
        *last_fetch = Some(Instant::now());
        let keys: JwkSet = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .and_then(|response| response.error_for_status())
            .map_err(|error| Rejection::Jwks(error.to_string()))?
            .json()
            .await
            .map_err(|error| Rejection::Jwks(error.to_string()))?;
        *self.keys.write().await = Some(keys);
        self.cached_key(kid)
            .await?
            .ok_or_else(|| Rejection::UnknownKey(kid.to_owned()))
    }

    async fn cached_key(&self, kid: &str) -> Result<Option<DecodingKey>, Rejection> {
        let keys = self.keys.read().await;
        let Some(jwk) = keys.as_ref().and_then(|keys| keys.find(kid)) else {
            return Ok(None);
        };
        DecodingKey::from_jwk(jwk)
            .map(Some)
            .map_err(|error| Rejection::Jwks(error.to_string()))
    }
}

/// Claims as API Gateway passes them to a function: every value a string.
pub fn claims_as_strings(claims: &Map<String, Value>) -> std::collections::HashMap<String, String> {
    claims
        .iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Array(items) => format!(
                    "[{}]",
                    items
                        .iter()
                        .map(|item| item
                            .as_str()
                            .map_or_else(|| item.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                other => other.to_string(),
            };
            (name.clone(), text)
        })
        .collect()
}
