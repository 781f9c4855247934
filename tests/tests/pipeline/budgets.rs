//! Budgets against moto: submissions reserve their worst case in the user's ledgers in the
//! same transaction as the job's insert, so that concurrent ones never overspend; the job's
//! terminal transition settles the reservation to its charge, exactly once; `GET /usage`
//! shows it all.

use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use aws_lambda_events::http::Method;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_types::config_bag::ConfigBag;
use chrono::{DateTime, Utc};
use integration_tests::*;
use pipeline::adapters::DynamoJobStore;
use pipeline::domain::{
    Amount, Budget, CallUsage, FailureCode, GenerateRequest, Job, JobFailure, JobId, JobStatus,
    Lease, LeaseId, NanoUsd, Owner, PROMPT_OVERHEAD_TOKENS, Period, PeriodKind, PeriodUsage,
    PriceTable, TextPiece, Transition, Transitioned, Usage,
};
use pipeline::ports::{JobStore, UsageLedger};
use serde_json::{Value, json};

const MAX_TOKENS: u32 = 100;
/// The worst case of a job of `PROMPT` with `MAX_TOKENS`.
const WORST_CASE: u64 = PROMPT.len() as u64 + PROMPT_OVERHEAD_TOKENS + MAX_TOKENS as u64;
const PROMPT: &str = "tell me";

fn body() -> String {
    json!({ "prompt": PROMPT, "max_tokens": MAX_TOKENS }).to_string()
}

fn tokens_per_day(limit: u64) -> Budget {
    Budget {
        tokens_per_day: Some(limit),
        usd_per_month: None,
    }
}

fn api_with_budget(stack: &Stack, budget: Budget) -> axum::Router {
    stack.api_with_settings(api::Settings {
        budget,
        ..stack.api_settings()
    })
}

async fn submit(api: &axum::Router, user: &str) -> ApiGatewayV2httpResponse {
    api.handle(request(
        Method::POST,
        "/generate",
        Some(user),
        Some(&body()),
    ))
    .await
}

async fn ledger(stack: &Stack, user: &str, kind: PeriodKind) -> PeriodUsage {
    ledger_at(stack, user, kind, Utc::now()).await
}

/// The user's ledger of the period of `kind` that holds `at`: a job counts in the periods it
/// was submitted in.
async fn ledger_at(stack: &Stack, user: &str, kind: PeriodKind, at: DateTime<Utc>) -> PeriodUsage {
    let period = Period::containing(kind, at);
    let mut ledgers = stack
        .store()
        .usage(&Owner::new(user), &[period])
        .await
        .unwrap();
    ledgers.remove(0)
}

async fn usage(stack: &Stack, budget: Budget, user: &str) -> Value {
    let response = stack
        .status_with_budget(budget, None)
        .handle(request(Method::GET, "/usage", Some(user), None))
        .await;
    assert_eq!(response.status_code, 200, "{:?}", response.body);
    json_body(&response)
}

#[tokio::test]
async fn concurrent_submissions_never_together_exceed_the_budget() {
    let stack = Stack::new().await;
    // Room for five worst cases and a bit: the sixth never fits.
    let limit = WORST_CASE * 5 + WORST_CASE / 2;
    let api = api_with_budget(&stack, tokens_per_day(limit));
    let metrics = pipeline::metrics::capture();
    let answers = futures::future::join_all((0..12).map(|_| submit(&api, "spender"))).await;

    let accepted = answers.iter().filter(|a| a.status_code == 202).count();
    assert_eq!(accepted, 5, "exactly the budget's worth is accepted");
    for refused in answers.iter().filter(|a| a.status_code != 202) {
        let message = assert_error(refused, 429, "budget_exceeded");
        assert!(
            message.contains("daily budget") && message.contains("resets at"),
            "{message}"
        );
        let retry_after: i64 = refused.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let end_of_day = Period::containing(PeriodKind::Day, Utc::now()).ends_at;
        let left = (end_of_day - Utc::now()).num_seconds();
        assert!(
            (left - 5..=left + 1).contains(&retry_after),
            "{retry_after} vs {left}"
        );
    }
    let day = ledger(&stack, "spender", PeriodKind::Day).await;
    assert_eq!(day.jobs, 5);
    assert_eq!(day.committed.tokens, 5 * WORST_CASE);
    assert!(day.committed.tokens <= limit);
    assert_eq!(
        stack.queued_bodies().await.len(),
        5,
        "refused jobs are never queued"
    );
    let records = metrics.records();
    let count = |metric: &str, dimension: &str, value: &str| {
        records
            .iter()
            .filter(|record| record[dimension] == value)
            .filter_map(|record| record[metric].as_f64())
            .sum::<f64>()
    };
    assert_eq!(count("Submissions", "Outcome", "accepted"), 5.0);
    assert_eq!(count("Submissions", "Outcome", "budget_exceeded"), 7.0);
    assert_eq!(count("BudgetRefusals", "Period", "day"), 7.0);
    let other = submit(&api, "someone-else").await;
    assert_eq!(other.status_code, 202, "budgets are per user");
}

#[tokio::test]
async fn a_job_that_alone_exceeds_the_budget_is_refused_with_what_to_do() {
    let stack = Stack::new().await;
    let api = api_with_budget(&stack, tokens_per_day(WORST_CASE - 1));
    let message = assert_error(&submit(&api, "small").await, 429, "budget_exceeded");
    assert!(message.contains("lower max_tokens"), "{message}");
    assert_eq!(ledger(&stack, "small", PeriodKind::Day).await.jobs, 0);
}

#[tokio::test]
async fn success_settles_the_reservation_to_the_real_use_once_even_when_delivered_again() {
    let stack = Stack::new().await;
    let budget = Budget {
        tokens_per_day: Some(WORST_CASE * 10),
        usd_per_month: Some(NanoUsd::parse_usd("1").unwrap()),
    };
    let api = api_with_budget(&stack, budget);
    let response = submit(&api, "payer").await;
    let id = json_body(&response)["job_id"].as_str().unwrap().to_owned();
    let reserved = ledger(&stack, "payer", PeriodKind::Month).await.committed;
    let price = PriceTable::defaults();
    let price = price.price(DEFAULT_MODEL).unwrap();
    let request = GenerateRequest::new(PROMPT, DEFAULT_MODEL, MAX_TOKENS);
    assert_eq!(reserved, Amount::worst_case(&request, Some(price)));
    let during = usage(&stack, budget, "payer").await;
    assert_eq!(during["day"]["reserved_tokens"], WORST_CASE);
    assert_eq!(during["day"]["tokens"], 0);

    stack.deliver_once(&stack.worker()).await;
    let job = stack
        .store()
        .get(JobId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);
    let completion = job.completion.unwrap();
    let used = completion.usage.input_tokens + completion.usage.output_tokens;
    let cost = completion.cost.unwrap();
    assert!(used > 0 && used < WORST_CASE, "{used}");

    // The same message again (SQS delivers at least once): nothing is settled twice.
    pipeline::ports::JobQueue::enqueue(
        &pipeline::adapters::SqsJobQueue::new(&stack.aws, &stack.resources.queue_url),
        job.id,
    )
    .await
    .unwrap();
    stack.deliver_once(&stack.worker()).await;

    for kind in PeriodKind::ALL {
        let ledger = ledger(&stack, "payer", kind).await;
        assert_eq!((ledger.jobs, ledger.settled_jobs), (1, 1), "{kind:?}");
        assert_eq!(ledger.committed, Amount { tokens: used, cost }, "{kind:?}");
        assert_eq!(ledger.charged, ledger.committed);
        assert_eq!(ledger.usage, completion.usage);
    }
    let shown = usage(&stack, budget, "payer").await;
    assert_eq!(shown["day"]["tokens"], used);
    assert_eq!(shown["day"]["reserved_tokens"], 0);
    assert_eq!(shown["day"]["finished_jobs"], 1);
    assert_eq!(shown["day"]["budget"]["unit"], "tokens");
    assert_eq!(
        shown["day"]["budget"]["left"],
        (WORST_CASE * 10 - used) as f64
    );
    assert_eq!(shown["month"]["cost_usd"], cost.as_usd());
    assert_eq!(shown["month"]["budget"]["unit"], "usd");
    assert_eq!(
        shown["month"]["budget"]["left"],
        NanoUsd(1_000_000_000 - cost.0).as_usd()
    );
}

/// A job as the api writes it, reserving its worst case (a no-limit budget: tracked only).
async fn reserved_job(stack: &Stack, owner: &str, created_at: DateTime<Utc>) -> Job {
    let request = GenerateRequest::new(PROMPT, DEFAULT_MODEL, MAX_TOKENS);
    let job = Job::queued(
        Owner::new(owner),
        request,
        None,
        created_at,
        chrono::Duration::days(1),
    )
    .reserving(Amount {
        tokens: WORST_CASE,
        cost: NanoUsd(1_000),
    });
    stack
        .store()
        .insert(&job, &Budget::default())
        .await
        .unwrap();
    job
}

async fn cancel(stack: &Stack, owner: &str, id: JobId) -> ApiGatewayV2httpResponse {
    stack
        .status()
        .handle(request(
            Method::POST,
            &format!("/jobs/{id}/cancel"),
            Some(owner),
            None,
        ))
        .await
}

#[tokio::test]
async fn a_stop_releases_a_queued_jobs_reservation_and_keeps_a_running_ones() {
    let stack = Stack::new().await;
    let queued = reserved_job(&stack, "stopper", Utc::now()).await;
    let running = reserved_job(&stack, "stopper", Utc::now()).await;
    let start = Transition::Start {
        lease: Lease::new(Utc::now() + chrono::Duration::seconds(60)),
        max_attempts: MAX_ATTEMPTS,
    };
    let started = stack
        .store()
        .transition(running.id, &start, Utc::now())
        .await
        .unwrap();
    assert!(matches!(started, Transitioned::Done(_)));

    assert_eq!(cancel(&stack, "stopper", queued.id).await.status_code, 200);
    let day = ledger(&stack, "stopper", PeriodKind::Day).await;
    assert_eq!(
        day.committed.tokens, WORST_CASE,
        "only the running job's reservation is left"
    );
    assert_eq!(
        day.charged,
        Amount::default(),
        "a queued job never reached the model"
    );

    assert_eq!(cancel(&stack, "stopper", running.id).await.status_code, 200);
    // Stopping it again changes nothing, and counts nothing again.
    assert_eq!(cancel(&stack, "stopper", running.id).await.status_code, 200);
    let day = ledger(&stack, "stopper", PeriodKind::Day).await;
    assert_eq!(day.settled_jobs, 2);
    assert_eq!(
        day.committed.tokens, WORST_CASE,
        "a job stopped mid-call is charged its worst case: its use is unknown"
    );
    assert_eq!(day.charged.tokens, WORST_CASE);
}

#[tokio::test]
async fn a_call_that_ends_after_the_stop_charges_what_it_used_once() {
    let stack = Stack::new().await;
    let job = reserved_job(&stack, "late", Utc::now()).await;
    let start = Transition::Start {
        lease: Lease::new(Utc::now() + chrono::Duration::seconds(60)),
        max_attempts: MAX_ATTEMPTS,
    };
    stack
        .store()
        .transition(job.id, &start, Utc::now())
        .await
        .unwrap();
    assert_eq!(cancel(&stack, "late", job.id).await.status_code, 200);
    let used = CallUsage {
        usage: Usage {
            input_tokens: 9,
            output_tokens: 21,
        },
        cost: Some(NanoUsd(77)),
    };
    let record = Transition::RecordUsage { used };
    let recorded = stack.store().transition(job.id, &record, Utc::now()).await;
    let Ok(Transitioned::Done(recorded)) = recorded else {
        panic!("recorded: {recorded:?}");
    };
    assert_eq!(recorded.status, JobStatus::Cancelled);
    assert_eq!(recorded.recorded_usage, Some(used));
    let again = stack.store().transition(job.id, &record, Utc::now()).await;
    assert!(
        matches!(again, Ok(Transitioned::Refused(Some(_)))),
        "once: {again:?}"
    );

    let day = ledger(&stack, "late", PeriodKind::Day).await;
    assert_eq!((day.jobs, day.settled_jobs), (1, 1));
    let real = Amount {
        tokens: 30,
        cost: NanoUsd(77),
    };
    assert_eq!(
        (day.committed, day.charged),
        (real, real),
        "instead of its worst case"
    );
    assert_eq!(day.usage, used.usage);
    let view = stack
        .status()
        .handle(request(
            Method::GET,
            &format!("/jobs/{}", job.id),
            Some("late"),
            None,
        ))
        .await;
    let view = json_body(&view);
    assert_eq!(view["status"], "cancelled");
    assert_eq!(view["usage"]["output_tokens"], 21);
    assert_eq!(view["cost_usd"], NanoUsd(77).as_usd());
}

#[tokio::test]
async fn a_crashed_job_failed_by_the_sweep_is_charged_once() {
    let stack = Stack::new().await;
    let long_ago = Utc::now() - chrono::Duration::minutes(10);
    let job = reserved_job(&stack, "crasher", long_ago).await;
    // Every model call started and died: the last lease ended long ago.
    let mut at = long_ago;
    for _ in 0..MAX_ATTEMPTS {
        at += chrono::Duration::seconds(10);
        let start = Transition::Start {
            lease: Lease::new(at + chrono::Duration::seconds(5)),
            max_attempts: MAX_ATTEMPTS,
        };
        let started = stack.store().transition(job.id, &start, at).await.unwrap();
        assert!(matches!(started, Transitioned::Done(_)));
    }
    let recovery = stack.recovery(Duration::from_secs(60));
    let first = recovery.sweep(Utc::now()).await.unwrap();
    assert_eq!(first.failed, 1, "{first:?}");
    let again = recovery.sweep(Utc::now()).await.unwrap();
    assert_eq!(again.failed, 0);

    let failed = stack.store().get(job.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    // The job's own day (ten minutes ago may be yesterday, just after midnight UTC).
    let day = ledger_at(&stack, "crasher", PeriodKind::Day, job.created_at).await;
    assert_eq!((day.jobs, day.settled_jobs), (1, 1));
    assert_eq!(
        day.committed.tokens, WORST_CASE,
        "its use is unknown: its worst case"
    );
}

fn late_on_the_first() -> DateTime<Utc> {
    "2026-11-30T23:59:58Z".parse().unwrap()
}

fn early_on_the_next_day() -> DateTime<Utc> {
    "2026-12-01T00:00:02Z".parse().unwrap()
}

#[tokio::test]
async fn a_new_period_starts_by_itself() {
    let stack = Stack::new().await;
    let budget = Budget {
        tokens_per_day: Some(WORST_CASE),
        usd_per_month: Some(NanoUsd::parse_usd("1").unwrap()),
    };
    let on = |clock: fn() -> DateTime<Utc>| {
        stack.api_with_settings(api::Settings {
            budget,
            clock,
            ..stack.api_settings()
        })
    };
    let late = on(late_on_the_first);
    assert_eq!(submit(&late, "night-owl").await.status_code, 202);
    let refused = submit(&late, "night-owl").await;
    assert_error(&refused, 429, "budget_exceeded");
    assert_eq!(refused.headers["retry-after"], "2", "until midnight UTC");

    let next = on(early_on_the_next_day);
    assert_eq!(
        submit(&next, "night-owl").await.status_code,
        202,
        "a new day"
    );
    let owner = Owner::new("night-owl");
    let periods = [late_on_the_first(), early_on_the_next_day()]
        .map(|at| Period::containing(PeriodKind::Day, at));
    let days = stack.store().usage(&owner, &periods).await.unwrap();
    assert_eq!(days.iter().map(|day| day.jobs).collect::<Vec<_>>(), [1, 1]);
    let months = [late_on_the_first(), early_on_the_next_day()]
        .map(|at| Period::containing(PeriodKind::Month, at));
    let months = stack.store().usage(&owner, &months).await.unwrap();
    assert_eq!(
        months.iter().map(|month| month.jobs).collect::<Vec<_>>(),
        [1, 1]
    );
    let key = periods[0].ledger_key(&owner);
    let item = stack.item(&key).await.unwrap();
    let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
    assert_eq!(
        expires,
        periods[0].ledger_expires_at(),
        "the table's TTL removes it later"
    );
}

#[tokio::test]
async fn a_dollar_budget_refuses_with_what_was_used_and_when_it_resets() {
    let stack = Stack::new().await;
    let price = PriceTable::defaults();
    let request = GenerateRequest::new(PROMPT, DEFAULT_MODEL, MAX_TOKENS);
    let one_job = Amount::worst_case(&request, price.price(DEFAULT_MODEL)).cost;
    let budget = Budget {
        tokens_per_day: None,
        usd_per_month: Some(NanoUsd(one_job.0 * 3 / 2)),
    };
    let api = api_with_budget(&stack, budget);
    assert_eq!(submit(&api, "frugal").await.status_code, 202);
    let refused = submit(&api, "frugal").await;
    let message = assert_error(&refused, 429, "budget_exceeded");
    let month = Period::containing(PeriodKind::Month, Utc::now());
    assert!(message.contains("monthly budget"), "{message}");
    assert!(
        message.contains(&format!("${one_job}")),
        "what it needed: {message}"
    );
    assert!(
        message.contains(&format!("used or reserved ${one_job}")),
        "{message}"
    );
    assert!(
        message.contains(&pipeline::domain::format_timestamp(month.ends_at)),
        "{message}"
    );
}

async fn set_override(stack: &Stack, user: &str, attributes: &[(&str, AttributeValue)]) {
    let mut put = aws_sdk_dynamodb::Client::new(&stack.aws)
        .put_item()
        .table_name(&stack.resources.table)
        .item("job_id", AttributeValue::S(format!("budget#{user}")));
    for (name, value) in attributes {
        put = put.item(*name, value.clone());
    }
    put.send().await.unwrap();
}

#[tokio::test]
async fn the_operator_sets_one_users_limits_in_the_table() {
    let stack = Stack::new().await;
    set_override(
        &stack,
        "capped",
        &[("tokens_per_day", AttributeValue::N("10".into()))],
    )
    .await;
    set_override(
        &stack,
        "trusted",
        &[("tokens_per_day", AttributeValue::S("unlimited".into()))],
    )
    .await;
    let api = api_with_budget(&stack, tokens_per_day(WORST_CASE));

    let message = assert_error(&submit(&api, "capped").await, 429, "budget_exceeded");
    assert!(message.contains("10 tokens"), "{message}");
    for _ in 0..3 {
        assert_eq!(
            submit(&api, "trusted").await.status_code,
            202,
            "no limit for them"
        );
    }
    assert_eq!(submit(&api, "anyone").await.status_code, 202, "the default");
    assert_eq!(submit(&api, "anyone").await.status_code, 429, "the default");

    let capped = usage(&stack, tokens_per_day(WORST_CASE), "capped").await;
    assert_eq!(capped["day"]["budget"]["limit"], 10.0);
    let trusted = usage(&stack, tokens_per_day(WORST_CASE), "trusted").await;
    assert_eq!(trusted["day"]["budget"], Value::Null);
    assert_eq!(trusted["day"]["jobs"], 3);
}

#[tokio::test]
async fn usage_is_the_callers_own_and_needs_an_identity() {
    let stack = Stack::new().await;
    reserved_job(&stack, "alice", Utc::now()).await;
    let alice = usage(&stack, Budget::default(), "alice").await;
    assert_eq!(alice["day"]["jobs"], 1);
    assert_eq!(alice["day"]["budget"], Value::Null);
    let today = Period::containing(PeriodKind::Day, Utc::now());
    assert_eq!(alice["day"]["period"], today.name);
    assert_eq!(
        alice["day"]["ends_at"],
        pipeline::domain::format_timestamp(today.ends_at)
    );
    let bob = usage(&stack, Budget::default(), "bob").await;
    assert_eq!(bob["day"]["jobs"], 0, "nobody sees another's use");
    let anonymous = stack
        .status()
        .handle(request(Method::GET, "/usage", None, None))
        .await;
    assert_error(&anonymous, 401, "unauthorized");
}

/// Before the store's first transaction, the attempt holding the job flushes text, as a flush
/// already on its way when the attempt fails lands between the store's read of the job and
/// its write.
#[derive(Debug)]
struct FlushBeforeTheTransaction {
    store: DynamoJobStore,
    job: JobId,
    lease: LeaseId,
    done: std::sync::atomic::AtomicBool,
}

impl Intercept for FlushBeforeTheTransaction {
    fn name(&self) -> &'static str {
        "FlushBeforeTheTransaction"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let transaction = context
            .input()
            .downcast_ref::<TransactWriteItemsInput>()
            .is_some();
        if !transaction || self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let flush = Transition::Flush {
            lease: self.lease.clone(),
            piece: TextPiece {
                attempt: 1,
                index: 0,
                offset: 0,
                text: "Once upon".into(),
                expires_at: 0,
            },
        };
        // The hook is synchronous: the flush runs on a runtime of its own, and is waited for.
        let (store, job) = (self.store.clone(), self.job);
        let flushed = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(store.transition(job, &flush, Utc::now()))
        })
        .join()
        .unwrap()?;
        assert!(matches!(flushed, Transitioned::Done(_)), "{flushed:?}");
        Ok(())
    }
}

#[tokio::test]
async fn a_failure_is_charged_for_the_job_as_it_is_when_it_ends_not_as_it_was_read() {
    let stack = Stack::new().await;
    let job = reserved_job(&stack, "raced", Utc::now()).await;
    let lease = Lease::new(Utc::now() + chrono::Duration::seconds(60));
    let start = Transition::Start {
        lease: lease.clone(),
        max_attempts: MAX_ATTEMPTS,
    };
    stack
        .store()
        .transition(job.id, &start, Utc::now())
        .await
        .unwrap();
    let interceptor = FlushBeforeTheTransaction {
        store: stack.store(),
        job: job.id,
        lease: lease.id.clone(),
        done: false.into(),
    };
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&stack.aws)
            .interceptor(interceptor)
            .build(),
    );
    let store = DynamoJobStore::with_client(client, &stack.resources.table);

    // The model stopped answering on the last call, after it had written text.
    let fail = Transition::Fail {
        lease: Some(lease.id),
        failure: JobFailure::new(FailureCode::ModelUnavailable, "throttled"),
    };
    let failed = store.transition(job.id, &fail, Utc::now()).await.unwrap();
    let Transitioned::Done(failed) = failed else {
        panic!("failed: {failed:?}");
    };
    assert_eq!(failed.partial_output.as_deref(), Some("Once upon"));
    let day = ledger(&stack, "raced", PeriodKind::Day).await;
    assert_eq!(day.settled_jobs, 1);
    assert_eq!(
        day.charged.tokens, WORST_CASE,
        "the model wrote text: its use is unknown, so its worst case"
    );
}
