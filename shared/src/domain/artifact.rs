use serde::Serialize;

use super::{Job, NanoUsd, Usage, format_timestamp};

/// The full record of one generation, written to S3 as JSON (the contract's artifact shape).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Artifact {
    pub job_id: String,
    pub owner: String,
    pub model: String,
    pub request: ArtifactRequest,
    pub response: ArtifactResponse,
    pub usage: Usage,
    /// In US dollars, at the model's price; absent for a model without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    pub created_at: String,
    pub completed_at: String,
    pub latency_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArtifactRequest {
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArtifactResponse {
    pub text: String,
    pub stop_reason: String,
}

impl Artifact {
    pub fn new(
        job: &Job,
        response: ArtifactResponse,
        usage: Usage,
        cost: Option<NanoUsd>,
        completed_at: chrono::DateTime<chrono::Utc>,
        latency_ms: u64,
    ) -> Self {
        let request = &job.request;
        Self {
            job_id: job.id.to_string(),
            owner: job.owner.as_str().to_owned(),
            model: request.model.clone(),
            request: ArtifactRequest {
                prompt: request.prompt.clone(),
                system: request.system.clone(),
                max_tokens: request.max_tokens,
                temperature: request.temperature,
            },
            response,
            usage,
            cost_usd: cost.map(NanoUsd::as_usd),
            created_at: format_timestamp(job.created_at),
            completed_at: format_timestamp(completed_at),
            latency_ms,
        }
    }
}
