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

use self::args::{Cli, Command, PublishCli, PublishOnly};
use crate::policy::{ChannelPolicy, QueryChannels};

/// Runs the `redisse` binary with the subscriber authorization mode of its options: open
/// (channels from the query string), JWT or the auth callback.
pub fn run() -> ExitCode {
    run_inner(None::<QueryChannels>)
}

/// Runs the `redisse` binary with `policy` as the channel function, in place of the mode the
/// options name (a JWT key still serves as a publish credential).
pub fn run_with<P: ChannelPolicy>(policy: P) -> ExitCode {
    run_inner(Some(policy))
}

fn run_inner<P: ChannelPolicy>(policy: Option<P>) -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "publish") {
        return run_publish();
    }
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
        Some(Command::Publish(args)) => runtime.block_on(publish::run(*args)),
        Some(Command::Serve(args)) => runtime.block_on(serve::run(*args, policy)),
        None => runtime.block_on(serve::run(cli.serve, policy)),
    };
    finish(runtime, result)
}

/// Leaves the runtime (streams and the Redis subscriber may still hold tasks: they are not
/// waited for) and turns the result into the exit status.
fn finish(runtime: tokio::runtime::Runtime, result: Result<(), String>) -> ExitCode {
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redisse: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `redisse publish ...`, parsed on its own (see [`PublishCli`]).
fn run_publish() -> ExitCode {
    let matches = PublishCli::command().get_matches();
    let cli = PublishCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let PublishOnly::Publish(mut args) = cli.command;
    if let Some(m) = matches.subcommand_matches("publish")
        && let Err(e) = args.resolve_target(m)
    {
        eprintln!("redisse: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redisse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(publish::run(args));
    finish(runtime, result)
}
