//! Where a phone's screen comes from and where its input goes: the VMM's socket on this
//! machine (the framebuffer is mapped, nothing is copied over the network) or a host agent's
//! relay (the screen is mirrored into memory from the relay's frames stream). Either way the
//! encoder reads one `&[u8]` frame and damage arrives as [`DamageEvent`]s.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cloudphone_display::{FramebufferInfo, MappedFramebuffer};
use cloudphone_vmm_api::{DamageEvent, VmmApi};
use tokio::sync::mpsc;

use crate::confine::Confinement;
use crate::input::VmmInput;
use crate::relay::client;
use crate::relay::wire::Mirror;
use crate::{lock, StreamError};

/// How to reach one phone's screen, chosen by the control service per phone.
#[derive(Clone)]
pub struct ScreenSource {
    api: VmmApi,
    /// Where the framebuffer the VMM names may lie (`None`: anywhere, for tests' fakes).
    confinement: Option<Confinement>,
}

impl fmt::Debug for ScreenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScreenSource({})", self.api)
    }
}

impl ScreenSource {
    /// The VMM runs on this machine: its API socket is at `api_socket`.
    pub fn local(api_socket: impl Into<PathBuf>) -> Self {
        Self {
            api: VmmApi::new(api_socket),
            confinement: None,
        }
    }

    /// Like [`ScreenSource::local`], but the API socket and every framebuffer the VMM names
    /// must resolve inside `confinement`'s roots (anything else is refused).
    pub fn confined(
        api_socket: &std::path::Path,
        confinement: Confinement,
    ) -> Result<Self, StreamError> {
        let socket = confinement.check_socket(api_socket)?;
        Ok(Self {
            api: VmmApi::new(socket),
            confinement: Some(confinement),
        })
    }

    /// The VMM runs behind the host agent relay at `base_url` (`http[s]://host:port`), which
    /// accepts `key`; the phone is `phone_id` there.
    pub fn relay(base_url: &str, key: &str, phone_id: &str) -> Result<Self, StreamError> {
        Ok(Self {
            api: VmmApi::relay(base_url, key, phone_id)?,
            confinement: None,
        })
    }

    /// Verify an `https` relay with `config` (see `VmmApi::with_relay_tls`).
    pub fn with_relay_tls(
        self,
        config: std::sync::Arc<cloudphone_vmm_api::rustls::ClientConfig>,
    ) -> Self {
        Self {
            api: self.api.with_relay_tls(config),
            confinement: self.confinement,
        }
    }
}

/// One stream's view of its source (cheap to clone: the mirror is shared).
#[derive(Clone)]
pub(crate) struct Screen {
    api: VmmApi,
    confinement: Option<Confinement>,
    /// The mirrored screen, for a relayed phone.
    mirror: Option<Arc<Mutex<Mirror>>>,
}

impl fmt::Display for Screen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.api.fmt(f)
    }
}

impl Screen {
    pub(crate) fn new(source: ScreenSource) -> Self {
        let mirror = source
            .api
            .is_relay()
            .then(|| Arc::new(Mutex::new(Mirror::default())));
        Self {
            api: source.api,
            confinement: source.confinement,
            mirror,
        }
    }

    /// The screen's current geometry (a relayed screen: the mirror's, once it has one).
    pub(crate) async fn info(&self) -> Result<FramebufferInfo, StreamError> {
        if let Some(mirror) = &self.mirror {
            let m = lock(mirror);
            if let Some(g) = m.geometry {
                return Ok(g.info(m.seq));
            }
        }
        Ok(self.api.framebuffer().await?)
    }

    /// Follow damage once (until the subscription ends or fails; the caller reconnects). A
    /// relayed screen's mirror is updated before each event is sent.
    pub(crate) async fn follow(&self, sink: &mpsc::Sender<DamageEvent>) -> Result<(), StreamError> {
        match &self.mirror {
            Some(mirror) => client::mirror(&self.api, mirror, sink).await,
            None => Ok(self.api.damage_events(sink.clone()).await?),
        }
    }

    /// Access to the pixels laid out as `info` (from [`Screen::info`]).
    pub(crate) fn pixels(&self, info: &FramebufferInfo) -> Result<Pixels, StreamError> {
        match &self.mirror {
            Some(mirror) => Ok(Pixels::Mirror(mirror.clone())),
            None => {
                if let Some(c) = &self.confinement {
                    c.check("framebuffer", &info.path)?;
                }
                MappedFramebuffer::open(info)
                    .map(Pixels::Mapped)
                    .map_err(|e| StreamError::Vmm(e.to_string()))
            }
        }
    }

    /// `PUT /input` on the VMM: the one place typed input becomes the JSON body the API takes.
    pub(crate) async fn put_input(&self, input: &VmmInput) -> Result<(), StreamError> {
        let body = serde_json::to_string(input)
            .map_err(|e| StreamError::Vmm(format!("input {input:?} not serializable: {e}")))?;
        Ok(self.api.put_input(body).await?)
    }
}

/// The pixels an encoder reads.
pub(crate) enum Pixels {
    /// The VMM's shared framebuffer file, mapped read-only.
    Mapped(MappedFramebuffer),
    /// A relayed screen's mirror.
    Mirror(Arc<Mutex<Mirror>>),
}

impl Pixels {
    /// Run `f` on the current frame laid out as `info`; an error if the screen no longer has
    /// that layout (the caller re-reads the geometry).
    pub(crate) fn with_frame<R>(
        &self,
        info: &FramebufferInfo,
        f: impl FnOnce(&[u8]) -> Result<R, StreamError>,
    ) -> Result<R, StreamError> {
        match self {
            Pixels::Mapped(map) => {
                let frame = map.frame(info).ok_or_else(|| {
                    StreamError::Geometry("framebuffer file is smaller than its geometry".into())
                })?;
                f(&frame)
            }
            Pixels::Mirror(mirror) => {
                let m = lock(mirror);
                match m.geometry {
                    Some(g)
                        if g.info(0).stride == info.stride
                            && (g.width, g.height, g.format)
                                == (info.width, info.height, info.format) =>
                    {
                        f(&m.pixels)
                    }
                    _ => Err(StreamError::Geometry(
                        "the relayed screen changed geometry".into(),
                    )),
                }
            }
        }
    }
}
