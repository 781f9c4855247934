//! The job as callers see it (the contract's response shapes).

use serde::Serialize;

use crate::domain::{
    Budget, Job, JobStatus, NanoUsd, PeriodKind, PeriodUsage, Usage, format_timestamp,
};

/// The answer to `POST /generate` (`202`, or `200` for an idempotent repeat).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubmittedJob {
    pub job_id: String,
    pub status: &'static str,
    pub created_at: String,
    pub links: JobLinks,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobLinks {
    #[serde(rename = "self")]
    pub self_: String,
}

impl SubmittedJob {
    pub fn of(job: &Job) -> Self {
        Self {
            job_id: job.id.to_string(),
            status: job.status.as_str(),
            created_at: format_timestamp(job.created_at),
            links: JobLinks {
                self_: location(job),
            },
        }
    }
}

/// Where a job can be polled: the `Location` header and `links.self`.
pub fn location(job: &Job) -> String {
    format!("/jobs/{}", job.id)
}

/// The answer to `GET /jobs/{id}`, and (without `output`) one entry of `GET /jobs`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub status: &'static str,
    pub model: String,
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Grows with every change of the record.
    pub seq: u64,
    /// Model calls started.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// What the job cost, in US dollars, once it succeeded (absent for a model without a
    /// price).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactLocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArtifactLocation {
    pub bucket: String,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

impl JobView {
    /// The full view, `output` included.
    pub fn of(job: &Job, artifacts_bucket: &str) -> Self {
        let completion = job
            .completion
            .as_ref()
            .filter(|_| job.status == JobStatus::Succeeded);
        Self {
            job_id: job.id.to_string(),
            status: job.status.as_str(),
            model: job.request.model.clone(),
            prompt: job.request.prompt.clone(),
            system: job.request.system.clone(),
            max_tokens: job.request.max_tokens,
            temperature: job.request.temperature,
            created_at: format_timestamp(job.created_at),
            updated_at: format_timestamp(job.updated_at),
            completed_at: job
                .completed_at
                .filter(|_| job.status.is_terminal())
                .map(format_timestamp),
            seq: job.seq,
            attempts: job.attempts,
            // While running: the text so far; a cancelled or failed job keeps it.
            output: completion
                .map(|c| c.output.clone())
                .or_else(|| job.partial_output.clone()),
            // A succeeded job's, or what the call of a cancelled one used after all.
            usage: completion
                .map(|c| c.usage)
                .or(job.recorded_usage.map(|used| used.usage)),
            cost_usd: completion
                .map_or(job.recorded_usage.and_then(|used| used.cost), |c| c.cost)
                .map(|cost| cost.as_usd()),
            artifact: completion.map(|c| ArtifactLocation {
                bucket: artifacts_bucket.to_owned(),
                key: c.artifact_key.clone(),
            }),
            error: job
                .failure
                .as_ref()
                .filter(|_| job.status == JobStatus::Failed)
                .map(|failure| ErrorView {
                    code: failure.code.clone(),
                    message: failure.message.clone(),
                }),
        }
    }

    /// The list entry: everything but `output`, which can be large.
    pub fn summary(job: &Job, artifacts_bucket: &str) -> Self {
        Self {
            output: None,
            ..Self::of(job, artifacts_bucket)
        }
    }
}

/// The answer to `GET /usage`: the caller's use of the current day (tokens budget) and month
/// (dollars budget).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageView {
    pub day: PeriodView,
    pub month: PeriodView,
}

/// One period of `GET /usage`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeriodView {
    /// `2026-11-23` or `2026-11` (UTC).
    pub period: String,
    pub starts_at: String,
    /// When it resets.
    pub ends_at: String,
    /// Jobs submitted in the period, and those of them that have ended.
    pub jobs: u64,
    pub finished_jobs: u64,
    /// Tokens the model reported for the ended jobs.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// What the ended jobs count against the budget: their tokens and cost, or their whole
    /// reservation where their use is unknown.
    pub tokens: u64,
    pub cost_usd: f64,
    /// Held by unfinished jobs (their worst case) until they end.
    pub reserved_tokens: u64,
    pub reserved_usd: f64,
    /// The period's budget (`null`: none): its limit and what is left, in `unit`.
    pub budget: Option<BudgetView>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetView {
    /// `tokens` (a day: whole numbers) or `usd` (a month).
    pub unit: &'static str,
    pub limit: serde_json::Number,
    /// The limit less what ended jobs were charged and unfinished jobs reserved.
    pub left: serde_json::Number,
}

impl UsageView {
    pub fn of(day: &PeriodUsage, month: &PeriodUsage, budget: &Budget) -> Self {
        Self {
            day: PeriodView::of(day, budget),
            month: PeriodView::of(month, budget),
        }
    }
}

impl PeriodView {
    fn of(usage: &PeriodUsage, budget: &Budget) -> Self {
        let reserved = usage.reserved();
        let kind = usage.period.kind;
        let in_unit = |amount: u64| match kind {
            PeriodKind::Day => serde_json::Number::from(amount),
            PeriodKind::Month => serde_json::Number::from_f64(NanoUsd(amount).as_usd())
                .unwrap_or_else(|| serde_json::Number::from(0)),
        };
        Self {
            period: usage.period.name.clone(),
            starts_at: format_timestamp(usage.period.starts_at),
            ends_at: format_timestamp(usage.period.ends_at),
            jobs: usage.jobs,
            finished_jobs: usage.settled_jobs,
            input_tokens: usage.usage.input_tokens,
            output_tokens: usage.usage.output_tokens,
            tokens: usage.charged.tokens,
            cost_usd: usage.charged.cost.as_usd(),
            reserved_tokens: reserved.tokens,
            reserved_usd: reserved.cost.as_usd(),
            budget: budget.limit(kind).map(|limit| BudgetView {
                unit: match kind {
                    PeriodKind::Day => "tokens",
                    PeriodKind::Month => "usd",
                },
                limit: in_unit(limit),
                left: in_unit(usage.left(limit)),
            }),
        }
    }
}
