//! The local stack: what stands in for AWS when the pipeline runs on a laptop or in tests.
//!
//! - [`moto`]: the AWS emulator as a child process.
//! - [`provision`]: the table, queues and bucket on an AWS emulator (moto), shaped like
//!   the SAM template's.
//! - [`event_source`]: an SQS poller that hands batches to the worker the way Lambda's event
//!   source mapping does, and deletes what the worker acknowledged.
//! - [`converse`]: a Bedrock-compatible `POST /model/{modelId}/converse` endpoint.
//! - [`authorizer`] and [`gateway`]: API Gateway's part (JWT check, events to handlers,
//!   CORS) and CloudFront's (the web UI), on one local port.
//! - [`worker_loop`]: the SQS event source mapping's part.
//! - [`events`]: AppSync Events' part: the Event API (HTTP publish, real-time WebSocket) that
//!   carries a job's text to the web UI as it is written, mounted by the gateway.
//! - [`metrics`]: CloudWatch's part for the functions' EMF metrics: aggregated, served at
//!   `GET /metrics` and summarised in the log.

pub mod authorizer;
pub mod converse;
pub mod event_source;
pub mod events;
pub mod gateway;
pub mod metrics;
pub mod moto;
pub mod provision;
pub mod worker_loop;
