//! Peak memory across repeated generations, on the plain and the autodiff backend.
//!   cargo run --release --example mem_generate -- [plain|autodiff] [N]
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use runner::generate::{GenerateOptions, generate};

fn run<B: Backend>(n: usize, after: impl Fn()) {
    runner::memory::tune_allocator();
    let p = runner::pretrained::load::<B>("smollm2-135m-instruct", &Default::default()).unwrap();
    let prompt: Vec<u32> = (0..170).map(|i| 100 + i as u32).collect();
    for i in 0..n {
        let mut pr = prompt.clone();
        pr.push(i as u32);
        let _ = generate(
            &p.model,
            &pr,
            &GenerateOptions {
                max_new_tokens: 24,
                ..Default::default()
            },
        )
        .unwrap();
        after();
        eprintln!(
            "after {} generations: peak {} MB",
            i + 1,
            runner::memory::peak_rss_bytes().unwrap_or(0) >> 20
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    match args.get(1).map(String::as_str) {
        Some("autodiff") => run::<Autodiff<Flex>>(n, || {}),
        Some("cleanup") => run::<Autodiff<Flex>>(n, || {
            let t = Tensor::<Autodiff<Flex>, 1>::ones([1], &Default::default()).require_grad();
            let _ = t.sum().backward();
        }),
        _ => run::<Flex>(n, || {}),
    }
}
