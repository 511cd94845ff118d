//! Android image formats, parsed and written exactly (boot.img v0-v4, vendor_boot v3/v4,
//! bootconfig, sparse images, GPT, crosvm composite disks, qcow2 overlays), and the
//! bootloader logic the VMM uses to boot them ([`load_android_boot`]).
//!
//! Every parser treats its input as hostile: errors name the field and value at fault, and
//! no allocation is sized by an untrusted field beyond the input's own length or a cap.

pub mod boot;
pub mod bootconfig;
mod bytes;
pub mod error;
pub mod loader;
pub mod os_version;
pub mod vendor_boot;

pub use boot::{BootImage, LoadAddresses};
pub use bootconfig::BootConfig;
pub use error::{ImageError, Result};
pub use loader::{
    assemble_android_boot, load_android_boot, AndroidBootOptions, AndroidBootPayload,
};
pub use os_version::OsVersion;
pub use vendor_boot::{VendorBootImage, VendorRamdisk, VendorRamdiskType};
pub mod composite;
pub mod disk;
pub mod gpt;
pub mod qcow2;
pub mod sparse;
