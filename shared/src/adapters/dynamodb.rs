use std::collections::HashMap;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, KeysAndAttributes, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update as UpdateOp,
};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::describe;
use crate::domain::{
    Amount, Budget, BudgetOverride, CallUsage, Completion, GenerateRequest, Guard, IdempotencyKey,
    Job, JobFailure, JobId, JobStatus, Lease, LeaseId, NanoUsd, OverBudget, Owner, Period,
    PeriodKind, PeriodUsage, RateWindow, Revision, Settlement, TextPiece, Transition, Transitioned,
    Usage, format_timestamp, parse_timestamp,
};
use crate::ports::{
    Flushed, Inserted, JobStore, Page, PageCursor, SubmissionQuota, Unavailable, UsageLedger,
};

/// The owner index of the contract: partition key `owner`, sort key `created_at`.
pub const OWNER_INDEX: &str = "owner-created_at-index";

/// The index of unfinished jobs, for the sweep: partition key `unfinished`, sort key
/// `updated_at`, keys only. It is sparse: a job carries `unfinished` from its creation to its
/// terminal transition, which removes it, so finished jobs are never read.
pub const UNFINISHED_INDEX: &str = "unfinished-updated_at-index";

/// `unfinished` is the job id's first hex digit: sixteen partitions instead of one, so that
/// the writes of many running jobs (each change moves `updated_at`) spread over the index.
fn unfinished_shard(id: JobId) -> String {
    id.to_string()[..1].to_owned()
}

const UNFINISHED_SHARDS: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];

type Item = HashMap<String, AttributeValue>;

/// A job is three kinds of item, so that what changes often is small. DynamoDB charges a
/// write by the whole item it touches (twice in a transaction) and a read by the whole item it
/// reads, so the state (status, lease, counters) is kept apart from what never changes and
/// from what grows:
/// - the state, under the job id: every transition, flush and poll touches only it;
/// - the request (`prompt`, `system`), written once under a key of its own content
///   ([`request_key`]), so that a repeat with the same `Idempotency-Key` and another body can
///   never change the original job's request;
/// - the text, in the pieces each flush adds ([`piece_key`]); the state names how many of the
///   current attempt's pieces there are (`text_parts`) and how long they are together
///   (`text_bytes`).
///
/// The request and the pieces are written before the state that names them, carry the job's
/// `expires_at` (TTL), and have neither `owner` nor `unfinished`, so neither index sees them.
/// Records written before this layout hold `prompt`, `system` and `output` in the state
/// item; they are read as they are.
fn request_key(id: JobId, digest: &str) -> String {
    format!("{id}#request#{digest}")
}

fn piece_key(id: JobId, attempt: u32, index: u32) -> String {
    format!("{id}#text#{attempt}#{index}")
}

/// 16 hex digits of SHA-256 over what the request item holds.
fn request_digest(request: &GenerateRequest) -> String {
    let digest = Sha256::new()
        .chain_update(request.prompt.as_bytes())
        .chain_update(b"\0")
        .chain_update(request.system.as_deref().unwrap_or_default().as_bytes())
        .finalize();
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// BatchGetItem reads at most this many keys a call.
const BATCH_READ_KEYS: usize = 100;

/// How often keys that BatchGetItem left unprocessed (throttling) are asked again.
const BATCH_READ_TRIES: u32 = 5;

/// The jobs table on DynamoDB. Every status change is a conditional update, so the table
/// itself enforces the state machine even when several workers race.
#[derive(Clone, Debug)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
}

impl DynamoJobStore {
    pub fn new(config: &SdkConfig, table: impl Into<String>) -> Self {
        Self::with_client(Client::new(config), table)
    }

    /// On a client built elsewhere (with interceptors, say).
    pub fn with_client(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

/// How often a settling transition is tried when its job changed between the read that priced
/// it and the write (a flush under the same lease, say).
const SETTLE_TRIES: usize = 4;

/// How often a transaction that collided with another on the same ledger is tried (DynamoDB
/// cancels one of two concurrent transactions on an item; the SDK does not retry that).
const TRANSACTION_TRIES: u32 = 8;

impl DynamoJobStore {
    /// The item under `key` (a job, a ledger, a user's limits), if there is one.
    async fn read(&self, key: String, consistent: bool) -> Result<Option<Item>, Unavailable> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("job_id", s(key))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|error| Unavailable::new("DynamoDB GetItem", describe(&error)))?;
        Ok(output.item)
    }

    /// A transition's conditional `UpdateItem` of a job's state: the state as it is after it,
    /// or, refused, `Err` with the state as it is (`None`: there is no such job), which says
    /// why.
    async fn update_state(
        &self,
        id: JobId,
        update: Update,
    ) -> Result<Result<Option<Item>, Option<Item>>, Unavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("job_id", s(id.to_string()))
            .update_expression(update.expression)
            .condition_expression(update.condition)
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Ok(output.attributes)),
            Err(error) => match error.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(refusal) => Ok(Err(refusal.item)),
                other => Err(Unavailable::new("DynamoDB UpdateItem", describe(&other))),
            },
        }
    }

    /// The items under `keys` that exist. Eventually consistent first (half the read units),
    /// then, for the keys not found, strongly consistent: the items read here never change
    /// once written, and are written before the state that names them, so a key a consistent
    /// read does not find is missing for good.
    async fn read_many(&self, keys: Vec<String>) -> Result<HashMap<String, Item>, Unavailable> {
        let mut found = self.batch_read(&keys, false).await?;
        let missing: Vec<String> = keys
            .into_iter()
            .filter(|key| !found.contains_key(key))
            .collect();
        if !missing.is_empty() {
            found.extend(self.batch_read(&missing, true).await?);
        }
        Ok(found)
    }

    async fn batch_read(
        &self,
        keys: &[String],
        consistent: bool,
    ) -> Result<HashMap<String, Item>, Unavailable> {
        let failed = |error: String| Unavailable::new("DynamoDB BatchGetItem", error);
        let mut found = HashMap::new();
        for group in keys.chunks(BATCH_READ_KEYS) {
            let keys = group
                .iter()
                .map(|key| HashMap::from([("job_id".to_owned(), s(key))]))
                .collect();
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(consistent)
                .build()
                .map_err(|error| failed(error.to_string()))?;
            for tries in 1.. {
                let output = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|error| failed(describe(&error)))?;
                for item in output
                    .responses
                    .into_iter()
                    .flatten()
                    .flat_map(|(_, items)| items)
                {
                    if let Some(key) = Record(&item).text("job_id") {
                        found.insert(key.to_owned(), item);
                    }
                }
                match output
                    .unprocessed_keys
                    .and_then(|mut left| left.remove(&self.table))
                {
                    Some(left) if tries < BATCH_READ_TRIES => {
                        request = left;
                        tokio::time::sleep(Duration::from_millis(25 << tries)).await;
                    }
                    Some(_) => return Err(failed("keys were left unprocessed".into())),
                    None => break,
                }
            }
        }
        Ok(found)
    }

    /// Whole jobs from their state items: their requests and (`with_text`) their text read
    /// at once.
    async fn whole(&self, states: Vec<Item>, with_text: bool) -> Result<Vec<Job>, Unavailable> {
        let keys = states
            .iter()
            .flat_map(|state| beside_keys(state, with_text))
            .collect::<Vec<_>>();
        let beside = if keys.is_empty() {
            HashMap::new()
        } else {
            self.read_many(keys).await?
        };
        states
            .iter()
            .map(|state| item_to_job(state, &beside, with_text))
            .collect()
    }

    async fn whole_one(&self, state: Option<Item>) -> Result<Option<Job>, Unavailable> {
        let Some(state) = state else { return Ok(None) };
        Ok(self.whole(vec![state], true).await?.pop())
    }

    /// Writes a piece of an attempt's text (nothing for an empty one), before the state that
    /// will name it. Unconditional: its key is the attempt's own, and a piece no state names
    /// is never read.
    async fn put_piece(&self, id: JobId, piece: &TextPiece) -> Result<(), Unavailable> {
        if piece.text.is_empty() {
            return Ok(());
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .item("job_id", s(piece_key(id, piece.attempt, piece.index)))
            .item("text", s(&piece.text))
            .item("expires_at", n(piece.expires_at))
            .send()
            .await
            .map_err(|error| Unavailable::new("DynamoDB PutItem", describe(&error)))?;
        Ok(())
    }

    /// The job's request, under a key of its content. Unconditional: the same request writes
    /// the same item, another request another item.
    async fn put_request(&self, job: &Job) -> Result<(), Unavailable> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(request_to_item(job)))
            .send()
            .await
            .map_err(|error| Unavailable::new("DynamoDB PutItem", describe(&error)))?;
        Ok(())
    }

    /// The job's put and its reservation's ledger updates, as one transaction.
    async fn insert_reserving(
        &self,
        job: &Job,
        worst_case: &Amount,
        budget: &Budget,
    ) -> Result<Inserted, Unavailable> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(job_to_item(job)))
            .condition_expression("attribute_not_exists(job_id)")
            .build()
            .map_err(|error| Unavailable::new("DynamoDB TransactWriteItems", error))?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        let mut periods = Vec::new();
        for kind in PeriodKind::ALL {
            let period = Period::containing(kind, job.created_at);
            // Room for this job: the committed amount must be at most the limit less the job's
            // worst case (a condition cannot add; the job alone fits, as checked above).
            let room = budget
                .limit(kind)
                .map(|limit| limit.saturating_sub(kind.measure(worst_case)));
            let ledger = LedgerChange {
                key: period.ledger_key(&job.owner),
                expires_at: period.ledger_expires_at(),
                jobs: 1,
                settled_jobs: 0,
                committed: worst_case.signed(),
                charged: (0, 0),
                usage: Usage::default(),
            };
            items.push(ledger.update(&self.table, room.map(|room| (kind, room)))?);
            periods.push((period, budget.limit(kind)));
        }
        match self.transact(items).await? {
            None => Ok(Inserted::Created),
            Some(reasons) => {
                if failed_condition(reasons.first()) {
                    return Ok(Inserted::AlreadyExists);
                }
                let (period, limit, reason) = periods
                    .into_iter()
                    .zip(reasons.iter().skip(1))
                    .find_map(|((period, limit), reason)| {
                        failed_condition(Some(reason)).then_some((period, limit?, reason))
                    })
                    .ok_or_else(|| Unavailable::new("DynamoDB", "transaction cancelled"))?;
                let kind = period.kind;
                let committed = reason.item().map(|item| {
                    let ledger = item_to_usage(item, period.clone());
                    kind.measure(&ledger.committed)
                });
                Ok(Inserted::OverBudget(OverBudget {
                    period,
                    limit,
                    committed,
                    needed: kind.measure(worst_case),
                }))
            }
        }
    }

    /// Runs a transaction: `None` when it is applied, else why each item refused (in the
    /// order of `items`) when a condition refused it. A collision with a concurrent
    /// transaction on the same item is tried again, backing off; any other cancellation is
    /// the store's failure, never a refusal.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<CancellationReason>>, Unavailable> {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(None),
                Err(error) => error,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                error.as_service_error()
            {
                let reasons = cancelled.cancellation_reasons();
                let has = |code| reasons.iter().any(|reason| reason.code() == Some(code));
                if has("TransactionConflict") && tries < TRANSACTION_TRIES {
                    // 25 ms, doubling, at most 800 ms, with full jitter.
                    let ceiling = 25u64 << tries.min(5);
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=ceiling))).await;
                    continue;
                }
                if has("ConditionalCheckFailed") && !has("TransactionConflict") {
                    return Ok(Some(reasons.to_vec()));
                }
            }
            return Err(Unavailable::new(
                "DynamoDB TransactWriteItems",
                describe(&error),
            ));
        }
    }

    /// A terminal transition of a job that reserved budget: the job's conditional update and
    /// its settlement, as one transaction.
    async fn transition_settling(
        &self,
        job: &Job,
        transition: &Transition,
        at: DateTime<Utc>,
        settlement: &Settlement,
    ) -> Result<Transitioned, Unavailable> {
        let id = job.id;
        let update = Update::of(transition, at).unchanged_since(job.seq);
        let job_update = UpdateOp::builder()
            .table_name(&self.table)
            .key("job_id", s(id.to_string()))
            .update_expression(update.expression)
            .condition_expression(update.condition)
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|error| Unavailable::new("DynamoDB TransactWriteItems", error))?;
        let mut items = vec![TransactWriteItem::builder().update(job_update).build()];
        let (committed, charged, settled_jobs) = settlement.changes();
        for key in &settlement.ledgers {
            let change = LedgerChange {
                key: key.clone(),
                expires_at: 0,
                jobs: 0,
                settled_jobs,
                committed,
                charged,
                usage: settlement.usage,
            };
            items.push(change.update(&self.table, None)?);
        }
        match self.transact(items).await? {
            // Written on condition that the job was still as read: it is now what the
            // transition makes of it.
            None => match job.apply(transition, at) {
                Some(done) => Ok(Transitioned::Done(done)),
                None => Err(Unavailable::new(
                    "DynamoDB",
                    format!("job {id} was changed by a transition its guard refuses"),
                )),
            },
            Some(reasons) => {
                let job = reasons.first().and_then(CancellationReason::item).cloned();
                Ok(Transitioned::Refused(self.whole_one(job).await?))
            }
        }
    }
}

/// A change of one ledger item: its counters move by these amounts.
struct LedgerChange {
    key: String,
    /// When it is first written: its period's end plus what it is kept for (0: left alone).
    expires_at: i64,
    jobs: u64,
    settled_jobs: u64,
    /// Signed: a settlement gives back what its job reserved and did not use.
    committed: (i128, i128),
    /// Signed: a correction takes back an earlier charge.
    charged: (i128, i128),
    usage: Usage,
}

impl LedgerChange {
    /// The change as one transaction item, checking that the committed amount of `kind`
    /// stays at most `room` before it, if given.
    fn update(
        &self,
        table: &str,
        room: Option<(PeriodKind, u64)>,
    ) -> Result<TransactWriteItem, Unavailable> {
        let adds = [
            ("jobs", i128::from(self.jobs)),
            ("settled_jobs", i128::from(self.settled_jobs)),
            ("committed_tokens", self.committed.0),
            ("committed_nano_usd", self.committed.1),
            ("charged_tokens", self.charged.0),
            ("charged_nano_usd", self.charged.1),
            ("input_tokens", i128::from(self.usage.input_tokens)),
            ("output_tokens", i128::from(self.usage.output_tokens)),
        ];
        let mut expression = format!(
            "ADD {}",
            adds.iter()
                .map(|(name, _)| format!("{name} :{name}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut values: Item = adds
            .iter()
            .map(|(name, amount)| (format!(":{name}"), n(amount)))
            .collect();
        if self.expires_at > 0 {
            expression =
                format!("SET expires_at = if_not_exists(expires_at, :expires) {expression}");
            values.insert(":expires".into(), n(self.expires_at));
        }
        let mut update = UpdateOp::builder()
            .table_name(table)
            .key("job_id", s(&self.key))
            .update_expression(expression)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some((kind, room)) = room {
            let measure = match kind {
                PeriodKind::Day => "committed_tokens",
                PeriodKind::Month => "committed_nano_usd",
            };
            update = update.condition_expression(format!(
                "attribute_not_exists({measure}) OR {measure} <= :room"
            ));
            values.insert(":room".into(), n(room));
        }
        let update = update
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|error| Unavailable::new("DynamoDB TransactWriteItems", error))?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

/// Whether a transaction item was refused by its condition.
fn failed_condition(reason: Option<&CancellationReason>) -> bool {
    reason.and_then(CancellationReason::code) == Some("ConditionalCheckFailed")
}

impl JobStore for DynamoJobStore {
    async fn insert(&self, job: &Job, budget: &Budget) -> Result<Inserted, Unavailable> {
        // A job that alone exceeds a limit never fits: refused without a write.
        let alone = |worst_case| OverBudget::alone(budget, worst_case, job.created_at);
        if let Some(over) = job.reservation.as_ref().and_then(alone) {
            return Ok(Inserted::OverBudget(over));
        }
        // The request first: the state, once written, names it.
        self.put_request(job).await?;
        if let Some(worst_case) = &job.reservation {
            return self.insert_reserving(job, worst_case, budget).await;
        }
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(job_to_item(job)))
            .condition_expression("attribute_not_exists(job_id)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(Inserted::Created),
            Err(error) if condition_failed(&error) => Ok(Inserted::AlreadyExists),
            Err(error) => Err(Unavailable::new("DynamoDB PutItem", describe(&error))),
        }
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, Unavailable> {
        let state = self.read(id.to_string(), true).await?;
        self.whole_one(state).await
    }

    async fn revision(&self, id: JobId) -> Result<Option<Revision>, Unavailable> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("job_id", s(id.to_string()))
            .projection_expression("#seq, #status")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#status", "status")
            .send()
            .await
            .map_err(|error| Unavailable::new("DynamoDB GetItem", describe(&error)))?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        let record = Record(&item);
        let status = record.text("status").and_then(JobStatus::parse);
        let seq = record.number::<u64>("seq").ok().flatten();
        match (status, seq) {
            (Some(status), seq) => Ok(Some(Revision {
                seq: seq.unwrap_or(0),
                status,
            })),
            _ => Err(Unavailable::new(
                "DynamoDB",
                format!("job record {id} is malformed: status is missing or unknown"),
            )),
        }
    }

    async fn flush(
        &self,
        id: JobId,
        lease: &LeaseId,
        piece: &TextPiece,
        at: DateTime<Utc>,
    ) -> Result<Flushed, Unavailable> {
        self.put_piece(id, piece).await?;
        let flush = Transition::Flush {
            lease: lease.clone(),
            piece: piece.clone(),
        };
        // The state is small: whether the job is watched comes back at no cost.
        match self.update_state(id, Update::of(&flush, at)).await? {
            Ok(state) => Ok(Flushed::Kept {
                watched_until: state
                    .as_ref()
                    .and_then(|state| Record(state).number::<i64>("watched_until").ok().flatten())
                    .and_then(DateTime::from_timestamp_millis),
            }),
            Err(current) => Ok(Flushed::Lost(self.whole_one(current).await?.map(Box::new))),
        }
    }

    async fn list(
        &self,
        owner: &Owner,
        limit: usize,
        after: Option<&PageCursor>,
    ) -> Result<Page, Unavailable> {
        // One item more than asked tells whether another page exists, so that the last page
        // never carries a cursor to an empty one.
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OWNER_INDEX)
            .key_condition_expression("#owner = :owner")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(owner.as_str()))
            .scan_index_forward(false)
            .limit(i32::try_from(limit + 1).unwrap_or(i32::MAX))
            .set_exclusive_start_key(after.map(|cursor| {
                HashMap::from([
                    ("job_id".to_owned(), s(cursor.job_id.to_string())),
                    ("owner".to_owned(), s(owner.as_str())),
                    ("created_at".to_owned(), s(&cursor.created_at)),
                ])
            }))
            .send()
            .await
            .map_err(|error| Unavailable::new("DynamoDB Query", describe(&error)))?;
        let more_in_table = output.last_evaluated_key.is_some();
        let mut states = output.items.unwrap_or_default();
        states.truncate(limit + 1);
        // A list shows no text: the requests only.
        let jobs = self.whole(states, false).await?;
        Ok(Page::of(jobs, limit, more_in_table))
    }

    async fn transition(
        &self,
        id: JobId,
        transition: &Transition,
        at: DateTime<Utc>,
    ) -> Result<Transitioned, Unavailable> {
        match transition {
            Transition::Flush { lease, piece } => {
                return Ok(match self.flush(id, lease, piece, at).await? {
                    Flushed::Kept { .. } => match self.get(id).await? {
                        Some(job) => Transitioned::Done(job),
                        None => Transitioned::Refused(None),
                    },
                    Flushed::Lost(job) => Transitioned::Refused(job.map(|job| *job)),
                });
            }
            // The answer's last piece, before the state that names it.
            Transition::Succeed { tail, .. } => self.put_piece(id, tail).await?,
            _ => {}
        }
        if transition.settles() {
            // The charge depends on the job as it is (its model calls, its text): it is
            // computed from a read, and written on condition that the job is still as read
            // (its `seq`); a job changed in between, and still admitted, is settled again.
            let mut read = self.get(id).await?;
            for _ in 0..SETTLE_TRIES {
                let Some((job, settlement)) = read
                    .as_ref()
                    .and_then(|job| Some((job, job.settlement(transition)?)))
                else {
                    break; // no such job, or nothing reserved: a plain update
                };
                match self
                    .transition_settling(job, transition, at, &settlement)
                    .await?
                {
                    Transitioned::Refused(Some(now)) if transition.guard(at).admits(&now) => {
                        read = Some(now);
                    }
                    settled => return Ok(settled),
                }
            }
            if read.as_ref().is_some_and(|job| job.reservation.is_some()) {
                return Err(Unavailable::new(
                    "DynamoDB",
                    format!("job {id} kept changing while it was being settled"),
                ));
            }
        }
        match self.update_state(id, Update::of(transition, at)).await? {
            Ok(state) => match self.whole_one(state).await? {
                Some(job) => Ok(Transitioned::Done(job)),
                None => Err(Unavailable::new("DynamoDB UpdateItem", "no job came back")),
            },
            Err(current) => Ok(Transitioned::Refused(self.whole_one(current).await?)),
        }
    }

    /// Neither `seq` nor `updated_at` moves: a subscription is not a change of the job, and
    /// must not wake its long-polls or keep it from the sweep.
    async fn watch(
        &self,
        id: JobId,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<bool, Unavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("job_id", s(id.to_string()))
            .update_expression("SET #watched_until = :until")
            .condition_expression("#owner = :owner AND attribute_exists(#unfinished)")
            .expression_attribute_names("#watched_until", "watched_until")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#unfinished", "unfinished")
            .expression_attribute_values(":until", n(until.timestamp_millis()))
            .expression_attribute_values(":owner", s(owner.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if condition_failed(&error) => Ok(false),
            Err(error) => Err(Unavailable::new("DynamoDB UpdateItem", describe(&error))),
        }
    }

    async fn find_stale(
        &self,
        unchanged_since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, Unavailable> {
        let mut found = Vec::new();
        // From a shard drawn at random: a sweep that stops at `limit` favours no shard.
        let first = usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % UNFINISHED_SHARDS.len();
        let shards = UNFINISHED_SHARDS
            .iter()
            .cycle()
            .skip(first)
            .take(UNFINISHED_SHARDS.len());
        for shard in shards {
            if found.len() >= limit {
                break;
            }
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(UNFINISHED_INDEX)
                .key_condition_expression("#shard = :shard AND #updated_at <= :since")
                .expression_attribute_names("#shard", "unfinished")
                .expression_attribute_names("#updated_at", "updated_at")
                .expression_attribute_values(":shard", s(*shard))
                .expression_attribute_values(":since", s(format_timestamp(unchanged_since)))
                .projection_expression("#job_id")
                .expression_attribute_names("#job_id", "job_id")
                .into_paginator()
                .items()
                .send();
            while found.len() < limit
                && let Some(item) = pages.next().await
            {
                let item =
                    item.map_err(|error| Unavailable::new("DynamoDB Query", describe(&error)))?;
                let id = Record(&item).text("job_id").and_then(JobId::parse);
                found.extend(id);
            }
        }
        Ok(found)
    }
}

/// A transition as one conditional `UpdateItem`: its guard as the condition, so that
/// DynamoDB applies exactly what `Job::apply` describes, atomically.
struct Update {
    expression: String,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    fn of(transition: &Transition, at: DateTime<Utc>) -> Self {
        let mut sets = vec![("updated_at", s(format_timestamp(at)))];
        let mut adds = vec![("seq", n(1))];
        let mut removes = vec!["lease_id", "lease_expires_at"];
        if let Some(target) = transition.target() {
            sets.push(("status", s(target.as_str())));
            if target.is_terminal() {
                sets.push(("completed_at", s(format_timestamp(at))));
                removes.push("unfinished"); // out of the sweep's index
            }
        }
        match transition {
            Transition::Start { lease, .. } => {
                sets.push(("lease_id", s(lease.id.as_str())));
                sets.push(("lease_expires_at", n(lease.expires_at.timestamp_millis())));
                adds.push(("attempts", n(1)));
                // A new attempt starts empty (`output`: an older record's text).
                removes = vec!["output", "text_parts", "text_bytes"];
            }
            Transition::Flush { piece, .. } => {
                sets.extend(text_written(piece));
                removes = vec!["output"]; // the attempt keeps its lease
            }
            Transition::Succeed {
                completion, tail, ..
            } => {
                sets.extend(text_written(tail));
                removes.push("output");
                sets.extend([
                    ("stop_reason", s(&completion.stop_reason)),
                    ("input_tokens", n(completion.usage.input_tokens)),
                    ("output_tokens", n(completion.usage.output_tokens)),
                    ("artifact_key", s(&completion.artifact_key)),
                ]);
                sets.extend(completion.cost.map(|cost| ("cost_nano_usd", n(cost.0))));
            }
            Transition::Fail { failure, .. } => sets.extend([
                ("error_code", s(&failure.code)),
                ("error_message", s(&failure.message)),
            ]),
            Transition::RecordUsage { used } => {
                sets.extend([
                    ("input_tokens", n(used.usage.input_tokens)),
                    ("output_tokens", n(used.usage.output_tokens)),
                ]);
                sets.extend(used.cost.map(|cost| ("cost_nano_usd", n(cost.0))));
                removes.clear();
            }
            Transition::Release { .. } | Transition::Cancel { .. } | Transition::Requeue { .. } => {
            }
        }

        // Every attribute goes by an alias: `status` and `owner` are DynamoDB reserved words.
        let mut update = Self {
            expression: String::new(),
            condition: String::new(),
            names: HashMap::new(),
            values: HashMap::new(),
        };
        let sets: Vec<String> = sets
            .into_iter()
            .map(|(name, value)| format!("{} = {}", update.name(name), update.value(value)))
            .collect();
        let adds: Vec<String> = adds
            .into_iter()
            .map(|(name, value)| format!("{} {}", update.name(name), update.value(value)))
            .collect();
        update.expression = format!("SET {} ADD {}", sets.join(", "), adds.join(", "));
        if !removes.is_empty() {
            let removes: Vec<String> = removes.into_iter().map(|name| update.name(name)).collect();
            update
                .expression
                .push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        update.condition = update.guard(&transition.guard(at));
        update
    }

    /// The same update, on condition that the job's `seq` is still `seq`. Every guard is a
    /// conjunction at its top (`Free` wraps its `OR`), and DynamoDB refuses redundant
    /// parentheses, so the condition is simply extended.
    fn unchanged_since(mut self, seq: u64) -> Self {
        let (name, value) = (self.name("seq"), self.value(n(seq)));
        self.condition = format!("{} AND {name} = {value}", self.condition);
        self
    }

    fn name(&mut self, name: &str) -> String {
        let alias = format!("#{name}");
        self.names.insert(alias.clone(), name.to_owned());
        alias
    }

    fn value_once(&mut self, alias: &str, value: AttributeValue) -> String {
        self.values.insert(alias.to_owned(), value);
        alias.to_owned()
    }

    /// A status as a value, under one alias per status however often it is used.
    fn status_value(&mut self, status: JobStatus) -> String {
        self.value_once(&format!(":{}", status.as_str()), s(status.as_str()))
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let alias = format!(":v{}", self.values.len());
        self.values.insert(alias.clone(), value);
        alias
    }

    /// The guard as a condition expression. A missing item has no status, so it never matches.
    /// (DynamoDB refuses names and values that the expressions do not use, so each branch
    /// makes only its own.)
    fn guard(&mut self, guard: &Guard) -> String {
        let status = self.name("status");
        match guard {
            Guard::Free(at) => {
                let queued = self.status_value(JobStatus::Queued);
                let running = self.status_value(JobStatus::Running);
                let expires = self.name("lease_expires_at");
                let now = self.value(n(at.timestamp_millis()));
                format!(
                    "({status} = {queued} OR ({status} = {running} AND \
                     (attribute_not_exists({expires}) OR {expires} <= {now})))"
                )
            }
            Guard::Startable(at, max_attempts) => {
                let free = self.guard(&Guard::Free(*at));
                let attempts = self.name("attempts");
                let max = self.value(n(max_attempts));
                format!("{free} AND {attempts} < {max}")
            }
            Guard::Holds(lease) => {
                let running = self.status_value(JobStatus::Running);
                let lease_id = self.name("lease_id");
                let lease = self.value(s(lease.as_str()));
                format!("{status} = {running} AND {lease_id} = {lease}")
            }
            Guard::Is(expected) => {
                let expected = self.status_value(*expected);
                format!("{status} = {expected}")
            }
            Guard::CancelledUnrecorded => {
                let cancelled = self.status_value(JobStatus::Cancelled);
                let input_tokens = self.name("input_tokens");
                format!("{status} = {cancelled} AND attribute_not_exists({input_tokens})")
            }
            Guard::Stranded {
                at,
                unchanged_since,
                max_attempts,
            } => {
                let startable = self.guard(&Guard::Startable(*at, *max_attempts));
                let updated_at = self.name("updated_at");
                let since = self.value(s(format_timestamp(*unchanged_since)));
                format!("{startable} AND {updated_at} <= {since}")
            }
        }
    }
}

/// The state's account of an attempt's text once `piece` is written.
fn text_written(piece: &TextPiece) -> [(&'static str, AttributeValue); 2] {
    [
        ("text_parts", n(piece.pieces_through())),
        ("text_bytes", n(piece.offset + piece.text.len())),
    ]
}

/// The counters live in the jobs table under non-UUID keys (`rate#…`), with no `owner`, so
/// they never appear in the owner index; TTL removes them an hour after their minute.
impl SubmissionQuota for DynamoJobStore {
    async fn acquire(&self, window: &RateWindow, limit: u32) -> Result<bool, Unavailable> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("job_id", s(&window.key))
            .update_expression("SET expires_at = :expires ADD submissions :one")
            .condition_expression("attribute_not_exists(submissions) OR submissions < :limit")
            .expression_attribute_values(":expires", n(window.resets_at.timestamp() + 3600))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if condition_failed(&error) => Ok(false),
            Err(error) => Err(Unavailable::new("DynamoDB UpdateItem", describe(&error))),
        }
    }
}

impl UsageLedger for DynamoJobStore {
    /// An eventually consistent read: an operator's change shows within a second or so.
    async fn budget_override(&self, owner: &Owner) -> Result<BudgetOverride, Unavailable> {
        let item = self.read(BudgetOverride::key(owner), false).await?;
        Ok(item.as_ref().map(item_to_override).unwrap_or_default())
    }

    /// One consistent read per period, at once (a batch read may leave keys unread).
    async fn usage(
        &self,
        owner: &Owner,
        periods: &[Period],
    ) -> Result<Vec<PeriodUsage>, Unavailable> {
        let reads = periods.iter().map(|period| async move {
            let item = self.read(period.ledger_key(owner), true).await?;
            Ok(item.map_or_else(
                || PeriodUsage::empty(period.clone()),
                |item| item_to_usage(&item, period.clone()),
            ))
        });
        futures::future::try_join_all(reads).await
    }
}

/// Whether DynamoDB refused a conditional write because its condition did not hold.
fn condition_failed<E: ProvideErrorMetadata, R>(error: &SdkError<E, R>) -> bool {
    error
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        == Some("ConditionalCheckFailedException")
}

fn s(text: impl Into<String>) -> AttributeValue {
    AttributeValue::S(text.into())
}

fn n(number: impl ToString) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// A new job's request item: what it asks that is large and never changes.
fn request_to_item(job: &Job) -> Item {
    let request = &job.request;
    let mut item = Item::from([
        (
            "job_id".to_owned(),
            s(request_key(job.id, &request_digest(request))),
        ),
        ("prompt".to_owned(), s(&request.prompt)),
        ("expires_at".to_owned(), n(job.expires_at)),
    ]);
    if let Some(system) = &request.system {
        item.insert("system".to_owned(), s(system));
    }
    item
}

/// A new job's state item (see [`request_key`] for what is kept beside it).
fn job_to_item(job: &Job) -> Item {
    let request = &job.request;
    let mut item = Item::from([
        ("job_id".to_owned(), s(job.id.to_string())),
        ("owner".to_owned(), s(job.owner.as_str())),
        ("status".to_owned(), s(job.status.as_str())),
        ("model_id".to_owned(), s(&request.model)),
        ("request_digest".to_owned(), s(request_digest(request))),
        ("max_tokens".to_owned(), n(request.max_tokens)),
        ("created_at".to_owned(), s(format_timestamp(job.created_at))),
        ("updated_at".to_owned(), s(format_timestamp(job.updated_at))),
        ("expires_at".to_owned(), n(job.expires_at)),
        ("seq".to_owned(), n(job.seq)),
        ("attempts".to_owned(), n(job.attempts)),
    ]);
    if !job.status.is_terminal() {
        item.insert("unfinished".to_owned(), s(unfinished_shard(job.id)));
    }
    let optional = [
        ("temperature", request.temperature.map(n)),
        (
            "idempotency_key",
            job.idempotency_key.as_ref().map(|key| s(key.as_str())),
        ),
        (
            "completed_at",
            job.completed_at.map(|at| s(format_timestamp(at))),
        ),
        (
            "reserved_tokens",
            job.reservation.map(|reserved| n(reserved.tokens)),
        ),
        (
            "reserved_nano_usd",
            job.reservation.map(|reserved| n(reserved.cost.0)),
        ),
    ];
    item.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?))),
    );
    // New jobs carry no outcome and no lease; the rest is written through `transition`.
    debug_assert!(job.completion.is_none() && job.failure.is_none() && job.lease.is_none());
    debug_assert!(job.partial_output.is_none());
    item
}

/// The keys of the items a state item names: its request (unless it is an older record
/// that holds it) and, `with_text`, the pieces of its current attempt's text.
fn beside_keys(state: &Item, with_text: bool) -> Vec<String> {
    let record = Record(state);
    let Some(id) = record.text("job_id").and_then(JobId::parse) else {
        return Vec::new();
    };
    let request = record
        .text("request_digest")
        .filter(|_| record.text("prompt").is_none())
        .map(|digest| request_key(id, digest));
    let attempt = record.number::<u32>("attempts").ok().flatten().unwrap_or(0);
    let parts = record.number::<u32>("text_parts").ok().flatten();
    let pieces = parts
        .filter(|_| with_text)
        .into_iter()
        .flat_map(move |parts| (0..parts).map(move |index| piece_key(id, attempt, index)));
    request.into_iter().chain(pieces).collect()
}

/// Reads a job from its state item and the items beside it (read by their keys, from
/// [`beside_keys`]), or says which attribute or item made it unreadable. Without `with_text`,
/// the job has no text (a succeeded job's `output` is empty).
fn item_to_job(
    item: &Item,
    beside: &HashMap<String, Item>,
    with_text: bool,
) -> Result<Job, Unavailable> {
    let record = Record(item);
    let corrupt = |what: String| {
        let id = record.text("job_id").unwrap_or("?");
        Unavailable::new("DynamoDB", format!("job record {id} is malformed: {what}"))
    };
    let id = JobId::parse(record.required_text("job_id").map_err(corrupt)?)
        .ok_or_else(|| corrupt("job_id is not a UUID".into()))?;
    // The request: in the state item of an older record, else in its own item.
    let request = match record.text("prompt") {
        Some(_) => record,
        None => {
            let digest = record.required_text("request_digest").map_err(corrupt)?;
            beside
                .get(&request_key(id, digest))
                .map(Record)
                .ok_or_else(|| corrupt("its request item is missing".into()))?
        }
    };
    let attempt = record
        .number::<u32>("attempts")
        .map_err(corrupt)?
        .unwrap_or(0);
    // The text: the pieces the state names, else an older record's `output`.
    let text = match record.number::<u32>("text_parts").map_err(corrupt)? {
        _ if !with_text => None,
        Some(parts) => {
            let mut text = String::new();
            for index in 0..parts {
                let piece = beside
                    .get(&piece_key(id, attempt, index))
                    .and_then(|item| Record(item).text("text"))
                    .ok_or_else(|| corrupt(format!("piece {index} of its text is missing")))?;
                text.push_str(piece);
            }
            let bytes = record.number::<usize>("text_bytes").map_err(corrupt)?;
            if bytes.is_some_and(|bytes| bytes != text.len()) {
                return Err(corrupt("its text is not as long as text_bytes says".into()));
            }
            Some(text)
        }
        None => record.text("output").map(str::to_owned),
    };
    let status = JobStatus::parse(record.required_text("status").map_err(corrupt)?)
        .ok_or_else(|| corrupt("unknown status".into()))?;
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, Unavailable> {
        record
            .text(name)
            .map(|text| {
                parse_timestamp(text).ok_or_else(|| corrupt(format!("{name} is not RFC 3339")))
            })
            .transpose()
    };
    let required_time =
        |name: &str| time(name)?.ok_or_else(|| corrupt(format!("{name} is missing")));
    let number = |name: &str| record.number::<u64>(name).map_err(corrupt);

    let completion = match status {
        JobStatus::Succeeded => Some(Completion {
            output: text.clone().unwrap_or_default(),
            stop_reason: record.text("stop_reason").unwrap_or_default().to_owned(),
            usage: Usage {
                input_tokens: number("input_tokens")?.unwrap_or(0),
                output_tokens: number("output_tokens")?.unwrap_or(0),
            },
            artifact_key: record.text("artifact_key").unwrap_or_default().to_owned(),
            cost: number("cost_nano_usd")?.map(NanoUsd),
        }),
        _ => None,
    };
    // The text is the final answer of a succeeded job, else what its attempt flushed.
    let partial_output = text.filter(|_| status != JobStatus::Succeeded);
    let failure = record.text("error_code").map(|code| JobFailure {
        code: code.to_owned(),
        message: record.text("error_message").unwrap_or_default().to_owned(),
    });
    let expires_at = record
        .number::<i64>("expires_at")
        .map_err(corrupt)?
        .ok_or_else(|| corrupt("expires_at is missing".into()))?;

    Ok(Job {
        id,
        owner: Owner::new(record.required_text("owner").map_err(corrupt)?),
        status,
        request: GenerateRequest {
            prompt: request.required_text("prompt").map_err(corrupt)?.to_owned(),
            model: record
                .required_text("model_id")
                .map_err(corrupt)?
                .to_owned(),
            max_tokens: record
                .number::<u32>("max_tokens")
                .map_err(corrupt)?
                .ok_or_else(|| corrupt("max_tokens is missing".into()))?,
            temperature: record.number::<f32>("temperature").map_err(corrupt)?,
            system: request.text("system").map(str::to_owned),
        },
        created_at: required_time("created_at")?,
        updated_at: required_time("updated_at")?,
        completed_at: time("completed_at")?,
        expires_at,
        seq: number("seq")?.unwrap_or(0),
        attempts: attempt,
        lease: match (
            record.text("lease_id"),
            record.number::<i64>("lease_expires_at"),
        ) {
            (Some(id), Ok(Some(expires_ms))) => Some(Lease {
                id: LeaseId::from_stored(id),
                expires_at: DateTime::from_timestamp_millis(expires_ms)
                    .ok_or_else(|| corrupt("lease_expires_at is out of range".into()))?,
            }),
            _ => None,
        },
        partial_output,
        completion,
        failure,
        idempotency_key: record
            .text("idempotency_key")
            .and_then(|key| IdempotencyKey::parse(key).ok()),
        watched_until: record
            .number::<i64>("watched_until")
            .map_err(corrupt)?
            .and_then(DateTime::from_timestamp_millis),
        recorded_usage: match (status, number("input_tokens")?) {
            (JobStatus::Cancelled, Some(input_tokens)) => Some(CallUsage {
                usage: Usage {
                    input_tokens,
                    output_tokens: number("output_tokens")?.unwrap_or(0),
                },
                cost: number("cost_nano_usd")?.map(NanoUsd),
            }),
            _ => None,
        },
        reservation: match (number("reserved_tokens")?, number("reserved_nano_usd")?) {
            (Some(tokens), Some(cost)) => Some(Amount {
                tokens,
                cost: NanoUsd(cost),
            }),
            _ => None,
        },
    })
}

/// A ledger item (missing counters are zero; a malformed one reads as zero rather than
/// stopping the user's submissions).
fn item_to_usage(item: &Item, period: Period) -> PeriodUsage {
    let record = Record(item);
    let number = |name: &str| {
        record
            .number::<i64>(name)
            .ok()
            .flatten()
            .unwrap_or(0)
            .max(0) as u64
    };
    PeriodUsage {
        jobs: number("jobs"),
        settled_jobs: number("settled_jobs"),
        committed: Amount {
            tokens: number("committed_tokens"),
            cost: NanoUsd(number("committed_nano_usd")),
        },
        charged: Amount {
            tokens: number("charged_tokens"),
            cost: NanoUsd(number("charged_nano_usd")),
        },
        usage: Usage {
            input_tokens: number("input_tokens"),
            output_tokens: number("output_tokens"),
        },
        period,
    }
}

/// The operator's `budget#<owner>` item: `tokens_per_day` (a number) and `usd_per_month`
/// (dollars, as a number or a string such as "5.00"); either may be "unlimited". A value that
/// is neither is ignored, with a warning, so the default applies.
fn item_to_override(item: &Item) -> BudgetOverride {
    let limit = |name: &str, parse: fn(&str) -> Option<u64>| -> Option<Option<u64>> {
        let value = item.get(name)?;
        let text = value.as_n().or_else(|_| value.as_s()).ok()?;
        if text.trim().eq_ignore_ascii_case("unlimited") {
            return Some(None);
        }
        let parsed = parse(text);
        if parsed.is_none() {
            tracing::warn!(attribute = name, value = %text, "ignored a budget override that is not a limit");
        }
        parsed.map(Some)
    };
    BudgetOverride {
        tokens_per_day: limit("tokens_per_day", |text| text.trim().parse().ok()),
        usd_per_month: limit("usd_per_month", |text| {
            NanoUsd::parse_usd(text).map(|usd| usd.0)
        })
        .map(|limit| limit.map(NanoUsd)),
    }
}

/// Typed reads of one item's attributes.
#[derive(Clone, Copy)]
struct Record<'a>(&'a Item);

impl<'a> Record<'a> {
    fn text(&self, name: &str) -> Option<&'a str> {
        self.0.get(name)?.as_s().ok().map(String::as_str)
    }

    fn required_text(&self, name: &str) -> Result<&'a str, String> {
        self.text(name)
            .ok_or_else(|| format!("{name} is missing or not a string"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        match self.0.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_n()
                .ok()
                .and_then(|text| text.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("{name} is not a number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn job() -> Job {
        let request = GenerateRequest {
            temperature: Some(0.2),
            system: Some("be brief".into()),
            ..GenerateRequest::new("hi", "m", 64)
        };
        let key = IdempotencyKey::parse("k-1").ok();
        let now = parse_timestamp("2026-11-22T10:00:00.123Z").unwrap();
        Job::queued(Owner::new("alice"), request, key, now, Duration::days(30))
    }

    /// The items a new job is written as, by key.
    fn items(job: &Job) -> (Item, HashMap<String, Item>) {
        let request = request_to_item(job);
        let key = Record(&request).text("job_id").unwrap().to_owned();
        (job_to_item(job), HashMap::from([(key, request)]))
    }

    #[test]
    fn a_new_job_round_trips_through_its_items() {
        let job = job();
        let (state, beside) = items(&job);
        assert_eq!(state["created_at"], s("2026-11-22T10:00:00.123Z"));
        assert_eq!(state["temperature"], n("0.2"));
        assert_eq!(item_to_job(&state, &beside, true).unwrap(), job);
        assert_eq!(
            beside_keys(&state, true),
            beside.keys().cloned().collect::<Vec<_>>()
        );
    }

    /// The state, which every change and every poll touches, holds neither the prompt nor
    /// the system prompt: its size does not grow with them.
    #[test]
    fn the_state_item_stays_small_whatever_the_prompt() {
        let mut job = job();
        job.request.prompt = "word ".repeat(4000);
        job.request.system = Some("be brief ".repeat(1000));
        let (state, beside) = items(&job);
        for absent in ["prompt", "system", "output"] {
            assert!(!state.contains_key(absent), "{absent}");
        }
        let size: usize = state
            .iter()
            .map(|(name, value)| name.len() + value.as_s().map_or(8, String::len))
            .sum();
        assert!(size < 1024, "{size} bytes");
        let request = beside.values().next().unwrap();
        assert_eq!(request["prompt"], s(&job.request.prompt));
        assert_eq!(request["expires_at"], state["expires_at"]);
        assert!(!request.contains_key("owner") && !request.contains_key("unfinished"));
    }

    /// Another request under the same job id (a repeat with the same Idempotency-Key and
    /// another body) is another item, so it can never change the original job's request.
    #[test]
    fn each_request_has_a_key_of_its_own_content() {
        let job = job();
        let mut other = job.clone();
        other.request.prompt = "something else".into();
        let key = |job: &Job| request_key(job.id, &request_digest(&job.request));
        assert_ne!(key(&job), key(&other));
        assert_eq!(key(&job), key(&job.clone()));
        let mut no_system = job.clone();
        no_system.request.system = None;
        assert_ne!(key(&job), key(&no_system));
    }

    #[test]
    fn optional_request_fields_are_left_out() {
        let mut job = job();
        job.request.system = None;
        job.request.temperature = None;
        job.idempotency_key = None;
        let (state, beside) = items(&job);
        for absent in ["system", "temperature", "idempotency_key", "completed_at"] {
            assert!(!state.contains_key(absent), "{absent}");
        }
        assert!(!beside.values().next().unwrap().contains_key("system"));
        assert_eq!(item_to_job(&state, &beside, true).unwrap(), job);
    }

    /// The text is the current attempt's pieces, joined in order; a missing piece is an
    /// error, not a shorter text.
    #[test]
    fn a_jobs_text_is_its_current_attempts_pieces() {
        let job = job();
        let (mut state, mut beside) = items(&job);
        state.insert("status".into(), s("running"));
        state.insert("attempts".into(), n(2));
        state.insert("text_parts".into(), n(2));
        state.insert("text_bytes".into(), n(9));
        for (attempt, index, text) in [(2, 0, "Once"), (2, 1, " upon"), (1, 0, "stale")] {
            let key = piece_key(job.id, attempt, index);
            beside.insert(
                key.clone(),
                Item::from([("job_id".into(), s(key)), ("text".into(), s(text))]),
            );
        }
        assert_eq!(
            beside_keys(&state, true).len(),
            3,
            "the request and two pieces"
        );
        let read = item_to_job(&state, &beside, true).unwrap();
        assert_eq!(read.partial_output.as_deref(), Some("Once upon"));
        assert_eq!(
            item_to_job(&state, &beside, false).unwrap().partial_output,
            None
        );

        beside.remove(&piece_key(job.id, 2, 1));
        let error = item_to_job(&state, &beside, true).unwrap_err();
        assert!(error.detail.contains("piece 1"), "{error}");
    }

    /// Records written before the state was kept apart hold the prompt and the text
    /// themselves: they are read as they are.
    #[test]
    fn an_older_record_holding_its_prompt_and_text_still_reads() {
        let job = job();
        let mut state = job_to_item(&job);
        state.remove("request_digest");
        state.insert("prompt".into(), s("hi"));
        state.insert("system".into(), s("be brief"));
        state.insert("status".into(), s("succeeded"));
        state.insert("output".into(), s("the answer"));
        assert!(beside_keys(&state, true).is_empty());
        let read = item_to_job(&state, &HashMap::new(), true).unwrap();
        assert_eq!(read.request, job.request);
        assert_eq!(read.completion.unwrap().output, "the answer");
    }

    /// DynamoDB refuses a request whose names or values its expressions do not use.
    #[test]
    fn every_transitions_update_uses_every_name_and_value_it_defines() {
        let at = parse_timestamp("2026-11-22T10:00:00.000Z").unwrap();
        let lease = Lease::new(at);
        let failure = JobFailure::new(crate::domain::FailureCode::WorkerError, "gone");
        let transitions = [
            Transition::Start {
                lease: lease.clone(),
                max_attempts: 3,
            },
            Transition::Flush {
                lease: lease.id.clone(),
                piece: TextPiece::whole(&job(), "so far"),
            },
            Transition::Succeed {
                lease: lease.id.clone(),
                completion: Completion {
                    output: "so far".into(),
                    stop_reason: "end_turn".into(),
                    usage: Usage::default(),
                    artifact_key: "k".into(),
                    cost: Some(NanoUsd(3)),
                },
                tail: TextPiece::whole(&job(), "so far"),
            },
            Transition::Release {
                lease: lease.id.clone(),
            },
            Transition::Fail {
                lease: None,
                failure: failure.clone(),
            },
            Transition::Fail {
                lease: Some(lease.id.clone()),
                failure,
            },
            Transition::Cancel { running: true },
            Transition::Cancel { running: false },
            Transition::Requeue {
                unchanged_since: at,
                max_attempts: 3,
            },
            Transition::RecordUsage {
                used: CallUsage {
                    usage: Usage::default(),
                    cost: Some(NanoUsd(1)),
                },
            },
        ];
        for transition in transitions {
            // Also as a settlement writes it: pinned to the `seq` it was priced at.
            for update in [
                Update::of(&transition, at),
                Update::of(&transition, at).unchanged_since(7),
            ] {
                let text = format!("{} {}", update.expression, update.condition);
                let used = |alias: &String| {
                    text.match_indices(alias.as_str()).any(|(i, _)| {
                        let rest = &text[i + alias.len()..];
                        !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
                    })
                };
                for alias in update.names.keys().chain(update.values.keys()) {
                    assert!(used(alias), "{alias} unused by {transition:?}: {text}");
                }
                assert!(!update.condition.starts_with("(("), "redundant: {text}");
            }
        }
    }

    #[test]
    fn a_malformed_record_names_its_attribute() {
        let (mut item, beside) = items(&job());
        item.insert("max_tokens".into(), s("many"));
        let error = item_to_job(&item, &beside, true).unwrap_err();
        assert!(error.detail.contains("max_tokens"), "{error}");
        item.remove("status");
        let error = item_to_job(&item, &beside, true).unwrap_err();
        assert!(error.detail.contains("status"));
        let error = item_to_job(&job_to_item(&job()), &HashMap::new(), true).unwrap_err();
        assert!(error.detail.contains("request item is missing"), "{error}");
    }
}
