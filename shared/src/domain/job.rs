use std::fmt;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{GenerateRequest, RequestError};

/// A job's id: a lower-case UUID v4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(Uuid);

impl JobId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id of the job that `owner` creates with `key`.
    ///
    /// Deriving it (rather than drawing it) makes an `Idempotency-Key` race a race for one
    /// table key, which the table's conditional put settles: two concurrent requests can
    /// never create two jobs. The hash keeps the v4 layout and looks as random as any other id.
    pub fn for_idempotency_key(owner: &Owner, key: &IdempotencyKey) -> Self {
        let digest = Sha256::new()
            .chain_update(b"bedrock-jobs/idempotency-key\0")
            .chain_update(owner.as_str())
            .chain_update(b"\0")
            .chain_update(key.as_str())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Any UUID spelling is accepted; ids are always stored and shown in lower case.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok().map(Self)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Who a job belongs to: the authorizer's `sub` claim, or an IAM principal ARN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller's `Idempotency-Key` header: 1 to 128 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(text: &str) -> Result<Self, RequestError> {
        let printable = text.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if text.is_empty() || text.len() > Self::MAX_LEN || !printable {
            return Err(RequestError::invalid_request(format!(
                "Idempotency-Key must be 1 to {} printable ASCII characters.",
                Self::MAX_LEN
            )));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] = [Self::Queued, Self::Running, Self::Succeeded, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// The state machine. `running → running` is a retry after a failed or lost attempt;
    /// `queued → failed` is a job that could not be enqueued. A terminal status never changes.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Running) | (Queued, Failed) | (Running, Running | Succeeded | Failed)
        )
    }

    /// The statuses from which `next` may be reached.
    pub fn sources_of(next: JobStatus) -> Vec<JobStatus> {
        Self::ALL
            .into_iter()
            .filter(|status| status.can_become(next))
            .collect()
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// What a succeeded job produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub output: String,
    pub stop_reason: String,
    pub usage: Usage,
    pub artifact_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCode {
    /// The job was recorded but could not be put on the queue.
    EnqueueFailed,
    /// The model stayed throttled or unreachable for `MAX_ATTEMPTS` deliveries.
    ModelUnavailable,
    /// The model refused the request (validation, access, unknown model).
    ModelError,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EnqueueFailed => "enqueue_failed",
            Self::ModelUnavailable => "model_unavailable",
            Self::ModelError => "model_error",
        }
    }
}

/// Why a failed job failed. The code is kept as text so that records written by other
/// versions still load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFailure {
    pub code: String,
    pub message: String,
}

impl JobFailure {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }
}

/// A status change, applied by the store only where the state machine allows it.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A model attempt begins: `queued|running → running`, one more attempt counted.
    Start,
    Succeed(Completion),
    Fail(JobFailure),
}

impl Transition {
    pub fn target(&self) -> JobStatus {
        match self {
            Self::Start => JobStatus::Running,
            Self::Succeed(_) => JobStatus::Succeeded,
            Self::Fail(_) => JobStatus::Failed,
        }
    }
}

/// One generation job: the single source of truth for what was asked and what came of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub owner: Owner,
    pub status: JobStatus,
    pub request: GenerateRequest,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When the table's TTL may delete the record, in epoch seconds.
    pub expires_at: i64,
    /// Model calls started, for the operator.
    pub attempts: u32,
    pub completion: Option<Completion>,
    pub failure: Option<JobFailure>,
    pub idempotency_key: Option<IdempotencyKey>,
}

impl Job {
    /// A new queued job. With an idempotency key its id is derived from owner and key.
    pub fn queued(
        owner: Owner,
        request: GenerateRequest,
        idempotency_key: Option<IdempotencyKey>,
        now: DateTime<Utc>,
        time_to_live: Duration,
    ) -> Self {
        let id = match &idempotency_key {
            Some(key) => JobId::for_idempotency_key(&owner, key),
            None => JobId::random(),
        };
        Self {
            id,
            owner,
            status: JobStatus::Queued,
            request,
            created_at: now,
            updated_at: now,
            completed_at: None,
            expires_at: (now + time_to_live).timestamp(),
            attempts: 0,
            completion: None,
            failure: None,
            idempotency_key,
        }
    }

    /// Where the worker writes this job's artifact, and where the status function finds it.
    pub fn artifact_key(&self) -> String {
        format!("artifacts/{}/{}.json", self.owner.as_str(), self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn the_state_machine_only_moves_forward() {
        let allowed = [
            (Queued, Running),
            (Queued, Failed),
            (Running, Running),
            (Running, Succeeded),
            (Running, Failed),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_statuses_never_change() {
        for from in [Succeeded, Failed] {
            assert!(from.is_terminal());
            assert!(JobStatus::ALL.iter().all(|&to| !from.can_become(to)));
        }
    }

    #[test]
    fn transitions_name_their_sources() {
        assert_eq!(
            JobStatus::sources_of(Transition::Start.target()),
            [Queued, Running]
        );
        let success = Transition::Succeed(Completion {
            output: String::new(),
            stop_reason: "end_turn".into(),
            usage: Usage::default(),
            artifact_key: String::new(),
        });
        assert_eq!(JobStatus::sources_of(success.target()), [Running]);
        let failure = Transition::Fail(JobFailure::new(FailureCode::ModelError, "no"));
        assert_eq!(JobStatus::sources_of(failure.target()), [Queued, Running]);
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }

    #[test]
    fn job_ids_are_lower_case_v4_and_parse_any_case() {
        let id = JobId::random();
        let text = id.to_string();
        assert_eq!(text, text.to_lowercase());
        assert_eq!(Uuid::parse_str(&text).unwrap().get_version_num(), 4);
        assert_eq!(JobId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(JobId::parse("not-a-uuid"), None);
        assert_eq!(JobId::parse(""), None);
    }

    #[test]
    fn idempotency_ids_depend_on_owner_and_key_only() {
        let key = IdempotencyKey::parse("order-42").unwrap();
        let alice = Owner::new("alice");
        let id = JobId::for_idempotency_key(&alice, &key);
        assert_eq!(id, JobId::for_idempotency_key(&alice, &key));
        assert_ne!(id, JobId::for_idempotency_key(&Owner::new("bob"), &key));
        let other_key = IdempotencyKey::parse("order-43").unwrap();
        assert_ne!(id, JobId::for_idempotency_key(&alice, &other_key));
        assert_eq!(
            Uuid::parse_str(&id.to_string()).unwrap().get_version_num(),
            4
        );
    }

    #[test]
    fn idempotency_keys_are_printable_ascii_up_to_128() {
        let long = "k".repeat(IdempotencyKey::MAX_LEN);
        let too_long = "k".repeat(IdempotencyKey::MAX_LEN + 1);
        for good in ["a", " spaced key ", "~!@#$%^&*()", long.as_str()] {
            assert!(IdempotencyKey::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", too_long.as_str(), "tab\there", "naïve", "line\n"] {
            let error = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!(
                error.code,
                super::super::ErrorCode::InvalidRequest,
                "{bad:?}"
            );
            assert!(error.message.contains("Idempotency-Key"));
        }
    }
}
