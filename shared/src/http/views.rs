//! The job as callers see it (the contract's response shapes).

use serde::Serialize;

use crate::domain::{Job, JobStatus, Usage, format_timestamp};

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
            usage: completion.map(|c| c.usage),
            cost_usd: completion.and_then(|c| c.cost).map(|cost| cost.as_usd()),
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
