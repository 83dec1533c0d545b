//! The `vraid` command: parses the command line, sets up logging and a tokio
//! runtime, and hands off to `vraid::daemon`. Every error ends here as one
//! line on stderr and a non-zero exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vraid::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        restore_default_sigpipe();
    }
    let filter = cli
        .log
        .as_deref()
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vraid-rt")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vraid: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Create(args) => match args.level() {
                Ok(_) => vraid::daemon::create(&args.members, &args.request()).await,
                Err(e) => Err(vraid::daemon::DaemonError::Usage(e)),
            },
            Command::Examine(args) => vraid::daemon::examine(&args.member, args.json).await,
            Command::Serve(args) => vraid::daemon::serve(args.into_options()).await,
            Command::Status(args) => vraid::control::cli::status(args).map_err(Into::into),
            Command::Fail(args) => vraid::control::cli::fail(args).map_err(Into::into),
            Command::Remove(args) => vraid::control::cli::remove(args).map_err(Into::into),
            Command::Add(args) => vraid::control::cli::add(args).map_err(Into::into),
            Command::Replace(args) => vraid::control::cli::replace(args).map_err(Into::into),
            Command::Set(args) => vraid::control::cli::set(args).map_err(Into::into),
            Command::Scrub(args) => vraid::control::cli::scrub(args).map_err(Into::into),
            Command::Fault(cmd) => vraid::control::cli::fault(cmd).map_err(Into::into),
            Command::Log(cmd) => vraid::control::log_cli::log(cmd),
            Command::Pool(cmd) => vraid::control::pool_cli::pool(cmd).map_err(Into::into),
            Command::Volume(cmd) => vraid::control::pool_cli::volume(cmd).map_err(Into::into),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vraid: error: {}", vraid::daemon::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// CLI verbs print and exit: a reader that goes away (`vraid status --json |
/// head -c1`) ends the process quietly, as it ends `cat`, instead of a
/// panic inside `println!`. Rust starts every program with SIGPIPE ignored;
/// this puts the default back. `serve` keeps it ignored: a client that
/// hangs up must give the daemon EPIPE on that socket, not end it.
fn restore_default_sigpipe() {
    // SAFETY: called first thing in `main`, before any thread is spawned;
    // setting a signal's disposition to SIG_DFL installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
