//! `POST /generate`: validate, record the job, enqueue it, answer `202` at once; or, asked
//! with `Prefer: wait=N`, `200` with the finished job if it finishes within `N` seconds.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use pipeline::config::{ConfigError, Env};
use pipeline::domain::{
    Amount, Budget, ErrorCode, FailureCode, GenerateRequest, IdempotencyKey, Job, JobFailure,
    JobId, JobStatus, Limits, OverBudget, Owner, PriceTable, RateWindow, Revision, Transition,
    Transitioned,
};
use pipeline::http::{self, ApiError, Caller, HttpSettings, JobView, SubmittedJob, TextBody};
use pipeline::long_poll;
use pipeline::metrics;
use pipeline::ports::{Inserted, JobQueue, JobStore, SessionCheck, SubmissionQuota, UsageLedger};
use tracing::{Instrument, error, info, info_span, warn};

/// RFC 7240's answer to `Prefer`: which preferences were honoured.
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// How long after a job's creation its submitting request is surely over (the function's
/// timeout is 29 s): a job still queued after that was never enqueued by it.
pub const ENQUEUE_GRACE: Duration = Duration::seconds(35);

/// The longest `Prefer: wait`: the HTTP API gives up on an integration after 30 s, and the
/// function's timeout is 29 s.
pub const PREFER_WAIT_MAX_SECONDS: u64 = 25;

/// The function's environment (see the configuration table in `docs/contract.md`).
#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    pub queue_url: String,
    /// Named in a finished job's answer to `Prefer: wait`.
    pub artifacts_bucket: String,
    pub settings: Settings,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required("JOBS_TABLE")?,
            queue_url: env.required("JOBS_QUEUE_URL")?,
            artifacts_bucket: env.required("ARTIFACTS_BUCKET")?,
            settings: Settings::from_env(env)?,
        })
    }
}

/// What the handler itself needs to know; the local stack reads it the same way.
#[derive(Clone, Debug)]
pub struct Settings {
    pub limits: Limits,
    pub job_ttl: Duration,
    /// `MAX_JOBS_PER_MINUTE`: submissions one caller may make in a minute; `None`, no limit.
    pub jobs_per_minute: Option<u32>,
    /// Every user's limits, unless the operator set their own (`BUDGET_*`).
    pub budget: Budget,
    /// What jobs reserve is priced with these (`MODEL_PRICES` over the shipped table).
    pub prices: Arc<PriceTable>,
    pub http: HttpSettings,
    /// The time, as the handler sees it (tests pin it).
    pub clock: fn() -> DateTime<Utc>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let limits = env.limits()?;
        let prices = env.prices()?;
        Ok(Self {
            budget: env.priced_budget(&limits, &prices)?,
            prices: Arc::new(prices),
            limits,
            job_ttl: Duration::days(env.positive("JOB_TTL_DAYS", 30)?),
            jobs_per_minute: env.optional_positive("MAX_JOBS_PER_MINUTE")?,
            http: HttpSettings::from_env(env)?,
            clock: Utc::now,
        })
    }
}

/// The handler's state, generic over its ports.
pub struct GenerateApi<S, Q> {
    store: S,
    queue: Q,
    artifacts_bucket: String,
    settings: Settings,
}

/// The function: `POST /generate`, behind the revocation check when `sessions` is given.
pub fn router<S, Q, C>(api: GenerateApi<S, Q>, sessions: Option<C>) -> Router
where
    S: JobStore + SubmissionQuota + UsageLedger + 'static,
    Q: JobQueue + 'static,
    C: SessionCheck + 'static,
{
    let http = api.settings.http.clone();
    let routes = Router::new()
        .route("/generate", post(generate::<S, Q>))
        .with_state(Arc::new(api));
    http::finish(routes, &http, sessions)
}

/// Every submission counted by its outcome: `accepted`, `repeated`, or the error's code
/// (those of a missing identity or an unreadable body too).
async fn generate<S: JobStore + SubmissionQuota + UsageLedger, Q: JobQueue>(
    api: State<Arc<GenerateApi<S, Q>>>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: Result<TextBody, ApiError>,
) -> Result<Response, ApiError> {
    let answer = match (caller, body) {
        (Ok(caller), Ok(body)) => submission(api, caller, headers, body).await,
        (Err(error), _) | (_, Err(error)) => Err(error),
    };
    metrics::submission(match &answer {
        Ok((outcome, _)) => outcome,
        Err(error) => error.code.as_str(),
    });
    answer.map(|(_, response)| response)
}

async fn submission<S: JobStore + SubmissionQuota + UsageLedger, Q: JobQueue>(
    State(api): State<Arc<GenerateApi<S, Q>>>,
    caller: Caller,
    headers: HeaderMap,
    TextBody(body): TextBody,
) -> Result<(&'static str, Response), ApiError> {
    // The function's time runs from here: a `Prefer: wait` ends in time to answer.
    let started = tokio::time::Instant::now();
    // Read as bytes: a header that is not even text must be refused, not ignored.
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|value| IdempotencyKey::parse(&String::from_utf8_lossy(value.as_bytes())))
        .transpose()?;
    let request = GenerateRequest::from_json(&body, &api.settings.limits)?;
    let wait = preferred_wait(&headers);
    // A repeat asks for nothing new, so with a quota it is answered before anything is
    // counted (without one, the conditional insert finds it, with one call fewer).
    if let Some(key) = idempotency_key
        .as_ref()
        .filter(|_| api.settings.jobs_per_minute.is_some())
    {
        let id = JobId::for_idempotency_key(&caller.owner, key);
        if let Some(original) = api.original(id, &caller.owner).await? {
            let answer = api.answer(StatusCode::OK, original, wait, started).await?;
            return Ok(("repeated", answer));
        }
    }
    let now = (api.settings.clock)();
    api.check_quota(&caller, now).await?;
    let budget = api.budget_of(&caller.owner).await?;
    let worst_case = api.worst_case(&request, &budget)?;
    let job = Job::queued(
        caller.owner,
        request,
        idempotency_key,
        now,
        api.settings.job_ttl,
    )
    .reserving(worst_case);
    let span = info_span!("job", job_id = %job.id);
    let (status, job) = api.submit(job, &budget).instrument(span).await?;
    let outcome = if status == StatusCode::ACCEPTED {
        "accepted"
    } else {
        "repeated"
    };
    Ok((outcome, api.answer(status, job, wait, started).await?))
}

/// The `wait` preference of the `Prefer` headers (RFC 7240): the first one counts, its
/// seconds at most [`PREFER_WAIT_MAX_SECONDS`]; one that cannot be honoured is ignored, as the RFC
/// says. Preferences are separated by commas; what follows a `;` are a preference's own
/// parameters, not preferences.
fn preferred_wait(headers: &HeaderMap) -> Option<u64> {
    let wait = headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|preference| {
            let token = preference.split(';').next()?;
            let (name, value) = token.split_once('=').unwrap_or((token, ""));
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').to_owned())
        })
        .next()?;
    if wait.is_empty() || !wait.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: too many for a number is more than the most.
    let seconds = wait.parse::<u64>().unwrap_or(u64::MAX);
    (seconds > 0).then(|| seconds.min(PREFER_WAIT_MAX_SECONDS))
}

/// `429 budget_exceeded`, counted and logged.
fn refused(over: &OverBudget, now: DateTime<Utc>) -> ApiError {
    metrics::budget_refusal(over.period.kind.as_str());
    info!(
        period = %over.period.name,
        limit = over.limit,
        needed = over.needed,
        "over budget; answered 429"
    );
    ApiError::budget_exceeded(over, now)
}

impl<S: JobStore + SubmissionQuota + UsageLedger, Q: JobQueue> GenerateApi<S, Q> {
    pub fn new(
        store: S,
        queue: Q,
        artifacts_bucket: impl Into<String>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            queue,
            artifacts_bucket: artifacts_bucket.into(),
            settings,
        }
    }

    /// The usual answer (`202`, or `200` for a repeat) with the job's link; with a
    /// `Prefer: wait` of `seconds`, `200` with the whole job if it finishes by then, and
    /// `Preference-Applied`. The wait ends [`PREFER_WAIT_MAX_SECONDS`] after the request `started`
    /// at the latest, whatever the calls before it took, so that the function (29 s) always
    /// answers.
    async fn answer(
        &self,
        status: StatusCode,
        job: Job,
        wait: Option<u64>,
        started: tokio::time::Instant,
    ) -> Result<Response, ApiError> {
        let Some(seconds) = wait else {
            return Ok(accepted(status, &job));
        };
        let finished = |revision: &Revision| revision.status.is_terminal();
        let left = std::time::Duration::from_secs(PREFER_WAIT_MAX_SECONDS)
            .saturating_sub(started.elapsed());
        let wait = std::time::Duration::from_secs(seconds).min(left);
        let waited = if finished(&job.revision()) {
            Some(job.clone())
        } else {
            long_poll::wait_for(&self.store, job.id, wait, finished)
                .await
                .unwrap_or_else(|cause| {
                    // The job is recorded and queued: the usual answer, not a 503 that would
                    // make a client without an Idempotency-Key submit it twice.
                    warn!(%cause, "could not wait for the job; answered without waiting");
                    None
                })
        };
        match waited {
            Some(done) if finished(&done.revision()) => Ok((
                StatusCode::OK,
                [
                    (LOCATION, http::location(&done)),
                    (PREFERENCE_APPLIED, format!("wait={seconds}")),
                ],
                Json(JobView::of(&done, &self.artifacts_bucket)),
            )
                .into_response()),
            // Not finished: the usual answer, with the status the job has now.
            seen => Ok(accepted(status, seen.as_ref().unwrap_or(&job))),
        }
    }

    /// `429` with `Retry-After` once the caller has used this minute's submissions.
    async fn check_quota(&self, caller: &Caller, now: DateTime<Utc>) -> Result<(), ApiError> {
        let Some(limit) = self.settings.jobs_per_minute else {
            return Ok(());
        };
        let window = RateWindow::of(&caller.owner, now);
        if self.store.acquire(&window, limit).await? {
            return Ok(());
        }
        let retry_after = window.retry_after_secs(now);
        info!(
            limit,
            retry_after, "over the submission quota; answered 429"
        );
        Err(ApiError::rate_limited(limit, retry_after))
    }

    /// The caller's limits: the default, unless the operator set their own. Without any
    /// default, an override is still looked for (budgets for some users only).
    async fn budget_of(&self, owner: &Owner) -> Result<Budget, ApiError> {
        let user = self.store.budget_override(owner).await?;
        Ok(self.settings.budget.overridden_by(user))
    }

    /// What the job reserves. Under a dollar budget its model must have a price (the start-up
    /// check covers the default budget; this, budgets the operator set for one user).
    fn worst_case(&self, request: &GenerateRequest, budget: &Budget) -> Result<Amount, ApiError> {
        let price = self.settings.prices.price(&request.model);
        if price.is_none() && budget.usd_per_month.is_some() {
            return Err(ApiError::new(
                ErrorCode::UnsupportedModel,
                format!(
                    "The model {} has no price, so it cannot be used under your dollar budget; \
                     choose another model, or ask the operator to add it to MODEL_PRICES.",
                    request.model
                ),
            ));
        }
        Ok(Amount::worst_case(request, price))
    }

    /// Records and enqueues the job: `202` and the job, or `200` and the original for a
    /// repeat that lost the race for the id.
    async fn submit(&self, job: Job, budget: &Budget) -> Result<(StatusCode, Job), ApiError> {
        match self.store.insert(&job, budget).await? {
            Inserted::Created => {}
            // A concurrent repeat won the race for the id.
            Inserted::AlreadyExists => {
                return match self.original(job.id, &job.owner).await? {
                    Some(original) => Ok((StatusCode::OK, original)),
                    None => {
                        // Only possible if the record vanished between the two calls (TTL).
                        warn!("idempotent repeat found no original job");
                        Err(ApiError::unavailable())
                    }
                };
            }
            Inserted::OverBudget(over) => return Err(refused(&over, job.created_at)),
        }
        if let Err(cause) = self.queue.enqueue(job.id).await {
            // The record exists but no worker will ever see it: fail it rather than leave it
            // queued forever, and tell the caller to retry.
            error!(%cause, "enqueue failed; the job is marked failed");
            let failure = JobFailure::new(
                FailureCode::EnqueueFailed,
                "The job could not be queued; please submit it again.",
            );
            let fail = Transition::Fail {
                lease: None,
                failure,
            };
            match self
                .store
                .transition(job.id, &fail, (self.settings.clock)())
                .await
            {
                Ok(Transitioned::Done(failed)) => metrics::job_ended(&failed),
                Ok(Transitioned::Refused(_)) => {}
                Err(cause) => error!(%cause, "could not mark the unqueued job failed"),
            }
            return Err(ApiError::unavailable());
        }
        info!(model = %job.request.model, max_tokens = job.request.max_tokens, "job queued");
        tracing::debug!(prompt = %job.request.prompt, "job prompt");
        Ok((StatusCode::ACCEPTED, job))
    }

    /// The same caller sent the same `Idempotency-Key` again: the answer with the original
    /// job, if there is one. An original still `queued` after the submitting request is surely
    /// over may never have been enqueued (that request died between the write and the send):
    /// it is enqueued again, so that a client's retry always leads to a job that runs. If its
    /// message was in fact sent, the worker's leases make the second one harmless.
    async fn original(&self, id: JobId, owner: &Owner) -> Result<Option<Job>, ApiError> {
        let Some(original) = self
            .store
            .get(id)
            .await?
            .filter(|original| original.owner == *owner)
        else {
            return Ok(None);
        };
        let span = info_span!("job", job_id = %original.id);
        // Within the grace the submitting request may still be about to send it itself.
        let stranded = (self.settings.clock)() - original.created_at > ENQUEUE_GRACE;
        if original.status == JobStatus::Queued && stranded {
            self.queue
                .enqueue(original.id)
                .instrument(span.clone())
                .await?;
            span.in_scope(|| warn!("the original job is still queued; it is enqueued again"));
        }
        span.in_scope(|| {
            info!(status = %original.status, "idempotent repeat; answered with the original job");
        });
        Ok(Some(original))
    }
}

fn accepted(status: StatusCode, job: &Job) -> Response {
    (
        status,
        [(LOCATION, http::location(job))],
        Json(SubmittedJob::of(job)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_wait_preference_counts_capped_and_ignored_when_it_cannot_be_honoured() {
        let cases: [(&[&str], Option<u64>); 17] = [
            (&["wait=10"], Some(10)),
            (&["WAIT = 3"], Some(3)),
            (&["wait=\"7\""], Some(7)),
            (&["respond-async, wait=600"], Some(PREFER_WAIT_MAX_SECONDS)),
            (
                &["wait=99999999999999999999999"],
                Some(PREFER_WAIT_MAX_SECONDS),
            ),
            (&["handling=lenient", "wait=4"], Some(4)),
            (&["wait=5; foo=bar"], Some(5)),
            (&["respond-async; wait=5"], None),
            (&["wait=0, wait=5"], None),
            (&["wait, wait=5"], None),
            (&["wait=soon"], None),
            (&["wait=+5"], None),
            (&["wait=-1"], None),
            (&["wait=1.5"], None),
            (&["wait="], None),
            (&["handling=strict"], None),
            (&[], None),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append("prefer", value.parse().unwrap());
            }
            assert_eq!(preferred_wait(&headers), expected, "{values:?}");
        }
    }
}
