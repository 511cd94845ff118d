//! Tier 2: the test phone's adbd, reached the way the host tunnel reaches it (TCP → the VMM's
//! hybrid vsock socket → guest port 5555, with the key preamble), driven by Debian's `adb`
//! client: shell, a 10 MiB push/pull byte for byte, `exec-out screencap -p` showing the home
//! screen, `input tap` opening Info on the real UI, `adb install` of an app bundle that then
//! runs and logs, and a key not in the preamble refused.

use std::time::Duration;

use cloudphone_tests::adb::{preamble_bridge, text, vsock_connect, AdbClient};
use cloudphone_tests::phone::{decode_png, difference, golden, icon_centre, STATUS_BAR};
use cloudphone_tests::{scratch_dir, VmProcess};

const WIDTH: u32 = 720;
const HEIGHT: u32 = 1280;

#[test]
#[ignore = "tier 2: needs working KVM and scripts/build-test-image"]
fn debian_adb_drives_the_test_phone_over_vsock() {
    let image = cloudphone_tests::cache_dir().join("test-image");
    let dir = scratch_dir("phone-adb");
    let report = dir.join("hvc1.log");
    // Sockets live on the sandbox's tmpfs (its 9p shares cannot hold them); so do adb's HOMEs.
    let tmp = std::env::temp_dir().join(format!("phone-adb-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let uds = tmp.join("vsock.sock");
    let args: Vec<String> = [
        "--boot-img".to_string(),
        image.join("boot.img").display().to_string(),
        "--vendor-boot".into(),
        image.join("vendor_boot.img").display().to_string(),
        "--cpus".into(),
        "2".into(),
        "--memory".into(),
        "1024".into(),
        "--gpu".into(),
        format!("width={WIDTH},height={HEIGHT},dpi=320"),
        "--input".into(),
        "touch,keyboard".into(),
        "--console".into(),
        format!("port=0,path={}", dir.join("hvc0.log").display()),
        "--console".into(),
        format!("port=1,path={}", report.display()),
        "--vsock".into(),
        format!("cid=3,uds={}", uds.display()),
    ]
    .into();
    // The client (key generation, its adb server) first, while the sandbox is otherwise idle.
    let mut adb = AdbClient::new(&tmp.join("home-owner"), 0).unwrap();
    let mut vm = VmProcess::spawn(&dir, &args).unwrap();
    vm.wait_for_line_in(&report, "SCREEN app=home", Duration::from_secs(240))
        .unwrap();

    let port = preamble_bridge(&[adb.public_key().unwrap()], move || {
        vsock_connect(&uds, 5555)
    })
    .unwrap();
    adb.serial = format!("127.0.0.1:{port}");
    let said = adb.connect().unwrap();
    assert!(said.contains("connected to"), "{said}");
    let state = adb.wait_online(Duration::from_secs(30)).unwrap();
    assert_eq!(state.trim(), "device", "{}", vm.diagnostics());
    let on = |args: &[&str]| adb.run(args).unwrap();

    let out = on(&["shell", "echo hello from $(uname -s)"]);
    assert_eq!(text(&out.stdout), "hello from Linux\n", "{out:?}");

    // 10 MiB there and back, byte for byte.
    let big: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = dir.join("big.bin");
    std::fs::write(&local, &big).unwrap();
    let out = on(&["push", local.to_str().unwrap(), "/data/local/tmp/big.bin"]);
    assert!(out.status.success(), "{out:?}");
    let back = dir.join("back.bin");
    let out = on(&["pull", "/data/local/tmp/big.bin", back.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read(&back).unwrap() == big, "pulled bytes differ");
    let out = on(&["push", local.to_str().unwrap(), "/etc/big.bin"]);
    assert!(
        !out.status.success(),
        "a push outside /data and /sdcard: {out:?}"
    );

    // The screen as PNG is the home screen (the status bar holds the real clock).
    let skip_clock = |mut img: cloudphone_tests::phone::Rgba| {
        let cut = (STATUS_BAR * img.width * 4) as usize;
        img.pixels[..cut].fill(0);
        img
    };
    let home_golden = skip_clock(golden(&dir, "home", (WIDTH, HEIGHT), &[]));
    let shot = on(&["exec-out", "screencap -p"]).stdout;
    let home = skip_clock(decode_png(&shot));
    let diff = difference(&home, &home_golden);
    assert!(
        diff < 0.01,
        "screencap differs from the home golden in {:.2}%",
        diff * 100.0
    );

    // A tap through adb opens Info, as a touch would.
    let (x, y) = icon_centre("Info", (WIDTH, HEIGHT));
    let out = on(&["shell", &format!("input tap {x} {y}")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    vm.wait_for_line_in(&report, "SCREEN app=info", Duration::from_secs(20))
        .unwrap();
    let info = skip_clock(decode_png(&on(&["exec-out", "screencap -p"]).stdout));
    assert!(
        difference(&info, &home) > 0.05,
        "screencap after the tap still shows home"
    );
    let out = on(&["shell", "input keyevent KEYCODE_BACK"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    vm.wait_for_line_in(&report, "key=BACK", Duration::from_secs(20))
        .unwrap();

    // `adb install` of an app bundle: pushed to /data/local/tmp, `pm install`ed, started.
    let src = dir.join("bundle");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(
        src.join("manifest"),
        "name=org.example.hello\nexec=bin/hello\n",
    )
    .unwrap();
    std::fs::write(
        src.join("bin/hello"),
        "#!/bin/sh\necho hello from the app\n",
    )
    .unwrap();
    let apk = dir.join("hello.apk");
    let tar = std::process::Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&apk)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let out = on(&["install", apk.to_str().unwrap()]);
    assert!(text(&out.stdout).contains("Success"), "{out:?}");
    assert_eq!(
        text(&on(&["shell", "pm list packages"]).stdout),
        "package:org.example.hello\n"
    );
    let logged =
        cloudphone_tests::poll(Duration::from_secs(20), Duration::from_millis(300), || {
            Ok(text(&adb.run(&["logcat", "-d"])?.stdout)
                .contains("app/org.example.hello: hello from the app")
                .then_some(()))
        })
        .unwrap();
    assert!(logged.is_some(), "the app's output never reached logcat");
    std::fs::write(dir.join("junk.apk"), b"not a bundle").unwrap();
    let out = on(&["install", dir.join("junk.apk").to_str().unwrap()]);
    assert!(
        text(&out.stdout).contains("INSTALL_FAILED_INVALID_APK")
            || text(&out.stderr).contains("INSTALL_FAILED_INVALID_APK"),
        "{out:?}"
    );
    assert_eq!(
        text(&on(&["shell", "echo still usable"]).stdout),
        "still usable\n"
    );

    // A key the host did not name in the preamble never gets in.
    let mut stranger = AdbClient::new(&tmp.join("home-stranger"), port).unwrap();
    stranger.serial = format!("127.0.0.1:{port}");
    let _ = stranger.connect().unwrap();
    let out = stranger.run(&["shell", "echo in"]).unwrap();
    assert!(
        !out.status.success() && text(&out.stdout).trim() != "in",
        "{out:?}"
    );
    drop(stranger);
    drop(adb);

    let (status, reply) = vm
        .api("PUT", "/shutdown", Some(r#"{"timeout_ms":60000}"#))
        .unwrap();
    assert!(status < 300, "PUT /shutdown: {status} {reply}");
    vm.assert_exit(0, Duration::from_secs(60));
}
