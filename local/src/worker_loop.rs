//! The functions as Lambda drives them: an SQS event source mapping (long-poll the queue,
//! invoke the function with batches of up to ten messages, delete what it acknowledged, and
//! leave the reported failures to come back) for the worker and the recovery function's dead
//! letters, and a timer for the recovery function's sweep, as EventBridge Scheduler's.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Context, LambdaEvent};
use pipeline::ports::{ArtifactStore, JobQueue, JobStore, LiveFeed, Redelivery, TextModel};
use recovery::Recovery;
use tokio::sync::watch;
use tracing::{info, warn};
use worker::Worker;

use crate::event_source::SqsEventSource;

/// A function fed by an SQS event source.
pub trait SqsFunction: Send + Sync {
    fn invoke(&self, event: LambdaEvent<SqsEvent>)
    -> impl Future<Output = SqsBatchResponse> + Send;
}

impl<S: JobStore, A: ArtifactStore, M: TextModel, R: Redelivery, F: LiveFeed> SqsFunction
    for Worker<S, A, M, R, F>
{
    fn invoke(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> impl Future<Output = SqsBatchResponse> + Send {
        self.handle(event)
    }
}

impl<S: JobStore, A: ArtifactStore, Q: JobQueue, R: Redelivery> SqsFunction
    for Recovery<S, A, Q, R>
{
    async fn invoke(&self, event: LambdaEvent<SqsEvent>) -> SqsBatchResponse {
        self.dead_letters(&event.payload).await
    }
}

/// Sweeps every `interval` until `stop` turns true.
pub async fn sweep_every<S: JobStore, A: ArtifactStore, Q: JobQueue, R: Redelivery>(
    recovery: &Recovery<S, A, Q, R>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticks.tick() => {}
        }
        if let Err(cause) = recovery.sweep(chrono::Utc::now()).await {
            warn!(%cause, "the sweep could not list stranded jobs; the next one will");
        }
    }
}

/// Polls until `stop` turns true. Each invocation gets `timeout` until its deadline, as the
/// function's timeout in the template gives it.
pub async fn run(
    source: &SqsEventSource,
    function: &impl SqsFunction,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let received = tokio::select! {
            _ = stop.changed() => break,
            received = source.receive(Duration::from_secs(20)) => received,
        };
        let event = match received {
            Ok(event) if event.records.is_empty() => continue,
            Ok(event) => event,
            Err(error) => {
                warn!(%error, "could not receive from the queue; trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let response = function.invoke(invocation(event.clone(), timeout)).await;
        match source.settle(&event, &response, None).await {
            Ok(settled) => info!(
                "{} batch: {} message(s), {} acknowledged, {} to retry",
                source.queue_name(),
                event.records.len(),
                settled.acknowledged,
                settled.retried
            ),
            Err(error) => warn!(%error, "could not settle the batch; its messages come back"),
        }
    }
}

/// An invocation of `payload` with `time_left` until its deadline, as Lambda makes it.
pub fn invocation<T>(payload: T, time_left: Duration) -> LambdaEvent<T> {
    let mut context = Context::default();
    context.request_id = uuid::Uuid::new_v4().to_string();
    let deadline = SystemTime::now() + time_left;
    context.deadline = deadline
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    LambdaEvent::new(payload, context)
}
