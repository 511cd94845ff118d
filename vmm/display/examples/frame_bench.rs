//! Host cost to deliver a changed 720x1280 frame, in process: the virtio-drivers GPU driver
//! (standing in for the guest) flushes (TRANSFER_TO_HOST_2D + RESOURCE_FLUSH through the real
//! virtio-pci transport and device worker), a consumer thread waits for the damage event and
//! copies the damaged pixels out of its own read-only mapping of the shared file.
//!
//! `cargo run --release -p cloudphone-display --example frame_bench [-- FRAMES]`

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cloudphone_display::{GpuLimits, GpuSpec, MappedFramebuffer, VirtioGpu};
use cloudphone_virtio::testing::{TestHal, TestHarness};
use virtio_drivers::device::gpu::VirtIOGpu;

fn main() {
    let frames: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let spec = GpuSpec {
        width: 720,
        height: 1280,
        dpi: 320,
    };
    let (gpu, export) = VirtioGpu::new_2d(
        spec,
        GpuLimits::default(),
        &cloudphone_display::framebuffer::ExportDir::default(),
    )
    .expect("creating the GPU (is /dev/shm writable?)");
    let harness = TestHarness::new(Box::new(gpu)).expect("wrapping the GPU in virtio-pci");
    let mut driver = VirtIOGpu::<TestHal, _>::new(harness.transport()).expect("driver init");
    let fb = driver.setup_framebuffer().expect("framebuffer");
    let (fb_ptr, fb_len) = (fb.as_mut_ptr(), fb.len());

    let damage = export.subscribe();
    let info = export.info();
    let (done_tx, done_rx) = mpsc::channel::<(u8, Instant)>();
    let consumer = std::thread::spawn(move || {
        let mapped = MappedFramebuffer::open(&info).expect("mapping the export read-only");
        while let Some(d) = damage.recv() {
            let pixels = mapped
                .copy_rect(&info, d.x, d.y, d.width, d.height)
                .expect("damage inside frame");
            let marker = pixels[0];
            assert!(
                pixels[pixels.len() - 1] == marker,
                "torn frame at seq {}",
                d.seq
            );
            if done_tx.send((marker, Instant::now())).is_err() {
                return;
            }
        }
    });

    let mut times = Vec::with_capacity(frames);
    for i in 0..frames {
        let marker = (i % 251) as u8 + 1;
        // The guest draws a new frame (not timed).
        // SAFETY: the framebuffer DMA region lives inside `driver` until it is dropped or the
        // resolution changes, neither of which happens in this loop; virtio-drivers only hands
        // the slice out borrowed from `driver`, which `flush` also needs.
        unsafe { std::slice::from_raw_parts_mut(fb_ptr, fb_len) }.fill(marker);
        let start = Instant::now();
        driver.flush().expect("flush");
        let (seen, at) = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("consumer saw no frame");
        assert_eq!(seen, marker, "consumer saw stale pixels");
        times.push(at - start);
    }
    drop(driver);
    drop(harness);
    drop(export);
    let _ = consumer.join();

    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = times.iter().map(|d| ms(*d)).sum::<f64>() / times.len() as f64;
    println!(
        "frames: {frames} of 720x1280 B8G8R8A8 ({} KiB each)",
        fb_len / 1024
    );
    println!(
        "p50: {:.3} ms  p99: {:.3} ms  max: {:.3} ms",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
        ms(times[times.len() - 1])
    );
    println!("ms per frame (flush -> damage event -> consumer has pixels): {mean:.3}");
}
