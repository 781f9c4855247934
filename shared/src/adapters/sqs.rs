use aws_config::SdkConfig;
use aws_sdk_sqs::Client;

use super::describe;
use crate::domain::{JobId, encode_job_message};
use crate::ports::{JobQueue, Unavailable};

/// The jobs queue on SQS.
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
