//! The `redisse` command line: `redisse [serve] [options]` and `redisse publish`.
//!
//! Raw flags (clap, each with its environment variable) are turned into a validated
//! [`Config`](crate::Config); this is the only place that reads the environment, installs the log subscriber
//! and handles signals. [`run`] is the whole binary; [`run_with`] is the same binary around an
//! application's own channel function, like the gem's `bin/sse_server`.

mod args;
mod publish;
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use self::args::{Cli, Command};
use crate::policy::{ChannelPolicy, QueryChannels};

/// Runs the `redisse` binary with channels from the query string.
pub fn run() -> ExitCode {
    run_with(QueryChannels)
}

/// Runs the `redisse` binary with `policy` as the channel function.
pub fn run_with<P: ChannelPolicy>(policy: P) -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Some(Command::Publish(args)), Some(m)) =
        (&mut cli.command, matches.subcommand_matches("publish"))
        && let Err(e) = args.resolve_target(m)
    {
        eprintln!("redisse: {e}");
        return ExitCode::FAILURE;
    }
    let threads = match &cli.command {
        Some(Command::Serve(args)) => args.threads,
        Some(Command::Publish(_)) => None,
        None => cli.serve.threads,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("redisse-worker");
    if let Some(n) = threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redisse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Publish(args)) => runtime.block_on(publish::run(args)),
        Some(Command::Serve(args)) => runtime.block_on(serve::run(args, policy)),
        None => runtime.block_on(serve::run(cli.serve, policy)),
    };
    // Streams and the Redis subscriber may still hold tasks; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redisse: {e}");
            ExitCode::FAILURE
        }
    }
}
