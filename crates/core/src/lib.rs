//! corral's pure core: resources, pools, tenants, pipelines, their envelopes,
//! the rules that move a run forward and the resource controller.
//!
//! Nothing here does I/O or reads the clock: time comes in as a [`clock::Timestamp`].

pub mod access;
pub mod backoff;
pub mod clock;
pub mod controller;
pub mod envelope;
pub mod error;
pub mod history;
pub mod ids;
pub mod limits;
pub mod manifest;
pub mod matrix;
pub mod metering;
pub mod money;
pub mod pipeline;
pub mod pool;
pub mod queue;
pub mod request;
pub mod resources;
pub mod rightsizing;
pub mod run;
pub mod selector;
pub mod sim;
pub mod tenant;
pub mod usage;
