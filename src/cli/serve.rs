//! `redisse serve`: logging, pid file, signals, listening, serving.

use std::fs::File;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use super::args::ServeArgs;
use crate::instance::Redisse;
use crate::policy::ChannelPolicy;
use crate::server::{Listener, serve_with_tls};
use crate::tls::Tls;

/// Runs the server until SIGTERM or SIGINT.
pub(super) async fn run<P: ChannelPolicy>(args: ServeArgs, policy: P) -> Result<(), String> {
    let config = args.to_config()?;
    init_logs(&args)?;
    let tls = match (args.ssl, &args.ssl_cert, &args.ssl_key) {
        (true, Some(cert), Some(key)) => {
            Some(Tls::from_pem_files(cert, key).map_err(|e| format!("--ssl: {e}"))?)
        }
        (true, _, _) => return Err("--ssl needs --ssl-key and --ssl-cert".into()),
        (false, _, _) => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = match &args.socket {
        Some(path) => Listener::bind_unix(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?,
        None => {
            let addr = SocketAddr::new(args.address, args.port);
            Listener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?
        }
    };
    let address = match (&args.socket, listener.local_addr()) {
        (Some(path), _) => format!("unix:{}", path.display()),
        (None, Some(addr)) => format!("{scheme}://{addr}"),
        (None, None) => String::from("?"),
    };
    tracing::info!(
        "redisse {} listening on {address} with the {} broker",
        env!("CARGO_PKG_VERSION"),
        broker_name(&config.broker_description())
    );
    if let Some(pid) = &args.pid {
        std::fs::write(pid, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write the pid file {}: {e}", pid.display()))?;
    }
    let redisse = Redisse::new(config).map_err(|e| e.to_string())?;
    let router = redisse.router_with(policy);
    let result = serve_with_tls(listener, tls, redisse, router, signals())
        .await
        .map_err(|e| e.to_string());
    if let Some(pid) = &args.pid {
        let _ = std::fs::remove_file(pid);
    }
    tracing::info!("stopped");
    result
}

fn broker_name(description: &str) -> String {
    if description == "in-memory" {
        description.to_owned()
    } else {
        format!("Redis {description}")
    }
}

/// Completes on the first SIGTERM or SIGINT; a second one exits the process at once.
async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name} received: shutting down (send it again to exit at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("redisse: second signal: exiting now");
        std::process::exit(130);
    });
}

fn init_logs(args: &ServeArgs) -> Result<(), String> {
    let default = if args.verbose {
        "redisse=debug,info"
    } else {
        "info"
    };
    let filter =
        EnvFilter::try_from_env("REDISSE_LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = if let Some(path) = &args.log {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
        builder
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .try_init()
    } else if args.stdout {
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .try_init()
    } else {
        // Colours only on a terminal: a pipe (journald, docker, a file) gets plain text.
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init()
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))
}
