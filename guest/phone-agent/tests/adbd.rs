//! adbd over real sockets on the host: Debian's `adb` client (a real implementation nobody
//! here wrote) through a TCP bridge that writes the key preamble, as the host tunnel does,
//! and raw-packet clients for the hostile cases. The phone side (screen, input) is a recorder;
//! the tier-2 test drives the real UI.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudphone_adb::key::AdbPublicKey;
use cloudphone_adb::packet::{self, Packet};
use cloudphone_adb::{preamble, shell as v2};
use cloudphone_phone_agent::adbd::{self, Config, Phone};
use cloudphone_phone_agent::input::evdev::{Input, TouchAction};
use cloudphone_tests::adb::{preamble_bridge, text, AdbClient};

/// Records what adbd asks of the phone.
#[derive(Default)]
struct Recorder {
    inputs: Mutex<Vec<Input>>,
    rebooted: AtomicBool,
}

/// A small real PNG standing in for the screen.
fn screen_png() -> Vec<u8> {
    let mut png = Vec::new();
    cloudphone_phone_agent::golden::write_png(
        &cloudphone_phone_agent::canvas::Canvas::new(8, 4),
        &mut png,
    )
    .unwrap();
    png
}

impl Phone for Recorder {
    fn screencap(&self) -> anyhow::Result<Vec<u8>> {
        Ok(screen_png())
    }
    fn inject(&self, inputs: Vec<Input>) -> anyhow::Result<()> {
        self.inputs.lock().unwrap().extend(inputs);
        Ok(())
    }
    fn screen_size(&self) -> (i32, i32) {
        (720, 1280)
    }
    fn reboot(&self) -> anyhow::Result<()> {
        self.rebooted.store(true, Ordering::SeqCst);
        anyhow::bail!("not rebooting the test host")
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adbd-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// adbd behind a TCP port, each connection prefixed with a preamble naming `keys`.
struct Device {
    port: u16,
    dir: PathBuf,
    phone: Arc<Recorder>,
}

/// A scratch phone: /data, /sdcard and /data/app under a temp dir, and a recorder for the UI.
fn scratch_phone(name: &str) -> (Device, Arc<Config>) {
    let dir = scratch(name);
    for d in ["data/local/tmp", "sdcard", "data/app"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let phone = Arc::new(Recorder::default());
    let config = Arc::new(Config {
        roots: vec![dir.join("data"), dir.join("sdcard")],
        apps_dir: dir.join("data/app"),
        product: "cloudphone".into(),
        model: "test".into(),
        phone: phone.clone(),
    });
    (
        Device {
            port: 0,
            dir,
            phone,
        },
        config,
    )
}

fn start_device(name: &str, keys: Vec<AdbPublicKey>) -> Device {
    let (device, config) = scratch_phone(name);
    let port = preamble_bridge(&keys, move || {
        let (host, guest) = UnixStream::pair()?;
        let config = config.clone();
        std::thread::spawn(move || adbd::serve(guest, &config));
        Ok(host)
    })
    .unwrap();
    Device { port, ..device }
}

/// `adb -s SERIAL args...`, which must run.
fn on(client: &AdbClient, args: &[&str]) -> Output {
    client.run(args).unwrap()
}

/// A client with its own HOME under the scratch dir.
fn client(device: &Device, name: &str) -> AdbClient {
    AdbClient::new(&device.dir.join(format!("home-{name}")), device.port).unwrap()
}

#[test]
fn debian_adb_client_shell_push_pull_screencap_input_install_and_refused_key() {
    let mut adb = AdbClient::new(&scratch("owner"), 0).unwrap();
    let device = start_device("client", vec![adb.public_key().unwrap()]);
    adb.serial = format!("127.0.0.1:{}", device.port);
    assert!(adb.connect().unwrap().contains("connected to"));
    assert_eq!(
        adb.wait_online(Duration::from_secs(15)).unwrap().trim(),
        "device"
    );

    // shell v2: stdout, stderr and the exit code come back separately.
    let out = on(&adb, &["shell", "echo hello"]);
    assert_eq!(
        (text(&out.stdout).as_str(), out.status.code()),
        ("hello\n", Some(0))
    );
    let out = on(&adb, &["shell", "echo oops >&2; exit 3"]);
    assert_eq!(
        (text(&out.stderr).as_str(), out.status.code()),
        ("oops\n", Some(3))
    );

    // push + pull 10 MiB byte-exact.
    let big: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let local = device.dir.join("big.bin");
    std::fs::write(&local, &big).unwrap();
    let remote = device.dir.join("data/local/tmp/big.bin");
    let out = on(
        &adb,
        &["push", local.to_str().unwrap(), remote.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read(&remote).unwrap() == big,
        "pushed bytes differ"
    );
    let back = device.dir.join("back.bin");
    let out = on(
        &adb,
        &["pull", remote.to_str().unwrap(), back.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read(&back).unwrap() == big, "pulled bytes differ");

    // Outside the roots: refused, nothing written.
    let out = on(
        &adb,
        &[
            "push",
            local.to_str().unwrap(),
            device.dir.join("escaped.bin").to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success() && text(&out.stdout).contains("outside the allowed"),
        "{out:?}"
    );
    assert!(!device.dir.join("escaped.bin").exists());
    let out = on(&adb, &["pull", "/etc/passwd", back.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");

    // exec-in: the stream's end is stdin's end; the command still finishes its work.
    let copied = device.dir.join("data/local/tmp/copied.bin");
    let status = adb
        .command()
        .args(["exec-in", &format!("cat > {}", copied.display())])
        .stdin(std::fs::File::open(&local).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    // adb returns once it has sent everything; `cat` may still be writing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read(&copied).unwrap();
        if got == big {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exec-in wrote {} of {} bytes",
            got.len(),
            big.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // screencap and input.
    let out = on(&adb, &["exec-out", "screencap -p"]);
    assert_eq!(out.stdout, screen_png());
    let shot = device.dir.join("sdcard/shot.png");
    let out = on(
        &adb,
        &["shell", &format!("screencap -p {}", shot.display())],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(std::fs::read(&shot).unwrap(), screen_png());
    let out = on(&adb, &["shell", "screencap -p /etc/shot.png"]);
    assert!(text(&out.stderr).contains("outside the allowed"), "{out:?}");
    let out = on(&adb, &["shell", "input tap 100 200"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = on(&adb, &["shell", "input keyevent KEYCODE_BACK"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let touch = |action| Input::Touch {
        slot: 0,
        action,
        x: 100,
        y: 200,
    };
    let recorded = device.phone.inputs.lock().unwrap().clone();
    assert_eq!(
        recorded[..2],
        [touch(TouchAction::Down), touch(TouchAction::Up)]
    );
    assert_eq!(recorded.len(), 4);
    let out = on(&adb, &["shell", "input tap 5000 1"]);
    assert!(
        out.status.code() == Some(1) && text(&out.stderr).contains("off the"),
        "{out:?}"
    );

    // install: a real bundle starts and logs; a bad one is refused and the phone stays usable.
    let src = device.dir.join("bundle");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(
        src.join("manifest"),
        "name=org.example.demo\nexec=bin/run\n",
    )
    .unwrap();
    std::fs::write(src.join("bin/run"), "#!/bin/sh\necho hello-from-app\n").unwrap();
    let apk = device.dir.join("demo.apk");
    let tar = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&apk)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    // adb 29 pushes to /data/local/tmp; the test's /data is a scratch directory, so point
    // `pm install` there ourselves the same way adb does (push, then pm install).
    let staged = device.dir.join("data/local/tmp/demo.apk");
    let out = on(
        &adb,
        &["push", apk.to_str().unwrap(), staged.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let out = on(
        &adb,
        &["shell", &format!("pm 'install' '{}'", staged.display())],
    );
    assert_eq!(
        (text(&out.stdout).as_str(), out.status.code()),
        ("Success\n", Some(0)),
        "{out:?}"
    );
    assert!(device
        .dir
        .join("data/app/org.example.demo/bin/run")
        .exists());
    let out = on(&adb, &["shell", "pm list packages"]);
    assert_eq!(text(&out.stdout), "package:org.example.demo\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&on(&adb, &["logcat", "-d"]).stdout)
        .contains("app/org.example.demo: hello-from-app")
    {
        assert!(
            Instant::now() < deadline,
            "the app's output never reached logcat"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(device.dir.join("data/local/tmp/bad.apk"), b"not a bundle").unwrap();
    let out = on(
        &adb,
        &[
            "shell",
            &format!(
                "pm install {}",
                device.dir.join("data/local/tmp/bad.apk").display()
            ),
        ],
    );
    assert!(
        text(&out.stderr).contains("INSTALL_FAILED_INVALID_APK") && out.status.code() == Some(1),
        "{out:?}"
    );
    assert_eq!(
        text(&on(&adb, &["shell", "echo still here"]).stdout),
        "still here\n"
    );

    on(&adb, &["reboot"]);
    assert!(device.phone.rebooted.load(Ordering::SeqCst));

    // A client whose key is not in the preamble never gets in.
    let stranger = client(&device, "stranger");
    // adb 29 says "failed to authenticate" or, when the refusal comes after its reply,
    // "connected" with the device never online.
    let said = stranger.connect().unwrap();
    assert!(
        said.contains("failed to authenticate") || said.contains("connected"),
        "{said}"
    );
    let state = on(&stranger, &["get-state"]);
    assert_ne!(text(&state.stdout).trim(), "device");
    let out = on(&stranger, &["shell", "echo in"]);
    assert!(
        !out.status.success() && !text(&out.stdout).contains("in"),
        "{out:?}"
    );
    let _ = std::fs::remove_dir_all(&device.dir);
}

/// A raw adb client: preamble, packets, signing with a test key.
struct Raw {
    conn: UnixStream,
}

fn raw_device(keys: &[AdbPublicKey], preamble_bytes: Option<Vec<u8>>) -> (Raw, Device) {
    let (device, config) = scratch_phone(&format!("raw-{}", rand::random::<u32>()));
    let (host, guest) = UnixStream::pair().unwrap();
    std::thread::spawn(move || adbd::serve(guest, &config));
    let mut conn = host;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(&preamble_bytes.unwrap_or_else(|| preamble::encode(keys).unwrap()))
        .unwrap();
    (Raw { conn }, device)
}

impl Raw {
    fn send(&mut self, p: Packet) {
        let _ = p.write_to(&mut self.conn);
    }
    fn recv(&mut self) -> Option<Packet> {
        Packet::read_from(&mut self.conn, packet::MAX_PAYLOAD, false).ok()
    }
    fn cnxn(&mut self) -> Packet {
        self.cnxn_reply().expect("AUTH TOKEN")
    }
    fn cnxn_reply(&mut self) -> Option<Packet> {
        self.send(Packet::new(
            packet::A_CNXN,
            packet::VERSION,
            packet::MAX_PAYLOAD,
            b"host::\0".to_vec(),
        ));
        self.recv()
    }
}

fn key_pair() -> rsa::RsaPrivateKey {
    use rand::SeedableRng;
    rsa::RsaPrivateKey::new(&mut rand::rngs::StdRng::seed_from_u64(42), 2048).unwrap()
}

fn sign(key: &rsa::RsaPrivateKey, token: &[u8]) -> Vec<u8> {
    key.sign(rsa::Pkcs1v15Sign::new::<sha1::Sha1>(), token)
        .unwrap()
}

#[test]
fn hostile_clients_are_closed_and_good_ones_served() {
    let private = key_pair();
    let public = AdbPublicKey::from_rsa(private.to_public_key());

    // Not a preamble: closed before any adb byte is answered.
    let (mut raw, _d) = raw_device(&[], Some(b"CNXN hello\n".to_vec()));
    assert!(raw.recv().is_none());

    // Bad magic right after a valid preamble.
    let (mut raw, _d) = raw_device(std::slice::from_ref(&public), None);
    let mut wire =
        Packet::new(packet::A_CNXN, packet::VERSION, 4096, b"host::\0".to_vec()).encode();
    wire[20] ^= 0xff;
    raw.conn.write_all(&wire).unwrap();
    assert!(raw.recv().is_none());

    // AUTH spam: a fresh token per failure, then the connection is closed.
    let (mut raw, _d) = raw_device(std::slice::from_ref(&public), None);
    let mut tokens = 1;
    let mut reply = raw.cnxn();
    loop {
        assert_eq!(
            (reply.command, reply.arg0),
            (packet::A_AUTH, packet::AUTH_TOKEN)
        );
        raw.send(Packet::new(
            packet::A_AUTH,
            packet::AUTH_SIGNATURE,
            0,
            vec![7u8; 256],
        ));
        match raw.recv() {
            Some(p) => {
                tokens += 1;
                reply = p;
            }
            None => break,
        }
    }
    assert_eq!(tokens, adbd::MAX_AUTH_ATTEMPTS);
    let (mut raw, _d) = raw_device(std::slice::from_ref(&public), None);
    let connects = std::iter::repeat_with(|| raw.cnxn_reply()).take_while(Option::is_some);
    assert_eq!(
        connects.count() as u32,
        adbd::MAX_AUTH_ATTEMPTS,
        "CNXN spam is cut off too"
    );

    // An unknown key offered for a prompt: refused, closed.
    let (mut raw, _d) = raw_device(std::slice::from_ref(&public), None);
    raw.cnxn();
    let offered = format!(
        "{} stranger@host\0",
        AdbPublicKey::from_rsa(key_pair_other()).to_base64()
    );
    raw.send(Packet::new(
        packet::A_AUTH,
        packet::AUTH_RSAPUBLICKEY,
        0,
        offered.into_bytes(),
    ));
    assert!(raw.recv().is_none());

    // The right key gets in; unknown services get CLSE; shell v2 works; an oversized packet
    // ends the connection.
    let (mut raw, _d) = raw_device(&[public], None);
    let token = raw.cnxn().payload;
    raw.send(Packet::new(
        packet::A_AUTH,
        packet::AUTH_SIGNATURE,
        0,
        sign(&private, &token),
    ));
    let cnxn = raw.recv().unwrap();
    assert_eq!(cnxn.command, packet::A_CNXN);
    assert!(text(&cnxn.payload)
        .starts_with("device::ro.product.name=cloudphone;ro.product.model=test;"));
    raw.send(Packet::new(packet::A_OPEN, 5, 0, b"jdwp:1\0".to_vec()));
    let clse = raw.recv().unwrap();
    assert_eq!((clse.command, clse.arg1), (packet::A_CLSE, 5));
    raw.send(Packet::new(
        packet::A_OPEN,
        6,
        0,
        b"shell,v2,raw:echo hi; exit 4\0".to_vec(),
    ));
    let okay = raw.recv().unwrap();
    assert_eq!((okay.command, okay.arg1), (packet::A_OKAY, 6));
    let mut stream = Vec::new();
    loop {
        let p = raw.recv().unwrap();
        match p.command {
            packet::A_WRTE => {
                stream.extend_from_slice(&p.payload);
                raw.send(Packet::new(packet::A_OKAY, 6, p.arg0, Vec::new()));
            }
            packet::A_CLSE => break,
            other => panic!("unexpected {}", packet::command_name(other)),
        }
    }
    let mut r = &stream[..];
    assert_eq!(v2::read(&mut r).unwrap(), (v2::ID_STDOUT, b"hi\n".to_vec()));
    assert_eq!(v2::read(&mut r).unwrap(), (v2::ID_EXIT, vec![4]));
    // WRTEs without waiting for OKAY: that stream is closed, the connection lives on.
    raw.send(Packet::new(packet::A_OPEN, 7, 0, b"shell:cat\0".to_vec()));
    let okay = raw.recv().unwrap();
    assert_eq!((okay.command, okay.arg1), (packet::A_OKAY, 7));
    let local = okay.arg0;
    for _ in 0..64 {
        raw.send(Packet::new(packet::A_WRTE, 7, local, vec![b'x'; 60_000]));
    }
    let closed = std::iter::from_fn(|| raw.recv())
        .find(|p| p.command == packet::A_CLSE)
        .expect("the flooded stream is closed");
    assert_eq!(closed.arg1, 7);
    raw.send(Packet::new(
        packet::A_OPEN,
        8,
        0,
        b"shell:echo alive\0".to_vec(),
    ));
    let okay = std::iter::from_fn(|| raw.recv())
        .find(|p| p.command == packet::A_OKAY && p.arg1 == 8)
        .expect("the connection still serves new streams");
    assert_ne!(okay.arg0, 0);
    let mut huge = Packet::new(packet::A_WRTE, 6, 1, vec![0u8; 16]).encode();
    huge[12..16].copy_from_slice(&(packet::MAX_PAYLOAD + 1).to_le_bytes());
    raw.conn.write_all(&huge).unwrap();
    // Whatever was still in flight drains, then the connection is closed (not timed out).
    let t0 = Instant::now();
    while raw.recv().is_some() {}
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "connection not closed"
    );
}

fn key_pair_other() -> rsa::RsaPublicKey {
    use rand::SeedableRng;
    rsa::RsaPrivateKey::new(&mut rand::rngs::StdRng::seed_from_u64(7), 2048)
        .unwrap()
        .to_public_key()
}

/// The tests' native adb client (what the tier-2 tests use where Debian's adb server cannot
/// run): preamble, AUTH with its own key, shell v2 with stdout, stderr and exit code.
#[test]
fn native_test_client_runs_shell_v2_commands() {
    let run = |command: &str| {
        let (_device, config) = scratch_phone(&format!("native-{}", rand::random::<u32>()));
        let (host, guest) = UnixStream::pair().unwrap();
        std::thread::spawn(move || adbd::serve(guest, &config));
        cloudphone_tests::adb::shell(host, command, Duration::from_secs(30)).unwrap()
    };
    let out = run("echo hello; echo oops >&2; exit 3");
    assert_eq!(
        (
            text(&out.stdout).as_str(),
            text(&out.stderr).as_str(),
            out.exit
        ),
        ("hello\n", "oops\n", Some(3))
    );
    let big = run("head -c 300000 /dev/zero");
    assert_eq!((big.stdout.len(), big.exit), (300000, Some(0)));
}
