//! The `redisse` binary: the standalone SSE server, and `redisse publish`.
//!
//! Everything lives in the library's `cli` module, so that an application can build the same
//! binary around its own channel function with [`redisse::cli::run_with`].

fn main() -> std::process::ExitCode {
    redisse::cli::run()
}
