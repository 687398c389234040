//! A float32 sum in the order PyTorch's CPU kernel adds, so that double quantization's
//! offset (a mean) has the same bits as bitsandbytes'.
//!
//! PyTorch reads a contiguous input of at least `LANES` floats as vectors of `LANES`, sums
//! groups of four vectors into four interleaved accumulators (cascading into higher levels
//! once there are many groups), folds the accumulators, adds the scalar tail to a running sum
//! starting at zero, then adds the folded vector's lanes one by one. Shorter inputs take the
//! same grouping with scalars. Checked against PyTorch 2.15 for 1..32768 values; above that
//! PyTorch splits the sum across threads and the last bit depends on the thread count.

const LANES: usize = 8;
const ILP: usize = 4;
const LEVELS: usize = 4;

fn add<const W: usize>(a: &mut [f32; W], b: &[f32; W]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn ceil_log2(n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as usize
    }
}

/// Sums `rows` groups of `ILP` items into `ILP` accumulators, cascading the partial sums into
/// higher levels every `2^level_power` groups.
// Indexed loops on purpose: they follow PyTorch's kernel step for step (its summation order).
#[allow(clippy::needless_range_loop)]
fn multi_row_sum<const W: usize>(items: &[[f32; W]], rows: usize) -> [[f32; W]; ILP] {
    let level_power = 4.max(ceil_log2(rows) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; W]; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= rows {
        for _ in 0..level_step {
            for k in 0..ILP {
                add(&mut acc[0][k], &items[i * ILP + k]);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                let lower = acc[j - 1][k];
                add(&mut acc[j][k], &lower);
                acc[j - 1][k] = [0.0; W];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < rows {
        for k in 0..ILP {
            add(&mut acc[0][k], &items[i * ILP + k]);
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            let upper = acc[j][k];
            add(&mut acc[0][k], &upper);
        }
    }
    acc[0]
}

/// The sum of `items` (vectors or scalars) with `ILP` interleaved accumulators.
fn row_sum<const W: usize>(items: &[[f32; W]]) -> [f32; W] {
    let rows = items.len() / ILP;
    let mut partial = multi_row_sum(items, rows);
    for v in &items[rows * ILP..] {
        add(&mut partial[0], v);
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], &p);
    }
    partial[0]
}

pub fn sum_f32(values: &[f32]) -> f32 {
    if values.len() < LANES {
        let scalars: Vec<[f32; 1]> = values.iter().map(|&v| [v]).collect();
        return row_sum(&scalars)[0];
    }
    let n_vec = values.len() / LANES;
    let vectors: Vec<[f32; LANES]> = values[..n_vec * LANES]
        .chunks_exact(LANES)
        .map(|c| c.try_into().expect("LANES values"))
        .collect();
    let folded = row_sum(&vectors);
    let mut total = 0.0f32;
    for &v in &values[n_vec * LANES..] {
        total += v;
    }
    for lane in folded {
        total += lane;
    }
    total
}
