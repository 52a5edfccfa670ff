//! The `xeno` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xeno_gateway::config::Config;

// Ingest allocates and frees many small JSON values across threads; glibc's
// allocator spent a third of the server's CPU on that (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "xeno", version, about = "Real-time customer engagement engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest, segments, webhooks, on the embedded store.
    Serve {
        /// The configuration file; `config.toml` in the current folder when it exists.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Import customers from a CSV file into a running server, following the job.
    Import(xeno_gateway::cli::import::ImportArgs),
    /// Export customers (a segment, or a filter or search) as CSV from a running server.
    Export(xeno_gateway::cli::export::ExportArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (defaults, file, environment), secrets masked.
    Show {
        /// The configuration file; `config.toml` in the current folder when it exists.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(config: Option<PathBuf>) -> Result<Config, ExitCode> {
    let default = PathBuf::from("config.toml");
    let file = config.or_else(|| default.exists().then_some(default));
    Config::load(file.as_deref()).map_err(|e| {
        eprintln!("xeno: {e}");
        ExitCode::from(2)
    })
}

fn serve(config: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // actix runs its System on a multi-thread tokio runtime; axum's connection
    // tasks use the workers, each shard actor has a thread of its own.
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("xeno-worker")
            .build()
            .expect("a tokio runtime")
    });
    match system.block_on(xeno_gateway::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "xeno stopped");
            eprintln!("xeno: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => match load(config) {
            Ok(config) => serve(config),
            Err(code) => code,
        },
        Command::Config {
            command: ConfigCommand::Show { config },
        } => {
            let default = PathBuf::from("config.toml");
            let file = config.or_else(|| default.exists().then_some(default));
            match Config::load(file.as_deref()) {
                Ok(config) => {
                    print!("{}", config.show());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("xeno: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Import(args) => xeno_gateway::cli::import::run(args),
        Command::Export(args) => xeno_gateway::cli::export::run(args),
    }
}
