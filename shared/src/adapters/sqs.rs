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
        // SQS takes whole seconds, at most 12 hours: rounded up, so a wait is never cut short.
        let seconds = delay.as_millis().div_ceil(1000).min(43_200);
        let seconds = i32::try_from(seconds).unwrap_or(43_200);
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|error| Unavailable::new("SQS ChangeMessageVisibility", describe(&error)))?;
        Ok(())
    }
}
