//! `POST /generate`: validate, record the job, enqueue it, answer `202` at once.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::http::{
    Method,
    header::{LOCATION, RETRY_AFTER},
};
use chrono::{DateTime, Duration, Utc};
use pipeline::config::{ConfigError, Env};
use pipeline::domain::{
    ApiError, FailureCode, GenerateRequest, IdempotencyKey, Job, JobFailure, Limits, RateWindow,
    Transition,
};
use pipeline::http::{self, Caller, Cors, SubmittedJob};
use pipeline::ports::{Inserted, JobQueue, JobStore, SessionCheck, SubmissionQuota, Unavailable};
use tracing::{Instrument, error, info, info_span, warn};

/// The function's environment (see the contract's configuration table).
#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    pub queue_url: String,
    pub revocation_check: bool,
    pub settings: Settings,
}

/// What the handler itself needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    pub limits: Limits,
    pub job_ttl: Duration,
    pub cors: Cors,
    /// `MAX_JOBS_PER_MINUTE`: submissions one caller may make in a minute; `None`, no limit.
    pub jobs_per_minute: Option<u32>,
    /// The time, as the handler sees it (tests pin it).
    pub clock: fn() -> DateTime<Utc>,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required("JOBS_TABLE")?,
            queue_url: env.required("JOBS_QUEUE_URL")?,
            revocation_check: env.parsed_or("COGNITO_REVOCATION_CHECK", false, "true or false")?,
            settings: Settings {
                limits: env.limits()?,
                job_ttl: Duration::days(env.positive("JOB_TTL_DAYS", 30)?),
                cors: Cors::new(&env.allowed_origin()),
                jobs_per_minute: env.optional_positive("MAX_JOBS_PER_MINUTE")?,
                clock: Utc::now,
            },
        })
    }
}

/// The handler, generic over its ports. `sessions` is the optional Cognito revocation check.
pub struct GenerateApi<S, Q, C> {
    store: S,
    queue: Q,
    sessions: Option<C>,
    settings: Settings,
}

impl<S: JobStore + SubmissionQuota, Q: JobQueue, C: SessionCheck> GenerateApi<S, Q, C> {
    pub fn new(store: S, queue: Q, sessions: Option<C>, settings: Settings) -> Self {
        Self {
            store,
            queue,
            sessions,
            settings,
        }
    }

    pub async fn handle(&self, request: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        http::answer(&self.settings.cors, &request, self.route(&request)).await
    }

    async fn route(
        &self,
        request: &ApiGatewayV2httpRequest,
    ) -> Result<ApiGatewayV2httpResponse, ApiError> {
        if http::path(request) != "/generate" {
            return Err(ApiError::not_found());
        }
        if *http::method(request) != Method::POST {
            return Err(ApiError::method_not_allowed("POST"));
        }
        let caller = http::caller(request).ok_or_else(ApiError::unauthorized)?;
        self.check_session(&caller).await?;
        // Read as bytes: a header that is not even text must be refused, not ignored.
        let idempotency_key = request
            .headers
            .get("idempotency-key")
            .map(|value| IdempotencyKey::parse(&String::from_utf8_lossy(value.as_bytes())))
            .transpose()?;
        let body = http::body_text(request)?;
        let generate = GenerateRequest::from_json(&body, &self.settings.limits)?;
        let now = (self.settings.clock)();
        if let Some(refusal) = self.check_quota(&caller, now).await? {
            return Ok(refusal);
        }
        let job = Job::queued(
            caller.owner,
            generate,
            idempotency_key,
            now,
            self.settings.job_ttl,
        );
        let span = info_span!("job", job_id = %job.id);
        self.submit(job).instrument(span).await
    }

    /// With the revocation check on, a signed-out token is refused even before it expires.
    async fn check_session(&self, caller: &Caller) -> Result<(), ApiError> {
        let (Some(sessions), Some(token)) = (&self.sessions, &caller.access_token) else {
            return Ok(());
        };
        if sessions.is_active(token).await.map_err(unavailable)? {
            Ok(())
        } else {
            info!("the access token was revoked; answered 401");
            Err(ApiError::unauthorized())
        }
    }

    /// `429` with `Retry-After` once the caller has used this minute's submissions.
    async fn check_quota(
        &self,
        caller: &Caller,
        now: DateTime<Utc>,
    ) -> Result<Option<ApiGatewayV2httpResponse>, ApiError> {
        let Some(limit) = self.settings.jobs_per_minute else {
            return Ok(None);
        };
        let window = RateWindow::of(&caller.owner, now);
        if self
            .store
            .acquire(&window, limit)
            .await
            .map_err(unavailable)?
        {
            return Ok(None);
        }
        let retry_after = window.retry_after_secs(now);
        info!(
            limit,
            retry_after, "over the submission quota; answered 429"
        );
        let refusal = self
            .settings
            .cors
            .error(&ApiError::rate_limited(limit, retry_after));
        Ok(Some(http::with_header(
            refusal,
            RETRY_AFTER,
            &retry_after.to_string(),
        )))
    }

    async fn submit(&self, job: Job) -> Result<ApiGatewayV2httpResponse, ApiError> {
        if self.store.insert(&job).await.map_err(unavailable)? == Inserted::AlreadyExists {
            return self.repeat(&job).await;
        }
        if let Err(cause) = self.queue.enqueue(job.id).await {
            // The record exists but no worker will ever see it: fail it rather than leave it
            // queued forever, and tell the caller to retry.
            error!(%cause, "enqueue failed; the job is marked failed");
            let failure = JobFailure::new(
                FailureCode::EnqueueFailed,
                "The job could not be queued; please submit it again.",
            );
            if let Err(cause) = self
                .store
                .transition(job.id, &Transition::Fail(failure), (self.settings.clock)())
                .await
            {
                error!(%cause, "could not mark the unqueued job failed");
            }
            return Err(ApiError::unavailable());
        }
        info!(model = %job.request.model, max_tokens = job.request.max_tokens, "job queued");
        tracing::debug!(prompt = %job.request.prompt, "job prompt");
        Ok(self.accepted(202, &job))
    }

    /// The same caller sent the same `Idempotency-Key` again: answer with the original job.
    async fn repeat(&self, job: &Job) -> Result<ApiGatewayV2httpResponse, ApiError> {
        let original = self.store.get(job.id).await.map_err(unavailable)?;
        match original.filter(|original| original.owner == job.owner) {
            Some(original) => {
                info!(status = %original.status, "idempotent repeat; answered with the original job");
                Ok(self.accepted(200, &original))
            }
            None => {
                // Only possible if the record vanished between the two calls (TTL, deletion).
                warn!("idempotent repeat found no original job");
                Err(ApiError::unavailable())
            }
        }
    }

    fn accepted(&self, status: u16, job: &Job) -> ApiGatewayV2httpResponse {
        let response = self.settings.cors.json(status, &SubmittedJob::of(job));
        http::with_header(response, LOCATION, &http::location(job))
    }
}

fn unavailable(cause: Unavailable) -> ApiError {
    error!(%cause, "dependency failed; answered 503");
    ApiError::unavailable()
}
