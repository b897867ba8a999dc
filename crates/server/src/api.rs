//! The HTTP API: routes, errors and views.

pub(crate) mod error;
mod guard;
pub(crate) mod history;
mod openapi;
pub(crate) mod rightsizing;
pub mod routes;
pub(crate) mod stream;
pub(crate) mod usage;
pub(crate) mod views;
