//! `sparse`, `unsparse`, `gpt`, `composite` and `qcow2-overlay`.

use std::fs::File;
use std::path::PathBuf;

use android_images::disk::{write_composite, write_flat, PartitionFile};
use android_images::qcow2::create_overlay;
use android_images::sparse::{sparsify, unsparse as expand, SparseOptions};
use anyhow::{bail, Context, Result};
use clap::Args;

/// Options of `sparse`.
#[derive(Args)]
pub struct SparseArgs {
    /// Raw input image.
    input: PathBuf,
    /// Sparse output image.
    output: PathBuf,
    /// Block size.
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Write zero blocks as "don't care" instead of zero fills.
    #[arg(long)]
    dont_care: bool,
    /// Append a CRC32 chunk.
    #[arg(long)]
    crc: bool,
}

/// Raw to sparse.
pub fn sparse(a: &SparseArgs) -> Result<()> {
    let mut input =
        File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let len = input.metadata()?.len();
    let mut out = std::io::BufWriter::new(
        File::create(&a.output).with_context(|| format!("creating {}", a.output.display()))?,
    );
    let opts = SparseOptions {
        block_size: a.block_size,
        zeros_as_dont_care: a.dont_care,
        crc: a.crc,
    };
    let h = sparsify(&mut input, len, &mut out, &opts)?;
    println!(
        "wrote {}: {} chunks, {} blocks of {}",
        a.output.display(),
        h.total_chunks,
        h.total_blocks,
        h.block_size
    );
    Ok(())
}

/// Options of `unsparse`.
#[derive(Args)]
pub struct UnsparseArgs {
    /// Sparse input image.
    input: PathBuf,
    /// Raw output image.
    output: PathBuf,
    /// Refuse images expanding beyond this many GiB.
    #[arg(long, default_value_t = 256)]
    max_gib: u64,
}

/// Sparse to raw.
pub fn unsparse(a: &UnsparseArgs) -> Result<()> {
    let mut input = std::io::BufReader::new(
        File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?,
    );
    let mut out =
        File::create(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
    let (h, chunks) = expand(&mut input, &mut out, a.max_gib << 30)?;
    println!(
        "wrote {}: {} bytes from {} chunks",
        a.output.display(),
        h.expanded_len(),
        chunks.len()
    );
    Ok(())
}

/// Parses NAME=PATH[:rw].
fn partition(spec: &str) -> Result<PartitionFile> {
    let Some((name, rest)) = spec.split_once('=') else {
        bail!("--part {spec}: expected NAME=PATH[:rw]")
    };
    let (path, writable) = match rest.strip_suffix(":rw") {
        Some(p) => (p, true),
        None => (rest, false),
    };
    Ok(PartitionFile {
        name: name.to_string(),
        path: PathBuf::from(path),
        writable,
    })
}

/// Options of `gpt`.
#[derive(Args)]
pub struct GptArgs {
    /// A partition as NAME=PATH; repeatable, in disk order.
    #[arg(long = "part", required = true)]
    parts: Vec<String>,
    /// Output disk image.
    #[arg(short, long)]
    out: PathBuf,
}

/// Flat GPT disk.
pub fn gpt(a: &GptArgs) -> Result<()> {
    let parts: Vec<PartitionFile> = a
        .parts
        .iter()
        .map(|s| partition(s))
        .collect::<Result<_>>()?;
    let gpt = write_flat(&parts, &a.out)?;
    println!(
        "wrote {}: {} partitions, {} sectors",
        a.out.display(),
        gpt.partitions.len(),
        gpt.disk_sectors
    );
    Ok(())
}

/// Options of `composite`.
#[derive(Args)]
pub struct CompositeArgs {
    /// A partition as NAME=PATH[:rw]; repeatable, in disk order; sizes multiples of 4096.
    #[arg(long = "part", required = true)]
    parts: Vec<String>,
    /// Directory for the spec and GPT header/footer files.
    #[arg(long)]
    out_dir: PathBuf,
    /// File stem: writes STEM.img, STEM-header.img, STEM-footer.img.
    #[arg(long, default_value = "composite")]
    name: String,
}

/// Composite disk.
pub fn composite(a: &CompositeArgs) -> Result<()> {
    let parts: Vec<PartitionFile> = a
        .parts
        .iter()
        .map(|s| partition(s))
        .collect::<Result<_>>()?;
    let spec = write_composite(&parts, &a.out_dir, &a.name)?;
    println!(
        "wrote {}: {} components, {} bytes",
        a.out_dir.join(format!("{}.img", a.name)).display(),
        spec.components.len(),
        spec.length
    );
    Ok(())
}

/// Options of `qcow2-overlay`.
#[derive(Args)]
pub struct OverlayArgs {
    /// Base image (its size becomes the overlay's).
    #[arg(long)]
    backing: PathBuf,
    /// Base image format.
    #[arg(long, default_value = "raw")]
    backing_format: String,
    /// Output overlay.
    #[arg(short, long)]
    out: PathBuf,
}

/// qcow2 overlay.
pub fn overlay(a: &OverlayArgs) -> Result<()> {
    let size = std::fs::metadata(&a.backing)
        .with_context(|| format!("reading {}", a.backing.display()))?
        .len();
    let name = a.backing.to_str().context("backing path is not UTF-8")?;
    let bytes = create_overlay(size, name, &a.backing_format)?;
    std::fs::write(&a.out, bytes).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} over {} ({size} bytes)",
        a.out.display(),
        a.backing.display()
    );
    Ok(())
}
