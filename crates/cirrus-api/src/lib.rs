//! Plain types shared by the Cirrus client and server.
//!
//! - [`error`]: the error codes every API answer uses, and their HTTP statuses.
//! - [`spec`]: a function's configuration, its limits and validation.
//! - [`model`]: what the management API returns (functions, versions, aliases,
//!   invocation records, log lines).
//! - [`trigger`]: HTTP routes, topics and schedules that fire functions; [`schedule`]:
//!   rate and cron expressions.
//! - [`manifest`]: the `cirrus.toml` app manifest.
//! - [`pipeline`]: deploy-time checks that a function's destinations do not feed its own
//!   triggers.
//! - [`duration`]: human durations (`"30s"`, `"5m"`) on the wire.
//! - [`usage`]: usage and cost reports, with exact decimal money.

pub mod access;
pub mod cors;
pub mod duration;
pub mod error;
pub mod grant;
pub mod manifest;
pub mod model;
pub mod pipeline;
pub mod schedule;
pub mod spec;
pub mod suggest;
pub mod trigger;
pub mod usage;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use manifest::{Manifest, ManifestFunction};
pub use model::*;
pub use spec::{FunctionConfig, SpecError};
pub use trigger::{TriggerInfo, TriggerSpec};
