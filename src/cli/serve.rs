//! `redisse serve`: logging, pid file, signals, listening, serving.

use std::fs::File;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use tokio_util::sync::CancellationToken;

use super::args::{InternalAddress, LogFormat, ServeArgs};
use crate::instance::Redisse;
use crate::policy::ChannelPolicy;
use crate::server::{self, Listener, Tcp};
#[cfg(feature = "tls")]
use crate::tls::Tls;

/// Runs the server until SIGTERM or SIGINT, with the configured subscriber mode, or with
/// `policy` when the binary was built around an application's channel function.
pub(super) async fn run<P: ChannelPolicy>(
    args: ServeArgs,
    policy: Option<P>,
) -> Result<(), String> {
    let config = args.to_config()?;
    // Before anything listens: a setting that cannot work fails with one clear line.
    config
        .validate()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    // The JWT key and the callback are parsed here too (again by `Redisse::new`): a file that
    // is not a key of the algorithm's type fails before anything listens.
    if let Some(jwt) = &config.jwt {
        crate::auth::JwtVerifier::new(jwt).map_err(|e| format!("invalid configuration: {e}"))?;
    }
    if let Some(callback) = &config.auth_callback {
        crate::auth::AuthCallback::new(callback)
            .map_err(|e| format!("invalid configuration: {e}"))?;
    }
    init_logs(&args)?;
    if !args.ssl && (args.ssl_cert.is_some() || args.ssl_key.is_some()) {
        return Err(
            "--ssl-cert and --ssl-key are for --ssl, which is not set (plain HTTP would be served)"
                .into(),
        );
    }
    #[cfg(feature = "tls")]
    let tls = match (args.ssl, &args.ssl_cert, &args.ssl_key) {
        (true, Some(cert), Some(key)) => {
            Some(Tls::from_pem_files(cert, key).map_err(|e| format!("--ssl: {e}"))?)
        }
        (true, _, _) => return Err("--ssl needs --ssl-key and --ssl-cert".into()),
        (false, _, _) => None,
    };
    #[cfg(not(feature = "tls"))]
    if args.ssl {
        return Err("--ssl: this build of redisse has no TLS support (cargo feature `tls`)".into());
    }
    #[cfg(not(feature = "tls"))]
    let tls: MaybeTls = ();
    // Checked before anything listens (an unwritable path is a startup error) without
    // touching the pid of another instance that may own the file; written once this one
    // listens, and removed when it ends.
    let pid_file = args.pid.as_deref().map(PidFile::check).transpose()?;
    run_with_pid_file(&args, config, tls, policy, pid_file.as_ref()).await
}

/// The `--pid` file: checked before listening, written once listening, removed at the end if
/// this process wrote it (or created it empty while checking).
struct PidFile {
    path: std::path::PathBuf,
    created: bool,
    written: std::cell::Cell<bool>,
}

impl PidFile {
    fn check(path: &std::path::Path) -> Result<Self, String> {
        let cannot =
            |e: std::io::Error| format!("cannot write the pid file {}: {e}", path.display());
        let created = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(cannot)?;
                true
            }
            Err(e) => return Err(cannot(e)),
        };
        Ok(PidFile {
            path: path.to_owned(),
            created,
            written: std::cell::Cell::new(false),
        })
    }

    fn write(&self) -> Result<(), String> {
        std::fs::write(&self.path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write the pid file {}: {e}", self.path.display()))?;
        self.written.set(true);
        Ok(())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if self.written.get() || self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What follows the pid file: the broker's answer, the listeners, serving.
async fn run_with_pid_file<P: ChannelPolicy>(
    args: &ServeArgs,
    config: crate::config::Config,
    tls: MaybeTls,
    policy: Option<P>,
    pid_file: Option<&PidFile>,
) -> Result<(), String> {
    // Before anything listens, so that "listening" is never followed by a failure to start;
    // the instance (and its subscriber's log lines) starts after the first line.
    Redisse::check(&config, args.redis_connect_timeout)
        .await
        .map_err(|e| match e {
            crate::Error::BrokerUnreachable {
                waited: Some(_), ..
            } => format!("cannot start: {e} (see --redis-connect-timeout)"),
            e => format!("cannot start: {e}"),
        })?;
    #[cfg(feature = "tls")]
    let scheme = if tls.is_some() { "https" } else { "http" };
    #[cfg(not(feature = "tls"))]
    let scheme = "http";
    let listener = match &args.socket {
        #[cfg(unix)]
        Some(path) => Bound::Unix(
            server::Unix::bind(path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?,
        ),
        #[cfg(not(unix))]
        Some(_) => return Err("-S: unix sockets need a unix system".into()),
        None => {
            let addr = SocketAddr::new(args.address, args.port);
            Bound::Tcp(
                Tcp::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
            )
        }
    };
    let address = match &listener {
        #[cfg(unix)]
        Bound::Unix(l) => format!("unix:{}", l.path().display()),
        Bound::Tcp(l) => match l.local_addr() {
            Ok(addr) => format!("{scheme}://{addr}"),
            Err(_) => String::from("?"),
        },
    };
    // Bound before anything is logged as listening: a busy internal address is a startup error.
    let internal = match &args.internal_address {
        InternalAddress::None => None,
        #[cfg(unix)]
        InternalAddress::Unix(path) => {
            Some(Bound::Unix(server::Unix::bind(path).map_err(|e| {
                format!(
                    "--internal-address: cannot listen on unix:{}: {e}",
                    path.display()
                )
            })?))
        }
        #[cfg(not(unix))]
        InternalAddress::Unix(_) => {
            return Err("--internal-address unix:PATH needs a unix system".into());
        }
        InternalAddress::Tcp(addr) => {
            Some(Bound::Tcp(Tcp::bind(*addr).await.map_err(|e| {
                format!("--internal-address: cannot listen on {addr}: {e}")
            })?))
        }
    };
    // Before anything says it listens: a SIGTERM from then on is a graceful shutdown, never
    // the signal's default action (which would leave the pid file behind).
    let signals = Signals::install();
    if let Some(pid_file) = pid_file {
        pid_file.write()?;
    }
    tracing::info!(
        "redisse {} listening on {address} with the {} broker",
        env!("CARGO_PKG_VERSION"),
        broker_name(&config.broker_description())
    );
    match &internal {
        None => tracing::info!("no internal listener (--internal-address none)"),
        Some(l) => tracing::info!(
            "internal listener on {}: publish without credentials, /metrics, /status; \
             whoever reaches it may publish",
            match l {
                #[cfg(unix)]
                Bound::Unix(l) => format!("unix:{}", l.path().display()),
                Bound::Tcp(l) => l
                    .local_addr()
                    .map_or_else(|_| String::from("?"), |a| format!("http://{a}")),
            }
        ),
    }
    let mode = match (&config.jwt, &config.auth_callback, &policy) {
        (_, _, Some(_)) => "the application's channel function",
        (Some(_), _, None) => "JWT",
        (None, Some(_), None) => "the auth callback",
        (None, None, None) => "open",
    };
    tracing::info!("subscriber authorization: {mode}");
    if mode == "open" && !public_is_loopback(&listener) {
        tracing::warn!(
            "subscriber authorization is open and {address} is not loopback: anyone who \
             reaches it may subscribe to any channel (see --jwt-secret, --auth-callback)"
        );
    }
    // Checked above: this can fail only if a file changed meanwhile.
    let redisse = Redisse::new(config).map_err(|e| format!("cannot start: {e}"))?;
    let router = match policy {
        Some(policy) => redisse.router_with(policy),
        None => redisse.router(),
    };
    let stop = CancellationToken::new();
    let internal_task = internal.map(|l| {
        let (redisse, stop) = (redisse.clone(), stop.clone());
        let router = redisse.internal_router();
        tokio::spawn(async move {
            match l {
                #[cfg(unix)]
                Bound::Unix(l) => server::serve(l, redisse, router, stop.cancelled_owned()).await,
                Bound::Tcp(l) => server::serve(l, redisse, router, stop.cancelled_owned()).await,
            }
        })
    });
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            signals.wait().await;
            stop.cancel();
        });
    }
    let result = match listener {
        #[cfg(unix)]
        Bound::Unix(l) => serve(l, tls, redisse, router, stop.clone().cancelled_owned()).await,
        Bound::Tcp(l) => serve(l, tls, redisse, router, stop.clone().cancelled_owned()).await,
    }
    .map_err(|e| e.to_string());
    // The public server returns on a signal or an error; the internal one stops with it.
    stop.cancel();
    if let Some(task) = internal_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the internal listener failed"),
            Err(e) => tracing::warn!(error = %e, "the internal listener's task failed"),
        }
    }
    tracing::info!("stopped");
    result
}

/// Whether the public listener is reachable only from this machine.
fn public_is_loopback(listener: &Bound) -> bool {
    match listener {
        #[cfg(unix)]
        Bound::Unix(_) => true,
        Bound::Tcp(l) => l.local_addr().is_ok_and(|a| a.ip().is_loopback()),
    }
}

/// The listener the command line asked for.
enum Bound {
    Tcp(Tcp),
    #[cfg(unix)]
    Unix(server::Unix),
}

/// Serves until a signal, with TLS when built with it and asked for.
async fn serve<L>(
    listener: L,
    tls: MaybeTls,
    redisse: Redisse,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    #[cfg(feature = "tls")]
    return server::serve_with_tls(listener, tls, redisse, router, stop).await;
    #[cfg(not(feature = "tls"))]
    {
        let () = tls;
        server::serve(listener, redisse, router, stop).await
    }
}

/// The TLS acceptor, when the build has TLS (nothing otherwise).
#[cfg(feature = "tls")]
type MaybeTls = Option<Tls>;
#[cfg(not(feature = "tls"))]
type MaybeTls = ();

fn broker_name(description: &str) -> String {
    if description == "in-memory" {
        description.to_owned()
    } else {
        format!("Redis {description}")
    }
}

/// SIGTERM and SIGINT, caught from [`Signals::install`] on: the first ends [`Signals::wait`],
/// a second one exits the process at once.
#[cfg(unix)]
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                Signals(None)
            }
        }
    }

    async fn wait(self) {
        let Some((mut term, mut int)) = self.0 else {
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
}

fn init_logs(args: &ServeArgs) -> Result<(), String> {
    let default = if args.verbose {
        "redisse=debug,info"
    } else {
        "info"
    };
    let filter =
        EnvFilter::try_from_env("REDISSE_LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal: a pipe (journald, docker, a file) gets plain text.
    let (writer, terminal) = if let Some(path) = &args.log {
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
        (BoxMakeWriter::new(Mutex::new(file)), false)
    } else if args.stdout {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = match args.log_format {
        LogFormat::Text => builder.with_ansi(terminal).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))
}

/// Ctrl-C: the first ends [`Signals::wait`], a second one exits the process at once.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Signals
    }

    async fn wait(self) {
        if tokio::signal::ctrl_c().await.is_err() {
            tracing::error!("cannot install the Ctrl-C handler");
            return std::future::pending().await;
        }
        tracing::info!("Ctrl-C received: shutting down (press it again to exit at once)");
        tokio::spawn(async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("redisse: second signal: exiting now");
            std::process::exit(130);
        });
    }
}
