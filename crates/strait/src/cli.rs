//! Command-line interface: `start`, `reload`, `upgrade`, `check`, `config …`, `migrations …`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;

const EXAMPLES: &str = "\
Examples:
  strait start -c examples/strait.toml
      Run with the example settings (listeners on 127.0.0.1:9000 and :9443).
  STRAIT_STREAM_LISTEN='127.0.0.1:7000, 127.0.0.1:7443 ssl' strait start -c strait.toml
      Override any setting from the environment as STRAIT_<KEY>.
  strait check -c strait.toml
      Validate the settings and the declarative file, then exit.
  strait reload -c strait.toml
      Apply changed settings to the running process (as kill -HUP).
  strait upgrade -c strait.toml
      Hand every listener and relaying session to a new process (as kill -USR2).
  strait config parse kong.yml
      Validate a Kong declarative file (_format_version 3.0, YAML or JSON).
  strait config init strait.yml
      Write a commented example declarative file.
  curl -i -X POST http://127.0.0.1:8001/services --data name=redis --data url=tcp://127.0.0.1:6379
      Create a service through the Admin API (database = \"sqlite\", the default).
  strait config db_export backup.json
      Write the stored configuration as a declarative file.";

/// Strait: a layer-4 (TCP and TLS) API gateway that speaks Kong's stream configuration.
#[derive(Debug, Parser)]
#[command(name = "strait", version, about, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway and run until SIGTERM or SIGINT.
    Start {
        /// Settings file (TOML). Default: ./strait.toml if present, else built-in defaults.
        #[arg(short = 'c', long = "conf", value_name = "FILE")]
        conf: Option<PathBuf>,
    },
    /// Re-read the settings (and, DB-less, the declarative file) in the
    /// running process, as SIGHUP does; exits 1 listing the errors when the
    /// new settings are refused (nothing changes then).
    Reload {
        /// Settings file (it is also how the running process is found: its `prefix`).
        #[arg(short = 'c', long = "conf", value_name = "FILE")]
        conf: Option<PathBuf>,
    },
    /// Replace the running process with a new one (the binary at its path,
    /// or --binary), which takes over every listening socket and every
    /// relaying session, as SIGUSR2 does; exits 1 with the reason when the
    /// new generation fails to start (the old one keeps serving).
    Upgrade {
        #[arg(short = 'c', long = "conf", value_name = "FILE")]
        conf: Option<PathBuf>,
        /// The binary to start instead of the running one's.
        #[arg(long = "binary", value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Validate the settings and the declarative configuration, then exit.
    Check {
        #[arg(short = 'c', long = "conf", value_name = "FILE")]
        conf: Option<PathBuf>,
    },
    /// Work with declarative configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Database schema migrations.
    Migrations {
        #[command(subcommand)]
        action: MigrationsCommand,
        #[arg(short = 'c', long = "conf", value_name = "FILE", global = true)]
        conf: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum MigrationsCommand {
    /// Prepare a new database (the same as `up` on an empty one).
    Bootstrap,
    /// Apply pending migrations.
    Up,
    /// List migrations and whether they are applied.
    Status,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a declarative file (YAML or JSON) without starting anything.
    Parse { file: PathBuf },
    /// Write a commented example declarative file.
    Init {
        /// Where to write it (refuses to overwrite).
        #[arg(default_value = "strait.yml")]
        file: PathBuf,
    },
    /// Replace the stored configuration with a declarative file.
    #[command(name = "db_import")]
    DbImport {
        file: PathBuf,
        #[arg(short = 'c', long = "conf", value_name = "FILE")]
        conf: Option<PathBuf>,
    },
    /// Write the stored configuration as a declarative file (stdout without FILE).
    #[command(name = "db_export")]
    DbExport {
        file: Option<PathBuf>,
        #[arg(short = 'c', long = "conf", value_name = "FILE")]
        conf: Option<PathBuf>,
    },
}

/// The settings file to use when `-c` is not given.
fn default_conf(conf: Option<PathBuf>) -> Option<PathBuf> {
    conf.or_else(|| {
        let local = Path::new("strait.toml");
        local.exists().then(|| local.to_owned())
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start { conf } => crate::gateway::start(default_conf(conf).as_deref()),
        Command::Reload { conf } => crate::gateway::reload_command(default_conf(conf).as_deref()),
        Command::Upgrade { conf, binary } => {
            crate::gateway::upgrade_command(default_conf(conf).as_deref(), binary.as_deref())
        }
        Command::Check { conf } => app::check(default_conf(conf).as_deref()),
        Command::Config(ConfigCommand::Parse { file }) => app::parse(&file),
        Command::Config(ConfigCommand::Init { file }) => app::init(&file),
        Command::Config(ConfigCommand::DbImport { file, conf }) => app::db_import(default_conf(conf).as_deref(), &file),
        Command::Config(ConfigCommand::DbExport { file, conf }) => {
            app::db_export(default_conf(conf).as_deref(), file.as_deref())
        }
        Command::Migrations { action, conf } => {
            let action = match action {
                MigrationsCommand::Bootstrap => app::MigrationsAction::Bootstrap,
                MigrationsCommand::Up => app::MigrationsAction::Up,
                MigrationsCommand::Status => app::MigrationsAction::Status,
            };
            app::migrations(default_conf(conf).as_deref(), action)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
