//! The worker as Lambda's SQS event source mapping drives it: long-poll the queue, invoke the
//! worker with batches of up to ten messages, delete what it acknowledged, and leave the
//! reported failures to come back after the queue's visibility timeout.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Context, LambdaEvent};
use pipeline::ports::{ArtifactStore, JobStore, Redelivery, TextModel};
use tokio::sync::watch;
use tracing::{info, warn};
use worker::Worker;

use crate::event_source::SqsEventSource;

/// A function fed by an SQS event source.
pub trait SqsFunction: Send + Sync {
    fn invoke(&self, event: LambdaEvent<SqsEvent>)
    -> impl Future<Output = SqsBatchResponse> + Send;
}

impl<S: JobStore, A: ArtifactStore, M: TextModel, R: Redelivery> SqsFunction
    for Worker<S, A, M, R>
{
    fn invoke(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> impl Future<Output = SqsBatchResponse> + Send {
        self.handle(event)
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
                "worker batch: {} message(s), {} acknowledged, {} to retry",
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
