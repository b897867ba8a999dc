//! The HTTP API: routes, errors and views.

mod error;
mod guard;
pub mod routes;
mod views;
