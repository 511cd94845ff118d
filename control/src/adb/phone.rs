//! Reaching a phone's adbd: connect to its VMM's hybrid vsock socket, ask for guest port 5555
//! (`CONNECT 5555` answered by `OK <host port>`), then write the key preamble naming the
//! keys adbd may accept on this connection. The host agent's relay does this for phones on
//! other machines, `serve` itself for phones whose VMM runs beside it.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use cloudphone_adb::key::AdbPublicKey;

use super::ADBD_VSOCK_PORT;

/// Longest wait for the VMM to accept and answer `CONNECT` (the guest must accept too).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `OK <port>` line the VMM may send.
const MAX_REPLY_LINE: usize = 64;

/// Connects to adbd in the guest behind `vsock_socket` and writes the preamble with `keys`;
/// the stream then carries adb both ways.
pub async fn connect(vsock_socket: &Path, keys: &[AdbPublicKey]) -> anyhow::Result<UnixStream> {
    let preamble = cloudphone_adb::preamble::encode(keys).context("encoding the key preamble")?;
    let open = async {
        let mut stream = UnixStream::connect(vsock_socket).await.with_context(|| {
            format!(
                "connecting to the phone's vsock socket {} (is its VMM running with --vsock?)",
                vsock_socket.display()
            )
        })?;
        stream
            .write_all(format!("CONNECT {ADBD_VSOCK_PORT}\n").as_bytes())
            .await
            .context("asking the VMM for the guest's adb port")?;
        // Byte by byte: whatever follows the line is the guest's.
        let mut line = Vec::new();
        loop {
            let byte = stream.read_u8().await.context(
                "the VMM closed the vsock connection: nothing listens on the phone's adb port",
            )?;
            if byte == b'\n' {
                break;
            }
            line.push(byte);
            if line.len() > MAX_REPLY_LINE {
                bail!("the VMM's CONNECT reply is longer than {MAX_REPLY_LINE} bytes");
            }
        }
        if !line.starts_with(b"OK ") {
            bail!(
                "the VMM refused CONNECT {ADBD_VSOCK_PORT}: {:?}",
                String::from_utf8_lossy(&line)
            );
        }
        stream
            .write_all(&preamble)
            .await
            .context("writing the key preamble to the phone")?;
        anyhow::Ok(stream)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .with_context(|| {
            format!(
                "the phone's adb port did not answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A hybrid vsock socket answering the first connection with `reply` after reading its
    /// CONNECT line; returns what else the host wrote until it closed.
    async fn vmm(reply: &'static [u8]) -> (std::path::PathBuf, tokio::task::JoinHandle<Vec<u8>>) {
        let dir = std::env::temp_dir().join(format!("cp-adb-{}", crate::ids::random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = tokio::io::BufReader::new(stream);
            let mut connect = String::new();
            stream.read_line(&mut connect).await.unwrap();
            assert_eq!(connect, "CONNECT 5555\n");
            stream.get_mut().write_all(reply).await.unwrap();
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
            rest
        });
        (path, task)
    }

    #[tokio::test]
    async fn connect_then_preamble_then_adb_bytes_pass_unchanged() {
        let (path, vmm) = vmm(b"OK 1073741824\nCNXN").await;
        let files = [
            include_str!("../../tests/fixtures/adbkey1.pub"),
            include_str!("../../tests/fixtures/adbkey2.pub"),
        ];
        let keys: Vec<AdbPublicKey> = files
            .iter()
            .map(|f| AdbPublicKey::from_pub_line(f.as_bytes()).unwrap())
            .collect();
        let mut stream = connect(&path, &keys).await.unwrap();
        let mut first = [0u8; 4];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(
            &first, b"CNXN",
            "the guest's bytes after OK are not swallowed"
        );
        stream.write_all(b"adb bytes").await.unwrap();
        drop(stream);
        let wrote = vmm.await.unwrap();
        let expected = format!(
            "CLOUDPHONE-ADB 1\nKEY {}\nKEY {}\nEND\nadb bytes",
            keys[0].to_base64(),
            keys[1].to_base64()
        );
        assert_eq!(String::from_utf8(wrote).unwrap(), expected);
    }

    #[tokio::test]
    async fn refusals_and_silence_are_clear_errors() {
        let (path, _vmm) = vmm(b"NO\n").await;
        let e = connect(&path, &[]).await.unwrap_err().to_string();
        assert!(e.contains("refused CONNECT 5555"), "{e}");
        let (path, _vmm) = vmm(&[b'x'; 100]).await;
        let e = connect(&path, &[]).await.unwrap_err().to_string();
        assert!(e.contains("longer than 64"), "{e}");
        let e = connect(Path::new("/nonexistent/vsock.sock"), &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is its VMM running"), "{e}");
    }
}
