//! The adb wire formats, shared by the guest's adbd (phone agent) and the host's adb tunnel so
//! both sides agree byte for byte and each parser is tested once:
//!
//! * [`packet`]: the 24-byte adb message header (command, args, length, checksum, magic), with
//!   the limits a hostile peer must not get past.
//! * [`key`]: Android's RSA public key format (`~/.android/adbkey.pub`) and AUTH signature
//!   verification (PKCS#1 v1.5 over the 20-byte token, SHA-1 DigestInfo, as adbd does).
//! * [`preamble`]: the `CLOUDPHONE-ADB 1` key preamble the host writes before any adb byte,
//!   naming the keys allowed into this phone (the lease owner's registered keys).
//! * [`sync`]: the `sync:` service's requests and replies (STAT/LIST/SEND/RECV/DATA/DONE/QUIT).
//! * [`shell`]: the `shell,v2` packet framing (stdin/stdout/stderr/exit ids).

pub mod key;
pub mod packet;
pub mod preamble;
pub mod shell;
pub mod sync;
