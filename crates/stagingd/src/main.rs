//! `stagingd`: the daemon every deployment master runs.
//!
//! This file is the edge: parse flags and config, set up logging, bind the two
//! sockets, start the services and the initial scans, and shut down in stages on
//! SIGTERM/SIGINT. The modules hold the logic: [`config`], [`pool`], [`tree`],
//! [`node`], [`peer_service`], [`admin_service`], [`replication`], [`wire`], [`space`],
//! [`metrics`] (`GET /metrics`), [`systemd`] (readiness and watchdog notifications).

mod admin_service;
mod changelog;
mod config;
mod inotify_watch;
mod memory;
mod metrics;
mod node;
mod operations;
mod peer_client;
mod peer_service;
mod pool;
mod replication;
mod server;
mod space;
mod systemd;
mod tls;
mod tree;
mod watcher;
mod wire;

use std::process::ExitCode;

use clap::Parser;

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn main() -> ExitCode {
    memory::arena_per_core();
    let flags = config::Flags::parse();
    let config = match config::Config::load(flags) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("stagingd: configuration error: {e:#}");
            eprintln!("hint: see `stagingd --help`; every flag has a config key of the same name");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("stagingd").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stagingd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("stagingd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: under systemd stderr goes to the journal,
    // where escape codes would be noise in every line.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}
