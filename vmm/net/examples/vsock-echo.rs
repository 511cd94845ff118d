//! Guest-side vsock helper for the tier-2 tests (the guest's busybox has no vsock tools).
//! Build it static so it runs in a bare initramfs:
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p cloudphone-net --release \
//!     --example vsock-echo --target x86_64-unknown-linux-gnu
//! ```
//!
//! - `vsock-echo listen PORT [COUNT]`: accept COUNT (default 1) connections on vsock PORT one
//!   after another and echo each until its peer closes; prints `VSOCK_LISTENING PORT` once
//!   listening.
//! - `vsock-echo connect CID PORT MESSAGE`: connect to CID:PORT, send MESSAGE, half-close,
//!   print `VSOCK_REPLY=<reply>` with everything the peer sent back.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// A connected or listening AF_VSOCK stream socket. `UnixStream` is only borrowed as a
/// convenient owner of read/write/shutdown on a stream fd; the address family does not matter.
fn vsock_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn check(ret: libc::c_int, what: &str) -> std::io::Result<()> {
    if ret < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn listen(port: u32, count: usize) -> std::io::Result<()> {
    let sock = vsock_socket()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes.
    check(
        unsafe { libc::bind(fd, (&a as *const libc::sockaddr_vm).cast(), ADDR_LEN) },
        "bind",
    )?;
    // SAFETY: plain listen(2).
    check(unsafe { libc::listen(fd, 4) }, "listen")?;
    println!("VSOCK_LISTENING {port}");
    for _ in 0..count {
        // SAFETY: accept(2) without a peer address.
        let conn = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        check(conn, "accept")?;
        // SAFETY: `conn` is a fresh connected socket we own.
        let mut stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(conn) });
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
            total += n;
        }
        println!("VSOCK_ECHOED {total}");
    }
    Ok(())
}

fn connect(cid: u32, port: u32, message: &str) -> std::io::Result<()> {
    let sock = vsock_socket()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let a = addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of ADDR_LEN bytes.
    check(
        unsafe { libc::connect(fd, (&a as *const libc::sockaddr_vm).cast(), ADDR_LEN) },
        "connect",
    )?;
    let mut stream = UnixStream::from(sock);
    stream.write_all(message.as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    println!("VSOCK_REPLY={reply}");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u32>().ok());
    let result = match (args.get(1).map(String::as_str), num(2), num(3)) {
        (Some("listen"), Some(port), _) => listen(port, num(3).unwrap_or(1) as usize),
        (Some("connect"), Some(cid), Some(port)) if args.len() == 5 => connect(cid, port, &args[4]),
        _ => {
            eprintln!(
                "usage: vsock-echo listen PORT [COUNT] | vsock-echo connect CID PORT MESSAGE"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("vsock-echo: {e}");
        println!("VSOCK_ERROR {e}");
        std::process::exit(1);
    }
}
