//! `cloudphone`: control service (`serve`), host agent (`agent`) and API client (the rest).

use clap::Parser;
use cloudphone::cli::{ClientCommand, ClientOptions};

#[derive(Parser)]
#[command(
    name = "cloudphone",
    version,
    about = "cloud phone control service, host agent and client"
)]
struct Cli {
    #[command(flatten)]
    client: ClientOptions,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up and matched once: the agent's options being large costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
enum Command {
    /// Run the control service (REST API + scheduler).
    Serve(cloudphone::server::ServeOptions),
    /// Run the host agent (one cloudphone-vmm per phone).
    Agent(cloudphone::agent::AgentOptions),
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDPHONE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(opts) => cloudphone::server::run(opts).await,
            Command::Agent(opts) => cloudphone::agent::run(opts).await,
            Command::Client(cmd) => cloudphone::cli::run(cli.client, cmd).await,
        }
    })
}
