//! Screen streaming: encoders and WebRTC.
