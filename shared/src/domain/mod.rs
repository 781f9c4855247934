//! The job domain: no AWS, no HTTP, no clock of its own (callers pass `now`).

mod artifact;
mod budget;
mod error;
mod job;
mod live;
mod message;
mod pricing;
mod quota;
mod request;
mod time;

pub use artifact::{Artifact, ArtifactRequest, ArtifactResponse};
pub use budget::{
    Amount, Budget, BudgetOverride, OverBudget, PROMPT_OVERHEAD_TOKENS, Period, PeriodKind,
    PeriodUsage, Settlement,
};
pub use error::{ErrorCode, RequestError};
pub use job::{
    CallUsage, Completion, FailureCode, Guard, IdempotencyKey, Job, JobFailure, JobId, JobStatus,
    Lease, LeaseId, Owner, Revision, Standing, TextPiece, Transition, Transitioned, Usage, Written,
};
pub use live::{
    LIVE_NAMESPACE, LiveEvent, MAX_SEGMENT_CHARS, WATCH_FOR, is_channel_segment, is_watched,
    job_channel,
};
pub use message::{decode_job_message, encode_job_message};
pub use pricing::{NanoUsd, Price, PriceError, PriceTable, TokenCounts};
pub use quota::RateWindow;
pub use request::{DEFAULT_MAX_TOKENS, GenerateRequest, Limits};
pub use time::{format_timestamp, parse_timestamp};
