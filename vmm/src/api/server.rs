//! The Unix-socket listener: one short-lived thread per connection, one request each.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use seccompiler::BpfProgram;

use super::http::{read_request, write_response, Reply, Response};
use super::routes::{route, Status, VmApi};
use super::stream::serve_damage;
use crate::vm::{DeviceHandles, VmControl};

/// Per-connection read/write timeout so a stalled client cannot pin a thread forever.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The VM the API currently talks to (replaced on an in-process restart).
#[derive(Default)]
pub struct ApiTarget {
    current: RwLock<Option<Arc<VmControl>>>,
}

impl ApiTarget {
    /// Point the API at `vm` (or at nothing while restarting).
    pub fn set(&self, vm: Option<Arc<VmControl>>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = vm;
    }

    fn get(&self) -> anyhow::Result<Arc<VmControl>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .context("the VM is restarting; retry shortly")
    }
}

impl VmApi for ApiTarget {
    fn status(&self) -> anyhow::Result<Status> {
        let vm = self.get()?;
        Ok(Status {
            state: vm.state().as_str(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            uptime_ms: vm.uptime_ms(),
        })
    }
    fn shutdown(&self, timeout: Duration) -> anyhow::Result<()> {
        self.get()?.request_shutdown(timeout)
    }
    fn reboot(&self) -> anyhow::Result<()> {
        self.get()?.request_reboot();
        Ok(())
    }
    fn pause(&self) -> anyhow::Result<()> {
        self.get()?.pause()
    }
    fn resume(&self) -> anyhow::Result<()> {
        self.get()?.resume();
        Ok(())
    }
    fn devices(&self) -> anyhow::Result<DeviceHandles> {
        Ok(self.get()?.devices.clone())
    }
    fn snapshot(&self, dir: &std::path::Path) -> Result<(), crate::snapshot::SnapshotError> {
        // Between two lives of an in-process restart there is no VM: nothing is paused.
        let vm = self
            .get()
            .map_err(|_| crate::snapshot::SnapshotError::NotPaused)?;
        vm.snapshot(dir)
    }
}

/// A bound API socket; removed from the filesystem when dropped.
pub struct ApiServer {
    path: PathBuf,
}

fn serve(mut stream: UnixStream, vm: &dyn VmApi) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let resp = match read_request(&mut stream) {
        Ok(req) => {
            tracing::debug!(method = %req.method, path = %req.path, "API request");
            match route(&req, vm) {
                Reply::Full(resp) => resp,
                Reply::DamageStream(rx, slot) => return serve_damage(&mut stream, rx, slot),
            }
        }
        Err(e) => Response::error(e.status(), e.to_string()),
    };
    if let Err(e) = write_response(&mut stream, &resp) {
        tracing::debug!(error = %e, "API client went away");
    }
}

impl ApiServer {
    /// Bind `path` (replacing a stale socket file) and serve `vm` on a background thread,
    /// which stacks `filter` (the API threads' seccomp filter, see [`crate::seccomp`]) on
    /// itself before it accepts; its connection threads inherit it. Start it after the
    /// process-wide filter is installed (TSYNC refuses threads with filters of their own).
    pub fn start(
        path: &Path,
        vm: Arc<dyn VmApi>,
        filter: Option<BpfProgram>,
    ) -> anyhow::Result<Self> {
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale API socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding --api-socket {}", path.display()))?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Some(filter) = &filter {
                    if let Err(e) = crate::seccomp::apply_on_this_thread(filter) {
                        tracing::error!(error = %e, "API filter refused; the API is not served");
                        return;
                    }
                }
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            let vm = vm.clone();
                            let spawned = std::thread::Builder::new()
                                .name("api-conn".into())
                                .spawn(move || serve(stream, vm.as_ref()));
                            if let Err(e) = spawned {
                                tracing::warn!(error = %e, "cannot spawn an API connection thread");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "API accept failed"),
                    }
                }
            })
            .context("spawning the API thread")?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn socket_round_trip_without_vm() {
        let dir = std::env::temp_dir().join(format!("vmm-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let target = Arc::new(ApiTarget::default());
        let server = ApiServer::start(&sock, target, None).unwrap();
        let ask = |req: &[u8]| {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.write_all(req).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let r = ask(b"GET /status HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 409"), "{r}");
        assert!(r.contains("restarting"));
        let r = ask(b"garbage\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let r = ask(b"GET /x HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        drop(server);
        assert!(!sock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    struct DisplayOnly {
        handles: std::sync::Mutex<DeviceHandles>,
    }

    impl VmApi for DisplayOnly {
        fn status(&self) -> anyhow::Result<Status> {
            anyhow::bail!("not used")
        }
        fn shutdown(&self, _: Duration) -> anyhow::Result<()> {
            anyhow::bail!("not used")
        }
        fn reboot(&self) -> anyhow::Result<()> {
            anyhow::bail!("not used")
        }
        fn pause(&self) -> anyhow::Result<()> {
            anyhow::bail!("not used")
        }
        fn resume(&self) -> anyhow::Result<()> {
            anyhow::bail!("not used")
        }
        fn devices(&self) -> anyhow::Result<DeviceHandles> {
            Ok(self.handles.lock().unwrap().clone())
        }
        fn snapshot(&self, _: &std::path::Path) -> Result<(), crate::snapshot::SnapshotError> {
            Err(crate::snapshot::SnapshotError::NotPaused)
        }
    }

    #[test]
    fn damage_stream_is_chunked_and_ends_with_the_display() {
        let dir = std::env::temp_dir().join(format!("vmm-api-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let fb = cloudphone_display::FramebufferExport::create(&dir, 64, 64).unwrap();
        let vm = Arc::new(DisplayOnly {
            handles: std::sync::Mutex::new(DeviceHandles {
                framebuffer: Some(fb),
                ..Default::default()
            }),
        });
        let server = ApiServer::start(&sock, vm.clone(), None).unwrap();
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /framebuffer/events HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "stream closed early");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
        // The display goes away (VM stopped): the stream ends with the last chunk.
        vm.handles.lock().unwrap().framebuffer = None;
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "0\r\n\r\n");
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
