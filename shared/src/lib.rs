//! What the three Lambda functions share, in hexagonal layers:
//!
//! - [`domain`]: jobs, their state machine, request validation and the contract's error codes.
//!   Pure logic, no AWS in it.
//! - [`ports`]: the traits the handlers are written against (job store, job queue, artifact
//!   store, text model, session check).
//! - [`adapters`]: one implementation of a port per AWS service.
//! - [`config`], [`http`], [`telemetry`], [`aws`]: the glue every function needs at its edges.

pub mod adapters;
pub mod aws;
pub mod config;
pub mod domain;
pub mod http;
pub mod ports;
pub mod telemetry;
