//! The HTTP API: routes, errors and views.

pub(crate) mod error;
mod guard;
mod history;
mod openapi;
pub mod routes;
mod stream;
mod usage;
pub(crate) mod views;
