//! The local stack: what stands in for AWS when the pipeline runs on a laptop or in tests.
//!
//! - [`provision`]: the table, queues and bucket on an AWS emulator (moto), shaped like
//!   the SAM template's.
//! - [`event_source`]: an SQS poller that hands batches to the worker the way Lambda's event
//!   source mapping does, and deletes what the worker acknowledged.
//! - [`converse`]: a Bedrock-compatible `POST /model/{modelId}/converse` endpoint.

pub mod converse;
pub mod event_source;
pub mod provision;
