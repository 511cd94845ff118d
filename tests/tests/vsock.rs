//! Tier 2: virtio-vsock under a real Linux guest (the kernel's virtio vsock transport), with
//! the host side on Unix sockets (Firecracker's hybrid protocol):
//! - host -> guest: connect to `uds`, `CONNECT 5555\n`, `OK <port>\n`, then 1 MiB echoed back
//!   intact by a guest listener (sha256 equal);
//! - guest -> host: the guest connects to host port 7000 and the Unix socket `<uds>_7000`
//!   answers.
//!
//! The guest runs `vsock-echo`, a static helper from cloudphone-net's examples. Build it first:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build -p cloudphone-net --release
//!  --example vsock-echo --target x86_64-unknown-linux-gnu`

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use cloudphone_tests::{guest_example, guest_kernel, scratch_dir, Initramfs, VmProcess};
use sha2::{Digest, Sha256};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const GUEST_CID: u32 = 42;
const ECHO_BYTES: usize = 1 << 20;

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn host_and_guest_talk_over_vsock_both_ways() {
    let kernel = guest_kernel();
    let dir = scratch_dir("vsock");
    let initrd = dir.join("initrd.cpio");
    let script = "/bin/vsock-echo connect 2 7000 hello-from-guest\n\
                  /bin/vsock-echo listen 5555 1\n\
                  echo VSOCK_DONE\nsleep 1\npoweroff -f\n";
    Initramfs::new()
        .modules(&["virtio_pci", "vmw_vsock_virtio_transport"])
        .file(
            "/bin/vsock-echo",
            &guest_example("cloudphone-net", "vsock-echo"),
        )
        .unwrap()
        .script(script)
        .build(&kernel, &initrd)
        .expect("build initramfs");

    // Unix sockets need a local filesystem: host /tmp (a tmpfs inside the sandbox).
    let sock_dir = std::env::temp_dir().join(format!("cloudphone-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sock_dir);
    std::fs::create_dir_all(&sock_dir).unwrap();
    let uds = sock_dir.join("vsock.sock");
    // Guest-initiated connections to host port 7000 land here.
    let host_port = UnixListener::bind(format!("{}_7000", uds.display())).unwrap();
    let answer = std::thread::spawn(move || {
        let (mut stream, _) = host_port.accept().unwrap();
        let mut msg = String::new();
        stream.read_to_string(&mut msg).unwrap();
        stream.write_all(format!("pong:{msg}").as_bytes()).unwrap();
    });

    let mut args = VmProcess::boot_args(&kernel, &initrd, 1, 256);
    args.extend([
        "--vsock".into(),
        format!("cid={GUEST_CID},uds={}", uds.display()),
    ]);
    // The VMM's API socket must be on a local filesystem too (not the 9p scratch share).
    let mut vm = VmProcess::spawn(&sock_dir.join("vm"), &args).expect("spawn cloudphone-vmm");

    // Wait for the whole expected line (the serial log is read while it is being written).
    vm.wait_for_line("VSOCK_REPLY=pong:hello-from-guest", BOOT_TIMEOUT)
        .unwrap();
    answer.join().unwrap();

    vm.wait_for_line("VSOCK_LISTENING 5555", BOOT_TIMEOUT)
        .unwrap();
    let stream = UnixStream::connect(&uds).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer.write_all(b"CONNECT 5555\n").unwrap();
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(
        ok.starts_with("OK ") && ok.ends_with('\n'),
        "handshake answer {ok:?}\n{}",
        vm.diagnostics()
    );

    let data: Vec<u8> = (0..ECHO_BYTES as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sent = sha256(&data);
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        writer
    });
    let mut echoed = Vec::new();
    reader.read_to_end(&mut echoed).unwrap();
    let _writer = sender.join().unwrap();
    assert_eq!(
        echoed.len(),
        ECHO_BYTES,
        "echo length\n{}",
        vm.diagnostics()
    );
    assert!(
        sha256(&echoed) == sent,
        "echoed bytes differ from what was sent"
    );

    vm.wait_for_line(&format!("VSOCK_ECHOED {ECHO_BYTES}"), BOOT_TIMEOUT)
        .unwrap();
    vm.wait_for_line("VSOCK_DONE", BOOT_TIMEOUT).unwrap();
    vm.assert_exit(0, BOOT_TIMEOUT);
    let _ = std::fs::remove_dir_all(&sock_dir);
}
