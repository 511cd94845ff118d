use super::*;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cp-jail-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(dir).unwrap()
}

#[test]
fn spec_parses_and_names_bad_keys() {
    let s: JailSpec = "root=/s/phones/a,uid=100001,gid=100001,shm=/dev/shm/x"
        .parse()
        .unwrap();
    assert_eq!(s.root, Path::new("/s/phones/a"));
    assert_eq!(s.ids, Some((100001, 100001)));
    assert_eq!(s.shm.as_deref(), Some(Path::new("/dev/shm/x")));
    assert!("uid=5,gid=5"
        .parse::<JailSpec>()
        .unwrap_err()
        .contains("root=DIR"));
    assert!("root=/a,uid=5"
        .parse::<JailSpec>()
        .unwrap_err()
        .contains("together"));
    assert!("root=/a,uid=0,gid=0"
        .parse::<JailSpec>()
        .unwrap_err()
        .contains("non-zero"));
    assert!("root=a"
        .parse::<JailSpec>()
        .unwrap_err()
        .contains("absolute"));
    assert!("root=/a,chroot=/b"
        .parse::<JailSpec>()
        .unwrap_err()
        .contains("unknown key"));
}

#[test]
fn own_files_map_into_the_root_and_inputs_from_elsewhere_are_bound_read_only() {
    let base = temp("plan");
    let phone = base.join("phones/ph_1");
    let images = base.join("images");
    std::fs::create_dir_all(&phone).unwrap();
    std::fs::create_dir_all(base.join("phones/ph_2")).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    for f in ["kernel", "base.img"] {
        std::fs::write(images.join(f), b"x").unwrap();
    }
    std::fs::write(phone.join("overlay.qcow2"), b"q").unwrap();
    let args = [
        "cloudphone-vmm".to_string(),
        format!("--kernel={}", images.join("kernel").display()),
        format!(
            "--disk={},overlay={}",
            images.join("base.img").display(),
            phone.join("overlay.qcow2").display()
        ),
        format!("--api-socket={}", phone.join("api.sock").display()),
        format!("--serial=file:{}", phone.join("serial.log").display()),
        format!(
            "--console=port=1,path={}",
            phone.join("report.log").display()
        ),
    ];
    let mut cfg = crate::config::from_args(&args).unwrap();
    let mut source = VmSource::Boot(crate::vm::BootPayload {
        kernel: std::fs::File::open(images.join("kernel")).unwrap(),
        initrd: None,
        cmdline: String::new(),
    });
    let mut plan = Plan::new(phone.clone());
    plan.rewrite(&mut cfg, &mut source, Path::new("/dev/shm/j/ph_1"))
        .unwrap();
    assert_eq!(cfg.api_socket.as_deref(), Some(Path::new("/api.sock")));
    assert_eq!(cfg.serial, SerialOutput::File("/serial.log".into()));
    assert_eq!(
        cfg.devices.disks[0].overlay.as_deref(),
        Some(Path::new("/overlay.qcow2"))
    );
    assert_eq!(cfg.devices.disks[0].path, Path::new("/.jail/1-base.img"));
    assert_eq!(
        plan.binds,
        vec![
            Bind {
                host: images.join("kernel"),
                inside: ".jail/0-kernel".into(),
                writable: false
            },
            Bind {
                host: images.join("base.img"),
                inside: ".jail/1-base.img".into(),
                writable: false
            },
        ]
    );
    assert_eq!(
        plan.writes,
        ["overlay.qcow2", "serial.log", "api.sock", "report.log"].map(|f| phone.join(f)),
        "what the phone's uid gets: only what the VMM writes"
    );
    assert_eq!(cfg.devices.framebuffer_dir.dir, Path::new("/shm"));
    assert_eq!(
        cfg.devices.framebuffer_dir.host_dir,
        Path::new("/dev/shm/j/ph_1")
    );
    // What the VMM creates must be in its own directory, not anywhere it likes.
    let err = plan
        .own("--api-socket", &base.join("phones/ph_2/api.sock"))
        .unwrap_err_or_dir();
    assert!(err.contains("must be inside the jail root"), "{err}");
    let err = plan
        .own("--api-socket", &phone.join("../ph_2/api.sock"))
        .unwrap_err_or_dir();
    assert!(err.contains(".."), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}

trait ErrText {
    fn unwrap_err_or_dir(self) -> String;
}

impl ErrText for Result<PathBuf, JailError> {
    fn unwrap_err_or_dir(self) -> String {
        match self {
            Ok(p) => panic!("expected an error, got {}", p.display()),
            Err(e) => e.to_string(),
        }
    }
}

#[test]
fn a_jailed_phone_gets_no_tap() {
    let base = temp("net");
    let args = [
        "cloudphone-vmm".to_string(),
        "--kernel=/bin/sh".into(),
        "--net=tap=tap0".into(),
    ];
    let mut cfg = crate::config::from_args(&args).unwrap();
    let mut source = VmSource::Boot(crate::vm::BootPayload {
        kernel: std::fs::File::open("/bin/sh").unwrap(),
        initrd: None,
        cmdline: String::new(),
    });
    let err = Plan::new(base.clone())
        .rewrite(&mut cfg, &mut source, &base)
        .unwrap_err();
    assert!(err.to_string().contains("--net"), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}
