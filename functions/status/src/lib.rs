//! `GET /jobs/{id}` and `GET /jobs`: the caller's own jobs, never anyone else's.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::http::Method;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pipeline::config::{ConfigError, Env};
use pipeline::domain::{ApiError, JobId, Owner, parse_timestamp};
use pipeline::http::{self, Cors, JobView};
use pipeline::ports::{JobStore, PageCursor, Unavailable};
use serde::{Deserialize, Serialize};
use tracing::error;

pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    pub artifacts_bucket: String,
    pub cors: Cors,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required("JOBS_TABLE")?,
            artifacts_bucket: env.required("ARTIFACTS_BUCKET")?,
            cors: Cors::new(&env.allowed_origin()),
        })
    }
}

pub struct StatusApi<S> {
    store: S,
    artifacts_bucket: String,
    cors: Cors,
}

#[derive(Serialize)]
struct JobList {
    jobs: Vec<JobView>,
    next_cursor: Option<String>,
}

impl<S: JobStore> StatusApi<S> {
    pub fn new(store: S, artifacts_bucket: impl Into<String>, cors: Cors) -> Self {
        Self {
            store,
            artifacts_bucket: artifacts_bucket.into(),
            cors,
        }
    }

    pub async fn handle(&self, request: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        http::answer(&self.cors, &request, self.route(&request)).await
    }

    async fn route(
        &self,
        request: &ApiGatewayV2httpRequest,
    ) -> Result<ApiGatewayV2httpResponse, ApiError> {
        let path = http::path(request);
        let job_id = match path.strip_prefix("/jobs") {
            Some("") => None,
            Some(rest) => match rest.strip_prefix('/').filter(|id| !id.contains('/')) {
                Some(id) => Some(id),
                None => return Err(ApiError::not_found()),
            },
            None => return Err(ApiError::not_found()),
        };
        if *http::method(request) != Method::GET {
            return Err(ApiError::method_not_allowed("GET"));
        }
        let owner = http::caller(request)
            .ok_or_else(ApiError::unauthorized)?
            .owner;
        match job_id {
            Some(id) => self.job(&owner, id).await,
            None => self.list(&owner, request).await,
        }
    }

    async fn job(&self, owner: &Owner, id: &str) -> Result<ApiGatewayV2httpResponse, ApiError> {
        // Not a UUID, not there, or someone else's: all the same `404`, so that nobody learns
        // whether another user's job exists.
        let id = JobId::parse(id).ok_or_else(ApiError::job_not_found)?;
        let job = self
            .store
            .get(id)
            .await
            .map_err(unavailable)?
            .filter(|job| job.owner == *owner)
            .ok_or_else(ApiError::job_not_found)?;
        Ok(self
            .cors
            .json(200, &JobView::of(&job, &self.artifacts_bucket)))
    }

    async fn list(
        &self,
        owner: &Owner,
        request: &ApiGatewayV2httpRequest,
    ) -> Result<ApiGatewayV2httpResponse, ApiError> {
        let limit = match http::query(request, "limit") {
            None => DEFAULT_PAGE_SIZE,
            Some(text) => text
                .parse()
                .ok()
                .filter(|limit| (1..=MAX_PAGE_SIZE).contains(limit))
                .ok_or_else(|| {
                    ApiError::invalid_request(format!(
                        "Query parameter `limit` must be a whole number from 1 to {MAX_PAGE_SIZE}."
                    ))
                })?,
        };
        let cursor = http::query(request, "cursor")
            .map(decode_cursor)
            .transpose()?;
        let page = self
            .store
            .list(owner, limit, cursor.as_ref())
            .await
            .map_err(unavailable)?;
        let body = JobList {
            jobs: page
                .jobs
                .iter()
                .map(|job| JobView::summary(job, &self.artifacts_bucket))
                .collect(),
            next_cursor: page.next.as_ref().map(encode_cursor),
        };
        Ok(self.cors.json(200, &body))
    }
}

/// The cursor's inside; callers see only its opaque base64url form.
#[derive(Serialize, Deserialize)]
struct CursorFields {
    job_id: String,
    created_at: String,
}

fn encode_cursor(cursor: &PageCursor) -> String {
    let fields = CursorFields {
        job_id: cursor.job_id.to_string(),
        created_at: cursor.created_at.clone(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&fields).expect("cursors always serialize"))
}

fn decode_cursor(text: &str) -> Result<PageCursor, ApiError> {
    let fields: CursorFields = URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(bad_cursor)?;
    let job_id = JobId::parse(&fields.job_id).ok_or_else(bad_cursor)?;
    parse_timestamp(&fields.created_at).ok_or_else(bad_cursor)?;
    Ok(PageCursor {
        job_id,
        created_at: fields.created_at,
    })
}

fn bad_cursor() -> ApiError {
    ApiError::invalid_request(
        "Query parameter `cursor` is not one this API issued; pass the `next_cursor` of the previous page.",
    )
}

fn unavailable(cause: Unavailable) -> ApiError {
    error!(%cause, "dependency failed; answered 503");
    ApiError::unavailable()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        let cursor = PageCursor {
            job_id: JobId::random(),
            created_at: "2026-11-22T10:00:00.000Z".into(),
        };
        let text = encode_cursor(&cursor);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(decode_cursor(&text).unwrap(), cursor);

        let not_a_uuid =
            URL_SAFE_NO_PAD.encode(r#"{"job_id":"x","created_at":"2026-11-22T10:00:00.000Z"}"#);
        let not_a_time = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"job_id":"{}","created_at":"soon"}}"#,
            cursor.job_id
        ));
        for bad in ["", "!!!", "e30", not_a_uuid.as_str(), not_a_time.as_str()] {
            let error = decode_cursor(bad).unwrap_err();
            assert!(error.message.contains("`cursor`"), "{bad}");
        }
    }
}
