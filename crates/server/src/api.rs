//! The HTTP API: routes, errors and views.

mod error;
pub mod routes;
mod views;
