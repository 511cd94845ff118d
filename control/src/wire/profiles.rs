//! `/api/v1/profiles` bodies: device profiles and their warm pools.

use serde::{Deserialize, Serialize};

/// `POST /profiles` body; also the flags of `cloudphone profiles create`, whose defaults
/// are the CLI's.
#[derive(Serialize, Deserialize, Debug, Clone, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CreateProfile {
    /// Unique profile name.
    #[arg(long)]
    pub name: String,
    /// Screen width in pixels.
    #[arg(long, default_value_t = 720)]
    pub width: u32,
    /// Screen height in pixels.
    #[arg(long, default_value_t = 1280)]
    pub height: u32,
    /// Screen density.
    #[arg(long, default_value_t = 320)]
    pub dpi: u32,
    /// vCPUs per phone.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Memory per phone.
    #[arg(long, default_value_t = 2048)]
    pub memory_mib: u32,
    /// Base image file name inside each agent's `--image-dir` ("" = no disk).
    #[arg(long, default_value = "")]
    pub image: String,
    /// Phones kept booted and ready for this profile.
    #[serde(default)]
    #[arg(long, default_value_t = 0)]
    pub pool_size: u32,
}

/// `PATCH /profiles/{key}` body: resize the warm pool.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    /// Phones kept booted and ready for this profile.
    pub pool_size: u32,
}
