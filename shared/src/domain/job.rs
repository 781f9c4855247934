use std::fmt;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::budget::{Amount, Period, PeriodKind, Settlement, charge};
use super::{GenerateRequest, NanoUsd, RequestError};

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
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The state machine. `running → running` is a new attempt after a released or lost
    /// one (a flush or a release keeps the status); `queued → failed` a job that could not
    /// be enqueued; `→ cancelled` the owner's stop. A terminal status never changes.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Running | Failed | Cancelled)
                | (Running, Running | Succeeded | Failed | Cancelled)
        )
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
    /// What the model call cost, at the model's price (`None`: the model has no price).
    pub cost: Option<NanoUsd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCode {
    /// The job was recorded but could not be put on the queue.
    EnqueueFailed,
    /// The model stayed throttled or unreachable for `MAX_ATTEMPTS` model calls.
    ModelUnavailable,
    /// The model refused the request (validation, access, unknown model).
    ModelError,
    /// The worker stopped before finishing the job (crashes, timeouts), for good.
    WorkerError,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EnqueueFailed => "enqueue_failed",
            Self::ModelUnavailable => "model_unavailable",
            Self::ModelError => "model_error",
            Self::WorkerError => "worker_error",
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

/// One attempt's hold on a running job: only its holder may write output or an outcome,
/// and nobody else may start the job until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub expires_at: DateTime<Utc>,
}

/// Names one attempt: a random UUID, which its conditional writes check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(String);

impl LeaseId {
    pub fn random() -> Self {
        Self(Uuid::new_v4().simple().to_string())
    }

    pub fn from_stored(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Lease {
    pub fn new(expires_at: DateTime<Utc>) -> Self {
        Self {
            id: LeaseId::random(),
            expires_at,
        }
    }

    pub fn is_live(&self, at: DateTime<Utc>) -> bool {
        self.expires_at > at
    }
}

/// A change of a job's record. The store applies it only where its [`Guard`] admits the job
/// as it is, atomically, so that racing workers, the owner and recovery never overwrite each
/// other; every change that is applied increases the job's `seq`.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// An attempt takes the job, which no live lease holds and which has had fewer than
    /// `max_attempts` model calls: `queued|running → running`, with its lease and one more
    /// model call counted.
    Start { lease: Lease, max_attempts: u32 },
    /// The attempt holding the lease ends with the model's answer, `completion.output`,
    /// whose text past what the attempt flushed before is `tail`.
    Succeed {
        lease: LeaseId,
        completion: Completion,
        tail: TextPiece,
    },
    /// The attempt holding the lease adds a piece to the text it has generated so far (a
    /// flush of its stream): the job stays `running` under the same lease.
    Flush { lease: LeaseId, piece: TextPiece },
    /// The attempt holding the lease gives the job back for a later attempt (a retryable
    /// failure): it stays `running`, with no lease.
    Release { lease: LeaseId },
    /// The attempt holding the lease fails the job; with no lease, a job that no live lease
    /// holds (a failed enqueue, a stranded job).
    Fail {
        lease: Option<LeaseId>,
        failure: JobFailure,
    },
    /// The owner stops the job, whoever is working on it: a job `running` as they saw it
    /// (its model call may have used tokens), or still `queued` (it never reached the model),
    /// which its charge depends on; a job that has changed from that is not stopped.
    Cancel { running: bool },
    /// Recovery sends a stranded job's message again: the job is free, has model calls left
    /// and has not changed since `unchanged_since`. Its status stays; the change of
    /// `updated_at` keeps the next sweep from sending it again before its time.
    Requeue {
        unchanged_since: DateTime<Utc>,
        max_attempts: u32,
    },
    /// An attempt whose model call ended after the owner stopped the job records what the
    /// call used: the job stays `cancelled`, and is charged that instead of its worst case.
    /// Once: a job whose use is recorded refuses it.
    RecordUsage { used: CallUsage },
}

/// What one model call used, and cost at its model's price (`None`: the model has no price).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallUsage {
    pub usage: Usage,
    pub cost: Option<NanoUsd>,
}

/// A piece of an attempt's text, added to what the attempt wrote before it. The text of a
/// job is stored as such pieces, so that writing it costs its own size once, however often
/// it is flushed, rather than the whole text at every flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextPiece {
    /// The attempt's number: the job's `attempts` once that attempt started it.
    pub attempt: u32,
    /// Its place among the attempt's pieces, from 0.
    pub index: u32,
    /// How many bytes of the attempt's text come before it.
    pub offset: usize,
    pub text: String,
    /// When the table's TTL may remove it: with its job.
    pub expires_at: i64,
}

impl TextPiece {
    /// How many pieces the attempt's text has once this one is written (an empty piece is
    /// not written).
    pub fn pieces_through(&self) -> u32 {
        if self.text.is_empty() {
            self.index
        } else {
            self.index + 1
        }
    }

    /// All of `text` as the first piece of `job`'s current attempt.
    pub fn whole(job: &Job, text: impl Into<String>) -> Self {
        Self {
            attempt: job.attempts,
            index: 0,
            offset: 0,
            text: text.into(),
            expires_at: job.expires_at,
        }
    }
}

/// What an attempt has written of its text so far, in pieces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub pieces: u32,
    pub text: String,
}

impl Written {
    /// The piece of `job`'s current attempt that brings what is written up to `text`: what
    /// `text` adds, or all of it again from the first piece if it does not extend what is
    /// written (readers join only the pieces the job names, so a piece written over is
    /// never read twice).
    pub fn piece_for(&self, job: &Job, text: &str) -> TextPiece {
        match text.strip_prefix(self.text.as_str()) {
            Some(rest) => TextPiece {
                index: self.pieces,
                offset: self.text.len(),
                text: rest.to_owned(),
                ..TextPiece::whole(job, "")
            },
            None => TextPiece::whole(job, text),
        }
    }

    /// What is written once `piece` is.
    pub fn with(&self, piece: &TextPiece) -> Self {
        let mut text = self.text.clone();
        text.truncate(piece.offset);
        text.push_str(&piece.text);
        Self {
            pieces: piece.pieces_through(),
            text,
        }
    }
}

/// How far a job has come: what a waiting reader compares, read without the job's request
/// or text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revision {
    pub seq: u64,
    pub status: JobStatus,
}

/// When a transition may be applied to a job as it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Guard {
    /// The job is `queued`, or `running` with no live lease at this time.
    Free(DateTime<Utc>),
    /// Free, and it has had fewer model calls than this.
    Startable(DateTime<Utc>, u32),
    /// The job is `running` under this lease.
    Holds(LeaseId),
    /// The job has this status, whatever its lease.
    Is(JobStatus),
    /// The job was cancelled, and no use of a model call is recorded for it.
    CancelledUnrecorded,
    /// Startable at this time, and unchanged since the second time.
    Stranded {
        at: DateTime<Utc>,
        unchanged_since: DateTime<Utc>,
        max_attempts: u32,
    },
}

impl Guard {
    pub fn admits(&self, job: &Job) -> bool {
        match self {
            Self::Free(at) => match job.status {
                JobStatus::Queued => true,
                JobStatus::Running => !job.lease.as_ref().is_some_and(|lease| lease.is_live(*at)),
                _ => false,
            },
            Self::Startable(at, max_attempts) => {
                job.attempts < *max_attempts && Self::Free(*at).admits(job)
            }
            Self::Holds(id) => {
                job.status == JobStatus::Running
                    && job.lease.as_ref().is_some_and(|lease| lease.id == *id)
            }
            Self::Is(status) => job.status == *status,
            Self::CancelledUnrecorded => {
                job.status == JobStatus::Cancelled && job.recorded_usage.is_none()
            }
            Self::Stranded {
                at,
                unchanged_since,
                max_attempts,
            } => {
                job.updated_at <= *unchanged_since
                    && Self::Startable(*at, *max_attempts).admits(job)
            }
        }
    }
}

impl Transition {
    /// The owner's stop of `job` as they see it.
    pub fn cancel(job: &Job) -> Self {
        Self::Cancel {
            running: job.status == JobStatus::Running,
        }
    }

    /// The status the job gets (`None`: it keeps its own).
    pub fn target(&self) -> Option<JobStatus> {
        match self {
            Self::Start { .. } | Self::Flush { .. } | Self::Release { .. } => {
                Some(JobStatus::Running)
            }
            Self::Succeed { .. } => Some(JobStatus::Succeeded),
            Self::Fail { .. } => Some(JobStatus::Failed),
            Self::Cancel { .. } => Some(JobStatus::Cancelled),
            Self::Requeue { .. } | Self::RecordUsage { .. } => None,
        }
    }

    /// Whether it settles a job's budget: it ends the job, or corrects a stopped job's charge.
    pub fn settles(&self) -> bool {
        self.target().is_some_and(JobStatus::is_terminal)
            || matches!(self, Self::RecordUsage { .. })
    }

    /// When the transition may be applied, `at` the time it is applied.
    pub fn guard(&self, at: DateTime<Utc>) -> Guard {
        match self {
            Self::Start { max_attempts, .. } => Guard::Startable(at, *max_attempts),
            Self::Fail { lease: None, .. } => Guard::Free(at),
            Self::Succeed { lease, .. }
            | Self::Flush { lease, .. }
            | Self::Release { lease }
            | Self::Fail {
                lease: Some(lease), ..
            } => Guard::Holds(lease.clone()),
            Self::Cancel { running: true } => Guard::Is(JobStatus::Running),
            Self::Cancel { running: false } => Guard::Is(JobStatus::Queued),
            Self::RecordUsage { .. } => Guard::CancelledUnrecorded,
            Self::Requeue {
                unchanged_since,
                max_attempts,
            } => Guard::Stranded {
                at,
                unchanged_since: *unchanged_since,
                max_attempts: *max_attempts,
            },
        }
    }
}

/// What became of a transition.
#[derive(Clone, Debug, PartialEq)]
pub enum Transitioned {
    /// Applied: the job as it is now.
    Done(Job),
    /// Refused by its guard: the job as it is (`None`: there is no such job).
    Refused(Option<Job>),
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
    /// Grows with every change of the record.
    pub seq: u64,
    /// Model calls started: what `MAX_ATTEMPTS` bounds.
    pub attempts: u32,
    /// While `running`: the attempt that holds the job, if one does.
    pub lease: Option<Lease>,
    /// The text the latest attempt generated so far (its last flush): an unfinished job's
    /// progress, which a released, cancelled or failed job keeps. A new attempt starts empty.
    pub partial_output: Option<String>,
    pub completion: Option<Completion>,
    pub failure: Option<JobFailure>,
    pub idempotency_key: Option<IdempotencyKey>,
    /// The worst case reserved against its owner's budgets when it was submitted (`None`: a
    /// job recorded before budgets existed, which no ledger counts).
    pub reservation: Option<Amount>,
    /// What the model call of a cancelled job used, when the call ended after the stop.
    pub recorded_usage: Option<CallUsage>,
    /// Until when someone subscribed to the job's live channel: while it is watched, its
    /// attempt publishes its text as it comes (see [`crate::domain::WATCH_FOR`]). Marking it
    /// is not a change of the job: its `seq` stays.
    pub watched_until: Option<DateTime<Utc>>,
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
            seq: 0,
            attempts: 0,
            lease: None,
            partial_output: None,
            completion: None,
            failure: None,
            idempotency_key,
            reservation: None,
            recorded_usage: None,
            watched_until: None,
        }
    }

    /// The same job, reserving `worst_case` against its owner's budgets.
    pub fn reserving(self, worst_case: Amount) -> Self {
        Self {
            reservation: Some(worst_case),
            ..self
        }
    }

    /// The ledger items of the periods the job was created in: the ones its reservation and
    /// its charge count in, even if it ends in the next period.
    pub fn ledgers(&self) -> [String; 2] {
        PeriodKind::ALL
            .map(|kind| Period::containing(kind, self.created_at).ledger_key(&self.owner))
    }

    /// What `transition` settles, if it ends the job and the job reserved anything.
    pub fn settlement(&self, transition: &Transition) -> Option<Settlement> {
        let reserved = self.reservation?;
        let (charged, usage) = charge(transition, self, &reserved)?;
        Some(Settlement {
            ledgers: self.ledgers(),
            reserved,
            charged,
            usage,
            correcting: matches!(transition, Transition::RecordUsage { .. }),
        })
    }

    /// Where attempt number `attempt` (the job's `attempts` once that attempt started it)
    /// writes its artifact: one key per attempt, so that an attempt that loses a race never
    /// overwrites the winner's. Each start counts one more attempt, atomically, so no two
    /// attempts ever share a number.
    pub fn artifact_key(&self, attempt: u32) -> String {
        format!(
            "artifacts/{}/{}/{attempt}.json",
            self.owner.as_str(),
            self.id
        )
    }

    /// The artifacts a finished job must not keep: those of every attempt but the one that
    /// succeeded (an attempt that died between writing its artifact and recording its
    /// outcome left its object behind). None while the job is unfinished.
    pub fn leftover_artifacts(&self) -> Vec<String> {
        if !self.status.is_terminal() {
            return Vec::new();
        }
        let kept = self.completion.as_ref().map(|c| c.artifact_key.as_str());
        (1..=self.attempts)
            .map(|attempt| self.artifact_key(attempt))
            .filter(|key| Some(key.as_str()) != kept)
            .collect()
    }

    /// The job after `transition` at `at`, or `None` if its guard refuses it. The store
    /// applies the same rule atomically; this is its reference, and what fakes use.
    pub fn apply(&self, transition: &Transition, at: DateTime<Utc>) -> Option<Job> {
        if !transition.guard(at).admits(self) {
            return None;
        }
        let mut next = self.clone();
        next.status = transition.target().unwrap_or(self.status);
        next.updated_at = at;
        next.seq += 1;
        if !matches!(transition, Transition::Flush { .. }) {
            next.lease = None;
        }
        if next.status.is_terminal() && !self.status.is_terminal() {
            next.completed_at = Some(at);
        }
        match transition {
            Transition::Start { lease, .. } => {
                next.lease = Some(lease.clone());
                next.attempts += 1;
                next.partial_output = None;
            }
            Transition::Flush { piece, .. } => {
                let mut text = self.partial_output.clone().unwrap_or_default();
                text.truncate(piece.offset);
                text.push_str(&piece.text);
                next.partial_output = Some(text);
            }
            Transition::Succeed { completion, .. } => {
                next.completion = Some(completion.clone());
                next.partial_output = None;
            }
            Transition::Fail { failure, .. } => next.failure = Some(failure.clone()),
            Transition::RecordUsage { used } => next.recorded_usage = Some(*used),
            Transition::Release { .. } | Transition::Cancel { .. } | Transition::Requeue { .. } => {
            }
        }
        Some(next)
    }

    pub fn revision(&self) -> Revision {
        Revision {
            seq: self.seq,
            status: self.status,
        }
    }

    /// Where the job stands for someone who will not start it (a delivery refused by the
    /// start, a dead-lettered message, the sweep), at `at`.
    pub fn standing(&self, at: DateTime<Utc>) -> Standing {
        if self.status.is_terminal() {
            return Standing::Finished;
        }
        match &self.lease {
            Some(lease) if lease.is_live(at) => Standing::HeldUntil(lease.expires_at),
            _ => Standing::Free,
        }
    }

    /// The failure of a job that attempts stopped working on for good (crashes, time-outs,
    /// its model calls used up), with the model calls it had.
    pub fn abandoned(&self) -> JobFailure {
        JobFailure::new(
            FailureCode::WorkerError,
            format!(
                "The worker stopped before finishing the job, after {} model calls.",
                self.attempts
            ),
        )
    }

    /// The failure of a job whose message SQS gave up on: its deliveries kept ending
    /// without an outcome.
    pub fn dead_lettered(&self) -> JobFailure {
        JobFailure::new(
            FailureCode::WorkerError,
            format!(
                "The worker stopped before finishing the job: its message was delivered \
                 again and again without an outcome and was dead-lettered, after {} model calls.",
                self.attempts
            ),
        )
    }
}

/// See [`Job::standing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Succeeded, failed or cancelled: nothing is left to do for it.
    Finished,
    /// An attempt holds it until then.
    HeldUntil(DateTime<Utc>),
    /// Unfinished, and no attempt holds it.
    Free,
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
            (Queued, Cancelled),
            (Running, Running),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Cancelled),
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
        for from in [Succeeded, Failed, Cancelled] {
            assert!(from.is_terminal());
            assert!(JobStatus::ALL.iter().all(|&to| !from.can_become(to)));
        }
    }

    fn job_in(status: JobStatus, lease: Option<Lease>) -> Job {
        let request = GenerateRequest::new("hi", "m", 1);
        let now = DateTime::from_timestamp(1_795_860_000, 0).unwrap();
        let mut job = Job::queued(Owner::new("o"), request, None, now, Duration::days(1));
        job.status = status;
        job.lease = lease;
        job.seq = 7;
        job.attempts = 1;
        job
    }

    /// Every transition against every kind of job: which are applied, and what they change.
    #[test]
    fn transitions_are_applied_only_where_their_guard_admits_the_job() {
        let now = DateTime::from_timestamp(1_795_860_100, 0).unwrap();
        let lease_a = Lease::new(now + Duration::seconds(60));
        let expired_a = Lease {
            expires_at: now - Duration::seconds(1),
            ..lease_a.clone()
        };
        let a = lease_a.id.clone();
        let jobs = [
            ("queued", job_in(Queued, None)),
            (
                "running under a live lease A",
                job_in(Running, Some(lease_a.clone())),
            ),
            (
                "running under an expired lease A",
                job_in(Running, Some(expired_a)),
            ),
            ("running, released", job_in(Running, None)),
            ("succeeded", job_in(Succeeded, None)),
            ("failed", job_in(Failed, None)),
            ("cancelled", job_in(Cancelled, None)),
        ];
        let failure = JobFailure::new(FailureCode::ModelError, "no");
        let completion = Completion {
            output: "text".into(),
            stop_reason: "end_turn".into(),
            usage: Usage::default(),
            artifact_key: "k".into(),
            cost: None,
        };
        let lease_b = Lease::new(now + Duration::seconds(60));
        let start = |max_attempts| Transition::Start {
            lease: lease_b.clone(),
            max_attempts,
        };
        // The jobs last changed 100 s before `now`.
        let requeue = |unchanged_for: i64, max_attempts| Transition::Requeue {
            unchanged_since: now - Duration::seconds(unchanged_for),
            max_attempts,
        };
        let flush = |lease: &LeaseId| Transition::Flush {
            lease: lease.clone(),
            piece: TextPiece::whole(&jobs[1].1, "so far"),
        };
        #[rustfmt::skip]
        let cases: [(&str, Transition, [bool; 7]); 16] = [
            //                                             queued live  expired released succ   failed cancelled
            (
                "start B",
                start(2),
                [true, false, true, true, false, false, false],
            ),
            ("start B after the last call", start(1), [false; 7]),
            (
                "succeed A",
                Transition::Succeed {
                    lease: a.clone(),
                    completion,
                    tail: TextPiece::whole(&jobs[1].1, "text"),
                },
                [false, true, true, false, false, false, false],
            ),
            (
                "release A",
                Transition::Release { lease: a.clone() },
                [false, true, true, false, false, false, false],
            ),
            (
                "flush A",
                flush(&a),
                [false, true, true, false, false, false, false],
            ),
            ("flush B", flush(&lease_b.id), [false; 7]),
            (
                "fail A",
                Transition::Fail {
                    lease: Some(a.clone()),
                    failure: failure.clone(),
                },
                [false, true, true, false, false, false, false],
            ),
            (
                "fail unheld",
                Transition::Fail {
                    lease: None,
                    failure: failure.clone(),
                },
                [true, false, true, true, false, false, false],
            ),
            (
                "cancel a queued job",
                Transition::Cancel { running: false },
                [true, false, false, false, false, false, false],
            ),
            (
                "cancel a running job",
                Transition::Cancel { running: true },
                [false, true, true, true, false, false, false],
            ),
            (
                "succeed B",
                Transition::Succeed {
                    lease: lease_b.id.clone(),
                    completion: Completion {
                        output: String::new(),
                        stop_reason: String::new(),
                        usage: Usage::default(),
                        artifact_key: String::new(),
                        cost: None,
                    },
                    tail: TextPiece::whole(&jobs[1].1, ""),
                },
                [false; 7],
            ),
            (
                "release B",
                Transition::Release {
                    lease: lease_b.id.clone(),
                },
                [false; 7],
            ),
            (
                "requeue if unchanged for 50 s",
                requeue(50, 2),
                [true, false, true, true, false, false, false],
            ),
            (
                "requeue if unchanged for 200 s",
                requeue(200, 2),
                [false; 7],
            ),
            ("requeue after the last call", requeue(50, 1), [false; 7]),
            (
                "record a stopped call's use",
                Transition::RecordUsage {
                    used: CallUsage {
                        usage: Usage::default(),
                        cost: None,
                    },
                },
                [false, false, false, false, false, false, true],
            ),
        ];
        for (name, transition, admitted) in cases {
            for ((state, job), admitted) in jobs.iter().zip(admitted) {
                let next = job.apply(&transition, now);
                assert_eq!(next.is_some(), admitted, "{name} on a job {state}");
                let Some(next) = next else { continue };
                let status = transition.target().unwrap_or(job.status);
                assert_eq!(next.status, status, "{name} on {state}");
                assert_eq!(next.seq, job.seq + 1, "every change grows seq");
                assert_eq!(next.updated_at, now);
                if job.status.is_terminal() {
                    assert_eq!(next.completed_at, job.completed_at, "{name}: ended before");
                } else {
                    assert_eq!(next.completed_at.is_some(), next.status.is_terminal());
                }
                match &transition {
                    Transition::Start { lease, .. } => {
                        assert_eq!(next.lease.as_ref(), Some(lease));
                        assert_eq!(next.attempts, job.attempts + 1, "a model call counted");
                        assert_eq!(next.partial_output, None, "a new attempt starts empty");
                    }
                    Transition::Flush { piece, .. } => {
                        assert_eq!(next.lease, job.lease, "{name} keeps the lease");
                        assert_eq!(next.partial_output.as_ref(), Some(&piece.text));
                        assert_eq!(next.attempts, job.attempts);
                    }
                    _ => {
                        assert_eq!(next.lease, None, "{name} ends the lease");
                        assert_eq!(next.attempts, job.attempts);
                    }
                }
            }
        }
    }

    #[test]
    fn a_job_not_to_be_started_is_finished_held_or_free() {
        let now = DateTime::from_timestamp(1_795_860_100, 0).unwrap();
        let live = Lease::new(now + Duration::seconds(30));
        let ended = Lease::new(now);
        let cases = [
            (job_in(Queued, None), Standing::Free),
            (job_in(Running, None), Standing::Free),
            (job_in(Running, Some(ended)), Standing::Free),
            (
                job_in(Running, Some(live.clone())),
                Standing::HeldUntil(live.expires_at),
            ),
            (job_in(Succeeded, None), Standing::Finished),
            (job_in(Failed, None), Standing::Finished),
            (job_in(Cancelled, None), Standing::Finished),
        ];
        for (job, standing) in cases {
            assert_eq!(job.standing(now), standing, "{}", job.status);
        }
        let failure = job_in(Running, None).abandoned();
        assert_eq!(failure.code, "worker_error");
        assert!(
            failure.message.contains("after 1 model calls"),
            "{failure:?}"
        );
    }

    #[test]
    fn each_attempt_has_its_own_artifact_key() {
        let job = job_in(Running, None);
        assert_ne!(job.artifact_key(1), job.artifact_key(2));
        assert_eq!(
            job.artifact_key(2),
            format!("artifacts/o/{}/2.json", job.id)
        );
    }

    /// A finished job keeps only the artifact its record names; an unfinished one is left
    /// alone, since its attempts may still be writing.
    #[test]
    fn a_finished_job_leaves_no_artifact_but_its_own() {
        let mut job = job_in(Running, None);
        job.attempts = 3;
        assert!(job.leftover_artifacts().is_empty(), "unfinished");
        let all: Vec<String> = (1..=3).map(|n| job.artifact_key(n)).collect();

        job.status = Failed;
        assert_eq!(job.leftover_artifacts(), all);
        job.status = Cancelled;
        assert_eq!(job.leftover_artifacts(), all);

        job.status = Succeeded;
        job.completion = Some(Completion {
            output: "text".into(),
            stop_reason: "end_turn".into(),
            usage: Usage::default(),
            artifact_key: job.artifact_key(2),
            cost: None,
        });
        assert_eq!(job.leftover_artifacts(), [all[0].clone(), all[2].clone()]);

        job.attempts = 0;
        job.status = Failed;
        assert!(job.leftover_artifacts().is_empty(), "never started");
    }

    /// Each flush writes only what the text added; text that does not extend what was
    /// written is written again whole, from the first piece.
    #[test]
    fn an_attempts_text_is_written_in_pieces_that_join_to_it() {
        let mut job = job_in(Running, Some(Lease::new(DateTime::<Utc>::MAX_UTC)));
        let lease = job.lease.clone().unwrap().id;
        let mut written = Written::default();
        job.attempts = 2;
        for text in ["Once", "Once upon", "Once upon a time", "Once upon a time"] {
            let piece = written.piece_for(&job, text);
            assert_eq!((piece.attempt, piece.index), (2, written.pieces));
            assert_eq!(piece.expires_at, job.expires_at);
            assert_eq!(piece.offset, written.text.len());
            written = written.with(&piece);
            let flush = Transition::Flush {
                lease: lease.clone(),
                piece,
            };
            job = job.apply(&flush, Utc::now()).unwrap();
            assert_eq!(written.text, text);
            assert_eq!(job.partial_output.as_deref(), Some(text));
        }
        assert_eq!(written.pieces, 3, "nothing new, no piece");
        let rewritten = written.piece_for(&job, "Twice");
        assert_eq!((rewritten.index, rewritten.offset), (0, 0));
        assert_eq!(written.with(&rewritten).text, "Twice");
        assert_eq!(written.with(&rewritten).pieces, 1);
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
