//! The local worker loop, as Lambda's SQS event source mapping: a reported failure comes
//! back after the visibility timeout and succeeds; an acknowledged message is gone.

use std::time::Duration;

use integration_tests::*;
use local::converse::Fault;
use tokio::sync::watch;

#[tokio::test]
async fn a_reported_failure_is_retried_and_an_acknowledged_message_is_gone() {
    let stack = Stack::with_visibility_timeout(1).await;
    let job_id = stack.submit("user-a", "retry me").await;
    stack.bedrock.fail_next(Fault::Throttle);

    let (stop, stopped) = watch::channel(false);
    let worker = stack.worker();
    let events = stack.events.clone();
    let running = tokio::spawn(async move {
        local::worker_loop::run(&events, &worker, Duration::from_secs(10), stopped).await;
    });

    // Bounded wait for the outcome; the test asserts what happened, not how fast.
    let mut status = String::new();
    for _ in 0..300 {
        status = stack.item(&job_id).await.unwrap()["status"]
            .as_s()
            .unwrap()
            .clone();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap();

    assert_eq!(status, "succeeded");
    let item = stack.item(&job_id).await.unwrap();
    assert_eq!(
        item["attempts"].as_n().unwrap(),
        "2",
        "the throttled attempt, then the good one"
    );
    assert_eq!(stack.bedrock.calls().len(), 2);
    assert_eq!(
        stack.messages_in(&stack.resources.queue_url).await,
        0,
        "the acknowledged message was deleted"
    );
}
