//! `/api/v1/keys` bodies: registering an adb public key.

use serde::{Deserialize, Serialize};

/// `POST /keys` body.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKey {
    /// Base64 of the Android RSA public key (adbkey.pub's first field).
    pub key: String,
    /// Free text to recognise the key by (adbkey.pub's `user@host`); at most 128 printable
    /// characters.
    #[serde(default)]
    pub comment: String,
}
