//! The LoRA paper's tables as docs/results.md shows them are what `runner table` makes of the
//! committed trials: a rerun of a trial, or an edit of the docs, that moves one number fails
//! here.

use crate::common::root;
use runner::report::SweepResults;
use runner::report::table::{Agg, PivotSpec, pivot};

/// The Markdown of one sweep's table, as `runner table DIR --rows ROWS --cols task --value score
/// --agg mean_std --precision 3` prints it.
fn paper_table(sweep: &str, rows: &[&str]) -> String {
    let results = SweepResults::load(&root().join("results").join(sweep))
        .unwrap_or_else(|e| panic!("results/{sweep}: {e:#}"));
    let spec = PivotSpec {
        rows: rows.iter().map(|s| s.to_string()).collect(),
        cols: Some("task".into()),
        value: "score".into(),
        agg: Agg::MeanStd,
        precision: Some(3),
        include_failed: false,
    };
    pivot(&results, &spec).unwrap().to_markdown()
}

fn check(sweep: &str, rows: &[&str], cells: usize) {
    let table = paper_table(sweep, rows);
    let body: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .collect();
    assert_eq!(body.len(), cells, "{sweep}: one row per cell\n{table}");
    // Every cell has both tasks, from both seeds.
    assert!(!table.contains('–'), "{sweep}: a missing cell\n{table}");
    assert!(
        table.contains("of n = 2 trials per cell"),
        "{sweep}: two seeds in every cell\n{table}"
    );
    let docs = std::fs::read_to_string(root().join("docs/results.md")).unwrap();
    assert!(
        docs.contains(table.trim_end()),
        "docs/results.md does not show results/{sweep} as `runner table` prints it now:\n{table}"
    );
}

#[test]
fn table5_in_the_docs_is_the_committed_sweep() {
    // Seven budget-matched target sets.
    check("lora_table5", &["targets", "rank", "trainable"], 7);
}

#[test]
fn table6_in_the_docs_is_the_committed_sweep() {
    // Three target sets by five ranks.
    check("lora_table6", &["targets", "rank"], 15);
}
