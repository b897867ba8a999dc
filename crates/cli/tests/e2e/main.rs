//! End-to-end tests: the real `corral` binary as server, agents and CLI, on
//! 127.0.0.1, against both stores where the store matters.

mod access;
mod admission;
mod api;
mod browser;
mod budget;
mod bulk;
mod campaign;
mod cli;
mod confinement;
mod conformance;
mod connections;
mod console;
mod console_forms;
mod console_pages;
mod console_sessions;
mod crash;
mod disk;
mod dying;
mod escapes;
mod execution;
mod fencing;
mod governance;
mod harness;
mod history;
mod hostile;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod metering;
mod metrics;
mod one_writer;
mod provisioning;
mod quick_start;
mod registration;
mod rightsizing;
mod run_output;
mod slow;
mod store_privacy;
