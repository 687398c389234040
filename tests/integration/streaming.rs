//! Streaming datasets: a large JSONL file is trained on without holding its rows, and a
//! recipe trains identically on loaded and streamed data. One test per file, so the process's
//! peak memory is this test's own.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use runner::data::batch::Batches;
use runner::data::stream::StreamFormat;
use runner::data::{BatchOptions, Dataset, ReadOptions, Template};
use runner::memory::{peak_rss_bytes, reset_peak};

#[test]
fn a_large_file_streams_in_a_fraction_of_its_size_and_trains_the_same() {
    // It measures the process's peak memory.
    if !crate::common::in_own_process(
        "streaming::a_large_file_streams_in_a_fraction_of_its_size_and_trains_the_same",
    ) {
        return;
    }
    // 200,000 rows, about 37 MiB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..200_000 {
        writeln!(f, "{{\"instruction\": \"Repeat the number {i} back, please, exactly as written here.\", \"input\": \"{}\", \"output\": \"{i} {}\"}}", "y".repeat(i % 90), "z".repeat(i % 70)).unwrap();
    }
    drop(f);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 30 << 20, "{size}");

    let opts = BatchOptions {
        size: 8,
        steps: Some(200),
        seed: 3,
        ..Default::default()
    };
    reset_peak();
    let before = peak_rss_bytes().unwrap();
    let streamed = Dataset::stream(&path, StreamFormat::Jsonl, ReadOptions::default())
        .unwrap()
        .template(&Template::alpaca(), None)
        .unwrap();
    let (train, _) = streamed.split(0.01, 0).unwrap();
    let from_disk: Vec<_> = Batches::new(train.example_source().unwrap(), opts.clone())
        .collect::<Result<_, _>>()
        .unwrap();
    let streamed_peak = peak_rss_bytes().unwrap().saturating_sub(before);

    let loaded = Dataset::read_jsonl(&path, ReadOptions::default())
        .unwrap()
        .template(&Template::alpaca(), None)
        .unwrap();
    let (train, _) = loaded.split(0.01, 0).unwrap();
    let in_memory: Vec<_> = Batches::new(train.example_source().unwrap(), opts)
        .collect::<Result<_, _>>()
        .unwrap();
    let loaded_peak = peak_rss_bytes().unwrap().saturating_sub(before);

    assert_eq!(
        from_disk, in_memory,
        "streamed batches must be the loaded ones"
    );
    eprintln!(
        "file {} MB; peak growth streamed {} MB, loaded {} MB",
        size >> 20,
        streamed_peak >> 20,
        loaded_peak >> 20
    );
    // The index is 16 bytes a row (3 MB) plus the split's selection; the loaded rows are
    // several times the file.
    assert!(
        streamed_peak < size / 4,
        "streaming grew memory by {streamed_peak} bytes for a {size}-byte file"
    );
    assert!(
        loaded_peak > size,
        "the loaded dataset should hold the file ({loaded_peak} bytes)"
    );
}

#[test]
fn a_recipe_trains_identically_on_streamed_data() {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .args(["tests/fixtures/recipes/stream_data.lua", "--results"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let loaded = lines[0].strip_prefix("loaded ").unwrap();
    let streamed = lines[1].strip_prefix("streamed ").unwrap();
    assert_eq!(loaded, streamed);
}
