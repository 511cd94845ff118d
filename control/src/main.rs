//! `cloudphone`: control service (`serve`), host agent (`agent`) and API client (the rest).

use clap::Parser;

#[derive(Parser)]
#[command(name = "cloudphone", version, about = "cloud phone control service, host agent and client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the control service (REST API + scheduler).
    Serve(cloudphone::server::ServeOptions),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDPHONE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(opts) => rt.block_on(cloudphone::server::run(opts)),
    }
}
