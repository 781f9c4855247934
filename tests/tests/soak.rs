//! A seeded soak of the job lifecycle under faults, against moto, run as Lambda would run it.
//!
//! Several worker loops share one queue, as concurrent invocations of the event source
//! mapping do. Invocations are killed at random moments (dropped mid-batch: nothing they were
//! doing finishes, their messages come back after the visibility timeout), messages are
//! delivered twice, some jobs are written but never enqueued (an api that died between its
//! two steps), and the model throttles, fails, refuses and dawdles. The recovery function runs
//! beside them, on the dead-letter queue and on a timer. At the end, every invariant the README
//! promises must hold: every job finished, one job per idempotency key, every succeeded job's
//! artifact equal to its record, no other artifact, no job with more model calls than
//! `MAX_ATTEMPTS`, and, every job being watched, the text events its winning attempt published
//! joining to its answer.
//!
//! `SOAK_JOBS` (default 150) and `SOAK_SEED` change its size and its faults; run it with
//! `--nocapture` to see its figures:
//! `cargo test -p integration-tests --test soak -- --nocapture`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use integration_tests::*;
use pipeline::adapters::{DynamoJobStore, S3ArtifactStore, SqsJobQueue};
use pipeline::domain::{
    GenerateRequest, Job, JobId, JobStatus, Owner, Period, PeriodKind, Transition, Usage,
    parse_timestamp,
};
use pipeline::ports::{
    JobStore, LiveFeed, ModelError, ModelReply, ModelRequest, Progress, TextModel, Unavailable,
    UsageLedger,
};
use tokio::sync::watch;
use worker::Worker;

const WORKERS: usize = 4;
const OWNERS: usize = 5;
/// Each batch is killed with this chance, at a random moment of its run.
const KILL_RATE: f64 = 0.12;
/// Each batch has one of its messages sent again with this chance.
const DUPLICATE_RATE: f64 = 0.10;
/// Jobs written by an api that died before enqueueing them.
const NEVER_ENQUEUED_RATE: f64 = 0.05;
/// Jobs whose submission the client repeats with the same key.
const REPEATED_RATE: f64 = 0.10;
// The timings keep the deployed order, scaled down: an attempt's lease (the invocation's time
// + 5 s) ends before the sweep may repair its job, which happens before SQS would hand a
// killed invocation's message out again (template: 305 s, 900 s, 1800 s).
const INVOCATION_TIME: Duration = Duration::from_secs(2);
const RECOVER_AFTER: Duration = Duration::from_secs(10);
const VISIBILITY_TIMEOUT_SECS: u32 = 15;
/// How long the soak may take before it counts as stuck.
const TIME_LIMIT: Duration = Duration::from_secs(240);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A number drawn from `parts` and the seed: the same job's n-th call meets the same fate
/// whatever the interleaving.
fn draw(seed: u64, parts: impl Hash) -> fastrand::Rng {
    let mut hasher = DefaultHasher::new();
    (seed, parts).hash(&mut hasher);
    fastrand::Rng::with_seed(hasher.finish())
}

/// A model that streams its answer, and throttles (15 %), fails (5 %) or refuses (2 %), at the
/// start or mid-stream, by a seeded draw per job and call; it counts each job's calls and
/// those cut off by a kill.
#[derive(Clone)]
struct ChaosModel {
    seed: u64,
    log: Arc<Mutex<CallLog>>,
}

#[derive(Default)]
struct CallLog {
    calls: HashMap<String, u32>,
    cut: HashMap<String, u32>,
    throttled: usize,
    failed: usize,
    refused: usize,
}

/// Counts a call as cut off unless it ends normally.
struct Unfinished<'a> {
    log: &'a Mutex<CallLog>,
    prompt: &'a str,
    ended: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.ended {
            *self
                .log
                .lock()
                .unwrap()
                .cut
                .entry(self.prompt.to_owned())
                .or_default() += 1;
        }
    }
}

impl TextModel for ChaosModel {
    /// Streams the answer in three chunks; a throttle or failure may come after some of them.
    async fn generate(
        &self,
        request: &ModelRequest,
        progress: &Progress,
    ) -> Result<ModelReply, ModelError> {
        let call = {
            let mut log = self.log.lock().unwrap();
            let calls = log.calls.entry(request.prompt.clone()).or_default();
            *calls += 1;
            *calls
        };
        let mut guard = Unfinished {
            log: &self.log,
            prompt: &request.prompt,
            ended: false,
        };
        let mut rng = draw(self.seed, (&request.prompt, call));
        let fate = rng.f64();
        let answer = answer_to(&request.prompt);
        let chunks = [&answer[..5], &answer[5..12], &answer[12..]];
        let streamed = if fate < 0.22 { rng.usize(0..3) } else { 3 };
        for chunk in &chunks[..streamed] {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..50))).await;
            progress.push(chunk);
        }
        guard.ended = true;
        let mut log = self.log.lock().unwrap();
        if fate < 0.15 {
            log.throttled += 1;
            Err(ModelError::Retryable(
                "ThrottlingException: slow down".into(),
            ))
        } else if fate < 0.20 {
            log.failed += 1;
            Err(ModelError::Retryable("InternalServerException".into()))
        } else if fate < 0.22 {
            log.refused += 1;
            Err(ModelError::Permanent("ValidationException: no".into()))
        } else {
            Ok(ModelReply {
                text: answer,
                stop_reason: "end_turn".into(),
                usage: Usage {
                    input_tokens: request.prompt.len() as u64,
                    output_tokens: call as u64,
                },
            })
        }
    }
}

fn answer_to(prompt: &str) -> String {
    format!("The answer to {prompt:?}.")
}

type SoakWorker = Worker<DynamoJobStore, S3ArtifactStore, ChaosModel, SqsJobQueue, Watcher>;

/// One subscriber to every channel: the events published on each, in the order they came.
#[derive(Clone, Default)]
struct Watcher {
    events: Arc<Mutex<HashMap<String, Vec<serde_json::Value>>>>,
}

impl LiveFeed for Watcher {
    async fn publish(&self, channel: &str, events: &[String]) -> Result<(), Unavailable> {
        let mut received = self.events.lock().unwrap();
        let list = received.entry(channel.to_owned()).or_default();
        list.extend(
            events
                .iter()
                .map(|event| serde_json::from_str(event).unwrap()),
        );
        Ok(())
    }
}

impl Watcher {
    /// What a watcher makes of attempt `attempt`'s events on `channel`: each appended where
    /// it starts, its overlap with what is held skipped; a gap is an error.
    fn text_of(&self, channel: &str, attempt: u32) -> Result<String, String> {
        let received = self.events.lock().unwrap();
        let mut text = String::new();
        let events = received.get(channel).map(Vec::as_slice).unwrap_or_default();
        for event in events.iter().filter(|event| event["attempt"] == attempt) {
            let offset = event["offset"].as_u64().unwrap() as usize;
            let piece = event["text"].as_str().unwrap();
            if offset > text.len() {
                return Err(format!("a gap before byte {offset} of {text:?}"));
            }
            let held = &text[offset..];
            if !piece.starts_with(held) && !held.starts_with(piece) {
                return Err(format!("{piece:?} at {offset} disagrees with {text:?}"));
            }
            if let Some(new) = piece.get(text.len() - offset..) {
                text.push_str(new);
            }
        }
        Ok(text)
    }
}

#[derive(Default)]
struct Figures {
    batches: AtomicUsize,
    kills: AtomicUsize,
    duplicates: AtomicUsize,
    requeued: AtomicUsize,
    failed_by_sweep: AtomicUsize,
    dead_letters: AtomicUsize,
}

/// One worker loop: what the event source mapping does, except that some invocations die.
async fn work(
    stack: &Stack,
    worker: &SoakWorker,
    seed: u64,
    index: usize,
    figures: &Figures,
    mut stop: watch::Receiver<bool>,
) {
    let sqs = aws_sdk_sqs::Client::new(&stack.aws);
    let mut batch_number = 0u64;
    while !*stop.borrow() {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = stack.events.receive(Duration::from_secs(1)) => event.unwrap(),
        };
        if event.records.is_empty() {
            continue;
        }
        batch_number += 1;
        figures.batches.fetch_add(1, Ordering::Relaxed);
        let mut rng = draw(seed, ("batch", index, batch_number));
        if rng.f64() < DUPLICATE_RATE {
            let copy = &event.records[rng.usize(..event.records.len())];
            sqs.send_message()
                .queue_url(&stack.resources.queue_url)
                .message_body(copy.body.clone().unwrap())
                .send()
                .await
                .unwrap();
            figures.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let invocation = worker.handle(lambda_event(event.clone(), INVOCATION_TIME));
        if rng.f64() < KILL_RATE {
            // The process dies at a random moment: the invocation is dropped where it is,
            // and its messages come back after the visibility timeout.
            let dies_after = Duration::from_millis(rng.u64(0..250));
            if tokio::time::timeout(dies_after, invocation).await.is_err() {
                figures.kills.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let response = invocation.await;
        stack.events.settle(&event, &response, None).await.unwrap();
    }
}

/// The recovery function, on the dead-letter queue and on a timer.
async fn recover(stack: &Stack, figures: &Figures, mut stop: watch::Receiver<bool>) {
    let recovery = stack.recovery(RECOVER_AFTER);
    let dead_letters = stack.dead_letter_events();
    let mut last_sweep = Instant::now();
    while !*stop.borrow() {
        let batch = tokio::select! {
            _ = stop.changed() => break,
            batch = dead_letters.receive(Duration::from_secs(1)) => batch.unwrap(),
        };
        if !batch.records.is_empty() {
            figures
                .dead_letters
                .fetch_add(batch.records.len(), Ordering::Relaxed);
            let response = recovery.dead_letters(&batch).await;
            dead_letters.settle(&batch, &response, None).await.unwrap();
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            let report = recovery.sweep(Utc::now()).await.unwrap();
            figures
                .requeued
                .fetch_add(report.requeued, Ordering::Relaxed);
            figures
                .failed_by_sweep
                .fetch_add(report.failed, Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Submitted {
    Once,
    /// Twice at once, with the same `Idempotency-Key`.
    Twice,
    /// Written by an api that died before enqueueing it.
    NeverEnqueued,
}

/// Submits job `index` and returns its id and owner.
async fn submit(stack: &Stack, seed: u64, index: usize) -> (JobId, String, Submitted) {
    let owner = format!("soak-user-{}", index % OWNERS);
    let prompt = format!("soak job {index}");
    let mut rng = draw(seed, ("submit", index));
    if rng.f64() < NEVER_ENQUEUED_RATE {
        let request = GenerateRequest::new(prompt, DEFAULT_MODEL, 64);
        let job = Job::queued(
            Owner::new(&owner),
            request,
            None,
            Utc::now(),
            chrono::Duration::days(1),
        );
        stack
            .store()
            .insert(&job, &Default::default())
            .await
            .unwrap();
        watch(stack, job.id, &owner).await;
        return (job.id, owner, Submitted::NeverEnqueued);
    }
    let body = serde_json::json!({ "prompt": prompt }).to_string();
    let key = format!("soak-{index}");
    let api = stack.api();
    let send = || api.handle(with_key(&body, &owner, &key));
    let repeated = rng.f64() < REPEATED_RATE;
    let (first, second) = if repeated {
        let (first, second) = tokio::join!(send(), send());
        (first, Some(second))
    } else {
        (send().await, None)
    };
    assert!([200, 202].contains(&first.status_code), "{:?}", first.body);
    let id = json_body(&first)["job_id"].as_str().unwrap().to_owned();
    if let Some(second) = second {
        assert!([200, 202].contains(&second.status_code));
        assert_eq!(
            json_body(&second)["job_id"],
            id.as_str(),
            "one job per idempotency key"
        );
    }
    let submitted = if repeated {
        Submitted::Twice
    } else {
        Submitted::Once
    };
    let id = JobId::parse(&id).unwrap();
    watch(stack, id, &owner).await;
    (id, owner, submitted)
}

/// Someone subscribes to the job's channel as it is submitted.
async fn watch(stack: &Stack, id: JobId, owner: &str) {
    let until = Utc::now() + pipeline::domain::WATCH_FOR;
    let marked = stack
        .store()
        .watch(id, &Owner::new(owner), until)
        .await
        .unwrap();
    assert!(marked, "job {id} is watched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lifecycle_holds_its_promises_under_faults() {
    let jobs = setting("SOAK_JOBS", 150) as usize;
    let seed = setting("SOAK_SEED", 0x50a4);
    let started = Instant::now();
    let stack = Stack::with_visibility_timeout(VISIBILITY_TIMEOUT_SECS).await;
    let model = ChaosModel {
        seed,
        log: Arc::default(),
    };
    let figures = Figures::default();
    let watcher = Watcher::default();
    let (stop, stopped) = watch::channel(false);

    let mut submitted: Vec<(JobId, String, Submitted)> = Vec::new();
    let run = async {
        let workers: Vec<SoakWorker> = (0..WORKERS)
            .map(|_| {
                Worker::new(
                    stack.store(),
                    S3ArtifactStore::new(&stack.aws, &stack.resources.bucket),
                    model.clone(),
                    SqsJobQueue::new(&stack.aws, &stack.resources.queue_url),
                    Stack::worker_settings(),
                )
                .with_feed(watcher.clone())
            })
            .collect();
        let loops =
            futures::future::join_all(workers.iter().enumerate().map(|(index, worker)| {
                work(&stack, worker, seed, index, &figures, stopped.clone())
            }));
        let recovery = recover(&stack, &figures, stopped.clone());
        let drive = async {
            // Eight clients at once, so that batches fill up.
            submitted = futures::stream::iter(0..jobs)
                .map(|index| submit(&stack, seed, index))
                .buffer_unordered(8)
                .collect()
                .await;
            // Until every job is finished and both queues are empty (so that the messages of
            // killed invocations have come back and been settled), or the time is up.
            while started.elapsed() < TIME_LIMIT {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut finished = true;
                for (id, _, _) in &submitted {
                    let job = stack.store().get(*id).await.unwrap().unwrap();
                    finished &= job.status.is_terminal();
                }
                if finished
                    && stack.messages_in(&stack.resources.queue_url).await == 0
                    && stack
                        .messages_in(&stack.resources.dead_letter_queue_url)
                        .await
                        == 0
                {
                    break;
                }
            }
            stop.send(true).unwrap();
        };
        tokio::join!(loops, recovery, drive);
    };
    run.await;

    // Every job finished, one per key.
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut succeeded_keys = HashSet::new();
    let (calls_by_prompt, cut, throttled, failed, refused) = {
        let log = model.log.lock().unwrap();
        let cut: u32 = log.cut.values().sum();
        (
            log.calls.clone(),
            cut,
            log.throttled,
            log.failed,
            log.refused,
        )
    };
    let mut calls_total = 0;
    let mut watched_and_published = 0;
    // What each ledger should hold once every job has ended: their charges, nothing reserved.
    let mut charged: HashMap<(Owner, String), (u64, u64)> = HashMap::new();
    for (id, _, _) in &submitted {
        let job = stack.store().get(*id).await.unwrap().unwrap();
        if let Some(reserved) = job.reservation {
            // A failure's charge depends on what the job had done (calls, text), which it keeps.
            let tokens = match (&job.completion, &job.failure) {
                (Some(done), _) => done.usage.input_tokens + done.usage.output_tokens,
                (_, Some(failure)) => {
                    let fail = Transition::Fail {
                        lease: None,
                        failure: failure.clone(),
                    };
                    let charged = job.settlement(&fail).unwrap().charged.tokens;
                    let unknown = job.attempts > 0
                        && (failure.code == "worker_error" || job.partial_output.is_some());
                    assert_eq!(charged, if unknown { reserved.tokens } else { 0 });
                    charged
                }
                _ => 0,
            };
            let day = Period::containing(PeriodKind::Day, job.created_at).name;
            let ledger = charged.entry((job.owner.clone(), day)).or_default();
            *ledger = (ledger.0 + 1, ledger.1 + tokens);
        }
        let name = format!("job {id} ({})", job.request.prompt);
        assert!(job.status.is_terminal(), "{name} is {}", job.status);
        let outcome = match &job.failure {
            Some(failure) => format!("failed: {}", failure.code),
            None => job.status.to_string(),
        };
        *outcomes.entry(outcome).or_default() += 1;

        // Model calls: at most one per attempt started, and at most MAX_ATTEMPTS attempts.
        let calls = calls_by_prompt
            .get(&job.request.prompt)
            .copied()
            .unwrap_or(0);
        calls_total += calls;
        assert!(
            calls <= job.attempts,
            "{name}: {calls} calls, {} attempts",
            job.attempts
        );
        assert!(
            job.attempts <= MAX_ATTEMPTS,
            "{name}: {} attempts",
            job.attempts
        );

        match job.status {
            JobStatus::Succeeded => {
                let completion = job.completion.as_ref().unwrap();
                assert_eq!(completion.output, answer_to(&job.request.prompt), "{name}");
                let (_, artifact) = stack
                    .artifact(&completion.artifact_key)
                    .await
                    .unwrap_or_else(|| panic!("{name}: its artifact is missing"));
                assert_eq!(artifact["job_id"], id.to_string(), "{name}");
                assert_eq!(artifact["response"]["text"], completion.output, "{name}");
                assert_eq!(
                    artifact["usage"]["output_tokens"], completion.usage.output_tokens,
                    "{name}: the artifact is the answer the record holds"
                );
                succeeded_keys.insert(completion.artifact_key.clone());
                // Every job is watched from its submission: the winning attempt (the one its
                // artifact is named by) published its whole answer, every byte once.
                let attempt: u32 = completion
                    .artifact_key
                    .rsplit('/')
                    .next()
                    .and_then(|name| name.strip_suffix(".json"))
                    .and_then(|number| number.parse().ok())
                    .unwrap_or_else(|| panic!("{name}: {}", completion.artifact_key));
                let channel = pipeline::domain::job_channel(&job.owner, job.id).unwrap();
                assert_eq!(
                    watcher.text_of(&channel, attempt).as_deref(),
                    Ok(completion.output.as_str()),
                    "{name}: the published text of attempt {attempt}"
                );
                watched_and_published += 1;
            }
            JobStatus::Failed => {
                let failure = job.failure.as_ref().unwrap();
                assert!(
                    ["model_unavailable", "model_error", "worker_error"]
                        .contains(&failure.code.as_str()),
                    "{name}: {failure:?}"
                );
                if failure.code == "model_unavailable" {
                    assert!(
                        failure
                            .message
                            .contains(&format!("on all {} calls", job.attempts)),
                        "{name}: {failure:?}"
                    );
                }
            }
            status => panic!("{name} ended {status}"),
        }
    }
    for owner in 0..OWNERS {
        let owner = format!("soak-user-{owner}");
        let expected = submitted.iter().filter(|(_, o, _)| *o == owner).count();
        let listed = stack
            .store()
            .list(&Owner::new(&owner), 1000, None)
            .await
            .unwrap();
        assert_eq!(
            listed.jobs.len(),
            expected,
            "{owner}: one job per submission key"
        );
    }
    // Every reservation settled exactly once, to its job's charge, whatever was killed or
    // delivered twice.
    for ((owner, day), (jobs, tokens)) in &charged {
        let period = Period::containing(
            PeriodKind::Day,
            parse_timestamp(&format!("{day}T12:00:00Z")).unwrap(),
        );
        let ledger = stack
            .store()
            .usage(owner, &[period])
            .await
            .unwrap()
            .remove(0);
        let name = format!("{}'s ledger of {day}", owner.as_str());
        assert_eq!((ledger.jobs, ledger.settled_jobs), (*jobs, *jobs), "{name}");
        assert_eq!(ledger.charged.tokens, *tokens, "{name}");
        assert_eq!(
            ledger.committed, ledger.charged,
            "{name}: nothing left reserved"
        );
    }
    // No artifact but those of succeeded jobs: losers and killed attempts left nothing.
    let keys: HashSet<String> = stack.artifact_keys().await.into_iter().collect();
    let orphans: Vec<_> = keys.difference(&succeeded_keys).take(5).collect();
    assert!(
        orphans.is_empty(),
        "artifacts no record names, such as {orphans:?}"
    );
    assert_eq!(
        keys.len(),
        succeeded_keys.len(),
        "every succeeded job has its artifact"
    );

    assert!(watched_and_published > 0, "some job succeeded, watched");
    let count = |kind: Submitted| submitted.iter().filter(|(_, _, s)| *s == kind).count();
    eprintln!(
        "soak (seed {seed:#x}): {} jobs ({} never enqueued, {} submitted twice) in {:.1} s; \
         {} batches, {} invocations killed, {} duplicate messages; {calls_total} model calls \
         ({cut} cut off by kills, {} throttled, {} failed, {} refused); recovery: {} sent \
         again and {} failed by the sweep, {} dead letters; outcomes: {outcomes:?}",
        submitted.len(),
        count(Submitted::NeverEnqueued),
        count(Submitted::Twice),
        started.elapsed().as_secs_f64(),
        figures.batches.load(Ordering::Relaxed),
        figures.kills.load(Ordering::Relaxed),
        figures.duplicates.load(Ordering::Relaxed),
        throttled,
        failed,
        refused,
        figures.requeued.load(Ordering::Relaxed),
        figures.failed_by_sweep.load(Ordering::Relaxed),
        figures.dead_letters.load(Ordering::Relaxed),
    );
}
