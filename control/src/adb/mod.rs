//! adb to leased phones: users' registered public keys ([`key`]), the connection to a phone's
//! adbd over its VMM's hybrid vsock socket with the key preamble ([`phone`]), and the tunnel
//! `cloudphone adb` opens through `serve` ([`tunnel`]).

pub mod key;
pub mod phone;
pub mod tunnel;

/// The guest port adbd listens on (the adb convention, as Cuttlefish uses over vsock).
pub const ADBD_VSOCK_PORT: u32 = 5555;
/// At most this many keys reach a phone (the preamble's limit), so a user may register no more.
pub const MAX_KEYS_PER_USER: usize = cloudphone_adb::preamble::MAX_KEYS;

/// Header of the host agent relay's adb tunnel carrying one key (base64) the phone may
/// accept; one header per key.
pub const ADB_KEY_HEADER: &str = "x-cloudphone-adb-key";
/// The `Upgrade` protocol name of the host agent relay's adb tunnel.
pub const ADB_UPGRADE: &str = "cloudphone-adb";
