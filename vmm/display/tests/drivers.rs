//! Tier 1: the `virtio-drivers` GPU and input drivers, acting as the guest, drive our devices
//! through the real virtio-pci transport (cloudphone-virtio's `testing` harness).

use std::time::Duration;

use cloudphone_display::input::evdev::*;
use cloudphone_display::{
    ExportDir, GpuLimits, GpuSpec, InputDevices, InputSpec, Screen, VirtioGpu,
};
use cloudphone_virtio::testing::{run_with_timeout, TestHal, TestHarness};
use virtio_drivers::device::gpu::VirtIOGpu;
use virtio_drivers::device::input::{InputConfigSelect, VirtIOInput};

const TIMEOUT: Duration = Duration::from_secs(30);

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(salt) ^ (i >> 10) as u8)
        .collect()
}

#[test]
fn driver_drawn_frame_appears_byte_exact_with_damage() {
    let spec = GpuSpec {
        width: 720,
        height: 1280,
        dpi: 320,
    };
    let (gpu, export) = VirtioGpu::new_2d(
        spec,
        GpuLimits::default(),
        &ExportDir::new(&std::env::temp_dir()),
    )
    .unwrap();
    let harness = TestHarness::new(Box::new(gpu)).unwrap();
    let damage = export.subscribe();
    let transport = harness.transport();
    let (first, second, resolution, edid_mode) = run_with_timeout(TIMEOUT, move || {
        let mut gpu = VirtIOGpu::<TestHal, _>::new(transport).unwrap();
        let resolution = gpu.resolution().unwrap();
        let edid_mode = gpu.edid_preferred_resolution().unwrap();
        let fb = gpu.setup_framebuffer().unwrap();
        let first = pattern(fb.len(), 1);
        let second = pattern(fb.len(), 77);
        fb.copy_from_slice(&first);
        gpu.flush().unwrap();
        let fb = gpu.setup_framebuffer().unwrap(); // re-creates the resource (unref + create)
        fb.copy_from_slice(&second);
        gpu.flush().unwrap();
        (first, second, resolution, edid_mode)
    });
    assert_eq!(resolution, (720, 1280));
    assert_eq!(
        edid_mode,
        (720, 1280),
        "EDID preferred mode must be the configured screen"
    );
    let (info, pixels) = export.read_frame();
    assert_eq!((info.width, info.height, info.stride), (720, 1280, 720 * 4));
    assert_eq!(serde_json::to_value(&info).unwrap()["format"], "B8G8R8A8");
    assert_eq!(pixels.len(), second.len());
    assert!(
        pixels == second,
        "exported memory differs from the driver's framebuffer"
    );
    assert_ne!(first, second);
    let events: Vec<_> = std::iter::from_fn(|| damage.try_recv()).collect();
    let rects: Vec<_> = events
        .iter()
        .map(|d| (d.seq, d.x, d.y, d.width, d.height))
        .collect();
    assert_eq!(rects, vec![(1, 0, 0, 720, 1280), (2, 0, 0, 720, 1280)]);
    assert_eq!(info.seq, 2);
    assert!(!harness.needs_reset());
    assert!(
        harness.msi().count(TestHarness::queue_vector(0)) > 0,
        "control queue interrupts"
    );
}

#[test]
fn screenshot_of_driver_frame_decodes_to_its_pixels() {
    let spec = GpuSpec {
        width: 64,
        height: 64,
        dpi: 160,
    };
    let (gpu, export) = VirtioGpu::new_2d(
        spec,
        GpuLimits::default(),
        &ExportDir::new(&std::env::temp_dir()),
    )
    .unwrap();
    let harness = TestHarness::new(Box::new(gpu)).unwrap();
    let transport = harness.transport();
    run_with_timeout(TIMEOUT, move || {
        let mut gpu = VirtIOGpu::<TestHal, _>::new(transport).unwrap();
        let fb = gpu.setup_framebuffer().unwrap();
        for px in fb.chunks_exact_mut(4) {
            px.copy_from_slice(&[0x10, 0x20, 0x30, 0xff]); // B, G, R, A
        }
        gpu.flush().unwrap();
    });
    let png = cloudphone_display::screenshot_png(&export).unwrap();
    let mut reader = png::Decoder::new(&png[..]).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut buf).unwrap();
    assert!(buf.chunks_exact(4).all(|p| p == [0x30, 0x20, 0x10, 0xff]));
}

/// The events of pressing and releasing each key in `names`, as the guest reads them.
fn key_taps(names: &[&str]) -> Vec<(u16, u16, i32)> {
    names
        .iter()
        .flat_map(|n| {
            let code = key_code(n).unwrap();
            [
                (EV_KEY, code, 1),
                (EV_SYN, 0, 0),
                (EV_KEY, code, 0),
                (EV_SYN, 0, 0),
            ]
        })
        .collect()
}

/// Pop events until `n` arrived (the device delivers asynchronously).
fn pop_events<T: virtio_drivers::transport::Transport>(
    input: &mut VirtIOInput<TestHal, T>,
    n: usize,
) -> Vec<(u16, u16, i32)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n && std::time::Instant::now() < deadline {
        match input.pop_pending_event() {
            Some(e) => out.push((e.event_type, e.code, e.value as i32)),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    out
}

#[test]
fn touchscreen_config_and_protocol_b_sequence() {
    let devices = InputDevices::new(
        InputSpec {
            touch: true,
            keyboard: false,
        },
        Screen {
            width: 720,
            height: 1280,
        },
    )
    .unwrap();
    let handle = devices.handle.clone();
    let harness = TestHarness::new(Box::new(devices.touch.unwrap())).unwrap();
    let transport = harness.transport();
    let events = run_with_timeout(TIMEOUT, move || {
        let mut input = VirtIOInput::<TestHal, _>::new(transport).unwrap();
        assert_eq!(input.name().unwrap(), "virtio-touchscreen-0");
        assert_eq!(input.serial_number().unwrap(), "cloudphone-touch-0");
        assert_eq!(input.prop_bits().unwrap()[0], 1 << INPUT_PROP_DIRECT);
        let abs = input.ev_bits(EV_ABS as u8).unwrap();
        for axis in [
            ABS_X,
            ABS_Y,
            ABS_MT_SLOT,
            ABS_MT_TRACKING_ID,
            ABS_MT_POSITION_X,
            ABS_MT_POSITION_Y,
        ] {
            assert_ne!(
                abs[usize::from(axis / 8)] & 1 << (axis % 8),
                0,
                "axis {axis:#x}"
            );
        }
        let keys = input.ev_bits(EV_KEY as u8).unwrap();
        assert_ne!(keys[usize::from(BTN_TOUCH / 8)] & 1 << (BTN_TOUCH % 8), 0);
        assert!(input.ev_bits(0x02).unwrap().is_empty(), "no relative axes");
        assert_eq!(
            (
                input.abs_info(ABS_MT_POSITION_X as u8).unwrap().min,
                input.abs_info(ABS_MT_POSITION_X as u8).unwrap().max
            ),
            (0, 719)
        );
        assert_eq!(input.abs_info(ABS_MT_POSITION_Y as u8).unwrap().max, 1279);
        assert_eq!(input.abs_info(ABS_MT_SLOT as u8).unwrap().max, 9);
        assert_eq!(input.ids().unwrap().bustype, 6);
        let mut size_only = [0u8; 0];
        assert_eq!(
            input
                .query_config_select(InputConfigSelect::AbsInfo, 0x20, &mut size_only)
                .unwrap(),
            0
        );

        handle.inject_json(br#"{"touch":[{"id":0,"x":100,"y":200,"down":true},{"id":1,"x":300,"y":400,"down":true}]}"#).unwrap();
        handle
            .inject_json(br#"{"touch":[{"id":1,"x":310,"y":410,"down":true}]}"#)
            .unwrap();
        handle.inject_json(br#"{"touch":[{"id":0,"x":100,"y":200,"down":false},{"id":1,"x":310,"y":410,"down":false}]}"#).unwrap();
        assert!(handle
            .inject_json(br#"{"touch":[{"id":0,"x":720,"y":0,"down":true}]}"#)
            .is_err());
        pop_events(&mut input, 14 + 6 + 6)
    });
    let expected = vec![
        (EV_ABS, ABS_MT_SLOT, 0),
        (EV_ABS, ABS_MT_TRACKING_ID, 0),
        (EV_ABS, ABS_MT_POSITION_X, 100),
        (EV_ABS, ABS_MT_POSITION_Y, 200),
        (EV_ABS, ABS_MT_SLOT, 1),
        (EV_ABS, ABS_MT_TRACKING_ID, 1),
        (EV_ABS, ABS_MT_POSITION_X, 300),
        (EV_ABS, ABS_MT_POSITION_Y, 400),
        (EV_KEY, BTN_TOUCH, 1),
        (EV_ABS, ABS_X, 100),
        (EV_ABS, ABS_Y, 200),
        (EV_SYN, SYN_REPORT, 0),
        (EV_ABS, ABS_MT_SLOT, 1),
        (EV_ABS, ABS_MT_POSITION_X, 310),
        (EV_ABS, ABS_MT_POSITION_Y, 410),
        (EV_ABS, ABS_X, 310),
        (EV_ABS, ABS_Y, 410),
        (EV_SYN, SYN_REPORT, 0),
        (EV_ABS, ABS_MT_SLOT, 0),
        (EV_ABS, ABS_MT_TRACKING_ID, -1),
        (EV_ABS, ABS_MT_SLOT, 1),
        (EV_ABS, ABS_MT_TRACKING_ID, -1),
        (EV_KEY, BTN_TOUCH, 0),
        (EV_SYN, SYN_REPORT, 0),
    ];
    assert_eq!(events, expected);
    assert!(!harness.needs_reset());
}

#[test]
fn keyboard_events_queued_before_the_driver_and_beyond_its_buffers_arrive_in_order() {
    let devices = InputDevices::new(
        InputSpec {
            touch: false,
            keyboard: true,
        },
        Screen {
            width: 720,
            height: 1280,
        },
    )
    .unwrap();
    let handle = devices.handle.clone();
    // Injected while the guest has no driver (no buffers): must wait, not vanish.
    handle
        .inject_json(br#"{"key":"HOME","down":true}"#)
        .unwrap();
    handle
        .inject_json(br#"{"key":"HOME","down":false}"#)
        .unwrap();
    let harness = TestHarness::new(Box::new(devices.keyboard.unwrap())).unwrap();
    let transport = harness.transport();
    let names = [
        "A",
        "B",
        "C",
        "POWER",
        "VOLUMEUP",
        "VOLUMEDOWN",
        "BACK",
        "APPSWITCH",
        "ENTER",
        "SPACE",
        "0",
        "9",
    ];
    let (events, name) = run_with_timeout(TIMEOUT, move || {
        let mut input = VirtIOInput::<TestHal, _>::new(transport).unwrap();
        let name = input.name().unwrap();
        // 48 more events than the driver's 32 buffers: delivered as buffers come back.
        for n in names {
            for down in [true, false] {
                handle
                    .inject_json(format!(r#"{{"key":"{n}","down":{down}}}"#).as_bytes())
                    .unwrap();
            }
        }
        (pop_events(&mut input, 4 + names.len() * 4), name)
    });
    assert_eq!(name, "virtio-keyboard-0");
    let mut expected = vec![
        (EV_KEY, 172, 1),
        (EV_SYN, 0, 0),
        (EV_KEY, 172, 0),
        (EV_SYN, 0, 0),
    ];
    expected.extend(key_taps(&names));
    assert_eq!(events, expected);
}

#[test]
fn driver_reinit_resets_the_device_state() {
    let spec = GpuSpec {
        width: 64,
        height: 64,
        dpi: 160,
    };
    let (gpu, export) = VirtioGpu::new_2d(
        spec,
        GpuLimits::default(),
        &ExportDir::new(&std::env::temp_dir()),
    )
    .unwrap();
    let harness = TestHarness::new(Box::new(gpu)).unwrap();
    for round in 0..2u8 {
        let transport = harness.transport();
        // virtio-drivers always uses resource id 0xbabe: the second round only succeeds if the
        // reset in between dropped the first round's resource.
        run_with_timeout(TIMEOUT, move || {
            let mut gpu = VirtIOGpu::<TestHal, _>::new(transport).unwrap();
            let fb = gpu.setup_framebuffer().unwrap();
            fb.fill(round + 1);
            gpu.flush().unwrap();
        });
        assert!(
            export.read_frame().1.iter().all(|b| *b == round + 1),
            "round {round}"
        );
    }
    assert!(!harness.needs_reset());
}

/// Snapshot/restore under the keyboard driver: events the guest had no buffers for survive
/// in the restored device, the config selection is kept, and the same driver keeps reading
/// events (also new ones injected through the restored process's handle).
#[test]
fn keyboard_driver_continues_after_snapshot_restore_with_pending_events() {
    let spec = InputSpec {
        touch: false,
        keyboard: true,
    };
    let screen = Screen {
        width: 720,
        height: 1280,
    };
    let devices = InputDevices::new(spec, screen).unwrap();
    let handle = devices.handle.clone();
    let harness = TestHarness::new(Box::new(devices.keyboard.unwrap())).unwrap();
    let transport = harness.transport();
    let names = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L"];
    let input = run_with_timeout(TIMEOUT, move || {
        let mut input = VirtIOInput::<TestHal, _>::new(transport).unwrap();
        assert_eq!(input.name().unwrap(), "virtio-keyboard-0");
        input
    });
    // 48 events for the driver's 32 buffers: 16 wait in the device.
    for n in names {
        for down in [true, false] {
            handle
                .inject_json(format!(r#"{{"key":"{n}","down":{down}}}"#).as_bytes())
                .unwrap();
        }
    }
    let vector = TestHarness::queue_vector(0);
    assert!(harness.msi().wait_for(vector, 0, TIMEOUT));
    std::thread::sleep(Duration::from_millis(100));

    let mut restored = InputDevices::new(spec, screen).unwrap();
    let keyboard = restored.keyboard.take().unwrap();
    let state = harness.snapshot_restore(|| Box::new(keyboard)).unwrap();
    let part = state.device.device.expect("input saves its own state");
    assert_eq!(part["pending"].as_array().unwrap().len(), 16);
    assert_eq!(
        part["selection"][0], 1,
        "VIRTIO_INPUT_CFG_ID_NAME still selected"
    );

    let new_handle = restored.handle;
    let events = run_with_timeout(TIMEOUT, move || {
        let mut input = input;
        let mut events = pop_events(&mut input, names.len() * 4);
        new_handle
            .inject_json(br#"{"key":"HOME","down":true}"#)
            .unwrap();
        events.extend(pop_events(&mut input, 2));
        events
    });
    let mut expected = key_taps(&names);
    expected.extend([(EV_KEY, 172, 1), (EV_SYN, 0, 0)]);
    assert_eq!(events, expected);
    assert!(!harness.needs_reset());
}

/// Snapshot/restore under the GPU driver: the restored device (with a new, empty export) shows
/// the frame again, copied from the guest's framebuffer backing, keeps the cursor, and the same
/// driver keeps flushing to it.
#[test]
fn gpu_driver_continues_after_snapshot_restore() {
    let spec = GpuSpec {
        width: 64,
        height: 64,
        dpi: 160,
    };
    let (gpu, _) = VirtioGpu::new_2d(
        spec,
        GpuLimits::default(),
        &ExportDir::new(&std::env::temp_dir()),
    )
    .unwrap();
    let harness = TestHarness::new(Box::new(gpu)).unwrap();
    let transport = harness.transport();
    let (gpu, frame) = run_with_timeout(TIMEOUT, move || {
        let mut gpu = VirtIOGpu::<TestHal, _>::new(transport).unwrap();
        let fb = gpu.setup_framebuffer().unwrap();
        let frame = pattern(fb.len(), 5);
        fb.copy_from_slice(&frame);
        gpu.flush().unwrap();
        gpu.setup_cursor(&[0x80; 64 * 64 * 4], 10, 20, 1, 2)
            .unwrap();
        (gpu, frame)
    });

    let (restored, export) = VirtioGpu::new_2d(
        spec,
        GpuLimits::default(),
        &ExportDir::new(&std::env::temp_dir()),
    )
    .unwrap();
    let state = harness.snapshot_restore(|| Box::new(restored)).unwrap();
    let part = state.device.device.expect("the GPU saves its resources");
    let backend = &part["backend"];
    assert_eq!(backend["resources"].as_array().unwrap().len(), 2);
    assert_eq!(backend["cursor"].as_array().unwrap()[1..], [10, 20, 1, 2]);
    let (info, pixels) = export.read_frame();
    assert_eq!((info.width, info.height), (64, 64));
    assert!(
        pixels == frame,
        "the restored scanout shows the guest's frame"
    );

    let damage = export.subscribe();
    run_with_timeout(TIMEOUT, move || {
        let mut gpu = gpu;
        gpu.move_cursor(30, 40).unwrap();
        gpu.flush().unwrap();
    });
    assert!(damage.try_recv().is_some(), "flush reaches the new export");
    assert!(!harness.needs_reset());
}
