//! What Lambda's SQS event source mapping does, for local runs and tests: receive a batch,
//! hand it to the worker as an `SqsEvent`, delete what it acknowledged, and leave the reported
//! failures on the queue to come back.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};

/// The most messages one `ReceiveMessage` (and one Lambda SQS batch) may hold.
pub const MAX_BATCH: i32 = 10;

#[derive(Clone, Debug)]
pub struct SqsEventSource {
    client: Client,
    queue_url: String,
    queue_arn: String,
}

impl SqsEventSource {
    pub fn new(config: &SdkConfig, queue_url: &str, queue_arn: &str) -> Self {
        Self {
            client: Client::new(config),
            queue_url: queue_url.to_owned(),
            queue_arn: queue_arn.to_owned(),
        }
    }

    /// The queue's name, the last part of its ARN.
    pub fn queue_name(&self) -> &str {
        self.queue_arn.rsplit(':').next().unwrap_or(&self.queue_arn)
    }

    /// Up to ten messages, waiting at most `wait` for the first (long polling).
    pub async fn receive(&self, wait: Duration) -> Result<SqsEvent, aws_sdk_sqs::Error> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(MAX_BATCH)
            .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20).min(20))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await?;
        let mut event = SqsEvent::default();
        event.records = output
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|message| self.to_record(message))
            .collect();
        Ok(event)
    }

    fn to_record(&self, message: Message) -> SqsMessage {
        let mut record = SqsMessage::default();
        record.message_id = message.message_id;
        record.receipt_handle = message.receipt_handle;
        record.body = message.body;
        record.md5_of_body = message.md5_of_body;
        record.attributes = message
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name.as_str().to_owned(), value))
            .collect();
        record.event_source = Some("aws:sqs".to_owned());
        record.event_source_arn = Some(self.queue_arn.clone());
        record
    }

    /// Deletes the messages the worker did not report as failures. With `retry_after`, the
    /// failures come back after that delay instead of the queue's visibility timeout.
    pub async fn settle(
        &self,
        event: &SqsEvent,
        response: &SqsBatchResponse,
        retry_after: Option<Duration>,
    ) -> Result<Settled, aws_sdk_sqs::Error> {
        let failed = |record: &SqsMessage| {
            response
                .batch_item_failures
                .iter()
                .any(|failure| Some(&failure.item_identifier) == record.message_id.as_ref())
        };
        let (retried, acknowledged): (Vec<&SqsMessage>, Vec<&SqsMessage>) =
            event.records.iter().partition(|record| failed(record));

        let entries: Vec<DeleteMessageBatchRequestEntry> = acknowledged
            .iter()
            .enumerate()
            .filter_map(|(i, record)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(record.receipt_handle.clone()?)
                    .build()
                    .ok()
            })
            .collect();
        if !entries.is_empty() {
            self.client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await?;
        }
        if let Some(delay) = retry_after {
            for record in &retried {
                if let Some(handle) = &record.receipt_handle {
                    self.client
                        .change_message_visibility()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .visibility_timeout(i32::try_from(delay.as_secs()).unwrap_or(i32::MAX))
                        .send()
                        .await?;
                }
            }
        }
        Ok(Settled {
            acknowledged: acknowledged.len(),
            retried: retried.len(),
        })
    }
}

/// How a batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub acknowledged: usize,
    pub retried: usize,
}
