//! The pipeline end to end: the real handlers, through the real AWS SDK clients, against
//! moto and the Bedrock-compatible endpoint. One binary, so that one moto serves every test.

mod binaries;
mod budgets;
mod events;
mod gateway;
mod generate;
mod iam_callers;
mod lifecycle;
mod live;
mod model_providers;
mod recovery;
mod round_trip;
mod sample_events;
mod sessions;
mod status;
mod worker;
mod worker_loop;
