use aws_config::SdkConfig;
use aws_sdk_sqs::Client;

use super::describe;
use crate::domain::{JobId, encode_job_message};
use crate::ports::{JobQueue, Redelivery, Unavailable};

/// The jobs queue on SQS: the api sends to it, the worker times its messages' return.
#[derive(Clone, Debug)]
pub struct SqsJobQueue {
    client: Client,
    queue_url: String,
}

impl SqsJobQueue {
    pub fn new(config: &SdkConfig, queue_url: impl Into<String>) -> Self {
        Self {
            client: Client::new(config),
            queue_url: queue_url.into(),
        }
    }
}

impl JobQueue for SqsJobQueue {
    async fn enqueue(&self, id: JobId) -> Result<(), Unavailable> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(encode_job_message(id))
            .send()
            .await
            .map_err(|error| Unavailable::new("SQS SendMessage", describe(&error)))?;
        Ok(())
    }
}

impl Redelivery for SqsJobQueue {
    async fn redeliver_after(
        &self,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> Result<(), Unavailable> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(visibility_seconds(delay))
            .send()
            .await
            .map_err(|error| Unavailable::new("SQS ChangeMessageVisibility", describe(&error)))?;
        Ok(())
    }
}

/// The longest visibility timeout SQS takes: 12 hours.
const MAX_VISIBILITY_SECONDS: i32 = 43_200;

/// SQS takes whole seconds: a delay is rounded up, so that a message never comes back before
/// its backoff is over (a retry that came back early would find the model as throttled as
/// before), and held to SQS's longest.
fn visibility_seconds(delay: std::time::Duration) -> i32 {
    let seconds = delay.as_millis().div_ceil(1000);
    i32::try_from(seconds).map_or(MAX_VISIBILITY_SECONDS, |seconds| {
        seconds.min(MAX_VISIBILITY_SECONDS)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_delay_is_rounded_up_to_whole_seconds_and_held_to_twelve_hours() {
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(1000), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_millis(3999), 4),
            (Duration::from_secs(43_200), 43_200),
            (Duration::from_secs(50_000), 43_200),
            (Duration::MAX, 43_200),
        ];
        for (delay, seconds) in cases {
            assert_eq!(visibility_seconds(delay), seconds, "{delay:?}");
        }
    }
}
