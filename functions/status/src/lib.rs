//! `GET /jobs/{id}`, `GET /jobs`, `POST /jobs/{id}/cancel` and `GET /usage`: the caller's own
//! jobs and use, never anyone else's.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use pipeline::config::{ConfigError, Env};
use pipeline::domain::{
    Budget, Job, JobId, JobStatus, Period, PeriodKind, Revision, Transition, Transitioned,
    parse_timestamp,
};
use pipeline::http::{self, ApiError, Caller, HttpSettings, JobView, UsageView};
use pipeline::long_poll;
use pipeline::metrics;
use pipeline::ports::{JobStore, PageCursor, SessionCheck, UsageLedger};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

/// The function's environment (see the configuration table in `docs/contract.md`).
#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    pub artifacts_bucket: String,
    pub settings: Settings,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required("JOBS_TABLE")?,
            artifacts_bucket: env.required("ARTIFACTS_BUCKET")?,
            settings: Settings::from_env(env)?,
        })
    }
}

/// What the handlers need to know; the local stack reads it the same way.
#[derive(Clone, Debug)]
pub struct Settings {
    pub http: HttpSettings,
    /// Every user's limits (`BUDGET_*`), shown by `GET /usage` unless the operator set the
    /// user's own.
    pub budget: Budget,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            http: HttpSettings::from_env(env)?,
            budget: env.budget()?,
        })
    }
}

/// The handlers' state, generic over the job store.
pub struct StatusApi<S> {
    store: S,
    artifacts_bucket: String,
    settings: Settings,
}

impl<S: JobStore + UsageLedger> StatusApi<S> {
    pub fn new(store: S, artifacts_bucket: impl Into<String>, settings: Settings) -> Self {
        Self {
            store,
            artifacts_bucket: artifacts_bucket.into(),
            settings,
        }
    }
}

/// The function: `GET /jobs/{id}`, `GET /jobs`, `POST /jobs/{id}/cancel` and `GET /usage`,
/// behind the revocation check when `sessions` is given. Deployed, it is also the HTTP API's `$default` route, so it answers
/// every path the API does not route elsewhere, `/generate` with a method other than POST
/// among them.
pub fn router<S, C>(status: StatusApi<S>, sessions: Option<C>) -> Router
where
    S: JobStore + UsageLedger + 'static,
    C: SessionCheck + 'static,
{
    let http = status.settings.http.clone();
    let routes = Router::new()
        .route("/usage", get(usage::<S>))
        .route("/jobs", get(list::<S>))
        .route("/jobs/{id}", get(job::<S>))
        .route("/jobs/{id}/cancel", post(cancel::<S>))
        .route(
            "/generate",
            any(|| async { ApiError::method_not_allowed("POST") }),
        )
        .with_state(Arc::new(status));
    http::finish(routes, &http, sessions)
}

/// The longest long-poll: `wait` is 0 to this many seconds (the function's timeout is 25 s).
pub const LONG_POLL_MAX_SECONDS: u64 = 20;

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<String>,
    after: Option<String>,
}

/// The job; with `wait=N&after=S`, as soon as its `seq` is past `S` or it is finished, at the
/// latest after `N` seconds (a long-poll: text shows as it is written, without polling).
async fn job<S: JobStore>(
    State(status): State<Arc<StatusApi<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<JobView>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::invalid_request("The query string could not be read; use wait and after.")
    })?;
    let wait = query_number(
        query.wait,
        0,
        |wait| *wait <= LONG_POLL_MAX_SECONDS,
        || {
            format!(
                "Query parameter wait must be a whole number of seconds from 0 to {LONG_POLL_MAX_SECONDS}."
            )
        },
    )?;
    let after: i64 = query_number(
        query.after,
        -1,
        |after| *after >= -1,
        || "Query parameter after must be a seq this API returned (a whole number), or -1.".into(),
    )?;
    let job = status.own_job(&caller, &id).await?;
    let changed =
        |revision: &Revision| revision.seq as i64 > after || revision.status.is_terminal();
    let job = if wait == 0 || changed(&job.revision()) {
        job
    } else {
        let wait = std::time::Duration::from_secs(wait);
        long_poll::wait_for(&status.store, job.id, wait, changed)
            .await?
            .ok_or_else(ApiError::job_not_found)?
    };
    Ok(Json(JobView::of(&job, &status.artifacts_bucket)))
}

/// The caller's use of this day and month, their budgets and what is left.
async fn usage<S: JobStore + UsageLedger>(
    State(status): State<Arc<StatusApi<S>>>,
    caller: Caller,
) -> Result<Json<UsageView>, ApiError> {
    let now = Utc::now();
    let periods = PeriodKind::ALL.map(|kind| Period::containing(kind, now));
    let budget = status.store.budget_override(&caller.owner);
    let used = status.store.usage(&caller.owner, &periods);
    let (user, used) = tokio::try_join!(budget, used)?;
    let budget = status.settings.budget.overridden_by(user);
    match used.as_slice() {
        [day, month] => Ok(Json(UsageView::of(day, month, &budget))),
        _ => Err(ApiError::internal()),
    }
}

/// How often a stop is tried again when the job moved on (`queued` → `running`) between the
/// read and the write.
const CANCEL_TRIES: usize = 3;

/// `queued` or `running` → `cancelled`: a queued job is never started, a running attempt
/// stops at its next write. Cancelling a cancelled job again changes nothing.
async fn cancel<S: JobStore>(
    State(status): State<Arc<StatusApi<S>>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let mut job = status.own_job(&caller, &id).await?;
    for _ in 0..CANCEL_TRIES {
        if job.status.is_terminal() {
            break;
        }
        job = match status
            .store
            .transition(job.id, &Transition::cancel(&job), Utc::now())
            .await?
        {
            Transitioned::Done(job) => {
                tracing::info!(job_id = %job.id, "job cancelled by its owner");
                metrics::job_ended(&job);
                job
            }
            Transitioned::Refused(current) => current.ok_or_else(ApiError::job_not_found)?,
        };
    }
    match job.status {
        JobStatus::Cancelled => Ok(Json(JobView::of(&job, &status.artifacts_bucket))),
        finished if finished.is_terminal() => Err(ApiError::not_cancellable(finished.as_str())),
        // It kept changing under the stop: the caller may simply try again.
        _ => Err(ApiError::unavailable()),
    }
}

impl<S: JobStore> StatusApi<S> {
    /// The caller's job `id`. Not a UUID, not there, or someone else's: all the same `404`,
    /// so that nobody learns whether another user's job exists.
    async fn own_job(&self, caller: &Caller, id: &str) -> Result<Job, ApiError> {
        let id = JobId::parse(id).ok_or_else(ApiError::job_not_found)?;
        self.store
            .get(id)
            .await?
            .filter(|job| job.owner == caller.owner)
            .ok_or_else(ApiError::job_not_found)
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct JobList {
    jobs: Vec<JobView>,
    next_cursor: Option<String>,
}

async fn list<S: JobStore>(
    State(status): State<Arc<StatusApi<S>>>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::invalid_request("The query string could not be read; use limit and cursor.")
    })?;
    let limit = query_number(
        query.limit,
        DEFAULT_PAGE_SIZE,
        |limit| (1..=MAX_PAGE_SIZE).contains(limit),
        || format!("Query parameter limit must be a whole number from 1 to {MAX_PAGE_SIZE}."),
    )?;
    let cursor = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = status
        .store
        .list(&caller.owner, limit, cursor.as_ref())
        .await?;
    Ok(Json(JobList {
        jobs: page
            .jobs
            .iter()
            .map(|job| JobView::summary(job, &status.artifacts_bucket))
            .collect(),
        next_cursor: page.next.as_ref().map(encode_cursor),
    }))
}

/// A number in the query string: `default` when absent, else one that parses and that
/// `valid` admits, or `400 invalid_request` with the sentence `refusal` makes.
fn query_number<T: std::str::FromStr>(
    text: Option<String>,
    default: T,
    valid: impl Fn(&T) -> bool,
    refusal: impl FnOnce() -> String,
) -> Result<T, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    text.parse()
        .ok()
        .filter(valid)
        .ok_or_else(|| ApiError::invalid_request(refusal()))
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
        "Query parameter cursor is not one this API issued; pass the next_cursor of the previous page.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the api prices jobs, so only the api needs every allowed model priced under a
    /// dollar budget: the status function starts without, and shows the budget.
    #[test]
    fn a_dollar_budget_with_an_unpriced_model_stops_the_api_only() {
        let env = Env::from_map(
            [
                ("ALLOWED_MODEL_IDS", "amazon.nova-micro-v1:0,my.model"),
                ("BUDGET_USD_PER_MONTH", "5"),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        );
        let status = Settings::from_env(&env).unwrap();
        assert!(status.budget.usd_per_month.is_some());
        let api = env.priced_budget(&env.limits().unwrap(), &env.prices().unwrap());
        let error = api.unwrap_err().to_string();
        assert!(error.contains("my.model"), "{error}");
    }

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
            assert!(error.message.contains("cursor is not one"), "{bad}");
        }
    }
}
