//! The integration tests: one binary, a module per topic, helpers in `support`.
//!
//! Tests that need Redis start their own `redis-server` on a free loopback port; they fail
//! with a clear message when `redis-server` is not installed.

mod auth_callback;
mod auth_support;
mod bad_input;
mod body_layers;
mod browser;
mod browser_resume;
mod channel_names;
mod churn;
mod cli;
mod cluster;
mod doc_snippets;
mod example_app;
mod concurrency;
mod counter_reset;
mod cors;
mod endpoint;
mod extractor;
mod foreign_payloads;
mod held_streams;
mod history_loss;
mod idempotency;
mod jwt;
mod late_ids;
mod layering;
mod library;
mod lying_ids;
mod limits;
mod listeners;
mod metrics;
mod operations;
mod nginx;
mod outage;
mod oversized;
mod packaging;
mod plain_connections;
mod properties;
mod publish;
mod redirect;
mod redis_layout;
mod redis_tls;
mod resume;
mod sentinel;
mod ruby_interop;
mod scale_out;
mod shutdown;
mod slow_client;
mod slow_client_hyper;
mod slow_h2_stream;
mod soak;
mod startup;
mod support;
mod timing;
mod tls;
