//! Guest-side TCP traffic helper for the tier-2 network test: one process per side that moves
//! a known pseudo-random stream and checks it byte for byte, so the measurement is the network
//! path and not a shell pipeline (busybox `head | tee | sha256sum | nc` costs several process
//! switches per 4 KiB, which dominates under nested virtualisation). Build it static:
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p cloudphone-net --release \
//!     --example net-pump --target x86_64-unknown-linux-gnu
//! ```
//!
//! - `net-pump recv PORT SEED`: listen on PORT (prints `PUMP_LISTENING PORT`), accept one
//!   connection, read to EOF comparing every byte with the stream for SEED, then print
//!   `PUMP_RECV bytes=N sum=<checksum> mismatch=<first bad offset or none> secs=S PUMP_END`.
//! - `net-pump send HOST:PORT BYTES SEED`: connect (retrying for up to 60 s), send BYTES of the
//!   stream for SEED, half-close, wait for the peer to close, then print
//!   `PUMP_SENT bytes=N sum=<checksum> secs=S PUMP_END`.
//!
//! The checksum is a Fletcher-style pair of running sums over the bytes, so it depends on
//! every byte and on their order but not on how the stream was split into reads.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Bytes per read/write call: large, so a gigabit stream is a few thousand syscalls.
const CHUNK: usize = 256 << 10;

/// The byte stream both sides agree on: word `i` is splitmix64(seed + i), little endian.
struct Stream {
    seed: u64,
}

impl Stream {
    fn word(&self, i: u64) -> u64 {
        let mut z = self
            .seed
            .wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fill `buf` with the stream's bytes starting at byte `offset`.
    fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut pos = 0;
        let mut word = offset / 8;
        let mut skip = (offset % 8) as usize;
        while pos < buf.len() {
            let bytes = self.word(word).to_le_bytes();
            let n = (8 - skip).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&bytes[skip..skip + n]);
            pos += n;
            skip = 0;
            word += 1;
        }
    }
}

/// Order-sensitive checksum of a byte stream, independent of how it is chunked.
#[derive(Default)]
struct Checksum {
    a: u64,
    b: u64,
}

impl Checksum {
    fn update(&mut self, data: &[u8]) {
        for &byte in data {
            self.a = self.a.wrapping_add(u64::from(byte));
            self.b = self.b.wrapping_add(self.a);
        }
    }
    fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.a, self.b)
    }
}

fn recv(port: u16, seed: u64) -> std::io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    println!("PUMP_LISTENING {port}");
    let (mut conn, _) = listener.accept()?;
    let start = Instant::now();
    let stream = Stream { seed };
    let (mut buf, mut expected) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut total, mut sum, mut mismatch) = (0u64, Checksum::default(), None);
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sum.update(&buf[..n]);
        if mismatch.is_none() {
            stream.fill(total, &mut expected[..n]);
            if buf[..n] != expected[..n] {
                mismatch = (0..n)
                    .find(|&i| buf[i] != expected[i])
                    .map(|i| total + i as u64);
            }
        }
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(conn);
    let mismatch = mismatch.map_or("none".to_string(), |m| m.to_string());
    println!(
        "PUMP_RECV bytes={total} sum={} mismatch={mismatch} secs={secs:.2} PUMP_END",
        sum.hex()
    );
    Ok(())
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect(addr) {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() < deadline => {
                eprintln!("net-pump: connect {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

fn send(addr: &str, bytes: u64, seed: u64) -> std::io::Result<()> {
    let mut conn = connect(addr)?;
    let start = Instant::now();
    let stream = Stream { seed };
    let mut buf = vec![0u8; CHUNK];
    let (mut sent, mut sum) = (0u64, Checksum::default());
    while sent < bytes {
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        stream.fill(sent, &mut buf[..n]);
        conn.write_all(&buf[..n])?;
        sum.update(&buf[..n]);
        sent += n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    // The receiver closes once it has read everything: only then is the data delivered.
    while conn.read(&mut buf)? > 0 {}
    let secs = start.elapsed().as_secs_f64();
    println!(
        "PUMP_SENT bytes={sent} sum={} secs={secs:.2} PUMP_END",
        sum.hex()
    );
    Ok(())
}

fn parse<T: std::str::FromStr>(s: Option<&String>, what: &str) -> T {
    s.and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage(what))
}

fn usage(what: &str) -> ! {
    eprintln!("net-pump: bad or missing {what}\nusage: net-pump recv PORT SEED | net-pump send HOST:PORT BYTES SEED");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("recv") => recv(parse(args.get(1), "PORT"), parse(args.get(2), "SEED")),
        Some("send") => {
            let addr = args.get(1).unwrap_or_else(|| usage("HOST:PORT"));
            send(
                addr,
                parse(args.get(2), "BYTES"),
                parse(args.get(3), "SEED"),
            )
        }
        _ => usage("mode"),
    };
    if let Err(e) = result {
        eprintln!("net-pump: {e}");
        println!("PUMP_FAILED {e} PUMP_END");
        std::process::exit(1);
    }
}
