//! `cloudphone-image`: inspect, unpack and build Android images (boot, vendor_boot, sparse,
//! GPT, composite, qcow2) with the `android-images` library.

mod build;
mod disk;
mod inspect;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cloudphone-image",
    about = "Inspect, unpack and build Android images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect a file's format and print its fields.
    Inspect {
        /// Image file (boot, vendor_boot, sparse, GPT disk, composite, qcow2, initrd+bootconfig).
        file: PathBuf,
    },
    /// Extract the payloads of a boot or vendor_boot image into a directory.
    Unpack {
        /// boot.img or vendor_boot.img.
        file: PathBuf,
        /// Output directory (created).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Build a boot.img (header v0-v4).
    BuildBoot(build::BootArgs),
    /// Build a vendor_boot.img (header v3/v4).
    BuildVendorBoot(build::VendorArgs),
    /// Assemble boot (+vendor_boot, +init_boot) the way a bootloader does; write kernel and
    /// initrd and print the cmdline.
    Assemble(build::AssembleArgs),
    /// Convert a raw image to an Android sparse image.
    Sparse(disk::SparseArgs),
    /// Expand an Android sparse image to a raw image.
    Unsparse(disk::UnsparseArgs),
    /// Write a flat GPT disk holding the given partition files.
    Gpt(disk::GptArgs),
    /// Write a crosvm composite disk (GPT header/footer files + spec) over partition files.
    Composite(disk::CompositeArgs),
    /// Create a qcow2 overlay over a base image.
    Qcow2Overlay(disk::OverlayArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { file } => inspect::inspect(&file),
        Command::Unpack { file, out } => inspect::unpack(&file, &out),
        Command::BuildBoot(a) => build::build_boot(&a),
        Command::BuildVendorBoot(a) => build::build_vendor_boot(&a),
        Command::Assemble(a) => build::assemble(&a),
        Command::Sparse(a) => disk::sparse(&a),
        Command::Unsparse(a) => disk::unsparse(&a),
        Command::Gpt(a) => disk::gpt(&a),
        Command::Composite(a) => disk::composite(&a),
        Command::Qcow2Overlay(a) => disk::overlay(&a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudphone-image: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
