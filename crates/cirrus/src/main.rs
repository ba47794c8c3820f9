//! `cirrus`: the server (`cirrus up`) and the client commands, in one binary.
//! Thin by design: it parses flags, calls the library or the API, and prints.

mod access;
mod client;
mod commands;
mod config_edits;
mod output;
mod project;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = commands::Cli::parse();
    // Guest traps are routine; with RUST_BACKTRACE set, every wasmtime error would also
    // capture a host backtrace (~20% CPU in trap-heavy load). Panics keep theirs.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc serves blocks above 1 KiB from a locked arena; mimalloc's thread-local lists
/// cost a small function 4-5 % less CPU per request (BENCHMARKS.md, "mimalloc").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
