//! adb to leased phones: users' registered public keys ([`key`]), the connection to a phone's
//! adbd over its VMM's hybrid vsock socket with the key preamble ([`phone`]), and the tunnel
//! `cloudphone adb` opens through `serve` ([`tunnel`]).

pub mod key;
pub mod phone;
pub mod tunnel;

/// The guest port adbd listens on (the adb convention, as Cuttlefish uses over vsock).
pub const ADBD_VSOCK_PORT: u32 = 5555;
/// At most this many keys reach a phone (the preamble's limit in the adbd contract), so a
/// user may register no more.
pub const MAX_KEYS_PER_USER: usize = 16;

/// Header of the host agent relay's adb tunnel carrying one key (base64) the phone may
/// accept; one header per key.
pub const ADB_KEY_HEADER: &str = "x-cloudphone-adb-key";
/// The `Upgrade` protocol name of the host agent relay's adb tunnel.
pub const ADB_UPGRADE: &str = "cloudphone-adb";

/// The key preamble the phone's adbd reads before any adb byte: which keys may authenticate
/// on this connection (see the adb contract in control/README.md).
pub fn preamble(keys: &[String]) -> Vec<u8> {
    let mut out = b"CLOUDPHONE-ADB 1\n".to_vec();
    for k in keys {
        out.extend_from_slice(format!("KEY {k}\n").as_bytes());
    }
    out.extend_from_slice(b"END\n");
    out
}
