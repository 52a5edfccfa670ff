//! The `xeno` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xeno_gateway::config::Config;

#[derive(Parser)]
#[command(name = "xeno", version, about = "Real-time customer engagement engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
    }
}
