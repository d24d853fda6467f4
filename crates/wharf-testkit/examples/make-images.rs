//! Writes generated multi-platform images into one OCI image layout, for the benchmarks in
//! `bench/` (which load them into a registry with `skopeo copy --all oci:DIR:REF docker://...`).
//!
//! ```text
//! cargo run --release -p wharf-testkit --example make-images -- DIR [options]
//!   --repos N           images to generate (default 1)
//!   --name NAME         repository name; with --repos > 1, NAME-01, NAME-02, ... (default app)
//!   --tag TAG           tag of every image (default v1)
//!   --platforms LIST    comma-separated os/arch[/variant] (default linux/amd64,linux/arm64/v8,
//!                       linux/arm/v7,linux/s390x)
//!   --layers N          layers of each platform image besides the base (default 1)
//!   --layers-alt N      with --repos > 1, every second image gets N layers instead
//!   --layer-size SIZE   bytes of random data in each layer, e.g. 25MiB, 512KiB (default 1MiB)
//!   --base-size SIZE    a base layer of SIZE shared by every platform of every image (default none)
//!   --seed N            seed of the first image; image i uses N+i (default 1)
//! ```
//!
//! Each image's index is named `NAME:TAG` in the layout's `index.json` (so `oci:DIR:NAME:TAG`).
//! Layer data is pseudo-random, hence incompressible. The same options give the same digests.
//! Prints one line per image, `NAME:TAG<TAB>INDEX_DIGEST<TAB>BYTES` (index, manifests and the
//! image's distinct blobs), then `total<TAB>-<TAB>BYTES` (distinct over all images).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use wharf_testkit::TestImage;

struct Options {
    dir: PathBuf,
    repos: usize,
    name: String,
    tag: String,
    platforms: Vec<String>,
    layers: usize,
    layers_alt: Option<usize>,
    layer_size: usize,
    base_size: Option<usize>,
    seed: u64,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| format!("bad size {s:?} (e.g. 25MiB, 512KiB, 1000)"))
}

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        dir: PathBuf::new(),
        repos: 1,
        name: "app".into(),
        tag: "v1".into(),
        platforms: ["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/s390x"]
            .map(String::from)
            .to_vec(),
        layers: 1,
        layers_alt: None,
        layer_size: 1 << 20,
        base_size: None,
        seed: 1,
    };
    let mut dir = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--repos" => o.repos = value()?.parse().map_err(|_| "--repos: not a number")?,
            "--name" => o.name = value()?,
            "--tag" => o.tag = value()?,
            "--platforms" => o.platforms = value()?.split(',').map(str::to_owned).collect(),
            "--layers" => o.layers = value()?.parse().map_err(|_| "--layers: not a number")?,
            "--layers-alt" => {
                o.layers_alt = Some(value()?.parse().map_err(|_| "--layers-alt: not a number")?)
            }
            "--layer-size" => o.layer_size = parse_size(&value()?)?,
            "--base-size" => o.base_size = Some(parse_size(&value()?)?),
            "--seed" => o.seed = value()?.parse().map_err(|_| "--seed: not a number")?,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s if dir.is_none() => dir = Some(PathBuf::from(s)),
            s => return Err(format!("unexpected argument {s}")),
        }
    }
    o.dir = dir.ok_or("missing DIR")?;
    if o.repos == 0 || o.layers == 0 || o.layers_alt == Some(0) {
        return Err("--repos and --layers must be at least 1".into());
    }
    for p in &o.platforms {
        let parts: Vec<&str> = p.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
            return Err(format!("platform {p:?} is not os/arch[/variant]"));
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("make-images: {e}");
            }
            eprintln!("{}", USAGE);
            return ExitCode::from(2);
        }
    };
    let platforms: Vec<&str> = o.platforms.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for i in 0..o.repos {
        let name = if o.repos == 1 { o.name.clone() } else { format!("{}-{:02}", o.name, i + 1) };
        let reference = format!("{name}:{}", o.tag);
        let layers = match o.layers_alt {
            Some(alt) if i % 2 == 1 => alt,
            _ => o.layers,
        };
        let mut builder = TestImage::builder()
            .seed(o.seed + i as u64)
            .tag(&reference)
            .platforms(&platforms)
            .layers(layers)
            .layer_size(o.layer_size);
        if let Some(base) = o.base_size {
            builder = builder.shared_base_layer("bench-base", base);
        }
        let img = builder.build();
        img.write_oci_layout(&o.dir);

        let mut bytes = img.index.size();
        for child in &img.children {
            bytes += child.manifest.size();
            if seen.insert(child.manifest.digest.clone()) {
                total += child.manifest.size();
            }
        }
        seen.insert(img.index.digest.clone());
        total += img.index.size();
        for blob in img.blobs() {
            bytes += blob.size();
            if seen.insert(blob.digest.clone()) {
                total += blob.size();
            }
        }
        println!("{reference}\t{}\t{bytes}", img.index.digest);
    }
    println!("total\t-\t{total}");
    ExitCode::SUCCESS
}

const USAGE: &str = "usage: make-images DIR [--repos N] [--name NAME] [--tag TAG] [--platforms LIST] \
[--layers N] [--layers-alt N] [--layer-size SIZE] [--base-size SIZE] [--seed N]";
